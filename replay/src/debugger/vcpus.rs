//! Several vCPUs: a trace recorded on several vCPUs is debugged at its failure point only
//! (its path cannot be replayed: REPLAY.md), and there one vCPU runs, the one that failed.
//! The others keep the state the failure-point snapshot gave them: a debugger can look at
//! them (registers, memory through their page tables) and write them, never run them.

use super::{DebugError, Session};
use crate::error::ReplayError;

impl Session {
    /// vCPUs of the replayed machine.
    pub fn vcpu_count(&self) -> u32 {
        self.machine().vcpu_count()
    }

    /// The vCPU the session runs, steps and reports on: the one that failed, at a failure
    /// point of several vCPUs (annotation `failure.vcpu`); vCPU 0 otherwise.
    pub fn running_vcpu(&self) -> u32 {
        self.vcpu
    }

    /// Calls `f` with the session's single-vCPU views (registers, memory through its page
    /// tables, register writes) on vCPU `vcpu`, then returns them to
    /// [`Self::running_vcpu`].
    ///
    /// # Errors
    /// `vcpu` is not one of the machine's vCPUs (or its thread panicked).
    pub fn on_vcpu<T>(&mut self, vcpu: u32, f: impl FnOnce(&mut Session) -> T) -> Result<T, DebugError> {
        if vcpu == self.vcpu {
            return Ok(f(self));
        }
        self.replayer_mut().machine_mut().focus(vcpu)?;
        let out = f(self);
        let running = self.vcpu;
        self.replayer_mut().machine_mut().focus(running)?;
        Ok(out)
    }
}

/// The vCPU a session over `f` runs: `failure.vcpu` when the trace ran several vCPUs and is
/// debugged from its failure point (`at_failure_point`); a trace of several vCPUs debugged
/// any other way is refused, as `vmrr replay` refuses its path.
///
/// # Errors
/// [`ReplayError::SeveralVcpus`], or a `failure.vcpu` that names no vCPU.
pub(super) fn running_vcpu(
    f: &vmrr_format::overview::TraceOverview,
    trace: &std::path::Path,
    at_failure_point: bool,
    path_asked: bool,
) -> Result<u32, ReplayError> {
    let vcpus = f.annotation("vmrr.vcpus").and_then(|v| v.parse::<u32>().ok()).unwrap_or(1);
    if vcpus <= 1 {
        return Ok(0);
    }
    if !at_failure_point {
        return Err(ReplayError::SeveralVcpus {
            trace: trace.display().to_string(),
            threads: format!("{vcpus} vCPUs"),
            path_asked: path_asked || f.failure_point().is_some(),
        });
    }
    match f.annotation("failure.vcpu") {
        None => Ok(0),
        Some(v) => v.parse::<u32>().ok().filter(|v| *v < vcpus).ok_or_else(|| {
            ReplayError::Unreplayable(format!(
                "annotation failure.vcpu = {v:?} names no vCPU of the trace's {vcpus}"
            ))
        }),
    }
}

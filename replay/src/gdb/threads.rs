//! Several vCPUs as gdb threads: thread `k + 1` is vCPU `k` (named "vCPU k"), listed in
//! that order, so gdb's own thread numbers are the same.
//!
//! A trace of several vCPUs is debugged at its failure point, where one vCPU runs: the one
//! that failed (the session's [`Session::running_vcpu`](crate::debugger::Session)). Every
//! stop is reported in its thread. The other threads can be looked at and written
//! (registers, memory through their own page tables) but never run:
//! - `continue` from any thread runs the failing vCPU (gdb then switches to its thread);
//!   the others stay as the failure point holds them, as under `set scheduler-locking on`.
//! - `stepi` of another thread, or a `continue` with scheduler locking that resumes only
//!   other threads, is refused: nothing moves, gdb shows that thread "stopped" and vmrr
//!   says why on gdb's console.
//! - `reverse-stepi` and `reverse-continue` move the failing vCPU back, whichever thread
//!   is selected (gdb's reverse packets name no thread unless scheduler locking is on);
//!   going back stops at the failure point, where every vCPU is as the snapshot holds it.
//!
//! When gdb connects, gdbstub reports the stop in the first thread (vCPU 0); the first
//! stop after a move is in the failing vCPU's thread, and gdb switches to it.
//!
//! gdb is told one architecture per connection, chosen from the failing vCPU's mode. A
//! thread in another mode (an AP still in its reset state, say) shows RIP as it holds it,
//! not as a linear address: `rip` 0xfff0 with `cs` 0xf000, its base 0xffff0000.

use gdbstub::common::{Signal, Tid};
use gdbstub::target::ext::base::multithread::{
    MultiThreadBase, MultiThreadResume, MultiThreadResumeOps, MultiThreadSchedulerLocking,
    MultiThreadSchedulerLockingOps, MultiThreadSingleStep, MultiThreadSingleStepOps,
};
use gdbstub::target::ext::base::reverse_exec::{ReverseCont, ReverseContOps, ReverseStep, ReverseStepOps};
use gdbstub::target::ext::thread_extra_info::{ThreadExtraInfo, ThreadExtraInfoOps};
use gdbstub::target::{TargetError, TargetResult};

use super::arch::VmrrRegs;
use super::target::{GdbTarget, Move, TargetFailed};
use super::tids::{ResumeActions, tid_of, vcpu_of};
use crate::debugger::DebugError;

fn fatal(e: DebugError) -> TargetError<TargetFailed> {
    TargetError::Fatal(TargetFailed(e))
}

impl GdbTarget {
    /// The thread of the vCPU that runs.
    pub(super) fn running_tid(&self) -> Tid {
        tid_of(self.session.running_vcpu())
    }

    /// Whether `tid` is the thread of the vCPU that runs (whose mode the connection
    /// describes: its program counter is linear).
    fn runs(&self, tid: Tid) -> bool {
        vcpu_of(tid) == self.session.running_vcpu()
    }

    /// `tid`'s vCPU; a thread gdb made up is a non-fatal error (not the session's end).
    fn vcpu(&self, tid: Tid) -> TargetResult<u32, Self> {
        let v = vcpu_of(tid);
        if v < self.session.vcpu_count() { Ok(v) } else { Err(TargetError::NonFatal) }
    }

    /// Moves nothing: `tid` stops, and the user is told why.
    fn refuse(&mut self, tid: Tid, what: &str) {
        let running = self.session.running_vcpu();
        let t = tid_of(running);
        self.pending = Some(Move::Refused {
            tid,
            why: format!(
                "vmrr: thread {} (vCPU {}) cannot {what}: at this failure point of {} vCPUs only the vCPU that failed runs, vCPU {running} (thread {t}); `thread {t}` to move it",
                tid.get(),
                vcpu_of(tid),
                self.session.vcpu_count(),
            ),
        });
    }
}

impl MultiThreadBase for GdbTarget {
    fn read_registers(&mut self, regs: &mut VmrrRegs, tid: Tid) -> TargetResult<(), Self> {
        let (layout, linear) = (self.layout, self.runs(tid));
        let r = self.session.on_vcpu(self.vcpu(tid)?, |s| super::target::read_regs(s, layout, linear));
        *regs = r.and_then(|r| r).map_err(fatal)?;
        Ok(())
    }

    fn write_registers(&mut self, regs: &VmrrRegs, tid: Tid) -> TargetResult<(), Self> {
        let (layout, linear) = (self.layout, self.runs(tid));
        self.session
            .on_vcpu(self.vcpu(tid)?, |s| super::target::write_regs(s, layout, regs, linear))
            .map_err(fatal)?
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8], tid: Tid) -> TargetResult<usize, Self> {
        let phys = self.phys;
        self.session
            .on_vcpu(self.vcpu(tid)?, |s| super::target::read_memory(s, phys, start, data))
            .map_err(fatal)?
    }

    fn write_addrs(&mut self, start: u64, data: &[u8], tid: Tid) -> TargetResult<(), Self> {
        let phys = self.phys;
        self.session
            .on_vcpu(self.vcpu(tid)?, |s| super::target::write_memory(s, phys, start, data))
            .map_err(fatal)?
    }

    fn list_active_threads(&mut self, thread_is_active: &mut dyn FnMut(Tid)) -> Result<(), Self::Error> {
        (0..self.session.vcpu_count()).for_each(|v| thread_is_active(tid_of(v)));
        Ok(())
    }

    #[inline(always)]
    fn support_resume(&mut self) -> Option<MultiThreadResumeOps<'_, Self>> {
        Some(self)
    }

    #[inline(always)]
    fn support_thread_extra_info(&mut self) -> Option<ThreadExtraInfoOps<'_, Self>> {
        Some(self)
    }
}

impl ThreadExtraInfo for GdbTarget {
    fn thread_extra_info(&self, tid: Tid, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let name = format!("vCPU {}", vcpu_of(tid));
        let n = name.len().min(buf.len());
        buf[..n].copy_from_slice(&name.as_bytes()[..n]);
        Ok(n)
    }
}

impl MultiThreadResume for GdbTarget {
    fn resume(&mut self) -> Result<(), Self::Error> {
        let a = std::mem::take(&mut self.resume);
        let running = self.running_tid();
        match a.stepped {
            Some(t) if t == running => self.pending = Some(Move::Step),
            Some(t) => self.refuse(t, "step"),
            None if !a.locked || a.continued.contains(&running) => self.pending = Some(Move::Continue),
            None => {
                let t = a.continued.first().copied().unwrap_or(running);
                self.refuse(t, "run alone (scheduler locking)");
            }
        }
        Ok(())
    }

    fn clear_resume_actions(&mut self) -> Result<(), Self::Error> {
        self.resume = ResumeActions::default();
        Ok(())
    }

    fn set_resume_action_continue(&mut self, tid: Tid, _signal: Option<Signal>) -> Result<(), Self::Error> {
        // A signal gdb passes back is not delivered (as with one vCPU).
        self.resume.continued.push(tid);
        Ok(())
    }

    #[inline(always)]
    fn support_single_step(&mut self) -> Option<MultiThreadSingleStepOps<'_, Self>> {
        Some(self)
    }

    #[inline(always)]
    fn support_reverse_step(&mut self) -> Option<ReverseStepOps<'_, Tid, Self>> {
        Some(self)
    }

    #[inline(always)]
    fn support_reverse_cont(&mut self) -> Option<ReverseContOps<'_, Tid, Self>> {
        Some(self)
    }

    #[inline(always)]
    fn support_scheduler_locking(&mut self) -> Option<MultiThreadSchedulerLockingOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadSingleStep for GdbTarget {
    fn set_resume_action_step(&mut self, tid: Tid, _signal: Option<Signal>) -> Result<(), Self::Error> {
        self.resume.stepped = Some(tid);
        Ok(())
    }
}

impl MultiThreadSchedulerLocking for GdbTarget {
    fn set_resume_action_scheduler_lock(&mut self) -> Result<(), Self::Error> {
        self.resume.locked = true;
        Ok(())
    }
}

impl ReverseStep<Tid> for GdbTarget {
    fn reverse_step(&mut self, _tid: Tid) -> Result<(), Self::Error> {
        // gdb names no thread for `reverse-stepi` unless scheduler locking is on (it sends
        // `Hc0`, "any thread", which reads as thread 1): the vCPU that runs steps back.
        self.pending = Some(Move::ReverseStep);
        Ok(())
    }
}

impl ReverseCont<Tid> for GdbTarget {
    fn reverse_cont(&mut self) -> Result<(), Self::Error> {
        self.pending = Some(Move::ReverseContinue);
        Ok(())
    }
}

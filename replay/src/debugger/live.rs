//! Leaving the recorded path: a debugger that writes registers or memory changes the
//! guest, so the trace no longer describes what it does next. From that write on the
//! session stops answering from the trace: the guest runs live, its own device models
//! answering its exits and raising its interrupts (as in a recorded run, recording
//! nothing). Going back (or `goto`) returns to the recorded path.

use kvm_bindings::{kvm_regs, kvm_sregs};
use vmrr_engine::machine::{AccessError, LiveEntry};

use super::stops::StopSet;
use super::{DebugError, Session, Stopped};

/// What a live run is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LiveGoal {
    /// One instruction.
    Step,
    /// The next breakpoint or watchpoint.
    Continue,
}

impl Session {
    /// Sets the vCPU's registers (and, when given, segment and control registers). The
    /// guest leaves the recorded path here.
    ///
    /// # Errors
    /// KVM refused the registers.
    pub fn write_regs(&mut self, regs: &kvm_regs, sregs: Option<&kvm_sregs>) -> Result<(), DebugError> {
        self.leave_path("registers");
        let m = self.replayer_mut().machine_mut();
        m.set_regs(regs)?;
        if let Some(s) = sregs {
            m.set_sregs(s)?;
        }
        Ok(())
    }

    /// Writes guest memory at linear address `addr`. The guest leaves the recorded path
    /// here.
    ///
    /// # Errors
    /// Part of the range is not mapped or not memory.
    pub fn write_memory(&mut self, addr: u64, data: &[u8]) -> Result<(), AccessError> {
        self.leave_path("memory");
        self.replayer_mut().machine_mut().write_linear(addr, data)
    }

    /// Writes guest-physical memory. The guest leaves the recorded path here.
    ///
    /// # Errors
    /// Part of the range is not memory.
    pub fn write_phys(&mut self, gpa: u64, data: &[u8]) -> Result<(), AccessError> {
        self.leave_path("memory");
        self.replayer_mut().machine_mut().write_phys(gpa, data)
    }

    fn leave_path(&mut self, what: &str) {
        if self.live.is_none() {
            self.notes.push(format!(
                "vmrr: writing {what} left the recorded path at {}: from here the guest runs live (its own devices answer, nothing comes from the trace); reverse execution and `monitor goto` return to the recorded path",
                self.pos
            ));
            self.live = Some(self.pos.clone());
            self.terminal = None;
        }
    }

    /// Runs the live guest toward `goal`.
    pub(super) fn live_forward(
        &mut self,
        goal: LiveGoal,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Stopped, DebugError> {
        let stops = std::sync::Arc::clone(&self.stops);
        let mut polls = 0u32;
        loop {
            polls += 1;
            if polls % 16 == 0 && interrupted() {
                return Ok(Stopped::Interrupted);
            }
            let on_breakpoint = stops.exec.contains(&self.machine().linear_pc()?);
            let stepped =
                goal == LiveGoal::Step || on_breakpoint || stops.watch_needs_steps(self.host_watches);
            let armed = stops.arm(stepped, self.host_watches);
            let accesses = if stepped && !stops.watch.is_empty() { self.live_accesses() } else { Vec::new() };
            self.armed = Some(armed.stops);
            let m = self.replayer_mut().machine_mut();
            m.set_debug_stops(armed.stops)?;
            let entry = m.live_entry()?;
            let hit = match m.exit().body {
                vmrr_format::Body::Debug(d) => vmrr_engine::machine::debug::DebugHit::of(d.dr6),
                _ => vmrr_engine::machine::debug::DebugHit::default(),
            };
            match entry {
                LiveEntry::Ended(outcome) => {
                    return Ok(Stopped::LiveEnded(format!(
                        "{} (status {})",
                        outcome.name(),
                        outcome.status()
                    )));
                }
                LiveEntry::Debug | LiveEntry::Exit => {
                    if matches!(entry, LiveEntry::Exit) {
                        self.replayer_mut().machine_mut().complete_pending_io()?;
                    }
                    let pc = self.machine().linear_pc()?;
                    let fired = fired_live(&stops, pc, hit, &armed, &accesses);
                    if let Some(f) = fired {
                        return Ok(f.stop());
                    }
                    if goal == LiveGoal::Step && (hit.step || matches!(entry, LiveEntry::Exit)) {
                        return Ok(Stopped::Step);
                    }
                }
            }
        }
    }

    fn live_accesses(&self) -> Vec<vmrr_engine::disasm::MemAccess> {
        let m = self.machine();
        let (Ok(regs), Ok(sregs), Ok(pc)) = (m.regs(), m.sregs(), m.linear_pc()) else { return Vec::new() };
        let mut bytes = [0u8; 15];
        let n = (1..=bytes.len()).rev().find(|&n| m.read_linear(pc, &mut bytes[..n]).is_ok()).unwrap_or(0);
        vmrr_engine::disasm::memory_accesses(&bytes[..n], regs.rip, &regs, &sregs).unwrap_or_default()
    }
}

fn fired_live(
    stops: &StopSet,
    pc: u64,
    hit: vmrr_engine::machine::debug::DebugHit,
    armed: &super::stops::Armed,
    accesses: &[vmrr_engine::disasm::MemAccess],
) -> Option<super::Fired> {
    stops.fired(pc, hit, armed, accesses)
}

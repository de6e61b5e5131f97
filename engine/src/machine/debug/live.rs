//! Running a replayed guest live: once a debugger has changed its registers or memory the
//! trace no longer applies, so the machine's own devices answer its exits and raise its
//! interrupts, one entry at a time, as in a recorded run (nothing is recorded).

use crate::machine::Machine;
use crate::machine::outcome::Outcome;
use crate::machine::run::Handled;
use crate::machine::run_error::RunError;
use crate::machine::watchdog::Flags;

/// What one live entry ended with.
#[derive(Debug)]
pub enum LiveEntry {
    /// A debug stop (a single step, or a hardware breakpoint or watchpoint).
    Debug,
    /// An exit the devices handled; the guest goes on.
    Exit,
    /// The guest's run is over (it exited, failed, or halted with nothing to wake it).
    Ended(Outcome),
}

impl Machine {
    /// Enters the guest once with its devices answering: a guest halted at the previous
    /// exit first waits for its timer, a pending interrupt is injected when the vCPU can
    /// take it, then the exit is handled as the run loop handles it.
    ///
    /// # Errors
    /// KVM failures.
    pub fn live_entry(&mut self) -> Result<LiveEntry, RunError> {
        if self.live_halted {
            if let Some(o) = self.wait_in_hlt(&Flags::default())? {
                return Ok(LiveEntry::Ended(o));
            }
            self.live_halted = false;
        }
        self.deliver_lines()?;
        self.inject()?;
        loop {
            match self.handle_next_exit()? {
                None => continue,
                Some(Handled::Debug) => return Ok(LiveEntry::Debug),
                Some(Handled::Exit { halted, ending }) => {
                    self.cpu.count_exit();
                    if let Some(e) = ending {
                        return Ok(LiveEntry::Ended(self.ending_outcome(e)));
                    }
                    if let Some(stop) = self.bus().stop_request() {
                        return Ok(LiveEntry::Ended(Outcome::from(stop)));
                    }
                    self.live_halted = halted;
                    self.bus().tick_due();
                    return Ok(LiveEntry::Exit);
                }
            }
        }
    }
}

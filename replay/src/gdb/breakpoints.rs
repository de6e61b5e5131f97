//! Code breakpoints as gdb inserted them. gdb inserts software (`Z0`) and hardware (`Z1`)
//! breakpoints; vmrr keeps both the same way (a debug register, or RIP compared while
//! single-stepping: writing `int3` would change the replayed memory, and on some hosts
//! `int3` does not exit at all), but reports a stop as the kind gdb inserted, and removes
//! the session's breakpoint only once neither kind holds the address.

use std::collections::BTreeSet;

use crate::debugger::Session;

/// How gdb inserted a breakpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Inserted {
    /// `Z0`.
    Software,
    /// `Z1`.
    Hardware,
}

/// The addresses gdb holds breakpoints at, per kind.
#[derive(Debug, Default)]
pub(super) struct CodeBreakpoints {
    software: BTreeSet<u64>,
    hardware: BTreeSet<u64>,
}

impl CodeBreakpoints {
    fn set(&mut self, how: Inserted) -> &mut BTreeSet<u64> {
        match how {
            Inserted::Software => &mut self.software,
            Inserted::Hardware => &mut self.hardware,
        }
    }

    /// Sets a breakpoint at `addr` in `session`; false when the session cannot hold one.
    pub(super) fn insert(&mut self, session: &mut Session, addr: u64, how: Inserted) -> bool {
        let ok = session.add_breakpoint(addr);
        if ok {
            self.set(how).insert(addr);
        }
        ok
    }

    /// Removes gdb's breakpoint of kind `how` at `addr` (the session's, unless the other
    /// kind still holds the address); false when gdb had none there.
    pub(super) fn remove(&mut self, session: &mut Session, addr: u64, how: Inserted) -> bool {
        let had = self.set(how).remove(&addr);
        if !self.software.contains(&addr) && !self.hardware.contains(&addr) {
            session.remove_breakpoint(addr);
        }
        had
    }

    /// True when gdb inserted a software breakpoint at `addr` (a stop there is reported as
    /// one).
    pub(super) fn is_software(&self, addr: u64) -> bool {
        self.software.contains(&addr)
    }

    /// Forgets every breakpoint (a new connection starts without stops).
    pub(super) fn clear(&mut self) {
        self.software.clear();
        self.hardware.clear();
    }
}

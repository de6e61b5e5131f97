//! The debugger's breakpoints and watchpoints, and how each kind of run finds them.
//!
//! A breakpoint at X fires at every instruction boundary where RIP is X (before the
//! instruction runs); a watchpoint fires at the boundary after an instruction that
//! accessed its range. Runs that single-step compare RIP at each boundary and, for
//! watchpoints, either read the debug registers' report or decode the instruction's memory
//! accesses before it runs. Runs that do not single-step use the debug registers
//! (`KVM_SET_GUEST_DEBUG`): four of them, so at most four breakpoints and hardware
//! watchpoints together. No `int3` is ever written into guest memory: the replayed memory
//! stays what the recording had. Both kinds of run find the same boundaries, so a point
//! named by its n-th hit (see [`super::position`]) is the same point either way.

use std::collections::BTreeSet;

use vmrr_engine::disasm::MemAccess;
use vmrr_engine::machine::debug::{DebugHit, DebugStops, HW_STOPS, HwStop, Watch};

/// What a watchpoint watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WatchKind {
    /// Writes.
    Write,
    /// Reads.
    Read,
    /// Reads and writes.
    Access,
}

/// One watchpoint: `len` bytes at linear address `addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WatchPoint {
    /// First byte watched (a linear address).
    pub addr: u64,
    /// Bytes watched.
    pub len: u64,
    /// Which accesses fire it.
    pub kind: WatchKind,
}

impl WatchPoint {
    /// Whether `a` touches this watchpoint's range in a way it watches.
    fn fires_on(&self, a: &MemAccess) -> bool {
        let overlaps =
            a.linear < self.addr.saturating_add(self.len) && self.addr < a.linear.saturating_add(a.size);
        overlaps
            && match self.kind {
                WatchKind::Write => a.write,
                WatchKind::Read => a.read,
                WatchKind::Access => a.read || a.write,
            }
    }

    /// The debug-register form, when one register can watch exactly this range (1, 2,
    /// 4 or 8 bytes, aligned). Reads alone cannot be watched by x86 debug registers:
    /// they are watched as accesses and filtered by decoding.
    fn hw(&self) -> Option<HwStop> {
        let len = u8::try_from(self.len).ok().filter(|l| matches!(l, 1 | 2 | 4 | 8))?;
        if self.addr % self.len != 0 || self.kind == WatchKind::Read {
            return None;
        }
        let watch = match self.kind {
            WatchKind::Write => Watch::Write { len },
            WatchKind::Read | WatchKind::Access => Watch::Access { len },
        };
        Some(HwStop { addr: self.addr, watch })
    }
}

/// What fired at a boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fired {
    /// A breakpoint at this address.
    Breakpoint(u64),
    /// A watchpoint, by the access's address.
    Watch(WatchPoint, u64),
}

/// The breakpoints and watchpoints set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopSet {
    /// Breakpoint addresses (linear).
    pub exec: BTreeSet<u64>,
    /// Watchpoints.
    pub watch: Vec<WatchPoint>,
}

/// Where each armed debug register's stop came from.
#[derive(Debug, Clone, Copy, Default)]
pub struct Armed {
    /// The registers' stops.
    pub stops: DebugStops,
    /// For each register, the watchpoint it holds (breakpoints need no mapping back: RIP
    /// says which one fired).
    watch: [Option<WatchPoint>; HW_STOPS],
}

impl StopSet {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.exec.is_empty() && self.watch.is_empty()
    }

    /// Whether the watchpoints need single-stepping: this host's KVM does not stop for
    /// hardware watchpoints (see [`vmrr_engine::machine::debug::host_watches_ring0`]), or
    /// one of them has no debug-register form.
    pub fn watch_needs_steps(&self, host_watches: bool) -> bool {
        !self.watch.is_empty() && (!host_watches || self.watch.iter().any(|w| w.hw().is_none()))
    }

    /// Whether one more breakpoint or watchpoint fits the debug registers a run without
    /// single-stepping needs.
    pub fn has_room_for(&self, watch: Option<&WatchPoint>, host_watches: bool) -> bool {
        let hw_watches =
            if host_watches { self.watch.iter().filter(|w| w.hw().is_some()).count() } else { 0 };
        let new = match watch {
            None => 1,
            Some(w) => usize::from(host_watches && w.hw().is_some()),
        };
        self.exec.len() + hw_watches + new <= HW_STOPS
    }

    /// The debug registers for a run: breakpoints (only when not single-stepping: a
    /// stepped run compares RIP) and the watchpoints that have a register form (when the
    /// host stops for them).
    pub fn arm(&self, stepping: bool, host_watches: bool) -> Armed {
        let mut armed = Armed {
            stops: DebugStops { single_step: stepping, ..DebugStops::default() },
            ..Armed::default()
        };
        let mut slot = 0;
        if !stepping {
            for &addr in self.exec.iter().take(HW_STOPS) {
                armed.stops.hw[slot] = Some(HwStop { addr, watch: Watch::Execute });
                slot += 1;
            }
        }
        if host_watches {
            for w in &self.watch {
                if slot >= HW_STOPS {
                    break;
                }
                if let Some(hw) = w.hw() {
                    armed.stops.hw[slot] = Some(hw);
                    armed.watch[slot] = Some(*w);
                    slot += 1;
                }
            }
        }
        armed
    }

    /// What fired at a boundary reached with RIP `rip`: a breakpoint there, a watchpoint
    /// whose debug register `hit` reports (`armed`), or one that the instruction just
    /// executed (`accesses`, decoded before it ran) touched.
    pub fn fired(&self, rip: u64, hit: DebugHit, armed: &Armed, accesses: &[MemAccess]) -> Option<Fired> {
        for (n, w) in armed.watch.iter().enumerate() {
            if let Some(w) = w.filter(|_| hit.fired(n)) {
                // A read-only watchpoint is armed as an access one: keep it to reads.
                let addr = accesses.iter().find(|a| w.fires_on(a)).map_or(w.addr, |a| a.linear.max(w.addr));
                if w.kind != WatchKind::Read || accesses.iter().any(|a| w.fires_on(a)) {
                    return Some(Fired::Watch(w, addr));
                }
            }
        }
        for w in &self.watch {
            if let Some(a) = accesses.iter().find(|a| w.fires_on(a)) {
                return Some(Fired::Watch(*w, a.linear.max(w.addr)));
            }
        }
        self.exec.contains(&rip).then_some(Fired::Breakpoint(rip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(linear: u64, size: u64, write: bool) -> MemAccess {
        MemAccess { linear, size, read: !write, write }
    }

    #[test]
    fn watchpoints_fire_on_overlapping_accesses_of_their_kind() {
        let w = WatchPoint { addr: 0x2000, len: 8, kind: WatchKind::Write };
        assert!(w.fires_on(&access(0x2004, 4, true)));
        assert!(w.fires_on(&access(0x1ffc, 8, true)));
        assert!(!w.fires_on(&access(0x2008, 8, true)));
        assert!(!w.fires_on(&access(0x2000, 8, false)));
        let set = StopSet { exec: BTreeSet::from([0x1000]), watch: vec![w] };
        let none = Armed::default();
        assert_eq!(set.fired(0x1000, DebugHit::default(), &none, &[]), Some(Fired::Breakpoint(0x1000)));
        assert_eq!(
            set.fired(0x1004, DebugHit::default(), &none, &[access(0x2002, 2, true)]),
            Some(Fired::Watch(w, 0x2002))
        );
        assert_eq!(set.fired(0x1004, DebugHit::default(), &none, &[]), None);
    }

    #[test]
    fn arming_fits_four_registers_and_steps_compare_rip() {
        let w = WatchPoint { addr: 0x2000, len: 8, kind: WatchKind::Write };
        let set = StopSet { exec: BTreeSet::from([0x10, 0x20, 0x30]), watch: vec![w] };
        assert!(!set.has_room_for(None, true));
        assert!(set.has_room_for(None, false));
        assert!(set.has_room_for(Some(&w), false));
        let a = set.arm(false, true);
        assert_eq!(a.stops.hw.iter().flatten().count(), 4);
        let stepped = set.arm(true, true);
        assert_eq!(stepped.stops.hw.iter().flatten().count(), 1);
        assert!(stepped.stops.single_step);
        assert!(!set.watch_needs_steps(true));
        assert!(set.watch_needs_steps(false));
        let odd = StopSet {
            watch: vec![WatchPoint { addr: 0x2001, len: 3, kind: WatchKind::Write }],
            ..StopSet::default()
        };
        assert!(odd.watch_needs_steps(true));
    }
}

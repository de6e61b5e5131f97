//! Exit instants rebuilt from timing payloads, one time axis per vCPU (`docs/FORMAT.md`
//! §5.4): each timed exit lies `prev_handler + guest` after the vCPU's previous one, and
//! a vCPU's axis starts (0) at its first entry into the guest. Only exit records are on
//! the axis: a timing payload on an event is read and ignored.

use std::collections::BTreeMap;

use crate::record::Record;
use crate::timing::Timing;

/// vCPUs whose axes are followed; exits of further vCPUs are counted but not placed.
pub const MAX_AXES: usize = 4096;

/// One timed exit, placed on its vCPU's axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    /// When the exit happened (ns on the vCPU's axis).
    pub at_ns: u64,
    /// Time in `KVM_RUN` before it.
    pub guest_ns: u64,
    /// Handler time of the vCPU's previous exit, when measured.
    pub prev_handler_ns: Option<u64>,
    /// When that handler ended (the re-entry), when measured.
    pub prev_entry_ns: Option<u64>,
}

/// The time axes of a trace's vCPUs.
#[derive(Debug, Clone, Default)]
pub struct Axes {
    last_exit: BTreeMap<u32, u64>,
}

impl Axes {
    /// Places the next timed exit of `vcpu`, or `None` past [`MAX_AXES`] vCPUs.
    #[inline]
    pub fn place(&mut self, vcpu: u32, t: &Timing) -> Option<Placed> {
        if !self.last_exit.contains_key(&vcpu) && self.last_exit.len() >= MAX_AXES {
            return None;
        }
        let last = self.last_exit.entry(vcpu).or_insert(0);
        let prev_handler_ns = t.prev_handler_ns();
        let prev_entry_ns = prev_handler_ns.map(|h| last.saturating_add(h));
        let guest_ns = t.guest_ns();
        let at_ns = prev_entry_ns.unwrap_or(*last).saturating_add(guest_ns);
        *last = at_ns;
        Some(Placed { at_ns, guest_ns, prev_handler_ns, prev_entry_ns })
    }

    /// Places `rec` when it is a timed exit record; an event (a payload on one is read and
    /// ignored) or an untimed exit is not on the axis.
    #[inline]
    pub fn place_record(&mut self, rec: &Record<'_>) -> Option<Placed> {
        match rec.timing {
            Some(t) if rec.body.is_exit() => self.place(rec.vcpu, &t),
            _ => None,
        }
    }

    /// The last exit instant of `vcpu`, if it had one.
    pub fn last(&self, vcpu: u32) -> Option<u64> {
        self.last_exit.get(&vcpu).copied()
    }

    /// The latest exit instant over every vCPU (the length of the run as far as timed).
    pub fn end(&self) -> u64 {
        self.last_exit.values().copied().max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timing::time_code;

    #[test]
    fn exits_follow_handler_then_guest_time() {
        let mut a = Axes::default();
        let p = a.place(0, &Timing::from_ns(None, 100)).unwrap();
        assert_eq!((p.at_ns, p.prev_entry_ns), (100, None));
        let p = a.place(0, &Timing::from_ns(Some(20), 50)).unwrap();
        assert_eq!((p.at_ns, p.prev_entry_ns, p.prev_handler_ns), (170, Some(120), Some(20)));
        // Without a measured handler, the guest time covers the whole gap.
        let p = a
            .place(0, &Timing { prev_handler: crate::timing::TIME_CODE_NONE, guest: time_code(30) })
            .unwrap();
        assert_eq!(p.at_ns, 200);
        assert_eq!(a.place(1, &Timing::from_ns(None, 7)).unwrap().at_ns, 7);
        assert_eq!(a.end(), 200);
    }

    #[test]
    fn only_exit_records_are_on_the_axis() {
        use crate::record::{Body, Interrupt};
        let t = Timing::from_ns(None, 100);
        let mut a = Axes::default();
        let event = Record::new(0, 0, Body::Interrupt(Interrupt { vector: 32, source: 0 })).with_timing(t);
        assert_eq!(a.place_record(&event), None);
        assert_eq!(a.last(0), None);
        assert_eq!(a.place_record(&Record::new(1, 0, Body::Hlt)), None);
        assert_eq!(a.place_record(&Record::new(2, 0, Body::Hlt).with_timing(t)).map(|p| p.at_ns), Some(100));
    }
}

//! The recorder's per-exit clock: when the VMM entered the guest and when `KVM_RUN`
//! returned, turned into each exit record's timing payload (`docs/FORMAT.md` §5.4).
//!
//! Instants are nanoseconds on `CLOCK_MONOTONIC` (`std::time::Instant`) since the vCPU's
//! first entry. The handler time of an exit is only known at the next entry, so it goes
//! into the *next* exit's payload: nothing is held back, and a crash loses only the last
//! exit's handler time. Each `guest` time code is taken against the previous exit's
//! instant *as a reader rebuilds it* from the codes, so rounding never accumulates: every
//! rebuilt exit instant is within half a code step (at most 0.78% of its guest time) of the
//! truth.

use std::time::Instant;

use vmrr_format::Timing;
use vmrr_format::timing::time_code;

/// Per-exit timing state of one vCPU.
#[derive(Debug)]
pub struct ExitClock {
    origin: Instant,
    /// True once the vCPU entered the guest (the origin is then its first entry).
    entered_once: bool,
    /// The first entry since the last recorded exit.
    entry: Option<u64>,
    /// When `KVM_RUN` last returned with an exit (`exited`), not yet recorded.
    exit: Option<u64>,
    /// The previous recorded exit: when it happened, and whether that came from `exited`.
    prev_exit: Option<(u64, bool)>,
    /// The previous exit's instant as a reader rebuilds it from the time codes.
    prev_exit_rebuilt: u64,
}

impl Default for ExitClock {
    fn default() -> Self {
        Self::new()
    }
}

impl ExitClock {
    /// A clock whose origin is now (moved to the first [`Self::entering`]).
    pub fn new() -> Self {
        ExitClock {
            origin: Instant::now(),
            entered_once: false,
            entry: None,
            exit: None,
            prev_exit: None,
            prev_exit_rebuilt: 0,
        }
    }

    #[inline]
    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The VMM is about to call `KVM_RUN`. Only the first call after an exit counts.
    #[inline]
    pub fn entering(&mut self) {
        if self.entry.is_some() {
            // A re-entry after `KVM_RUN` returned without an exit (a signal): the handler
            // ended at the first entry.
            return;
        }
        if !self.entered_once && self.prev_exit.is_none() {
            self.origin = Instant::now();
            self.entered_once = true;
            self.entry = Some(0);
        } else {
            self.entry = Some(self.now());
        }
    }

    /// `KVM_RUN` returned with an exit.
    #[inline]
    pub fn exited(&mut self) {
        self.exit = Some(self.now());
    }

    /// The payload of the exit being recorded now.
    #[inline]
    pub fn take(&mut self) -> Timing {
        let (exit, precise) = match self.exit.take() {
            Some(t) => (t, true),
            None => (self.now(), false),
        };
        let entry = self.entry.take();
        let handler = match (self.prev_exit, entry) {
            (Some((prev, true)), Some(entry)) => Some(entry.saturating_sub(prev)),
            _ => None,
        };
        let mut timing = Timing::from_ns(handler, 0);
        // Where a reader puts the end of the previous handler (or the previous exit, or
        // the origin); the guest time is measured from there.
        let base = match (self.prev_exit, timing.prev_handler_ns()) {
            (Some(_), Some(h)) => self.prev_exit_rebuilt.saturating_add(h),
            (Some(_), None) => self.prev_exit_rebuilt,
            (None, _) => 0,
        };
        timing.guest = time_code(exit.saturating_sub(base));
        self.prev_exit_rebuilt = base.saturating_add(timing.guest_ns());
        self.prev_exit = Some((exit, precise));
        timing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmrr_format::profile::Axes;

    #[test]
    fn payloads_rebuild_the_exit_instants_without_drift() {
        let mut c = ExitClock::new();
        let mut axes = Axes::default();
        let mut truth = Vec::new();
        for i in 0..2000u64 {
            c.entering();
            // A guest stretch, then the exit; a handler that varies.
            std::hint::black_box((0..(i % 7) * 50).sum::<u64>());
            c.exited();
            truth.push(c.exit.unwrap());
            std::hint::black_box((0..(i % 5) * 30).sum::<u64>());
            let t = c.take();
            assert_eq!(t.prev_handler_ns().is_some(), i > 0);
            let placed = axes.place(0, &t).unwrap();
            let err = placed.at_ns.abs_diff(*truth.last().unwrap());
            assert!(err as f64 <= placed.guest_ns as f64 / 128.0 + 1.0, "exit {i}: off by {err} ns");
        }
    }

    #[test]
    fn without_calls_the_handler_is_not_measured() {
        let mut c = ExitClock::new();
        let a = c.take();
        let b = c.take();
        assert_eq!((a.prev_handler_ns(), b.prev_handler_ns()), (None, None));
        // A re-entry without an exit keeps the first entry.
        c.entering();
        c.exited();
        let _ = c.take();
        c.entering();
        let first = c.entry;
        c.entering();
        assert_eq!(c.entry, first);
    }
}

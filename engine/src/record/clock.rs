//! The recorder's per-exit clock: when the VMM entered the guest and when `KVM_RUN`
//! returned, turned into each exit record's timing payload (`docs/FORMAT.md` §5.4).
//!
//! Instants are nanoseconds since the vCPU's first entry, read from the time-stamp counter
//! where the CPU says it is invariant (scaled by a rate calibrated once per process against
//! `CLOCK_MONOTONIC`), from `CLOCK_MONOTONIC` otherwise: [`TimeSource`]. The counter is read
//! in about a third of a `clock_gettime`, and two reads per exit are most of timing's cost. The handler time of an exit is only known at the next entry, so it goes
//! into the *next* exit's payload: nothing is held back, and a crash loses only the last
//! exit's handler time. Each `guest` time code is taken against the previous exit's
//! instant *as a reader rebuilds it* from the codes, so rounding never accumulates: every
//! rebuilt exit instant is within half a code step of its guest time (0.78%) of the truth,
//! or, when the guest ran for less than the error carried from the exit before plus the
//! rounding of the handler time between them (a reader cannot place an exit before the
//! previous handler ended), within that.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use vmrr_format::Timing;
use vmrr_format::timing::time_code;

use crate::sys::tsc;

/// How long the counter is calibrated against `CLOCK_MONOTONIC` (once per process).
const CALIBRATION: Duration = Duration::from_millis(2);

/// Where the per-exit clock reads time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TimeSource {
    /// The invariant time-stamp counter at this rate.
    Tsc {
        /// Counter ticks per second, as calibrated.
        hz: f64,
    },
    /// `CLOCK_MONOTONIC` (the counter is not invariant here).
    Monotonic,
}

impl TimeSource {
    /// This host's source: calibrated the first time it is asked.
    pub fn host() -> Self {
        calibration().map_or(TimeSource::Monotonic, |c| TimeSource::Tsc { hz: c.hz })
    }

    /// How a trace names it (the `host.timing_clock` annotation).
    pub fn describe(&self) -> String {
        match self {
            TimeSource::Tsc { hz } => format!(
                "tsc {:.3} MHz (invariant; rate calibrated against CLOCK_MONOTONIC over {} ms)",
                hz / 1e6,
                CALIBRATION.as_millis()
            ),
            TimeSource::Monotonic => "CLOCK_MONOTONIC".into(),
        }
    }
}

/// The counter's rate: nanoseconds per tick as a 32.32 fixed-point factor.
#[derive(Debug, Clone, Copy)]
struct Calibration {
    ns_per_tick_q32: u64,
    hz: f64,
}

fn calibration() -> Option<Calibration> {
    static CAL: OnceLock<Option<Calibration>> = OnceLock::new();
    *CAL.get_or_init(|| {
        if !tsc::invariant() {
            return None;
        }
        let (t0, c0) = (Instant::now(), tsc::ticks());
        while t0.elapsed() < CALIBRATION {
            std::hint::spin_loop();
        }
        let (ns, ticks) = (t0.elapsed().as_nanos(), tsc::ticks().wrapping_sub(c0));
        if ticks == 0 {
            return None;
        }
        let q = (ns << 32) / u128::from(ticks);
        Some(Calibration { ns_per_tick_q32: u64::try_from(q).ok()?, hz: ticks as f64 * 1e9 / ns as f64 })
    })
}

/// A point in time on the source.
#[derive(Debug, Clone, Copy)]
enum Origin {
    Tsc { ticks: u64, ns_per_tick_q32: u64 },
    Monotonic(Instant),
}

impl Origin {
    fn now() -> Self {
        match calibration() {
            Some(c) => Origin::Tsc { ticks: tsc::ticks(), ns_per_tick_q32: c.ns_per_tick_q32 },
            None => Origin::Monotonic(Instant::now()),
        }
    }

    /// Nanoseconds since this origin.
    #[inline]
    fn elapsed_ns(&self) -> u64 {
        match *self {
            Origin::Tsc { ticks, ns_per_tick_q32 } => {
                let d = u128::from(tsc::ticks().wrapping_sub(ticks));
                u64::try_from((d * u128::from(ns_per_tick_q32)) >> 32).unwrap_or(u64::MAX)
            }
            Origin::Monotonic(t) => u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX),
        }
    }
}

/// Per-exit timing state of one vCPU.
#[derive(Debug)]
pub struct ExitClock {
    origin: Origin,
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
    /// The latest instant read: instants never go back, even when the thread moves to a
    /// CPU whose counter is a few nanoseconds behind.
    latest: u64,
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
            origin: Origin::now(),
            entered_once: false,
            entry: None,
            exit: None,
            prev_exit: None,
            prev_exit_rebuilt: 0,
            latest: 0,
        }
    }

    #[inline]
    fn now(&mut self) -> u64 {
        self.latest = self.latest.max(self.origin.elapsed_ns());
        self.latest
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
            self.origin = Origin::now();
            self.latest = 0;
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
    use vmrr_format::axis::Axes;

    #[test]
    fn payloads_rebuild_the_exit_instants_without_drift() {
        let mut c = ExitClock::new();
        let mut axes = Axes::default();
        let mut truth = Vec::new();
        let mut prev_err = 0.0f64;
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
            // Half a step of the guest time's code; or, when the guest ran for less than
            // the error carried from the exit before plus the handler time's rounding (a
            // reader cannot place an exit before the previous handler ended), that.
            let handler = t.prev_handler_ns().unwrap_or(0) as f64;
            let bound = (placed.guest_ns as f64 / 128.0).max(prev_err + handler / 128.0) + 1.0;
            assert!(err as f64 <= bound, "exit {i}: off by {err} ns (bound {bound})");
            prev_err = err as f64;
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

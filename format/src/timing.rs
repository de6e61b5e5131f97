//! Per-exit timing: the optional `FLAG_TIMING` payload and the time code it stores
//! durations in (`docs/FORMAT.md` §5.4).
//!
//! A timed exit record carries two durations, both measured on the recording host's
//! `CLOCK_MONOTONIC`:
//!
//! - `prev_handler`: how long the VMM took to handle the **previous** exit of the same vCPU
//!   (from `KVM_RUN` returning with it to the next `KVM_RUN` call). Handler time is only
//!   known when the VMM re-enters the guest, so it travels in the next exit's record:
//!   records are written when they happen, never held back, and a crash loses nothing more
//!   than it did without timing (only the last exit's handler time, which no record holds).
//! - `guest`: how long the vCPU then spent in `KVM_RUN` before this exit (guest execution
//!   plus KVM's own entry and exit work).
//!
//! Durations are stored as 16-bit *time codes*: exact below 128 ns, then 7 significant bits
//! (a step of 1/64 to 1/128 of the value, rounding to nearest: at most 0.78% off). The
//! scale is what lets zstd compress the payload: a nanosecond-exact duration has several
//! bits of pure jitter that no compressor can remove, a time code keeps only the bits a
//! profile needs. A histogram over time codes is therefore exact for the stored values
//! (`vmrr profile`); [`crate::axis`] rebuilds the exits' instants from them.

/// Record flag: a [`Timing`] payload (8 bytes) follows the register sample, if any.
pub const FLAG_TIMING: u32 = 1 << 1;
/// Size of the timing payload.
pub const TIMING_PAYLOAD_SIZE: usize = 8;
/// The time code meaning "not measured" (only valid for `prev_handler`).
pub const TIME_CODE_NONE: u16 = 0xffff;
/// The largest valid time code: 127 x 2^57 ns. Durations of 127.5 x 2^57 ns or more
/// saturate to it (FORMAT.md §5.4).
pub const MAX_TIME_CODE: u16 = 3775;
/// Durations below this are stored exactly.
const EXACT_BELOW: u64 = 128;
/// Mantissa bits below the leading one.
const MANTISSA_BITS: u32 = 6;

/// The timing payload of one exit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Time code of the handler time of this vCPU's previous exit, or [`TIME_CODE_NONE`]
    /// (the first exit, or the VMM did not say when it re-entered).
    pub prev_handler: u16,
    /// Time code of the time spent in `KVM_RUN` before this exit: since the re-entry that
    /// ended the previous handler, or, when `prev_handler` is [`TIME_CODE_NONE`], since the
    /// previous exit (or the vCPU's time origin for its first exit).
    pub guest: u16,
}

impl Timing {
    /// A payload from durations in nanoseconds (rounded to time codes).
    pub fn from_ns(prev_handler_ns: Option<u64>, guest_ns: u64) -> Self {
        Timing { prev_handler: prev_handler_ns.map_or(TIME_CODE_NONE, time_code), guest: time_code(guest_ns) }
    }

    /// True when both codes are valid (`prev_handler` may be [`TIME_CODE_NONE`]).
    pub fn is_valid(&self) -> bool {
        (self.prev_handler <= MAX_TIME_CODE || self.prev_handler == TIME_CODE_NONE)
            && self.guest <= MAX_TIME_CODE
    }

    /// The previous exit's handler time in nanoseconds, when measured.
    pub fn prev_handler_ns(&self) -> Option<u64> {
        time_from_code(self.prev_handler)
    }

    /// The time in `KVM_RUN` before this exit, in nanoseconds.
    pub fn guest_ns(&self) -> u64 {
        time_from_code(self.guest).unwrap_or(0)
    }
}

/// The time code nearest to `ns` (ties round up).
#[inline]
pub fn time_code(ns: u64) -> u16 {
    if ns < EXACT_BELOW {
        // `ns` < 128 fits.
        return u16::try_from(ns).unwrap_or(0);
    }
    // ns lies in [2^(e+6), 2^(e+7)), e >= 1: keep 7 significant bits, round to nearest.
    let e = 63 - ns.leading_zeros() - MANTISSA_BITS;
    let half = 1u64 << (e - 1);
    let mut m = (ns >> e) + u64::from(ns & ((1 << e) - 1) >= half);
    let mut e = e;
    if m == 128 {
        m = 64;
        e += 1;
    }
    if e > 57 {
        return MAX_TIME_CODE;
    }
    // e <= 57 and 64 <= m < 128: the code is at most (58 << 6) | 63 = 3775.
    u16::try_from(((u64::from(e) + 1) << MANTISSA_BITS) | (m - 64)).unwrap_or(MAX_TIME_CODE)
}

/// The duration a time code stands for, or `None` for [`TIME_CODE_NONE`] and invalid codes.
#[inline]
pub fn time_from_code(code: u16) -> Option<u64> {
    if code > MAX_TIME_CODE {
        return None;
    }
    let c = u64::from(code);
    if c < EXACT_BELOW {
        return Some(c);
    }
    let e = (c >> MANTISSA_BITS) - 1;
    let m = 64 | (c & 63);
    Some(m << e)
}

/// The range of durations `[low, high]` that round to `code` (for histogram bounds).
pub fn code_bounds(code: u16) -> Option<(u64, u64)> {
    let v = time_from_code(code)?;
    if u64::from(code) < EXACT_BELOW {
        return Some((v, v));
    }
    let c = u64::from(code);
    let e = (c >> MANTISSA_BITS) - 1;
    let half = 1u64 << (e - 1);
    // Below the lowest mantissa of an exponent the neighbour is half a step away.
    let below = if c & 63 == 0 { half / 2 } else { half };
    let high = if code == MAX_TIME_CODE { u64::MAX } else { v + half - 1 };
    Some((v - below, high))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_values_are_exact_and_codes_are_monotonic() {
        for ns in 0..128u64 {
            assert_eq!(time_from_code(time_code(ns)), Some(ns));
        }
        let mut last = 0;
        for code in 0..=MAX_TIME_CODE {
            let v = time_from_code(code).unwrap();
            assert!(code == 0 || v > last, "code {code}: {v} after {last}");
            last = v;
        }
        assert_eq!(time_from_code(MAX_TIME_CODE + 1), None);
        // The bounds of consecutive codes tile the u64 range, and round back to their code.
        let mut next = 0u64;
        for code in 0..=MAX_TIME_CODE {
            let (lo, hi) = code_bounds(code).unwrap();
            assert_eq!(lo, next, "code {code}");
            assert_eq!((time_code(lo), time_code(hi)), (code, code), "code {code}: [{lo}, {hi}]");
            next = hi.wrapping_add(1);
        }
        assert_eq!(next, 0, "the last code ends at u64::MAX");
        assert_eq!(time_from_code(TIME_CODE_NONE), None);
    }

    #[test]
    fn rounding_error_is_below_one_part_in_128() {
        let mut ns = 100u64;
        while ns < u64::MAX / 8 {
            for v in [ns, ns + 1, ns * 3 / 2, ns + ns / 128] {
                let back = time_from_code(time_code(v)).unwrap();
                let err = back.abs_diff(v) as f64 / v as f64;
                assert!(err <= 1.0 / 128.0, "{v} -> {back} ({err})");
                let (lo, hi) = code_bounds(time_code(v)).unwrap();
                assert!(lo <= v && v <= hi, "{v} outside [{lo}, {hi}]");
                assert!(code_bounds(time_code(v) + 1).is_none_or(|(l, _)| l == hi + 1));
            }
            ns = ns * 7 / 5 + 1;
        }
        assert_eq!(time_code(u64::MAX), MAX_TIME_CODE);
        assert_eq!(time_code(128), 128);
        assert_eq!(time_code(129), 129);
        assert_eq!(time_code(130), 129); // 129 lies halfway between 128 and 130: up
        assert_eq!(time_from_code(time_code(255)), Some(256));
    }

    #[test]
    fn saturation_starts_at_127_and_a_half_times_2_to_the_57() {
        let unit = 1u64 << 57;
        assert_eq!(time_from_code(MAX_TIME_CODE), Some(127 * unit));
        // Below 127.5 x 2^57 the nearest code is exact rounding; from there on, saturation.
        assert_eq!(time_code(127 * unit + unit / 2 - 1), MAX_TIME_CODE);
        assert_eq!(time_code(126 * unit + unit / 2 - 1), MAX_TIME_CODE - 1);
        assert_eq!(time_code(126 * unit + unit / 2), MAX_TIME_CODE, "ties round up");
        for v in [127 * unit + unit / 2, u64::MAX - 1, u64::MAX] {
            assert_eq!(time_code(v), MAX_TIME_CODE, "{v:#x} saturates");
        }
    }
}

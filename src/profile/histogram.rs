//! A latency histogram with one bucket per time code: log-linear buckets (as in HDR
//! histograms) whose boundaries are exactly the trace's own rounding, so percentiles of the
//! stored durations are exact, in bounded memory (at most 59 blocks of 64 counters, 30 KiB,
//! allocated only for the magnitudes that occur: a few KiB for a typical handler).

use vmrr_format::timing::{MAX_TIME_CODE, time_from_code};

/// Buckets per block (one exponent's mantissas).
const BLOCK: usize = 64;
/// Blocks covering every valid time code.
const BLOCKS: usize = (MAX_TIME_CODE as usize) / BLOCK + 1;

/// Counts of durations, by time code.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    blocks: Vec<Option<Box<[u64; BLOCK]>>>,
    count: u64,
    total_ns: u128,
    min: u16,
    max: u16,
}

impl Histogram {
    /// Adds one duration given as its time code (invalid codes are ignored).
    #[inline]
    pub fn record_code(&mut self, code: u16) {
        self.add(code, 1);
    }

    #[inline]
    fn add(&mut self, code: u16, n: u64) {
        let Some(v) = time_from_code(code) else { return };
        if n == 0 {
            return;
        }
        if self.blocks.is_empty() {
            self.blocks.resize_with(BLOCKS, || None);
        }
        let (b, i) = (usize::from(code) / BLOCK, usize::from(code) % BLOCK);
        if let Some(slot) = self.blocks.get_mut(b) {
            let block = slot.get_or_insert_with(|| Box::new([0; BLOCK]));
            block[i] += n;
        }
        if self.count == 0 || code < self.min {
            self.min = code;
        }
        if self.count == 0 || code > self.max {
            self.max = code;
        }
        self.count += n;
        self.total_ns += u128::from(v) * u128::from(n);
    }

    /// Adds one duration in nanoseconds (rounded to its time code).
    #[cfg(test)]
    pub fn record_ns(&mut self, ns: u64) {
        self.record_code(vmrr_format::timing::time_code(ns));
    }

    /// Durations recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Sum of the durations (of their stored values), saturating.
    pub fn total_ns(&self) -> u64 {
        u64::try_from(self.total_ns).unwrap_or(u64::MAX)
    }

    /// Smallest duration.
    pub fn min_ns(&self) -> Option<u64> {
        (self.count > 0).then(|| time_from_code(self.min).unwrap_or(0))
    }

    /// Largest duration.
    pub fn max_ns(&self) -> Option<u64> {
        (self.count > 0).then(|| time_from_code(self.max).unwrap_or(0))
    }

    /// Mean duration.
    pub fn mean_ns(&self) -> Option<u64> {
        (self.count > 0).then(|| u64::try_from(self.total_ns / u128::from(self.count)).unwrap_or(u64::MAX))
    }

    /// The `q`-quantile (0 < q <= 1) by the nearest-rank method: the smallest stored value
    /// with at least `ceil(q * count)` values at or below it.
    pub fn quantile_ns(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = rank(q, self.count);
        let mut seen = 0u64;
        for (code, n) in self.buckets() {
            seen += n;
            if seen >= rank {
                return time_from_code(code);
            }
        }
        self.max_ns()
    }

    /// Non-empty buckets in increasing order: `(time code, count)`.
    pub fn buckets(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        self.blocks.iter().enumerate().filter_map(|(b, blk)| blk.as_ref().map(|blk| (b, blk))).flat_map(
            |(b, blk)| {
                blk.iter().enumerate().filter(|(_, n)| **n > 0).map(move |(i, n)| {
                    // b < BLOCKS and i < 64: the code is at most MAX_TIME_CODE.
                    (u16::try_from(b * BLOCK + i).unwrap_or(MAX_TIME_CODE), *n)
                })
            },
        )
    }

    /// Adds every count of `other`.
    #[cfg(test)]
    pub fn merge(&mut self, other: &Histogram) {
        for (code, n) in other.buckets() {
            self.add(code, n);
        }
    }
}

/// Nearest rank of quantile `q` among `n` values (1-based, clamped to `1..=n`).
pub(crate) fn rank(q: f64, n: u64) -> u64 {
    let r = (q.clamp(0.0, 1.0) * n as f64).ceil();
    // `r` lies in [0, n]: in range for u64.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let r = r as u64;
    r.clamp(1, n.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmrr_format::timing::time_code;

    #[test]
    fn percentiles_are_exact_for_stored_values() {
        let mut h = Histogram::default();
        // 1..=1000 ns: codes are exact below 128, then rounded.
        let mut stored: Vec<u64> = (1..=1000u64).map(|v| time_from_code(time_code(v)).unwrap()).collect();
        for v in 1..=1000u64 {
            h.record_ns(v);
        }
        stored.sort_unstable();
        for q in [0.01, 0.5, 0.9, 0.99, 1.0] {
            let want = stored[usize::try_from(rank(q, 1000) - 1).unwrap()];
            assert_eq!(h.quantile_ns(q), Some(want), "q={q}");
        }
        assert_eq!(h.count(), 1000);
        assert_eq!(h.min_ns(), Some(1));
        assert_eq!(h.max_ns(), Some(time_from_code(time_code(1000)).unwrap()));
        assert_eq!(h.total_ns(), stored.iter().sum::<u64>());
        let mut m = Histogram::default();
        m.merge(&h);
        m.merge(&h);
        assert_eq!(m.count(), 2000);
        assert_eq!(m.quantile_ns(0.5), h.quantile_ns(0.5));
        assert_eq!(m.total_ns(), 2 * h.total_ns());
    }

    #[test]
    fn memory_follows_the_magnitudes_used() {
        let mut h = Histogram::default();
        for v in 1000..2000 {
            h.record_ns(v);
        }
        assert_eq!(h.blocks.iter().filter(|b| b.is_some()).count(), 2);
        assert_eq!(Histogram::default().quantile_ns(0.5), None);
    }
}

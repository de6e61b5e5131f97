//! Two runs side by side (`vmrr profile A --vs B`): per key, the ratio of B's handler
//! times to A's, and whether that ratio is outside the noise.
//!
//! The noise test: each run's handler times of a key are cut into consecutive blocks
//! ([`super::blocks`]; the largest size giving both runs 16 blocks, at least 25 samples a
//! block) and each block reduced to its median. The spread of those block medians is how
//! much the median moves within one run. A block bootstrap (2,000 resamples of each run's
//! block medians, with replacement, deterministic seed) gives a 95% interval for the ratio
//! of the medians of B to A. When the interval contains 1.0 the difference is *within the
//! spread*. Fewer than 5 blocks in either run (under 125 samples) gives no verdict. Blocks,
//! rather than single exits, keep the interval honest when handler times drift or come in
//! bursts (consecutive exits are not independent).
//!
//! A run cannot show how much a whole run moves against another: two recordings of the
//! same guest differ by a few percent in every median (CPU frequency, cache and memory
//! placement, the host's load), more than the block medians of either run spread. So a
//! ratio whose interval excludes 1.0 is only called *slower* or *faster* when the whole
//! interval also lies beyond a run-to-run **noise floor** (default 10%:
//! [`DEFAULT_NOISE_FLOOR`]); between the two it is *within the noise floor*.

use serde::Serialize;

use super::blocks::{BlockSampler, SIZES};
use super::key::Key;
use super::profiler::{Row, Table};
use super::report::Dist;
use vmrr_format::timing::time_from_code;

/// Bootstrap resamples per key.
pub const RESAMPLES: usize = 2_000;
/// Fewest blocks per run for a verdict.
pub const MIN_BLOCKS: usize = 5;
/// Run-to-run noise floor: a ratio must lie beyond `1 ± floor` to be called a change.
/// Identical recordings on the development host differed by up to 7.5% (docs/PROFILING.md).
pub const DEFAULT_NOISE_FLOOR: f64 = 0.10;

/// What the comparison concludes for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// B's median handler time is higher than A's beyond the spread.
    Slower,
    /// B's median handler time is lower than A's beyond the spread.
    Faster,
    /// The ratio's interval contains 1.0: no difference the noise could not explain.
    WithinSpread,
    /// The interval excludes 1.0 but does not lie beyond the noise floor: a shift no larger
    /// than two runs of the same build show.
    WithinNoise,
    /// Too few handler times in one of the runs to judge.
    TooFewSamples,
    /// One of the runs has no handler times for this key (no timing): counts only.
    NoTiming,
    /// The key occurs in A only.
    OnlyInA,
    /// The key occurs in B only.
    OnlyInB,
}

/// One key in both runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompareRow {
    /// The key's name.
    pub key: String,
    /// Exits in A.
    pub count_a: u64,
    /// Exits in B.
    pub count_b: u64,
    /// Handler times in A.
    pub handler_a: Option<Dist>,
    /// Handler times in B.
    pub handler_b: Option<Dist>,
    /// B's median handler time over A's.
    pub p50_ratio: Option<f64>,
    /// B's 99th percentile over A's.
    pub p99_ratio: Option<f64>,
    /// B's total handler time over A's.
    pub total_ratio: Option<f64>,
    /// The 95% interval of the median ratio (block bootstrap).
    pub ci: Option<[f64; 2]>,
    /// The noise floor the verdict used (a change must lie beyond `1 ± noise_floor`).
    pub noise_floor: f64,
    /// Samples per block.
    pub block_size: Option<usize>,
    /// Blocks in A and in B.
    pub blocks: [usize; 2],
    /// The conclusion.
    pub verdict: Verdict,
}

fn ratio(a: Option<u64>, b: Option<u64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if a > 0 => Some(b as f64 / a as f64),
        (Some(0), Some(0)) => Some(1.0),
        _ => None,
    }
}

/// Compares two tables of the same grouping, costliest keys (in either run) first, with a
/// run-to-run `noise_floor` (a fraction: 0.10 for 10%). Tables need block medians
/// ([`super::ProfileOptions::blocks`]) for a verdict.
pub fn compare_tables(a: &Table, b: &Table, noise_floor: f64) -> Vec<CompareRow> {
    let mut keys: Vec<Key> = Vec::new();
    for r in a.rows().into_iter().chain(b.rows()) {
        if !keys.contains(&r.key) {
            keys.push(r.key);
        }
    }
    let most = |k: &Key, f: &dyn Fn(&Row) -> u64| a.get(k).map_or(0, f).max(b.get(k).map_or(0, f));
    keys.sort_by(|x, y| {
        most(y, &|r| r.handler.total_ns())
            .cmp(&most(x, &|r| r.handler.total_ns()))
            .then(most(y, &|r| r.count).cmp(&most(x, &|r| r.count)))
            .then(x.cmp(y))
    });
    let floor = if noise_floor.is_finite() { noise_floor.max(0.0) } else { DEFAULT_NOISE_FLOOR };
    keys.into_iter().map(|k| compare_row(k, a.get(&k), b.get(&k), floor)).collect()
}

fn compare_row(key: Key, a: Option<&Row>, b: Option<&Row>, noise_floor: f64) -> CompareRow {
    let (da, db) = (a.and_then(|r| Dist::of(&r.handler)), b.and_then(|r| Dist::of(&r.handler)));
    let mut row = CompareRow {
        key: key.to_string(),
        count_a: a.map_or(0, |r| r.count),
        count_b: b.map_or(0, |r| r.count),
        handler_a: da,
        handler_b: db,
        p50_ratio: ratio(da.map(|d| d.p50), db.map(|d| d.p50)),
        p99_ratio: ratio(da.map(|d| d.p99), db.map(|d| d.p99)),
        total_ratio: ratio(da.map(|d| d.total), db.map(|d| d.total)),
        ci: None,
        noise_floor,
        block_size: None,
        blocks: [0, 0],
        verdict: Verdict::NoTiming,
    };
    let (a, b) = match (a, b) {
        (None, _) => {
            row.verdict = Verdict::OnlyInB;
            return row;
        }
        (_, None) => {
            row.verdict = Verdict::OnlyInA;
            return row;
        }
        (Some(a), Some(b)) => (a, b),
    };
    let (Some(sa), Some(sb)) = (a.blocks.as_ref(), b.blocks.as_ref()) else { return row };
    if da.is_none() || db.is_none() {
        return row;
    }
    let size = BlockSampler::pick(sa.samples(), sb.samples());
    let (ma, mb) = (values(sa.medians(size)), values(sb.medians(size)));
    row.block_size = Some(SIZES[size]);
    row.blocks = [ma.len(), mb.len()];
    if ma.len() < MIN_BLOCKS || mb.len() < MIN_BLOCKS {
        row.verdict = Verdict::TooFewSamples;
        return row;
    }
    let [lo, hi] = bootstrap_ratio_ci(&ma, &mb, RESAMPLES, seed(&row.key));
    row.ci = Some([lo, hi]);
    row.verdict = if lo <= 1.0 && hi >= 1.0 {
        Verdict::WithinSpread
    } else if lo > 1.0 + noise_floor {
        Verdict::Slower
    } else if hi < 1.0 / (1.0 + noise_floor) {
        Verdict::Faster
    } else {
        Verdict::WithinNoise
    };
    row
}

fn values(codes: &[u16]) -> Vec<u64> {
    codes.iter().filter_map(|&c| time_from_code(c)).collect()
}

/// A seed from the key's name, so a comparison always prints the same interval.
fn seed(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// SplitMix64: a small deterministic generator for the resampling.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        // n is a count of blocks (far below 2^32): the modulo bias is negligible.
        usize::try_from(self.next() % (n as u64)).unwrap_or(0)
    }
}

fn resampled_median(v: &[u64], rng: &mut SplitMix, buf: &mut Vec<u64>) -> u64 {
    buf.clear();
    buf.extend((0..v.len()).map(|_| v[rng.below(v.len())]));
    let mid = (buf.len() - 1) / 2;
    *buf.select_nth_unstable(mid).1
}

/// The central 95% interval of `median(resample(b)) / median(resample(a))` over
/// `resamples` bootstrap draws. `a` and `b` must not be empty.
pub fn bootstrap_ratio_ci(a: &[u64], b: &[u64], resamples: usize, seed: u64) -> [f64; 2] {
    if a.is_empty() || b.is_empty() {
        return [f64::NAN, f64::NAN];
    }
    let mut rng = SplitMix(seed);
    let (mut ba, mut bb) = (Vec::with_capacity(a.len()), Vec::with_capacity(b.len()));
    let mut ratios: Vec<f64> = (0..resamples.max(1))
        .map(|_| {
            let ma = resampled_median(a, &mut rng, &mut ba);
            let mb = resampled_median(b, &mut rng, &mut bb);
            if ma == 0 { if mb == 0 { 1.0 } else { f64::INFINITY } } else { mb as f64 / ma as f64 }
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    let n = ratios.len();
    let at =
        |q: f64| ratios[usize::try_from(super::histogram::rank(q, n as u64) - 1).unwrap_or(0).min(n - 1)];
    [at(0.025), at(0.975)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_contains_one_for_the_same_distribution_and_not_for_a_shift() {
        let mut rng = SplitMix(7);
        let mut noisy =
            |base: u64| -> Vec<u64> { (0..20).map(|_| base + rng.next() % (base / 10)).collect() };
        let (a, a2, slow) = (noisy(1000), noisy(1000), noisy(1500));
        let [lo, hi] = bootstrap_ratio_ci(&a, &a2, RESAMPLES, 1);
        assert!(lo <= 1.0 && hi >= 1.0, "[{lo}, {hi}]");
        let [lo, hi] = bootstrap_ratio_ci(&a, &slow, RESAMPLES, 1);
        assert!(lo > 1.3 && hi < 1.7, "[{lo}, {hi}]");
        assert_eq!(bootstrap_ratio_ci(&a, &slow, RESAMPLES, 1), [lo, hi], "deterministic");
    }
}

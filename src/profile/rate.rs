//! Exit rate over time, per kind, in bounded memory: exits are counted in time bins that
//! start 1 us wide and double (merging neighbours) whenever the run outgrows
//! [`MAX_BINS`], so a run of any length ends with between `MAX_BINS / 2` and `MAX_BINS`
//! bins.

/// Most bins kept.
pub const MAX_BINS: usize = 256;
/// Kinds followed separately; further kinds are counted as the last one, `other`.
pub const MAX_SERIES: usize = 16;

/// Exits per time bin, per kind.
#[derive(Debug, Clone)]
pub struct RateSeries {
    bin_ns: u64,
    kinds: Vec<u16>,
    other: bool,
    /// `bins[i][k]`: exits of series `k` in bin `i`.
    bins: Vec<Vec<u64>>,
}

impl Default for RateSeries {
    fn default() -> Self {
        RateSeries { bin_ns: 1_000, kinds: Vec::new(), other: false, bins: Vec::new() }
    }
}

/// One series: a kind (or `None` for the other kinds together) and its exits per bin.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The kind, or `None` for kinds past [`MAX_SERIES`].
    pub kind: Option<u16>,
    /// Exits per second in each bin.
    pub per_s: Vec<f64>,
    /// Exits in all.
    pub exits: u64,
}

impl RateSeries {
    /// Counts one exit of `kind` at `at_ns`.
    pub fn add(&mut self, kind: u16, at_ns: u64) {
        let k = match self.kinds.iter().position(|&x| x == kind) {
            Some(k) => k,
            None if self.kinds.len() < MAX_SERIES - 1 => {
                self.kinds.push(kind);
                self.kinds.len() - 1
            }
            None => {
                self.other = true;
                MAX_SERIES - 1
            }
        };
        let mut bin = at_ns / self.bin_ns;
        while bin >= MAX_BINS as u64 {
            self.widen();
            bin = at_ns / self.bin_ns;
        }
        // bin < MAX_BINS.
        let bin = usize::try_from(bin).unwrap_or(0);
        if self.bins.len() <= bin {
            self.bins.resize_with(bin + 1, Vec::new);
        }
        let counts = &mut self.bins[bin];
        if counts.len() <= k {
            counts.resize(k + 1, 0);
        }
        counts[k] += 1;
    }

    fn widen(&mut self) {
        self.bin_ns = self.bin_ns.saturating_mul(2);
        let old = std::mem::take(&mut self.bins);
        for pair in old.chunks(2) {
            let mut merged = pair[0].clone();
            if let Some(second) = pair.get(1) {
                if merged.len() < second.len() {
                    merged.resize(second.len(), 0);
                }
                for (m, s) in merged.iter_mut().zip(second) {
                    *m += s;
                }
            }
            self.bins.push(merged);
        }
    }

    /// Width of a bin.
    pub fn bin_ns(&self) -> u64 {
        self.bin_ns
    }

    /// Bins in use (the run's length in bins).
    pub fn len(&self) -> usize {
        self.bins.len()
    }

    /// Every series, busiest first.
    pub fn series(&self) -> Vec<Series> {
        let per_s = 1e9 / self.bin_ns as f64;
        let n = self.kinds.len() + usize::from(self.other);
        let mut out: Vec<Series> = (0..n)
            .map(|k| {
                let idx = if k < self.kinds.len() { k } else { MAX_SERIES - 1 };
                let counts: Vec<u64> = self.bins.iter().map(|b| b.get(idx).copied().unwrap_or(0)).collect();
                Series {
                    kind: self.kinds.get(k).copied(),
                    exits: counts.iter().sum(),
                    per_s: counts.iter().map(|&c| c as f64 * per_s).collect(),
                }
            })
            .collect();
        out.sort_by_key(|s| std::cmp::Reverse(s.exits));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_widen_to_fit_the_run() {
        let mut r = RateSeries::default();
        for i in 0..10_000u64 {
            r.add(2, i * 100_000); // one exit per 100 us for 1 s
            if i % 10 == 0 {
                r.add(6, i * 100_000);
            }
        }
        assert!(r.len() <= MAX_BINS && r.len() > MAX_BINS / 2, "{}", r.len());
        let s = r.series();
        assert_eq!(s[0].kind, Some(2));
        assert_eq!(s[0].exits, 10_000);
        assert_eq!(s[1].exits, 1_000);
        // 10,000 exits/s in every full bin.
        let full = &s[0].per_s[..s[0].per_s.len() - 1];
        assert!(full.iter().all(|v| (v - 10_000.0).abs() / 10_000.0 < 0.05), "{full:?}");
    }
}

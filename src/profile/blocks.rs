//! Block medians: a key's handler times cut into consecutive blocks, each reduced to its
//! median, so a comparison can see how much the median moves *within* a run (the noise)
//! before it calls a difference between two runs real.
//!
//! The block size must suit the number of samples, which is only known at the end of a
//! pass; so the sampler keeps medians for every size of [`SIZES`] at once, in bounded
//! memory (one open block per size, at most [`MAX_MEDIANS`] medians per size), and the
//! comparison picks the size afterwards ([`BlockSampler::pick`]).

/// Block sizes kept, in samples.
pub const SIZES: [usize; 7] = [25, 50, 100, 200, 400, 800, 1600];
/// Medians kept per size (a size with more blocks than this is never picked: a larger size
/// already has enough).
pub const MAX_MEDIANS: usize = 20_000;
/// The comparison wants at least this many blocks per run, and picks the largest size
/// that gives them.
pub const TARGET_BLOCKS: usize = 16;

/// Block medians of one key's samples (time codes), at every size of [`SIZES`].
#[derive(Debug, Clone, Default)]
pub struct BlockSampler {
    open: [Vec<u16>; SIZES.len()],
    medians: [Vec<u16>; SIZES.len()],
    samples: u64,
}

impl BlockSampler {
    /// Adds the next sample.
    #[inline]
    pub fn push(&mut self, code: u16) {
        self.samples += 1;
        for (i, size) in SIZES.iter().enumerate() {
            if self.medians[i].len() >= MAX_MEDIANS {
                continue;
            }
            let open = &mut self.open[i];
            open.push(code);
            if open.len() == *size {
                let mid = (open.len() - 1) / 2;
                let (_, m, _) = open.select_nth_unstable(mid);
                self.medians[i].push(*m);
                open.clear();
            }
        }
    }

    /// Samples seen.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// The medians (time codes) of the complete blocks of size `SIZES[size]`.
    pub fn medians(&self, size: usize) -> &[u16] {
        self.medians.get(size).map_or(&[], |m| m.as_slice())
    }

    /// The size index to compare runs of `a` and `b` samples with: the largest size that
    /// gives each run [`TARGET_BLOCKS`] complete blocks, else the smallest.
    pub fn pick(a: u64, b: u64) -> usize {
        let n = a.min(b);
        (0..SIZES.len()).rev().find(|&i| n / (SIZES[i] as u64) >= TARGET_BLOCKS as u64).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_per_block_size() {
        let mut s = BlockSampler::default();
        for i in 0..1000u16 {
            s.push(i % 50);
        }
        assert_eq!(s.medians(0).len(), 40);
        assert_eq!(s.medians(1), vec![24; 20].as_slice());
        assert_eq!(s.medians(6).len(), 0);
        assert_eq!(BlockSampler::pick(1000, 5000), 1); // 1000 / 50 = 20 blocks
        assert_eq!(BlockSampler::pick(100, 100), 0);
        assert_eq!(BlockSampler::pick(10_000_000, 10_000_000), SIZES.len() - 1);
    }
}

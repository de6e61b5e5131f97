//! A runner's share of a corpus: `--shard I/N`, or a Kubernetes Indexed Job's index.
//!
//! The share is balanced by recorded exits, not by file count: entries are taken heaviest
//! first (ties by path) and each goes to the shard with the fewest exits so far (ties to
//! the lowest index). Every runner computes the same assignment from the same corpus, so
//! the shards are disjoint and together are the corpus.

use serde::{Deserialize, Serialize};

use super::entries::Entry;
use crate::exit_code::CliError;

/// Kubernetes sets this in each pod of an Indexed Job (0-based).
pub const INDEX_ENV: &str = "JOB_COMPLETION_INDEX";
/// The Job's completion count: Kubernetes does not expose it to the pod, so the manifest
/// `vmrr ci kubernetes` prints sets it from the same value as `spec.completions`.
pub const COUNT_ENV: &str = "JOB_COMPLETIONS";

/// Shard `index` of `count` (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// This runner's index.
    pub index: usize,
    /// The number of runners.
    pub count: usize,
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// Parses `I/N`.
    ///
    /// # Errors
    /// Not `I/N` with `0 <= I < N` (exit 2).
    pub fn parse(s: &str, what: &str) -> Result<Shard, CliError> {
        let bad = |why: &str| CliError::Usage(format!("{what} {s}: {why}"));
        let (i, n) = s.split_once('/').ok_or_else(|| bad("expected I/N, e.g. 0/4"))?;
        let index: usize = i.trim().parse().map_err(|_| bad("I is not a number"))?;
        let count: usize = n.trim().parse().map_err(|_| bad("N is not a number"))?;
        if count == 0 {
            return Err(bad("N must be at least 1"));
        }
        if index >= count {
            return Err(bad(&format!("the index must be below {count} (shards are numbered from 0)")));
        }
        Ok(Shard { index, count })
    }

    /// `--shard`, else the Indexed Job's environment, else none (the whole corpus).
    ///
    /// # Errors
    /// A malformed or out-of-range value, or `JOB_COMPLETION_INDEX` without
    /// `JOB_COMPLETIONS` (exit 2).
    pub fn from_args_or_env(arg: Option<&str>) -> Result<Option<Shard>, CliError> {
        if let Some(s) = arg {
            return Shard::parse(s, "--shard").map(Some);
        }
        let Ok(index) = std::env::var(INDEX_ENV) else { return Ok(None) };
        let count = std::env::var(COUNT_ENV).map_err(|_| {
            CliError::Usage(format!(
                "{INDEX_ENV}={index} is set but {COUNT_ENV} is not: set it to the Job's completions (as `vmrr ci kubernetes` does), or pass --shard I/N"
            ))
        })?;
        Shard::parse(&format!("{index}/{count}"), &format!("{INDEX_ENV}/{COUNT_ENV}")).map(Some)
    }

    /// This shard's entries, in path order.
    pub fn select(&self, all: &[Entry]) -> Vec<Entry> {
        let mut order: Vec<usize> = (0..all.len()).collect();
        order.sort_by(|&a, &b| all[b].exits.cmp(&all[a].exits).then_with(|| all[a].path.cmp(&all[b].path)));
        let mut load = vec![0u64; self.count];
        let mut owner = vec![0usize; all.len()];
        for i in order {
            let k = (0..self.count).min_by_key(|&k| (load[k], k)).unwrap_or(0);
            // Every entry weighs at least 1, so empty files spread as well.
            load[k] += all[i].exits.max(1);
            owner[i] = k;
        }
        all.iter().zip(owner).filter(|(_, k)| *k == self.index).map(|(e, _)| e.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn corpus(weights: &[u64]) -> Vec<Entry> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| Entry { path: PathBuf::from(format!("r{i:02}.vmrrb")), size: 1, exits: *w })
            .collect()
    }

    #[test]
    fn shards_are_disjoint_complete_and_balanced_by_exits() {
        let all = corpus(&[1000, 10, 10, 10, 10, 10, 10, 10, 10, 900, 5, 5]);
        let shards: Vec<Vec<Entry>> = (0..3).map(|i| Shard { index: i, count: 3 }.select(&all)).collect();
        let mut union: Vec<PathBuf> = shards.iter().flatten().map(|e| e.path.clone()).collect();
        union.sort();
        assert_eq!(union, all.iter().map(|e| e.path.clone()).collect::<Vec<_>>());
        let loads: Vec<u64> = shards.iter().map(|s| s.iter().map(|e| e.exits).sum()).collect();
        // The two heavy repros land on different shards; by file count they would not.
        assert!(loads.iter().all(|l| *l >= 90), "{loads:?}");
        assert!(loads.iter().max().unwrap() - loads.iter().min().unwrap() <= 1000 - 90, "{loads:?}");
        assert_eq!(shards[0].len() + shards[1].len() + shards[2].len(), 12);
    }

    #[test]
    fn shard_syntax_and_range() {
        assert_eq!(Shard::parse("2/4", "--shard").unwrap(), Shard { index: 2, count: 4 });
        for bad in ["4/4", "1", "a/2", "0/0", "-1/2"] {
            assert!(Shard::parse(bad, "--shard").is_err(), "{bad}");
        }
    }
}

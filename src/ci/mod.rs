//! Replaying in CI at scale: a corpus of repros on local cores (`vmrr replay A B DIR
//! --jobs N`), a deterministic share of it per runner (`--shard I/N`, or a Kubernetes
//! Indexed Job's index), one long trace in segments (`--segments N`, `--segment K`), shard
//! and segment reports merged (`vmrr merge`), and the manifests that run all this
//! (`vmrr ci kubernetes|github`). docs/CI.md describes it for users.
//!
//! Each repro and each segment is replayed by a child `vmrr replay ... --json` process: a
//! replay that crashes, hangs past its stall limit or runs out of memory costs its own
//! entry only, and a runner's `--segment K` is the very code a local `--segments N` runs.

pub mod corpus;
pub mod junit;
pub mod manifests;
pub mod outcome;
pub mod pack;
pub mod segments;
pub mod shard;
pub mod worker;

use std::path::PathBuf;

use vmrr_format::bundle::Budgets;
use vmrr_replay::Verdict;

use crate::cmd::replay::ReplayArgs;
use crate::exit_code::{CliError, CliResult};

/// The `vmrr replay` options for corpora, shards and segments.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CorpusArgs {
    /// More traces, bundles or directories: with several sources (or a directory of
    /// repros, or any of --jobs, --shard, --junit, --fail-on) `vmrr replay` runs a corpus,
    /// one verdict per repro. Directories are searched for `*.vmrrb` and `*.vmrr` files.
    #[arg(value_name = "MORE")]
    pub more: Vec<PathBuf>,
    /// Replays run at once (default: this host's cores).
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
    /// Run only this runner's share of the corpus, `I/N` (0-based), balanced by recorded
    /// exits. Without it, a Kubernetes Indexed Job's JOB_COMPLETION_INDEX and
    /// JOB_COMPLETIONS are used when set.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// Also write a JUnit XML file: one test case per repro, its report as output.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Verdicts that fail the run (exit 1), comma-separated [default: diverged].
    #[arg(long, value_name = "VERDICTS", value_delimiter = ',')]
    pub fail_on: Vec<String>,
    /// Replay one trace in N segments, in parallel (--jobs at a time): each from one
    /// checkpoint to the next ones, checking the machine equals each checkpoint it
    /// reaches; one report, as a sequential replay's.
    #[arg(long, value_name = "N")]
    pub segments: Option<usize>,
    /// With --segments N: replay only segment K (0-based), as a runner does; its report is
    /// merged with the others' by `vmrr merge`.
    #[arg(long, value_name = "K", requires = "segments")]
    pub segment: Option<usize>,
    /// Check the replayed machine against every checkpoint it passes (memory pages, vCPU
    /// and device state); a difference is a divergence there.
    #[arg(long)]
    pub verify_checkpoints: bool,
}

impl CorpusArgs {
    /// Whether these options ask for a corpus run.
    fn corpus_flags(&self) -> bool {
        !self.more.is_empty()
            || self.jobs.is_some()
            || self.shard.is_some()
            || self.junit.is_some()
            || !self.fail_on.is_empty()
    }

    /// The verdicts that fail the run.
    pub fn fail_on(&self) -> Result<Vec<Verdict>, CliError> {
        if self.fail_on.is_empty() {
            return Ok(vec![Verdict::Diverged]);
        }
        self.fail_on
            .iter()
            .map(|s| {
                Verdict::parse(s.trim()).ok_or_else(|| {
                    CliError::Usage(format!(
                        "--fail-on {s}: not a verdict (reproduced, completed, no_longer_fails, diverged)"
                    ))
                })
            })
            .collect()
    }
}

/// The number of jobs: the one asked for, else this host's cores.
pub fn jobs(asked: Option<usize>) -> Result<usize, CliError> {
    match asked {
        Some(0) => Err(CliError::Usage("--jobs 0: at least one replay must run".into())),
        Some(n) => Ok(n),
        None => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
    }
}

/// Runs `vmrr replay` as a corpus or in segments when its arguments ask for it; `None`
/// when they ask for one plain replay.
pub fn dispatch(args: &ReplayArgs, budgets: &Budgets) -> Option<CliResult> {
    let c = &args.ci;
    let single_only = |what: &str| -> CliResult {
        Err(CliError::Usage(format!("{what} replays one source; it cannot be combined with a corpus")))
    };
    if c.segments.is_some() {
        if c.corpus_flags() && !(c.more.is_empty() && c.shard.is_none() && c.fail_on.is_empty()) {
            return Some(single_only("--segments"));
        }
        return Some(segments::run(args, budgets));
    }
    let corpus = c.corpus_flags() || corpus::is_corpus_dir(&args.src);
    if !corpus {
        return None;
    }
    for (given, what) in [
        (args.goto.is_some(), "--goto"),
        (args.snapshot_at.is_some(), "--snapshot-at"),
        (args.gdb.is_some(), "--gdb"),
        (args.from_checkpoint.is_some(), "--from-checkpoint"),
        (args.serial != "none", "--serial"),
    ] {
        if given {
            return Some(single_only(what));
        }
    }
    Some(corpus::run(args, budgets))
}

//! Replaying in CI at scale: a corpus of repros on local cores (`vmrr replay A B DIR
//! --jobs N`), a deterministic share of it per runner (`--shard I/N`, or a Kubernetes
//! Indexed Job's index), one long trace in segments (`--segments N`, `--segment K`), shard
//! and segment reports merged (`vmrr merge`), and the manifests that run all this
//! (`vmrr ci kubernetes|github`). docs/CI.md describes it for users.
//!
//! Each repro and each segment is replayed by a child `vmrr replay ... --json` process: a
//! replay that crashes, hangs past its stall limit or runs out of memory costs its own
//! entry only, and a runner's `--segment K` is the very code a local `--segments N` runs.

pub mod command;
pub mod corpus;
pub mod entries;
pub mod junit;
pub mod manifests;
pub mod merge;
pub mod outcome;
pub mod pack;
pub mod segments;
pub mod shard;
pub mod worker;

pub use crate::cmd::corpus_args::CorpusArgs;
use crate::cmd::replay::ReplayArgs;
use crate::exit_code::{CliError, CliResult};
use vmrr_format::bundle::Budgets;

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
        if c.corpus_flags()
            && !(c.more.is_empty() && c.shard.is_none() && c.fail_on.is_empty() && c.junit.is_none())
        {
            return Some(single_only("--segments"));
        }
        return Some(segments::run(args, budgets));
    }
    let corpus = c.corpus_flags() || entries::is_corpus_dir(&args.src);
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

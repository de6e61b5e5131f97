//! The `vmrr replay` options for corpora, shards and segments (docs/CI.md); what they do
//! is in the `ci` room, which reads them.

use std::path::PathBuf;

use vmrr_replay::Verdict;

use crate::exit_code::CliError;

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
    /// Also write a JUnit XML file: one test case per repro, its report as output (a file:
    /// `-` is not stdout here).
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
    pub fn corpus_flags(&self) -> bool {
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

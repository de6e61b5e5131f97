//! What a corpus run says: one result per repro, a summary, the exit code of the whole
//! run, and how they are printed (a table, or JSON lines that `vmrr merge` reads back).
//!
//! Exit code of a run: the largest of its entries' codes, where an entry that could not
//! be replayed keeps the code a single replay of it would have exited with (3 damaged or
//! not a repro, 4 KVM missing, 6 output, 7 internal), a verdict listed by `--fail-on`
//! (default: `diverged`) counts 1, and any other verdict 0.

use serde::{Deserialize, Serialize};
use vmrr_replay::{Report, Verdict};

use super::shard::Shard;
use crate::exit_code::CliError;

/// Why a repro could not be replayed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EntryError {
    /// The exit code its replay ended with.
    pub code: u8,
    /// Its message (the replay's error, naming file, offset or field and reason).
    pub message: String,
}

/// One repro's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntryResult {
    /// The repro's path.
    pub path: String,
    /// Exits it recorded (its weight when sharding).
    pub exits: u64,
    /// Its verdict, when it was replayed.
    pub verdict: Option<Verdict>,
    /// Why it could not be replayed.
    pub error: Option<EntryError>,
    /// Its exit code in this run (see the module's table).
    pub exit_code: u8,
    /// Seconds its replay took.
    pub seconds: f64,
    /// When it started (UTC, `YYYY-MM-DDTHH:MM:SS`).
    pub started: String,
    /// The host it ran on.
    pub hostname: String,
    /// What its replay wrote to stderr (notes, warnings, the error).
    pub stderr: String,
    /// Its replay's report (as `vmrr replay --json` prints it).
    pub report: Option<Report>,
}

impl EntryResult {
    /// The verdict's name, or `error`.
    pub fn status(&self) -> &'static str {
        self.verdict.map_or("error", Verdict::name)
    }

    /// One line on what happened.
    pub fn detail(&self) -> String {
        if let Some(e) = &self.error {
            return e.message.clone();
        }
        let Some(r) = &self.report else { return String::new() };
        match r.verdict {
            Verdict::Reproduced => {
                let f = r
                    .emulation_failure
                    .as_ref()
                    .or(r.failure.as_ref())
                    .or(r.failure_point.as_ref().and_then(|p| p.failure.as_ref()));
                let how = if r.path == vmrr_replay::report::Path::Diverged {
                    format!(
                        " (from the failure point; the path diverged at record {})",
                        r.divergence.as_ref().map_or(0, |d| d.seq)
                    )
                } else {
                    String::new()
                };
                match f {
                    Some(f) => format!(
                        "{} at {:#x}{}{how}",
                        f.exit,
                        f.rip,
                        f.disassembly.as_deref().map(|d| format!(": {d}")).unwrap_or_default()
                    ),
                    None => format!("the recorded failure happened again{how}"),
                }
            }
            Verdict::Completed => format!(
                "{} replayed, every one as recorded",
                vmrr_format::describe::count(r.exits_replayed, "exit")
            ),
            Verdict::Diverged => match &r.divergence {
                Some(d) => match &d.cause {
                    Some(c) => format!("at record {}: {}; cause: {c}", d.seq, d.summary),
                    None => format!("at record {}: {}", d.seq, d.summary),
                },
                None => "diverged".into(),
            },
            Verdict::NoLongerFails => {
                let at = r.recorded_failure.map_or(String::new(), |s| format!(" recorded at record {s}"));
                match (&r.divergence, &r.failure_point) {
                    (Some(d), _) if Some(d.seq) == r.recorded_failure => format!(
                        "the guest reached the failure{at} and made a {} exit instead",
                        d.actual.get("kind").and_then(|k| k.as_str()).unwrap_or("different")
                    ),
                    (_, Some(p)) => format!("failure point: {}", p.detail),
                    _ => format!("the failure{at} did not happen again"),
                }
            }
        }
    }

    /// The report as a person reads it (`vmrr replay`'s text), or the error.
    pub fn text(&self) -> String {
        match (&self.report, &self.error) {
            (Some(r), _) => r.human(),
            (None, Some(e)) => format!("vmrr replay {}: exit {}: {}\n", self.path, e.code, e.message),
            (None, None) => String::new(),
        }
    }
}

/// Entries per verdict.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counts {
    /// `reproduced`.
    pub reproduced: usize,
    /// `completed`.
    pub completed: usize,
    /// `no_longer_fails`.
    pub no_longer_fails: usize,
    /// `diverged`.
    pub diverged: usize,
    /// Could not be replayed.
    pub error: usize,
}

impl Counts {
    /// Counts `results`.
    pub fn of(results: &[EntryResult]) -> Self {
        let mut c = Counts::default();
        for r in results {
            match r.verdict {
                Some(Verdict::Reproduced) => c.reproduced += 1,
                Some(Verdict::Completed) => c.completed += 1,
                Some(Verdict::NoLongerFails) => c.no_longer_fails += 1,
                Some(Verdict::Diverged) => c.diverged += 1,
                None => c.error += 1,
            }
        }
        c
    }
}

/// The run as a whole.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// The corpus's id (see `corpus::corpus_id`).
    pub corpus: String,
    /// Repros in the whole corpus.
    pub corpus_entries: usize,
    /// This runner's shard (`None`: the whole corpus, or a merge).
    pub shard: Option<Shard>,
    /// The shards a merge combined (0-based), empty otherwise.
    pub merged_shards: Vec<usize>,
    /// Repros this run replayed.
    pub entries: usize,
    /// Repros per verdict.
    pub counts: Counts,
    /// Verdicts that fail the run.
    pub fail_on: Vec<Verdict>,
    /// The run's exit code.
    pub exit_code: u8,
    /// Replays run at once.
    pub jobs: usize,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// The exit code of an entry: its error's, 1 for a verdict in `fail_on`, else 0.
pub fn entry_code(verdict: Option<Verdict>, error: Option<&EntryError>, fail_on: &[Verdict]) -> u8 {
    match (verdict, error) {
        (_, Some(e)) => e.code,
        (Some(v), None) if fail_on.contains(&v) => crate::exit_code::DIVERGED,
        _ => 0,
    }
}

impl Summary {
    /// The summary of `results`, with each entry's exit code set by `fail_on`.
    pub fn new(
        corpus: &str,
        corpus_entries: usize,
        shard: Option<Shard>,
        results: &[EntryResult],
        fail_on: &[Verdict],
        jobs: usize,
        seconds: f64,
    ) -> Self {
        let exit_code =
            results.iter().map(|r| entry_code(r.verdict, r.error.as_ref(), fail_on)).max().unwrap_or(0);
        Summary {
            corpus: corpus.to_string(),
            corpus_entries,
            shard,
            merged_shards: Vec::new(),
            entries: results.len(),
            counts: Counts::of(results),
            fail_on: fail_on.to_vec(),
            exit_code,
            jobs,
            seconds,
        }
    }

    /// One line: `20 repros: 12 reproduced, 3 completed, ...; exit 1`.
    pub fn line(&self) -> String {
        let c = &self.counts;
        let scope = match (self.shard, self.merged_shards.len()) {
            (Some(s), _) => format!(" (shard {s} of a corpus of {})", self.corpus_entries),
            (None, n) if n > 0 => format!(" ({} merged)", vmrr_format::describe::count(n as u64, "shard")),
            _ => String::new(),
        };
        format!(
            "{} repro{}{scope}: {} reproduced, {} completed, {} no_longer_fails, {} diverged, {} error{} in {:.1} s; exit {}",
            self.entries,
            if self.entries == 1 { "" } else { "s" },
            c.reproduced,
            c.completed,
            c.no_longer_fails,
            c.diverged,
            c.error,
            if c.error == 1 { "" } else { "s" },
            self.seconds,
            self.exit_code
        )
    }
}

/// One line of `--json` output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Line {
    /// A repro's result.
    Entry {
        /// The corpus's id.
        corpus: String,
        /// The shard that ran it.
        shard: Option<Shard>,
        /// The result.
        #[serde(flatten)]
        result: Box<EntryResult>,
    },
    /// The run's summary (the last line).
    Summary(Box<Summary>),
}

/// The table a person reads: one row per repro, then the summary line.
pub fn table(results: &[EntryResult], summary: &Summary) -> String {
    let width = results.iter().map(|r| r.path.len()).max().unwrap_or(4).clamp(4, 60);
    let mut s = format!("{:<16} {:<width$} {:>10} {:>8}  detail\n", "verdict", "repro", "exits", "time");
    for r in results {
        let status = match &r.error {
            Some(e) => format!("error ({})", e.code),
            None => r.status().to_string(),
        };
        let mut detail = r.detail().replace('\n', " ");
        if detail.chars().count() > 160 {
            detail = detail.chars().take(157).collect::<String>() + "...";
        }
        s.push_str(&format!(
            "{status:<16} {:<width$} {:>10} {:>6.1} s  {detail}\n",
            r.path, r.exits, r.seconds
        ));
    }
    s.push_str(&summary.line());
    s.push('\n');
    s
}

/// Prints the run: JSON lines on stdout with `json` (the table then goes to stderr), else
/// the table on stdout.
///
/// # Errors
/// stdout could not be written.
pub fn print(results: &[EntryResult], summary: &Summary, json: bool) -> Result<(), CliError> {
    if !json {
        print!("{}", table(results, summary));
        return Ok(());
    }
    eprint!("{}", table(results, summary));
    for r in results {
        crate::cmd::print_json(&Line::Entry {
            corpus: summary.corpus.clone(),
            shard: summary.shard,
            result: Box::new(r.clone()),
        })?;
    }
    crate::cmd::print_json(&Line::Summary(Box::new(summary.clone())))
}

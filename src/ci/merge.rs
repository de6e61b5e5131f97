//! `vmrr merge REPORT...`: shard reports of one corpus (the JSON lines `vmrr replay ...
//! --shard I/N --json` prints) into one verdict, one summary and one JUnit file; or the
//! segment reports of one trace (`vmrr replay TRACE --segments N --segment K --json`) into
//! the report a sequential replay gives.
//!
//! A report of another corpus or trace, a shard given twice or a file that is no report is
//! refused by name while the rest is merged; the run then exits 3 (and names any shard
//! missing).

use std::path::{Path, PathBuf};

use vmrr_replay::{Report, Verdict};

use super::outcome::{self, EntryResult, Line, Summary, entry_code};
use crate::exit_code::{CliError, CliResult, INVALID_INPUT};

/// `vmrr merge` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct MergeArgs {
    /// Reports: shard reports of one corpus, or segment reports of one trace.
    #[arg(required = true, value_name = "REPORT")]
    pub reports: Vec<PathBuf>,
    /// Print JSON on stdout instead of text.
    ///
    /// One object per line, as `vmrr replay --json` prints for a corpus.
    #[arg(long)]
    pub json: bool,
    /// Also write a JUnit XML file of the merged corpus (a file: `-` is not stdout here).
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Verdicts that fail the run (exit 1), comma-separated [default: diverged].
    #[arg(long, value_name = "VERDICTS", value_delimiter = ',')]
    pub fail_on: Vec<String>,
    /// Replace an existing --junit file (never a report given).
    #[arg(long)]
    pub force: bool,
}

/// Largest report file read.
const MAX_REPORT: u64 = 1 << 30;

/// What one report file holds.
enum Read {
    /// A corpus run's lines (entries, then its summary).
    Corpus(Vec<EntryResult>, Box<Summary>),
    /// A segment's report.
    Segment(Box<Report>),
}

fn read(path: &Path) -> Result<Read, String> {
    let (f, md) = vmrr_format::input::open_regular(path).map_err(|e| e.to_string())?;
    if md.len() > MAX_REPORT {
        return Err(format!("{} bytes, over the {MAX_REPORT}-byte limit of a report", md.len()));
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::BufReader::new(f), &mut text)
        .map_err(|e| format!("not text: {e}"))?;
    let first = text.lines().find(|l| !l.trim().is_empty()).ok_or("empty")?;
    let v: serde_json::Value = serde_json::from_str(first).map_err(|e| format!("line 1 is not JSON: {e}"))?;
    if v.get("segment").is_some() {
        let r: Report =
            serde_json::from_str(text.trim()).map_err(|e| format!("not a segment report: {e}"))?;
        return Ok(Read::Segment(Box::new(r)));
    }
    let mut entries = Vec::new();
    let mut summary = None;
    for (i, l) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        match serde_json::from_str::<Line>(l)
            .map_err(|e| format!("line {}: not a report line: {e}", i + 1))?
        {
            Line::Entry { result, .. } => entries.push(*result),
            Line::Summary(s) => summary = Some(s),
        }
    }
    let summary = summary.ok_or("no summary line (the run did not finish?)")?;
    if summary.entries != entries.len() {
        return Err(format!("its summary counts {} repros, it holds {}", summary.entries, entries.len()));
    }
    Ok(Read::Corpus(entries, summary))
}

/// Runs `vmrr merge`.
pub fn run(args: &MergeArgs) -> CliResult {
    let fail_on = super::CorpusArgs { fail_on: args.fail_on.clone(), ..Default::default() }.fail_on()?;
    if let Some(j) = &args.junit {
        let inputs: Vec<&Path> = args.reports.iter().map(PathBuf::as_path).collect();
        vmrr_format::output::check(j, &inputs, args.force, vmrr_format::output::OutputKind::File)
            .map_err(|e| CliError::Usage(e.to_string()))?;
    }
    let mut corpora = Vec::new();
    let mut segments = Vec::new();
    let mut refused = Vec::new();
    for p in &args.reports {
        match read(p) {
            Ok(Read::Corpus(e, s)) => corpora.push((p.clone(), e, s)),
            Ok(Read::Segment(r)) => segments.push((p.clone(), r)),
            Err(why) => refused.push(format!("{}: {why}", p.display())),
        }
    }
    if !corpora.is_empty() && !segments.is_empty() {
        return Err(CliError::Usage("shard reports and segment reports cannot be merged together".into()));
    }
    if !segments.is_empty() {
        return merge_segments(segments, refused, args.json);
    }
    merge_corpus(corpora, refused, &fail_on, args)
}

fn merge_segments(segments: Vec<(PathBuf, Box<Report>)>, refused: Vec<String>, json: bool) -> CliResult {
    for r in &refused {
        eprintln!("vmrr: error: {r}");
    }
    let reports: Vec<Report> = segments.into_iter().map(|(_, r)| *r).collect();
    let merged = vmrr_replay::segment::merge(reports)
        .map_err(|e| CliError::Coded { code: INVALID_INPUT, message: e.to_string() })?;
    let printed = super::segments::print_report(&merged, json);
    if !refused.is_empty() {
        return Err(CliError::Reported { code: INVALID_INPUT });
    }
    printed
}

fn merge_corpus(
    corpora: Vec<(PathBuf, Vec<EntryResult>, Box<Summary>)>,
    mut refused: Vec<String>,
    fail_on: &[Verdict],
    args: &MergeArgs,
) -> CliResult {
    let Some(reference) = corpora.first().map(|(_, _, s)| (s.corpus.clone(), s.corpus_entries)) else {
        for r in &refused {
            eprintln!("vmrr: error: {r}");
        }
        return Err(CliError::Coded { code: INVALID_INPUT, message: "no report to merge".into() });
    };
    let count = corpora.iter().find_map(|(_, _, s)| s.shard.map(|s| s.count));
    let mut results: Vec<EntryResult> = Vec::new();
    let mut shards: Vec<usize> = Vec::new();
    let (mut jobs, mut seconds) = (1, 0.0f64);
    for (p, entries, s) in corpora {
        if s.corpus != reference.0 {
            refused.push(format!(
                "{}: a report of another corpus ({}, {} repros; the first report's is {}, {} repros)",
                p.display(),
                s.corpus,
                s.corpus_entries,
                reference.0,
                reference.1
            ));
            continue;
        }
        if let Some(sh) = s.shard {
            if Some(sh.count) != count {
                refused.push(format!("{}: shard {sh}, of another shard count", p.display()));
                continue;
            }
            if shards.contains(&sh.index) {
                refused.push(format!("{}: shard {sh} was given already", p.display()));
                continue;
            }
            shards.push(sh.index);
        }
        jobs = jobs.max(s.jobs);
        seconds = seconds.max(s.seconds);
        results.extend(entries);
    }
    if let Some(n) = count {
        let missing: Vec<String> =
            (0..n).filter(|i| !shards.contains(i)).map(|i| format!("{i}/{n}")).collect();
        if !missing.is_empty() {
            refused.push(format!("shards missing: {}", missing.join(", ")));
        }
    }
    results.sort_by(|a, b| a.path.cmp(&b.path));
    for r in &mut results {
        r.exit_code = entry_code(r.verdict, r.error.as_ref(), fail_on);
    }
    shards.sort_unstable();
    let mut summary = Summary::new(&reference.0, reference.1, None, &results, fail_on, jobs, seconds);
    summary.merged_shards = shards;
    if !refused.is_empty() {
        summary.exit_code = summary.exit_code.max(INVALID_INPUT);
    }
    outcome::print(&results, &summary, args.json)?;
    for r in &refused {
        eprintln!("vmrr: error: {r}");
    }
    if let Some(j) = &args.junit {
        super::junit::write(j, &results, &summary, args.force)?;
    }
    match summary.exit_code {
        0 => Ok(()),
        code => Err(CliError::Reported { code }),
    }
}

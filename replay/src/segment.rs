//! One long trace replayed in segments that run in parallel (on local cores or on
//! separate runners), with the same verdict and first divergence as one sequential replay.
//!
//! The trace's checkpoints cut it into intervals; [`plan`] groups consecutive intervals
//! into N segments of about equal recorded exits. Segment k restores its first
//! checkpoint, replays to each later checkpoint of its span in turn and checks there that
//! the machine equals that checkpoint's snapshot (memory pages, vCPU and device state:
//! `vmrr_engine::snapshot::compare`), and ends at the first checkpoint of the next
//! segment; the last segment replays to the trace's end and runs the failure point, as a
//! sequential replay does. Segment k+1 starts from the very state segment k checked, so
//! when every segment before the first failing one passed, a sequential replay reaches
//! that segment in the same state and diverges at the same record: [`merge`] reports the
//! first failing segment's divergence as the run's.
//!
//! A checkpoint whose state differs although every exit matched is a divergence too (at
//! the checkpoint's position): the replay no longer rebuilds what was recorded there. A
//! sequential replay with `verify_checkpoints` makes the same check at every checkpoint,
//! and so reports the same.

use std::time::Instant;

use vmrr_engine::snapshot::{self, snapshot_dir};
use vmrr_format::overview::{CheckpointMark, TraceOverview};

use crate::error::ReplayError;
use crate::options::Options;
use crate::replayer::{Event, Replayer, Stop};
pub use crate::report::{CheckpointCheck, SegmentInfo};
use crate::report::{Divergence, Outcome, Path, Report, regs_json};
use crate::source::Source;

/// The annotation a segment's own trace carries (`vmrr pack --segments`): `K/N`.
pub const SEGMENT_ANNOTATION: &str = "vmrr.segment";

/// The span of a trace that is itself segment K of N (written by `vmrr pack --segments`,
/// annotated `vmrr.segment`): its first checkpoint to its last, or to its end for the last
/// segment. `None` for any other trace.
pub(crate) fn of_segment_trace(f: &TraceOverview) -> Option<Span> {
    let (k, n) = f.annotation(SEGMENT_ANNOTATION)?.split_once('/')?;
    let (index, count): (usize, usize) = (k.parse().ok()?, n.parse().ok()?);
    if index >= count {
        return None;
    }
    let cuts = cuts(f);
    let (from, rest) = cuts.split_first()?;
    let last = index + 1 == count;
    // The trace holds the segment's exits only (and, past its last checkpoint, a few of the
    // next segment's when that checkpoint's record came late).
    let exits = match rest.last() {
        Some(c) if !last => c.exits.saturating_sub(from.exits),
        _ => f.exits,
    };
    Some(Span { index, count, from: *from, checks: rest.to_vec(), last, exits })
}

/// One segment of a trace: where it starts, the checkpoints it checks, where it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// Its index (0-based).
    pub index: usize,
    /// The number of segments.
    pub count: usize,
    /// The checkpoint it starts from.
    pub from: CheckpointMark,
    /// The checkpoints it checks the machine against, in order; the last is where it ends,
    /// unless it is the last segment (which goes on to the trace's end).
    pub checks: Vec<CheckpointMark>,
    /// Whether it is the last segment.
    pub last: bool,
    /// Exits recorded in it.
    pub exits: u64,
}

/// The checkpoints that cut the trace: every checkpoint but the failure point, in order of
/// position.
fn cuts(f: &TraceOverview) -> Vec<CheckpointMark> {
    let fp = f.failure_point();
    let mut v: Vec<CheckpointMark> = f.checkpoints.iter().filter(|c| Some(**c) != fp).copied().collect();
    v.sort_by_key(|c| (c.at(), c.snapshot_id));
    v
}

/// Cuts the trace into `n` segments of consecutive checkpoint intervals, about equal in
/// recorded exits (each holds at least one interval). Deterministic: every runner computes
/// the same plan from the same trace.
///
/// # Errors
/// `n` is 0, or more than the trace has checkpoints (each segment starts at one).
pub fn plan(f: &TraceOverview, n: usize) -> Result<Vec<Span>, ReplayError> {
    let cuts = cuts(f);
    if n == 0 || n > cuts.len() {
        return Err(ReplayError::Segments(format!(
            "{n} segments asked for; the trace has {} checkpoints{}, so 1 to {} segments",
            cuts.len(),
            if f.failure_point().is_some() { " besides its failure point" } else { "" },
            cuts.len()
        )));
    }
    // Exits in interval i: from cut i to cut i+1 (the last: to the trace's end).
    let ends: Vec<u64> = cuts.iter().skip(1).map(|c| c.exits).chain([f.exits]).collect();
    let weights: Vec<u64> = cuts.iter().zip(&ends).map(|(c, e)| e.saturating_sub(c.exits)).collect();
    let total: u64 = weights.iter().sum();
    // Segment k ends where the exits so far come closest to k/N of all (each segment keeps
    // at least one interval).
    let m = weights.len();
    let mut prefix = vec![0u64; m + 1];
    for (i, w) in weights.iter().enumerate() {
        prefix[i + 1] = prefix[i] + w;
    }
    let mut starts = vec![0usize];
    for k in 1..n {
        let lo = starts[k - 1] + 1;
        let hi = m - (n - k);
        let target = u128::from(total) * k as u128;
        let off = |i: usize| (u128::from(prefix[i]) * n as u128).abs_diff(target);
        let best = (lo..=hi).min_by_key(|&i| (off(i), i)).unwrap_or(lo);
        starts.push(best);
    }
    let mut spans = Vec::with_capacity(n);
    for (k, &s) in starts.iter().enumerate() {
        let e = starts.get(k + 1).copied().unwrap_or(cuts.len());
        let last = k + 1 == n;
        let mut checks: Vec<CheckpointMark> = cuts[s + 1..e].to_vec();
        if !last {
            checks.push(cuts[e]);
        }
        spans.push(Span {
            index: k,
            count: n,
            from: cuts[s],
            checks,
            last,
            exits: weights[s..e].iter().sum(),
        });
    }
    Ok(spans)
}

/// The checkpoints a sequential replay starting after record `start_seq - 1` passes and
/// can check (`verify_checkpoints`).
pub(crate) fn checks_after(f: &TraceOverview, start_seq: u64, goto: Option<u64>) -> Vec<CheckpointMark> {
    cuts(f).into_iter().filter(|c| c.at() >= start_seq && goto.is_none_or(|g| c.at() <= g)).collect()
}

/// Most parents followed while checking that a snapshot's chain is there.
const MAX_PARENTS: usize = snapshot::MAX_CHAIN;

/// The first snapshot of `id`'s chain (itself, then its parents) whose directory is not
/// there, if any.
fn first_missing(root: &std::path::Path, id: u64, max_mem: u64) -> Option<(u64, std::path::PathBuf)> {
    let mut at = id;
    for _ in 0..MAX_PARENTS {
        let dir = snapshot_dir(root, at);
        if !dir.is_dir() {
            return Some((at, dir));
        }
        // A damaged state is reported when the chain is loaded, with its own error.
        match snapshot::load(&dir, max_mem).ok().and_then(|s| s.state.parent) {
            Some(p) => at = p,
            None => return None,
        }
    }
    None
}

/// Fails naming a checkpoint the segment needs whose snapshot, or a snapshot its chain
/// needs, is not there.
pub(crate) fn require_snapshots(src: &Source, span: &Span, max_mem: u64) -> Result<(), ReplayError> {
    for c in std::iter::once(&span.from).chain(&span.checks) {
        if let Some(root) = &src.snapshots {
            if let Some((parent, dir)) =
                first_missing(root, c.snapshot_id, max_mem).filter(|(p, _)| *p != c.snapshot_id)
            {
                return Err(ReplayError::Unreplayable(format!(
                    "checkpoint {} (snapshot {}, at record {}) needs snapshot {parent}, its parent, which is missing ({}): segment {} of {} {} it",
                    c.snapshot_id,
                    c.snapshot_id,
                    c.at(),
                    dir.display(),
                    span.index,
                    span.count,
                    if c == &span.from { "starts from" } else { "checks against" },
                )));
            }
        }
        let dir = src.snapshots.as_ref().map(|r| snapshot_dir(r, c.snapshot_id));
        if !dir.as_ref().is_some_and(|d| d.is_dir()) {
            let at = dir.map_or_else(
                || format!("{}: no snapshot directory", src.trace.display()),
                |d| d.display().to_string(),
            );
            return Err(ReplayError::Unreplayable(format!(
                "checkpoint {} (snapshot {}, at record {}) is missing: segment {} of {} {} it ({at})",
                c.snapshot_id,
                c.snapshot_id,
                c.at(),
                span.index,
                span.count,
                if c == &span.from { "starts from" } else { "checks against" },
            )));
        }
    }
    Ok(())
}

/// Steps `r` to its end, checking the machine at each of `checks` on the way. With
/// `end_at_last`, stops after the last check (a segment that is not the last). Returns how
/// the replay stopped and the checks made; a machine that differs from a checkpoint stops
/// the replay with a divergence at the checkpoint's position.
pub(crate) fn drive(
    r: &mut Replayer,
    src: &Source,
    f: &TraceOverview,
    opts: &Options,
    checks: &[CheckpointMark],
    end_at_last: bool,
) -> Result<(Stop, Vec<CheckpointCheck>), ReplayError> {
    let mut done = Vec::new();
    let mut pending = checks.iter();
    let mut next = pending.next();
    r.set_goto(next.map(CheckpointMark::at).or(opts.goto));
    loop {
        let stop = match r.step()? {
            Event::Stopped(stop) => stop,
            _ => continue,
        };
        let c = match (&stop, next) {
            (Stop::Goto(g), Some(c)) if *g == c.at() => *c,
            _ => return Ok((stop, done)),
        };
        let check = check_at(r, src, f, opts, &c)?;
        let differs = (!check.equal).then(|| check.differences.clone());
        done.push(check);
        if let Some(what) = differs {
            return Ok((Stop::Diverged(Box::new(state_divergence(r, &c, &what))), done));
        }
        next = pending.next();
        match next {
            Some(n) => r.set_goto(Some(n.at())),
            None if end_at_last => return Ok((stop, done)),
            None => r.set_goto(opts.goto),
        }
    }
}

/// Compares the replayed machine with checkpoint `c`'s snapshot.
fn check_at(
    r: &mut Replayer,
    src: &Source,
    f: &TraceOverview,
    opts: &Options,
    c: &CheckpointMark,
) -> Result<CheckpointCheck, ReplayError> {
    let t = Instant::now();
    let root = src.snapshots.as_ref().ok_or_else(|| {
        ReplayError::Unreplayable(format!("checkpoint {} needs the snapshot directory", c.snapshot_id))
    })?;
    let chain = snapshot::load_chain(&snapshot_dir(root, c.snapshot_id), opts.max_mem)?;
    if chain.last().is_some_and(|l| l.state.trace_id != f.trace_id) {
        return Err(ReplayError::Unreplayable(format!(
            "snapshot {} belongs to another trace",
            c.snapshot_id
        )));
    }
    r.complete_pending()?;
    let diff = snapshot::compare(r.machine_mut(), &chain)?;
    Ok(CheckpointCheck {
        snapshot: c.snapshot_id,
        seq: c.at(),
        equal: diff.equal(),
        pages_compared: diff.pages_compared,
        pages_differing: diff.pages_differing,
        whole: diff.whole,
        differences: diff.summary(),
        seconds: t.elapsed().as_secs_f64(),
    })
}

/// The divergence of a machine that differs from checkpoint `c` at its position.
fn state_divergence(r: &Replayer, c: &CheckpointMark, what: &str) -> Divergence {
    let id = c.snapshot_id;
    Divergence {
        seq: c.at(),
        reason: format!(
            "every exit matched, but the replayed machine differs from checkpoint {id}, which the recording saved here: {what}"
        ),
        after_input: None,
        expected: serde_json::json!({ "checkpoint": id, "seq": c.at() }),
        actual: serde_json::Value::Null,
        last_matching: Vec::new(),
        registers: r.machine().regs().map(|x| regs_json(&x)).unwrap_or(serde_json::Value::Null),
        summary: format!("the machine differs from checkpoint {id}: {what}"),
        console: None,
        cause: None,
        suspects: Vec::new(),
        why_none: None,
        search: None,
    }
}

/// Hex of a trace id.
pub(crate) fn hex_id(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why segment reports cannot be merged.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// No report was given.
    #[error("no segment report to merge")]
    Empty,
    /// Reports of different traces or segment counts.
    #[error("segment {index} is of {what}, the first report's is {first}")]
    Mismatch {
        /// The segment's index.
        index: usize,
        /// What differs (`trace 0123...`, `5 segments`).
        what: String,
        /// The first report's.
        first: String,
    },
    /// A report that is not a segment's.
    #[error("report {position} is not a segment report (no `segment` field)")]
    NotSegment {
        /// Its position among the reports given (0-based).
        position: usize,
    },
    /// Segments missing or given twice.
    #[error("segments of {count}: missing {missing:?}, given more than once {twice:?}")]
    Incomplete {
        /// The number of segments.
        count: usize,
        /// Indices missing.
        missing: Vec<usize>,
        /// Indices given more than once.
        twice: Vec<usize>,
    },
}

/// Merges the reports of every segment of one trace into the report a sequential replay
/// would give: the first failing segment's divergence, the last segment's failure and
/// failure point, exits summed; `segments` lists each.
///
/// # Errors
/// The reports are not all segments of one trace, or some segment is missing or doubled.
pub fn merge(mut reports: Vec<Report>) -> Result<Report, MergeError> {
    let first = reports.first().ok_or(MergeError::Empty)?;
    let Some(s0) = &first.segment else { return Err(MergeError::NotSegment { position: 0 }) };
    let (trace, count) = (s0.trace_id.clone(), s0.count);
    for (position, r) in reports.iter().enumerate() {
        let s = r.segment.as_ref().ok_or(MergeError::NotSegment { position })?;
        if s.trace_id != trace {
            return Err(MergeError::Mismatch {
                index: s.index,
                what: format!("trace {}", s.trace_id),
                first: format!("trace {trace}"),
            });
        }
        if s.count != count {
            return Err(MergeError::Mismatch {
                index: s.index,
                what: format!("{} segments", s.count),
                first: format!("{count} segments"),
            });
        }
    }
    reports.sort_by_key(|r| r.segment.as_ref().map_or(0, |s| s.index));
    let mut seen = vec![0usize; count];
    for r in &reports {
        if let Some(n) = r.segment.as_ref().and_then(|s| seen.get_mut(s.index)) {
            *n += 1;
        }
    }
    let missing: Vec<usize> = (0..count).filter(|i| seen[*i] == 0).collect();
    let twice: Vec<usize> = (0..count).filter(|i| seen[*i] > 1).collect();
    if !missing.is_empty() || !twice.is_empty() {
        return Err(MergeError::Incomplete { count, missing, twice });
    }
    let segments: Vec<SegmentInfo> = reports.iter().filter_map(|r| r.segment.clone()).collect();
    let failing = reports.iter().position(|r| r.path == Path::Diverged);
    let exits_replayed = reports.iter().map(|r| r.exits_replayed).sum();
    let serial_bytes = reports.iter().map(|r| r.serial_bytes).sum();
    let loop_seconds: f64 = reports.iter().map(|r| r.loop_seconds).sum();
    let seconds = reports.iter().map(|r| r.seconds).fold(0.0, f64::max);
    let mut notes: Vec<String> = Vec::new();
    for n in reports.iter().flat_map(|r| r.notes.iter()) {
        if !notes.contains(n) {
            notes.push(n.clone());
        }
    }
    let start = reports.first().map(|r| r.start.clone());
    let divergence = failing.and_then(|i| reports[i].divergence.clone());
    let mut last = reports.pop().ok_or(MergeError::Empty)?;
    let path = if failing.is_some() { Path::Diverged } else { Path::Completed };
    // The path reaches the recorded failure only when no segment before diverged.
    if path == Path::Diverged {
        last.emulation_failure = None;
        last.failure = None;
    }
    let on_path = last.emulation_failure.is_some() || last.failure.is_some();
    let at_point = last.failure_point.as_ref().is_some_and(|p| p.reproduced);
    let outcome = match (on_path || at_point, path) {
        (true, _) => Outcome::Reproduced,
        (false, Path::Diverged | Path::Skipped) => Outcome::Diverged,
        (false, Path::Completed) => Outcome::Completed,
    };
    let mut merged = Report {
        outcome,
        verdict: crate::verdict::Verdict::Completed,
        recorded_failure: last.recorded_failure,
        exits_replayed,
        start: start.unwrap_or(last.start.clone()),
        stopped_at: None,
        serial_output_matches: divergence.is_none(),
        divergence,
        emulation_failure: last.emulation_failure.take(),
        failure: last.failure.take(),
        path,
        path_not_deterministic: last.path_not_deterministic.clone(),
        failure_point: last.failure_point.take(),
        serial_bytes,
        cpu_warnings: last.cpu_warnings.clone(),
        notes,
        snapshot_written: None,
        seconds,
        loop_seconds,
        exits_per_s: if loop_seconds > 0.0 { exits_replayed as f64 / loop_seconds } else { 0.0 },
        trace_id: last.trace_id.clone(),
        segment: None,
        segments,
    };
    merged.verdict = crate::verdict::verdict(&merged, merged.recorded_failure);
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trace of `exits` exits with a checkpoint after each of `at` exits (record seq =
    /// exits, stopped-world).
    fn trace(at: &[u64], exits: u64) -> TraceOverview {
        TraceOverview {
            trace_id: [7; 16],
            annotations: Vec::new(),
            cpuid: Vec::new(),
            cpuid_seq: None,
            checkpoints: at
                .iter()
                .enumerate()
                .map(|(i, &e)| CheckpointMark {
                    record_seq: e + 1,
                    after_seq: e,
                    snapshot_id: i as u64,
                    exits: e,
                })
                .collect(),
            end: None,
            exits,
            last_exit_seq: Some(exits),
            records: exits + at.len() as u64,
            last_seq: Some(exits + at.len() as u64),
            unfinished: false,
        }
    }

    #[test]
    fn segments_are_contiguous_balanced_and_cover_every_checkpoint() {
        let f = trace(&[0, 100, 200, 300, 400, 500, 600, 700], 800);
        for n in 1..=8 {
            let spans = plan(&f, n).unwrap();
            assert_eq!(spans.len(), n);
            assert_eq!(spans.iter().map(|s| s.exits).sum::<u64>(), 800);
            for w in spans.windows(2) {
                assert_eq!(w[0].checks.last(), Some(&w[1].from), "a segment ends where the next starts");
            }
            let checked: usize = spans.iter().map(|s| s.checks.len()).sum();
            assert_eq!(checked, 8 - 1, "every checkpoint but the first is checked once");
            if 8 % n == 0 {
                assert!(spans.iter().all(|s| s.exits == 800 / n as u64), "{n}: {spans:?}");
            }
            assert!(spans.last().unwrap().last && spans.iter().rev().skip(1).all(|s| !s.last));
        }
        assert!(plan(&f, 0).is_err() && plan(&f, 9).is_err());
        // Eight equal intervals and a last one of one exit: one interval each, the tiny one
        // joining the last segment.
        let f = trace(&[0, 125, 250, 375, 500, 625, 750, 875, 1000], 1001);
        let exits: Vec<u64> = plan(&f, 8).unwrap().iter().map(|s| s.exits).collect();
        assert_eq!(exits, [125, 125, 125, 125, 125, 125, 125, 126]);
        // Unequal intervals: the heavy one gets a segment of its own.
        let f = trace(&[0, 10, 20, 30], 1000);
        let spans = plan(&f, 2).unwrap();
        assert_eq!((spans[0].exits, spans[1].exits), (30, 970));
    }
}

//! One replay, from a source to its report: read the trace's overview, check the host's
//! CPU, build the machine where replay starts, step the [`Replayer`] to a stop, and report.

use std::time::Instant;

use vmrr_engine::kvm::cpuid;
use vmrr_engine::snapshot;
use vmrr_format::TraceReader;
use vmrr_format::overview::{self, TraceOverview};

use crate::error::ReplayError;
use crate::options::Options;
use crate::replayer::{Replayer, Stop};
use crate::report::{Outcome, Path, Report, Start};
use crate::segment::{SegmentInfo, Span};
use crate::source::Source;

/// Replays `src`.
///
/// # Errors
/// The replay could not run: damaged input, KVM, a missing CPU feature with
/// `strict_cpu`. A divergence is not an error: it is the report's outcome.
pub fn replay(src: &Source, opts: &Options) -> Result<Report, ReplayError> {
    run(src, opts, None)
}

/// Replays segment `index` of `count` of `src` (see [`crate::segment`]): from its first
/// checkpoint, checking the machine at each later checkpoint of its span, to the next
/// segment's first checkpoint (the last segment: to the trace's end, failure point
/// included). The report's `segment` says which and what was checked.
///
/// # Errors
/// As for [`replay`]; also a trace that cannot be cut into `count` segments
/// ([`ReplayError::Segments`]) and a checkpoint of the span whose snapshot is missing
/// (named).
pub fn replay_segment(
    src: &Source,
    opts: &Options,
    index: usize,
    count: usize,
) -> Result<Report, ReplayError> {
    crate::error::check_replay_features(&TraceReader::open(&src.trace)?)?;
    let f = overview::scan(&src.trace)?;
    let spans = crate::segment::plan(&f, count)?;
    let span = spans.into_iter().nth(index).ok_or_else(|| {
        ReplayError::Segments(format!("segment {index} asked for; segments are numbered 0 to {}", count - 1))
    })?;
    crate::segment::require_snapshots(src, &span, opts.max_mem)?;
    run(src, opts, Some(span))
}

fn run(src: &Source, opts: &Options, span: Option<Span>) -> Result<Report, ReplayError> {
    let t0 = Instant::now();
    // Before anything reaches KVM: a trace this replayer cannot replay faithfully.
    crate::error::check_replay_features(&TraceReader::open(&src.trace)?)?;
    let f = overview::scan(&src.trace)?;
    if let (Some(seq), Some(last)) = (opts.goto, f.last_seq) {
        if seq > last && span.is_none() {
            return Err(ReplayError::PastEnd { trace: src.trace.display().to_string(), seq, last });
        }
    }
    let (mut notes, cpu_warnings) = host_notes(&f, opts)?;
    // A segment's own trace (`vmrr pack --segments`) replays as that segment.
    let span = span.or_else(|| crate::segment::of_segment_trace(&f));
    if let Some(s) = &span {
        crate::segment::require_snapshots(src, s, opts.max_mem)?;
    }
    let mut o = opts.clone();
    if let Some(s) = &span {
        o.start = crate::options::StartFrom::Checkpoint(s.from.snapshot_id);
        o.goto = None;
    }
    // Checking a checkpoint compares the pages written since the last one: they are logged.
    o.dirty_log |= span.is_some() || o.verify_checkpoints;
    let opts = &o;
    // A segment that ends before the trace's end does not reach the recorded failure.
    let reaches_end = span.as_ref().is_none_or(|s| s.last) && opts.goto.is_none();
    let path_not_deterministic = crate::hosts::path_limits(&f);
    let fp_wanted = opts.failure_point && reaches_end;
    // --rebuild and --from-checkpoint (and a segment) ask for the path: it is replayed (and
    // diverges).
    let path_asked = opts.force_path || opts.start != crate::options::StartFrom::Auto;
    let vcpus = f.annotation("vmrr.vcpus").and_then(|v| v.parse::<u32>().ok()).unwrap_or(1);
    let devices = f.annotation("vmrr.device_threads").and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
    if (vcpus > 1 || devices > 0) && (path_asked || !fp_wanted || f.failure_point().is_none()) {
        return Err(ReplayError::SeveralVcpus {
            trace: src.trace.display().to_string(),
            threads: if vcpus > 1 {
                format!("{vcpus} vCPUs")
            } else {
                format!("{devices} device thread(s) beside its vCPU")
            },
            path_asked: path_asked || (!opts.failure_point && f.failure_point().is_some()),
        });
    }
    if !path_not_deterministic.is_empty() && !path_asked && fp_wanted {
        if let Some(mark) = f.failure_point() {
            // Straight to the failure point: the path would diverge, and say nothing new.
            let fp = crate::failure_point::run(src, &f, opts, mark)?;
            let mut report = crate::report::skipped_path(fp, path_not_deterministic, notes, cpu_warnings, t0);
            report.recorded_failure = f.last_exit_seq;
            report.verdict = crate::verdict::verdict(&report, report.recorded_failure);
            return Ok(with_symbols(report, &f, opts));
        }
    }
    let (machine, start) = crate::start::prepare(src, &f, opts)?;
    let mut r = Replayer::new(machine, TraceReader::open(&src.trace)?, &start, f.exits, opts)?;
    let (checks, end_at_last) = match &span {
        Some(s) => (s.checks.clone(), !s.last),
        None if opts.verify_checkpoints => (crate::segment::checks_after(&f, start.seq, opts.goto), false),
        None => (Vec::new(), false),
    };
    let t_loop = Instant::now();
    let (stop, checked) = crate::segment::drive(&mut r, src, &f, opts, &checks, end_at_last)?;
    let loop_seconds = t_loop.elapsed().as_secs_f64();
    r.end_progress();
    let stop = explained(stop, src, &f, opts)?;
    // A guest rebuilt from another image or firmware than the recorded one (a fix under
    // test) is not the guest the failure-point snapshot holds: running that snapshot would
    // test the recorded code again.
    let replaced = opts.start == crate::options::StartFrom::Rebuild
        && src.guest_replaced(opts.image.as_deref(), opts.firmware.as_deref(), opts.kernel.as_deref());
    if replaced && f.failure_point().is_some() {
        notes.push(
            "the guest was rebuilt from another image or firmware than the recorded one: the failure-point snapshot (the recorded code) was not run".into(),
        );
    }
    let failure_point = match (f.failure_point(), fp_wanted && !replaced) {
        (Some(mark), true) => Some(crate::failure_point::run(src, &f, opts, mark)?),
        _ => None,
    };
    let segment = span.map(|s| segment_info(&s, &f));
    let parts = ReportParts {
        notes,
        cpu_warnings,
        t0,
        loop_seconds,
        failure_point,
        reaches_end,
        path_not_deterministic,
    };
    let mut report = finish(r, opts, stop, &f, start, parts)?;
    if let Some(mut s) = segment {
        s.checks = checked;
        s.path = if report.path == Path::Diverged { "diverged" } else { "completed" }.into();
        s.seconds = report.seconds;
        report.segment = Some(s);
    } else if opts.verify_checkpoints {
        report.notes.push(format!(
            "checked the machine against {} checkpoint{} on the way",
            checked.len(),
            if checked.len() == 1 { "" } else { "s" }
        ));
    }
    Ok(with_symbols(report, &f, opts))
}

/// What the report says about the trace and this host before replay starts: notes, and
/// the CPU features the recorded guest saw that this host lacks (an error with
/// `strict_cpu`).
fn host_notes(f: &TraceOverview, opts: &Options) -> Result<(Vec<String>, Vec<String>), ReplayError> {
    let mut notes = crate::hosts::notes(f);
    if f.unfinished {
        notes.push(
            "the trace's writer did not finish (no index or a torn last chunk): replaying what is intact \
             (`vmrr verify TRACE --repair OUT` writes an intact copy)"
                .into(),
        );
    }
    let cpu_warnings = match cpuid::host_supported() {
        Ok(host) => cpuid::missing(&f.cpuid, &host),
        Err(e) => vec![format!("(could not read this host's CPUID: {e})")],
    };
    if opts.strict_cpu && !cpu_warnings.is_empty() {
        return Err(ReplayError::CpuMismatch(cpu_warnings.join(", ")));
    }
    Ok((notes, cpu_warnings))
}

/// The stop, a divergence given its cause: searched for (within `explain_steps`), or
/// none to search for (a checkpoint that differs; the recorded failure's instruction run
/// without failing).
fn explained(stop: Stop, src: &Source, f: &TraceOverview, opts: &Options) -> Result<Stop, ReplayError> {
    Ok(match stop {
        // A machine that differs from a checkpoint has no instruction to search for.
        Stop::Diverged(d) if d.actual.is_null() && d.expected.get("checkpoint").is_some() => {
            Stop::Diverged(d)
        }
        // The guest reached the recorded failure's instruction and ran on: nothing before
        // it differed, so there is no cause to search for.
        Stop::Diverged(mut d) if reached_failure(f, &d) => {
            d.cause = Some(format!(
                "the guest reached the instruction that failed at record {} when recording, and this host ran it without the failure",
                d.seq
            ));
            Stop::Diverged(d)
        }
        Stop::Diverged(mut d) => {
            if let Some(max_steps) = opts.explain_steps {
                let limits = crate::explain::SearchLimits { max_steps, progress: opts.progress };
                let e = crate::explain::explain(src, f, opts, d.seq, d.after_input, limits)?;
                e.explain(&mut d);
            }
            Stop::Diverged(d)
        }
        other => other,
    })
}

/// What a segment's report says about it before it ran.
fn segment_info(s: &Span, f: &TraceOverview) -> SegmentInfo {
    SegmentInfo {
        index: s.index,
        count: s.count,
        trace_id: crate::segment::hex_id(&f.trace_id),
        from_snapshot: s.from.snapshot_id,
        to_snapshot: (!s.last).then(|| s.checks.last().map(|c| c.snapshot_id)).flatten(),
        exits: s.exits,
        checks: Vec::new(),
        path: String::new(),
        error: None,
        seconds: 0.0,
    }
}

/// Whether divergence `d` is at the recorded run's fatal exit, the guest having made a
/// non-fatal exit there instead.
fn reached_failure(f: &TraceOverview, d: &crate::report::Divergence) -> bool {
    f.ended_in_failure()
        && f.last_exit_seq == Some(d.seq)
        && d.actual.get("kind").and_then(|k| k.as_str()).is_some_and(|k| !crate::verdict::is_fatal(k))
}

/// The report with its trace's id, addresses named from `--system-map`, and the map's
/// fit to the guest among the notes.
fn with_symbols(mut report: Report, f: &TraceOverview, opts: &Options) -> Report {
    report.trace_id = crate::segment::hex_id(&f.trace_id);
    if let Some(map) = &opts.system_map {
        report.symbolize(map);
        if let Some(w) = report.failure_point.as_ref().and_then(|p| p.system_map_warning.clone()) {
            report.notes.push(w);
        }
    }
    report
}

/// What the report needs besides the replayer.
struct ReportParts {
    /// Whether the replay ran to the trace's end (so a recorded failure counts).
    reaches_end: bool,
    failure_point: Option<crate::report::FailurePoint>,
    path_not_deterministic: Vec<String>,
    notes: Vec<String>,
    cpu_warnings: Vec<String>,
    t0: Instant,
    loop_seconds: f64,
}

fn finish(
    mut r: Replayer,
    opts: &Options,
    stop: Stop,
    f: &TraceOverview,
    start: Start,
    parts: ReportParts,
) -> Result<Report, ReplayError> {
    let (divergence, stopped_at) = match stop {
        Stop::Diverged(d) => (Some(*d), None),
        Stop::Goto(g) => (None, Some(g)),
        Stop::End => (None, None),
    };
    let mut snapshot_written = None;
    if let (Some(dir), None) = (&opts.snapshot_at, &divergence) {
        let at = stopped_at.or(opts.goto);
        let who = snapshot::Identity {
            id: 0,
            parent: None,
            trace_id: f.trace_id,
            exit_seq: at,
            annotations: &f.annotations,
        };
        snapshot::take_new(r.machine_mut(), dir, &who, opts.replace_output)?;
        snapshot_written = Some(dir.display().to_string());
    }
    // Every write the guest made to the serial port was checked byte for byte against the
    // recording (a difference is a divergence), so without a divergence the replayed
    // console printed exactly what the recorded one did over the replayed span.
    let serial_output_matches = divergence.is_none();
    let path = if divergence.is_some() { Path::Diverged } else { Path::Completed };
    let reproduced = r.failure().is_some() || parts.failure_point.as_ref().is_some_and(|p| p.reproduced);
    let outcome = match (reproduced, path) {
        (true, _) => Outcome::Reproduced,
        (false, Path::Diverged | Path::Skipped) => Outcome::Diverged,
        (false, Path::Completed) if stopped_at.is_some() => Outcome::Stopped,
        (false, Path::Completed) => Outcome::Completed,
    };
    let (emulation_failure, failure) = match r.failure().cloned() {
        Some(rep) if rep.is_emulation_failure() => (Some(rep), None),
        other => (None, other),
    };
    let recorded_failure = f.end.filter(|_| f.ended_in_failure() && parts.reaches_end).and(f.last_exit_seq);
    let mut report = Report {
        outcome,
        verdict: crate::verdict::Verdict::Completed,
        recorded_failure,
        exits_replayed: r.exits_replayed(),
        start,
        stopped_at,
        divergence,
        emulation_failure,
        failure,
        path,
        path_not_deterministic: parts.path_not_deterministic,
        failure_point: parts.failure_point,
        serial_output_matches,
        serial_bytes: r.machine().serial().total(),
        cpu_warnings: parts.cpu_warnings,
        notes: parts.notes,
        snapshot_written,
        seconds: parts.t0.elapsed().as_secs_f64(),
        loop_seconds: parts.loop_seconds,
        exits_per_s: if parts.loop_seconds > 0.0 {
            r.exits_replayed() as f64 / parts.loop_seconds
        } else {
            0.0
        },
        trace_id: String::new(),
        segment: None,
        segments: Vec::new(),
    };
    report.verdict = crate::verdict::verdict(&report, recorded_failure);
    Ok(report)
}

//! One replay, from a source to its report: read the trace's overview, check the host's
//! CPU, build the machine where replay starts, step the [`Replayer`] to a stop, and report.

use std::time::Instant;

use vmrr_engine::snapshot;
use vmrr_format::TraceReader;
use vmrr_format::overview::{self, TraceOverview};

use crate::cpu_check;
use crate::error::ReplayError;
use crate::options::Options;
use crate::replayer::{Event, Replayer, Stop};
use crate::report::{Outcome, Path, Report, Start};
use crate::source::Source;

/// Replays `src`.
///
/// # Errors
/// The replay could not run: damaged input, KVM, a missing CPU feature with
/// `strict_cpu`. A divergence is not an error: it is the report's outcome.
pub fn replay(src: &Source, opts: &Options) -> Result<Report, ReplayError> {
    let t0 = Instant::now();
    // Before anything reaches KVM: a trace this replayer cannot replay faithfully.
    crate::error::check_replay_features(&TraceReader::open(&src.trace)?)?;
    let f = overview::scan(&src.trace)?;
    let mut notes = crate::hosts::notes(&f);
    if f.unfinished {
        notes.push(
            "the trace's writer did not finish (no index or a torn last chunk): replaying what is intact"
                .into(),
        );
    }
    let cpu_warnings = match cpu_check::host_cpuid() {
        Ok(host) => cpu_check::missing(&f.cpuid, &host),
        Err(e) => vec![format!("(could not read this host's CPUID: {e})")],
    };
    if opts.strict_cpu && !cpu_warnings.is_empty() {
        return Err(ReplayError::CpuMismatch(cpu_warnings.join(", ")));
    }
    let (machine, start) = crate::start::prepare(src, &f, opts)?;
    let mut r = Replayer::new(machine, TraceReader::open(&src.trace)?, &start, f.exits, opts)?;
    let t_loop = Instant::now();
    let stop = loop {
        if let Event::Stopped(stop) = r.step()? {
            break stop;
        }
    };
    let loop_seconds = t_loop.elapsed().as_secs_f64();
    r.end_progress();
    let stop = match stop {
        Stop::Diverged(mut d) => {
            if let Some(max_steps) = opts.explain_steps {
                let limits = crate::explain::SearchLimits { max_steps, progress: opts.progress };
                let e = crate::explain::explain(src, &f, opts, d.seq, d.after_input, limits)?;
                e.explain(&mut d);
            }
            Stop::Diverged(d)
        }
        other => other,
    };
    // A guest rebuilt from another image or firmware than the recorded one (a fix under
    // test) is not the guest the failure-point snapshot holds: running that snapshot would
    // test the recorded code again.
    let replaced = opts.start == crate::options::StartFrom::Rebuild
        && src.guest_replaced(opts.image.as_deref(), opts.firmware.as_deref());
    if replaced && f.failure_point().is_some() {
        notes.push(
            "the guest was rebuilt from another image or firmware than the recorded one: the failure-point snapshot (the recorded code) was not run".into(),
        );
    }
    let failure_point = match (f.failure_point(), opts.failure_point && opts.goto.is_none() && !replaced) {
        (Some(mark), true) => Some(crate::failure_point::run(src, &f, opts, mark)?),
        _ => None,
    };
    finish(r, opts, stop, &f, start, ReportParts { notes, cpu_warnings, t0, loop_seconds, failure_point })
}

/// What the report needs besides the replayer.
struct ReportParts {
    failure_point: Option<crate::report::FailurePoint>,
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
        (false, Path::Diverged) => Outcome::Diverged,
        (false, Path::Completed) => Outcome::Completed,
    };
    let (emulation_failure, failure) = match r.failure().cloned() {
        Some(rep) if rep.is_emulation_failure() => (Some(rep), None),
        other => (None, other),
    };
    let recorded_failure = f.end.filter(|_| f.ended_in_failure() && opts.goto.is_none()).and(f.last_exit_seq);
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
    };
    report.verdict = crate::verdict::verdict(&report, recorded_failure);
    Ok(report)
}

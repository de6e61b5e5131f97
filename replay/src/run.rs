//! One replay, from a source to its report: read the trace's overview, check the host's
//! CPU, build the machine where replay starts, step the [`Replayer`] to a stop, and report.

use std::time::Instant;

use vmrr_engine::kvm::cpuid;
use vmrr_engine::snapshot;
use vmrr_format::TraceReader;
use vmrr_format::overview::{self, TraceOverview};

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
    let cpu_warnings = match cpuid::host_supported() {
        Ok(host) => cpuid::missing(&f.cpuid, &host),
        Err(e) => vec![format!("(could not read this host's CPUID: {e})")],
    };
    if opts.strict_cpu && !cpu_warnings.is_empty() {
        return Err(ReplayError::CpuMismatch(cpu_warnings.join(", ")));
    }
    let path_not_deterministic = crate::hosts::path_limits(&f);
    let fp_wanted = opts.failure_point && opts.goto.is_none();
    // --rebuild and --from-checkpoint ask for the path: it is replayed (and diverges).
    let path_asked = opts.force_path || opts.start != crate::options::StartFrom::Auto;
    if !path_not_deterministic.is_empty() && !path_asked && fp_wanted {
        if let Some(mark) = f.failure_point() {
            // Straight to the failure point: the path would diverge, and say nothing new.
            let fp = crate::failure_point::run(src, &f, opts, mark)?;
            let report = crate::report::skipped_path(fp, path_not_deterministic, notes, cpu_warnings, t0);
            return Ok(with_symbols(report, opts));
        }
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
    let failure_point = match (f.failure_point(), fp_wanted) {
        (Some(mark), true) => Some(crate::failure_point::run(src, &f, opts, mark)?),
        _ => None,
    };
    let parts = ReportParts { notes, cpu_warnings, t0, loop_seconds, failure_point, path_not_deterministic };
    finish(r, opts, stop, &f, start, parts).map(|r| with_symbols(r, opts))
}

/// The report with addresses named from `--system-map`, and the map's fit to the guest
/// among the notes.
fn with_symbols(mut report: Report, opts: &Options) -> Report {
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
        (false, Path::Completed) => Outcome::Completed,
    };
    let (emulation_failure, failure) = match r.failure().cloned() {
        Some(rep) if rep.is_emulation_failure() => (Some(rep), None),
        other => (None, other),
    };
    Ok(Report {
        outcome,
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
    })
}

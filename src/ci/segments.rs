//! `vmrr replay SRC --segments N [--segment K]`: one trace replayed in segments.
//!
//! With `--segment K` this process replays segment K (what a runner does) and prints its
//! report; `vmrr merge` combines the segments' reports. Without it, the N segments run as
//! child processes, `--jobs` at a time, and their merged report is printed: the verdict
//! and first divergence of a sequential replay (see `vmrr_replay::segment`).

use std::time::{Duration, Instant};

use vmrr_engine::devices::console::Console;
use vmrr_format::bundle::Budgets;
use vmrr_replay::{Options, Report, StartFrom, segment, source};

use crate::cmd::replay::ReplayArgs;
use crate::exit_code::{CliError, CliResult};

/// The replay options of one segment.
fn options(args: &ReplayArgs, budgets: &Budgets) -> Options {
    Options {
        goto: None,
        snapshot_at: None,
        start: StartFrom::Auto,
        strict_cpu: args.strict_cpu,
        serial: Console::capture_only(),
        image: args.image.clone(),
        firmware: args.firmware.clone(),
        kernel: args.kernel.clone(),
        initrd: args.initrd.clone(),
        force_path: true,
        system_map: None,
        max_mem: budgets.max_mem,
        replace_output: false,
        stall: Duration::from_secs(args.stall_seconds.max(1)),
        progress: false,
        explain_steps: (!args.no_explain).then_some(args.explain_steps),
        failure_point: !args.no_failure_point,
        dirty_log: true,
        verify_checkpoints: true,
    }
}

/// Prints `report` as `vmrr replay` does and returns its exit code.
pub fn print_report(report: &Report, json: bool) -> CliResult {
    if json {
        crate::cmd::print_json(report)?;
    } else {
        print!("{}", report.human());
    }
    match report.outcome.exit_code() {
        0 => Ok(()),
        code => Err(CliError::Reported { code }),
    }
}

/// Runs `vmrr replay --segments N [--segment K]`.
pub fn run(args: &ReplayArgs, budgets: &Budgets) -> CliResult {
    let Some(n) = args.ci.segments else { return Ok(()) };
    if n == 0 {
        return Err(CliError::Usage("--segments 0: at least one segment".into()));
    }
    if !args.src.exists() {
        return Err(CliError::Usage(format!("{}: no such file or directory", args.src.display())));
    }
    for (given, what) in [
        (args.goto.is_some(), "--goto"),
        (args.snapshot_at.is_some(), "--snapshot-at"),
        (args.gdb.is_some(), "--gdb"),
        (args.from_checkpoint.is_some(), "--from-checkpoint"),
        (args.rebuild, "--rebuild"),
    ] {
        if given {
            return Err(CliError::Usage(format!("{what} cannot be combined with --segments")));
        }
    }
    if let Some(k) = args.ci.segment {
        if k >= n {
            return Err(CliError::Usage(format!(
                "--segment {k} of --segments {n}: segments are numbered 0 to {}",
                n - 1
            )));
        }
        let src = source::open(&args.src, budgets).map_err(crate::cmd::replay_err)?;
        let report = vmrr_replay::replay_segment(&src, &options(args, budgets), k, n)
            .map_err(|e| crate::cmd::replay_err(src.explain(e)))?;
        return print_report(&report, args.json);
    }
    let t0 = Instant::now();
    let jobs = super::jobs(args.ci.jobs)?.min(n);
    let mut extra = super::worker::forwarded(args, budgets);
    extra.push(format!("--segments={n}"));
    let runs = run_segments(&args.src, &extra, n, jobs);
    let mut reports = Vec::new();
    let mut worst = 0u8;
    for (k, run) in runs.iter().enumerate() {
        match (run.error(), &run.report) {
            (None, Some(r)) => reports.push(r.clone()),
            (e, _) => {
                let e = e.unwrap_or(super::outcome::EntryError {
                    code: crate::exit_code::INTERNAL,
                    message: "the segment's replay printed no report".into(),
                });
                eprintln!("vmrr: error: segment {k} of {n}: {}", e.message);
                worst = worst.max(e.code);
            }
        }
    }
    if worst != 0 {
        eprintln!("vmrr: {} of {n} segments could not be replayed; no merged report", n - reports.len());
        return Err(CliError::Reported { code: worst });
    }
    let mut merged = segment::merge(reports).map_err(|e| CliError::Replay(e.to_string()))?;
    merged.seconds = t0.elapsed().as_secs_f64();
    print_report(&merged, args.json)
}

/// Runs the `n` segments as child processes, `jobs` at a time; their runs in order.
fn run_segments(src: &std::path::Path, extra: &[String], n: usize, jobs: usize) -> Vec<super::worker::Run> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let out: Vec<std::sync::Mutex<Option<super::worker::Run>>> =
        (0..n).map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| {
                loop {
                    let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if k >= n {
                        break;
                    }
                    let mut args = extra.to_vec();
                    args.push(format!("--segment={k}"));
                    let run = super::worker::replay_child(src, &args);
                    eprintln!(
                        "segment {k} of {n}: {} in {:.1} s",
                        run.report.as_ref().map_or("error", |r| r.verdict.name()),
                        run.seconds
                    );
                    if let Ok(mut slot) = out[k].lock() {
                        *slot = Some(run);
                    }
                }
            });
        }
    });
    out.into_iter().filter_map(|m| m.into_inner().ok().flatten()).collect()
}

//! `vmrr demo`: the whole story in a few seconds, on the built-in `emulation-failure`
//! guest: record with checkpoints, pack one file, replay it from the start and from the
//! last checkpoint, and show the reproduced failure.

use std::path::{Path, PathBuf};
use std::time::Instant;

use vmrr_engine::devices::console::Console;
use vmrr_replay::{Options, Outcome, StartFrom, replay, source};

use super::record::RecordArgs;
use crate::exit_code::{CliError, CliResult};

fn step(n: u32, what: &str) {
    println!("\n[{n}/5] {what}");
}

/// Runs the demo in `dir` (created; defaults to a new directory under the system's
/// temporary directory, kept for inspection). The files of an earlier demo there are
/// replaced only with `force`.
pub fn run(dir: Option<&Path>, force: bool, budgets: &vmrr_format::bundle::Budgets) -> CliResult {
    let max_mem = budgets.max_mem;
    let t0 = Instant::now();
    let dir: PathBuf = match dir {
        Some(d) => {
            crate::output::directory(d)?;
            d.to_path_buf()
        }
        None => tempfile::Builder::new()
            .prefix("vmrr-demo-")
            .tempdir()
            .map_err(|source| CliError::Output {
                context: "creating a directory for the demo".into(),
                source,
            })?
            .keep(),
    };
    let trace = dir.join("demo.vmrr");
    let serial = dir.join("serial.txt");
    let bundle = dir.join("repro.vmrrb");
    // The output rule, before anything is written: an earlier demo's files only with --force.
    vmrr_format::output::check_trace(&trace, &[], force, true).map_err(crate::output::refused)?;
    for f in [&serial, &bundle] {
        crate::output::check_file(f, &[], force)?;
    }
    println!("vmrr demo: a guest does some work, then runs an instruction KVM cannot emulate.");
    println!("Everything is written to {}", dir.display());

    step(1, "record the guest on KVM, every exit into a trace, a checkpoint every 60 exits");
    let args = RecordArgs { force, ..record_args(&trace, &serial) };
    match super::record::run(&args) {
        Ok(()) => {}
        // The guest is meant to fail: exit code 5 is the expected outcome here.
        Err(CliError::Reported { code: crate::exit_code::GUEST_FATAL }) => {}
        Err(e) => return Err(e),
    }
    let printed = std::fs::read_to_string(&serial).unwrap_or_default();
    for line in printed.lines() {
        println!("  guest: {line}");
    }

    step(2, "pack the trace and its snapshots into one file to ship");
    super::pack::run(&trace, &bundle, None, None, force, false)?;

    let opts = |start| Options {
        start,
        max_mem,
        serial: Console::capture_only(),
        progress: false,
        ..Options::default()
    };
    let src = source::open(&bundle, budgets).map_err(super::replay_err)?;
    step(3, "replay the bundle from the start (no device, file or clock of the recording needed)");
    let from_start = replay(&src, &opts(StartFrom::Auto)).map_err(super::replay_err)?;
    println!(
        "  {} after {} from snapshot {}; serial output matches: {}",
        outcome(from_start.outcome),
        vmrr_format::describe::count(from_start.exits_replayed, "exit"),
        from_start.start.snapshot.map_or("none (rebuilt)".to_string(), |s| s.to_string()),
        from_start.serial_output_matches
    );

    step(4, "replay it again from the last checkpoint before the failure");
    let overview = vmrr_format::overview::scan(&src.trace).map_err(|e| super::replay_err(e.into()))?;
    let failure_point = overview.failure_point();
    let last =
        overview.checkpoints.iter().rev().find(|c| Some(**c) != failure_point).map_or(0, |c| c.snapshot_id);
    let from_last = replay(&src, &Options { failure_point: false, ..opts(StartFrom::Checkpoint(last)) })
        .map_err(super::replay_err)?;
    println!(
        "  {} after {} from snapshot {last}",
        outcome(from_last.outcome),
        vmrr_format::describe::count(from_last.exits_replayed, "exit")
    );

    step(5, "restore the snapshot taken at the failing exit and run it: it fails again at once");
    let fp = from_start.failure_point.as_ref();
    match fp {
        Some(p) => println!(
            "  snapshot {}: {} (instruction bytes {}, registers {})",
            p.snapshot,
            p.detail,
            if p.insn_bytes_match { "match" } else { "DIFFER" },
            if p.registers_match { "match" } else { "DIFFER" }
        ),
        None => println!("  the recording has no failure-point snapshot"),
    }

    print_failure(&from_last);
    println!(
        "\nvmrr demo: {} in {:.1} s. Try: vmrr inspect {} | tail; vmrr replay {}",
        if reproduced(&from_start, &from_last) {
            "failure reproduced from the start, from the last checkpoint and from the failure point"
        } else {
            "the failure was NOT reproduced"
        },
        t0.elapsed().as_secs_f64(),
        trace.display(),
        bundle.display()
    );
    if reproduced(&from_start, &from_last) {
        Ok(())
    } else {
        Err(CliError::Reported { code: crate::exit_code::DIVERGED })
    }
}

/// What `vmrr record` is asked in step 1: the failing guest, a checkpoint every 60 exits.
fn record_args(trace: &Path, serial: &Path) -> RecordArgs {
    RecordArgs {
        guest: Some("emulation-failure".into()),
        image: None,
        load_addr: None,
        entry: None,
        mode: None,
        ring: 0,
        firmware: None,
        kernel: None,
        initrd: None,
        cmdline: None,
        boot_protocol: "auto".into(),
        out: Some(trace.to_path_buf()),
        force: false,
        no_trace: false,
        iterations: None,
        mem_mib: Some(64),
        cpuid: Some("deterministic".into()),
        max_exits: None,
        vcpus: 1,
        irqchip: None,
        max_seconds: Some(30.0),
        serial: serial.display().to_string(),
        debugcon: "none".into(),
        zstd_level: 3,
        no_compress: false,
        sync: "chunk".into(),
        checkpoint_every: Some(60),
        checkpoint_interval_ms: None,
        stop_world_checkpoints: false,
        checkpoint_buffer_mib: 64,
        no_snapshot: false,
        flight_recorder: false,
        keep: 3,
        timing: false,
        json: false,
    }
}

/// The reproduced failure, decoded.
fn print_failure(report: &vmrr_replay::Report) {
    println!("\n--- the reproduced failure ---");
    if let Some(f) = &report.emulation_failure {
        println!("{} at rip {:#x}", f.exit, f.rip);
        if let (Some(d), Some(n)) = (&f.disassembly, f.insn_len) {
            println!(
                "  {d}   ({n} bytes: {}; KVM reported a {}-byte fetch window)",
                f.insn_bytes, f.insn_size
            );
        }
        if let Some(a) = f.memory_operand {
            println!("  accessing {a:#x}: {}", f.memory.as_deref().unwrap_or("?"));
        }
    }
}

/// The failure happened again on both paths and from the failure point.
fn reproduced(from_start: &vmrr_replay::Report, from_last: &vmrr_replay::Report) -> bool {
    from_start.emulation_failure.is_some()
        && from_last.outcome == Outcome::Reproduced
        && from_start.failure_point.as_ref().is_some_and(|p| p.reproduced)
}

fn outcome(o: Outcome) -> &'static str {
    match o {
        Outcome::Completed => "completed",
        Outcome::Stopped => "stopped where asked",
        Outcome::Reproduced => "reproduced the emulation failure",
        Outcome::Diverged => "DIVERGED",
    }
}

//! The one output rule (`vmrr_format::output`, `src/output.rs`), command by command: never
//! an existing file or directory (another trace's snapshots included) without `--force`,
//! refused as a usage error (exit 2) naming the path and `--force`; snapshot directories
//! named after the whole trace file name; files written under a temporary name and renamed,
//! with one mode.

mod common;
use common::*;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The trace id `vmrr stats` reads from a trace.
fn trace_id(trace: &Path) -> String {
    let o = vmrr(&["stats", s(trace), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    summary(&o)["trace_id"].as_str().expect("trace_id").to_string()
}

/// A refusal: exit 2, the path named, `--force` said.
fn refused(o: &std::process::Output, path: &Path, what: &str) {
    assert_eq!(o.status.code(), Some(2), "{what}: {}", stderr(o));
    let e = stderr(o);
    assert!(
        e.contains(s(path)) && e.contains("--force"),
        "{what}: names {} and --force: {e}",
        path.display()
    );
}

fn record_hello(out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["record", "--guest", "hello", "-o", s(out), "--serial", "none"];
    args.extend_from_slice(extra);
    vmrr(&args)
}

/// The scenario: `bios.vmrr` was recorded before snapshot directories were named
/// after the whole file name, so its snapshots are in `bios.snapshots/`; a `bios.log`
/// exists. `vmrr record --guest hello -o bios.log` replaced both. Now it is refused, and
/// with `--force` it replaces `bios.log` alone: `bios.vmrr` still replays.
#[test]
fn recording_over_bios_log_keeps_bios_vmrr_and_its_snapshots() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let bios = at(&d, "bios.vmrr");
    let o = record_hello(&bios, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The layout of a trace recorded before.
    let legacy = at(&d, "bios.snapshots");
    std::fs::rename(vmrr_format::layout::snapshots_of(&bios), &legacy).unwrap();
    let log = at(&d, "bios.log");
    std::fs::write(&log, "the user's log\n").unwrap();

    refused(&record_hello(&log, &[]), &log, "record over bios.log");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "the user's log\n", "bios.log untouched");

    let o = record_hello(&log, &["--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(at(&d, "bios.log.snapshots/snap-000000/state.bin").is_file(), "bios.log's own snapshots");
    assert!(legacy.join("snap-000000/state.bin").is_file(), "bios.vmrr's snapshots are still there");
    let (code, v) = replay_json(&bios, &[]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["start"]["snapshot"], 0, "bios.vmrr replays from its own snapshot 0: {v}");
    let (code, v) = replay_json(&log, &[]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["start"]["snapshot"], 0, "{v}");
}

/// `-o a.vmrr` over a trace is refused (the trace and its snapshots unchanged); a snapshots
/// directory left without its trace is refused too; `--force` replaces both; a directory
/// is never an output, even with `--force`.
#[test]
fn recording_over_a_trace_needs_force() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let a = at(&d, "a.vmrr");
    assert!(record_hello(&a, &[]).status.success());
    let id = trace_id(&a);
    let snaps = at(&d, "a.vmrr.snapshots");
    let state = std::fs::read(snaps.join("snap-000000/state.bin")).unwrap();

    refused(&record_hello(&a, &[]), &a, "record over a trace");
    assert_eq!(trace_id(&a), id, "the trace is unchanged");
    assert_eq!(std::fs::read(snaps.join("snap-000000/state.bin")).unwrap(), state, "its snapshot too");

    std::fs::remove_file(&a).unwrap();
    refused(&record_hello(&a, &[]), &snaps, "a snapshots directory without its trace");
    // With --no-snapshot the snapshots directory is not an output.
    let o = record_hello(&a, &["--no-snapshot"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(snaps.join("snap-000000/state.bin")).unwrap(), state);

    let o = record_hello(&a, &["--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_ne!(trace_id(&a), id, "replaced");
    let (code, v) = replay_json(&a, &[]);
    assert_eq!(code, Some(0), "the new trace and its new snapshots belong together: {v}");

    // A user's directory among the snapshots: not vmrr's, so not replaced even with --force.
    std::fs::create_dir(snaps.join("notes")).unwrap();
    let o = record_hello(&a, &["--force"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(snaps.join("notes").is_dir());

    let dir = at(&d, "dir");
    std::fs::create_dir(&dir).unwrap();
    let o = record_hello(&dir, &["--force"]);
    assert_eq!(o.status.code(), Some(2), "record -o DIR is a usage error: {}", stderr(&o));
    assert!(stderr(&o).contains("a directory"), "{}", stderr(&o));
}

/// `timeline`, `profile --svg`, `pack`, `bench --plot` and `demo --dir` refuse an existing
/// output before doing their work, and replace it with `--force`; what they write has the
/// mode every vmrr output has (that of a file the user creates: 0666 less the umask).
#[test]
fn every_writer_refuses_an_existing_output() {
    let Some((d, trace)) = recorded("hello", &["--timing"]) else { return };
    let mine = "the user's file\n";
    let user_file = |name: &str| {
        let p = at(&d, name);
        std::fs::write(&p, mine).unwrap();
        p
    };
    let untouched = |p: &Path| assert_eq!(std::fs::read_to_string(p).unwrap(), mine, "{}", p.display());

    let json = user_file("t.json");
    refused(&vmrr(&["timeline", s(&trace), "-o", s(&json)]), &json, "timeline");
    untouched(&json);
    let o = vmrr(&["timeline", s(&trace), "-o", s(&json), "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read_to_string(&json).unwrap().starts_with('{'));
    let fresh = at(&d, "fresh.json");
    assert!(vmrr(&["timeline", s(&trace), "-o", s(&fresh)]).status.success());
    let created = user_file("created-by-the-user");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&fresh), mode(&created), "one mode for every file written");
    assert_eq!(mode(&json), mode(&created));

    let svg = at(&d, "svg");
    std::fs::create_dir(&svg).unwrap();
    let rate = svg.join("exit-rate.svg");
    std::fs::write(&rate, mine).unwrap();
    refused(&vmrr(&["profile", s(&trace), "--svg", s(&svg)]), &rate, "profile --svg");
    untouched(&rate);
    assert!(!svg.join("handler-latency.svg").exists(), "nothing written");
    assert!(vmrr(&["profile", s(&trace), "--svg", s(&svg), "--force"]).status.success());
    assert!(std::fs::read_to_string(&rate).unwrap().contains("<svg"));

    let bundle = user_file("b.vmrrb");
    refused(&vmrr(&["pack", s(&trace), "-o", s(&bundle)]), &bundle, "pack");
    untouched(&bundle);

    let plot = at(&d, "plot");
    std::fs::create_dir(&plot).unwrap();
    let chart = plot.join("throughput.svg");
    std::fs::write(&chart, mine).unwrap();
    // Refused before the minutes of measuring start.
    refused(&vmrr(&["bench", "--quick", "--plot", s(&plot)]), &chart, "bench --plot");
    untouched(&chart);

    let demo = at(&d, "demo");
    std::fs::create_dir(&demo).unwrap();
    let old = demo.join("repro.vmrrb");
    std::fs::write(&old, mine).unwrap();
    refused(&vmrr(&["demo", "--dir", s(&demo)]), &old, "demo --dir");
    untouched(&old);
    assert!(!demo.join("demo.vmrr").exists(), "refused before recording");
    let o = vmrr(&["demo", "--dir", s(&demo), "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(demo.join("demo.vmrr.snapshots").is_dir());
    // A second demo in the same directory: refused, naming the trace.
    refused(&vmrr(&["demo", "--dir", s(&demo)]), &demo.join("demo.vmrr"), "demo --dir again");
}

/// `record --serial FILE` (and `--debugcon FILE`) follow the same rule: a console log that
/// exists is the user's, replaced only with `--force`.
#[test]
fn a_console_file_that_exists_needs_force() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let log = at(&d, "console.log");
    std::fs::write(&log, b"yesterday's boot\n").unwrap();
    let a = at(&d, "a.vmrr");
    let o = hello_to_console(&a, &log, &[]);
    refused(&o, &log, "record --serial over a file");
    assert_eq!(std::fs::read(&log).unwrap(), b"yesterday's boot\n", "the log is unchanged");
    assert!(!a.exists(), "refused before anything was written");
    let o = hello_to_console(&a, &log, &["--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let printed = std::fs::read_to_string(&log).unwrap();
    assert!(!printed.contains("yesterday") && !printed.is_empty(), "{printed}");
    // The trace itself is no console file.
    let b = at(&d, "b.vmrr");
    let o = hello_to_console(&b, &b, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

fn hello_to_console(out: &Path, console: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["record", "--guest", "hello", "-o", s(out), "--serial", s(console)];
    args.extend_from_slice(extra);
    vmrr(&args)
}

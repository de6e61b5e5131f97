//! The flight recorder: bounded disk whatever the run's length, and a bundle that replays
//! to the moment of a failure or of SIGUSR1.

mod common;
use common::*;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Bytes allocated on disk under `dir`, and the number of segments and snapshots there.
fn usage(dir: &Path) -> (u64, usize, usize) {
    let (mut bytes, mut segs, mut snaps) = (0, 0, 0);
    let Ok(rd) = std::fs::read_dir(dir) else { return (0, 0, 0) };
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if p.is_dir() {
            if name.starts_with("snap-") && !name.contains('.') {
                snaps += 1;
            }
            let (b, s, n) = usage(&p);
            bytes += b;
            segs += s;
            snaps += n;
        } else {
            if name.starts_with("seg-") {
                segs += 1;
            }
            bytes += e.metadata().map(|m| m.blocks() * 512).unwrap_or(0);
        }
    }
    (bytes, segs, snaps)
}

#[test]
fn a_failure_leaves_a_bundle_of_the_last_checkpoints_that_reproduces_it() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let out = at(&d, "fr.vmrr");
    let o = vmrr(&[
        "record",
        "--guest",
        "emulation-failure",
        "--flight-recorder",
        "--keep",
        "2",
        "--checkpoint-every",
        "30",
        "-o",
        s(&out),
        "--serial",
        "none",
    ]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("older dropped"), "{}", stderr(&o));
    assert!(!at(&d, "fr.vmrr.flight").exists(), "the working directory is removed");
    let m = vmrr_format::bundle::read_manifest(&out, &vmrr_format::bundle::Budgets::memory_only(u64::MAX))
        .unwrap();
    // The last --keep checkpoints, and the failure-point snapshot taken at the failing exit.
    assert_eq!(m.snapshots.len(), 3, "the last --keep checkpoints and the failure point: {:?}", m.snapshots);
    assert_eq!(m.snapshots[1], m.snapshots[0] + 1);
    assert_eq!(m.snapshots[2], m.snapshots[1] + 1);
    assert!(m.snapshots[0] > 0, "older checkpoints were dropped");
    let r = vmrr(&["replay", s(&out), "--json"]);
    assert_eq!(r.status.code(), Some(0), "{}", stdout(&r));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["outcome"], "reproduced");
    assert_eq!(v["emulation_failure"]["disassembly"], "popcnt rax,[rdi]");
    assert_eq!(v["start"]["snapshot"], m.snapshots[0]);
    assert_eq!(v["failure_point"]["snapshot"], m.snapshots[2]);
    assert_eq!(v["failure_point"]["reproduced"], true);
}

#[test]
fn sigusr1_writes_a_bundle_and_disk_stays_bounded_on_a_long_run() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let out = at(&d, "long.vmrr");
    let flight = at(&d, "long.vmrr.flight");
    let child = Command::new(env!("CARGO_BIN_EXE_vmrr"))
        .args([
            "record",
            "--guest",
            "pio-storm",
            "--iterations",
            "100000000",
            "--flight-recorder",
            "--keep",
            "2",
            "--checkpoint-every",
            "3000",
            "-o",
            s(&out),
            "--serial",
            "none",
            "--json",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let (mut max_bytes, mut max_segs, mut max_snaps) = (0, 0, 0);
    while t.elapsed() < Duration::from_secs(4) {
        let (b, s, n) = usage(&flight);
        max_bytes = max_bytes.max(b);
        max_segs = max_segs.max(s);
        max_snaps = max_snaps.max(n);
        std::thread::sleep(Duration::from_millis(50));
    }
    let kill = Command::new("kill").args(["-USR1", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("stopped") && err.contains("older dropped"), "{err}");
    eprintln!(
        "flight: over 4 s, at most {max_bytes} bytes on disk, {max_segs} segments, {max_snaps} snapshots"
    );
    // Bounded: at most keep + 1 segments and snapshots at any time (the new one before the
    // oldest is dropped), and a few MiB on disk for a run that keeps going.
    assert!(max_segs <= 3 && max_snaps <= 3, "segments {max_segs}, snapshots {max_snaps}");
    assert!(max_bytes < 16 << 20, "{max_bytes} bytes on disk");
    let r = vmrr(&["replay", s(&out), "--json"]);
    assert_eq!(r.status.code(), Some(0), "{}", stdout(&r));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["outcome"], "completed");
    assert!(v["exits_replayed"].as_u64().unwrap() > 0);
}

#[test]
fn a_clean_end_keeps_nothing() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let out = at(&d, "ok.vmrr");
    let o =
        vmrr(&["record", "--guest", "hello-long", "--flight-recorder", "-o", s(&out), "--serial", "none"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("nothing kept"));
    assert!(!out.exists() && !at(&d, "ok.vmrr.flight").exists());
}

//! Crash consistency: `vmrr record` killed with SIGKILL at random moments, 50 times, with
//! checkpoints on. Every trace left behind is readable up to its last complete chunk,
//! sequence numbers are contiguous, any damage is a torn tail only, `vmrr verify --repair`
//! recovers it, every snapshot directory present loads (none is half-written and
//! accepted), and every checkpoint record names a snapshot that is there. Nine trials in
//! ten are killed at a random moment after the recording's first chunk reached the file
//! (so they test something however slow the host), one in ten at a random moment from its
//! start; the test requires that many non-empty trials and snapshots. Prints the worst
//! loss.

mod common;
use common::*;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use vmrr_format::{Body, ReadError, TraceReader};

#[test]
fn sigkill_at_random_moments_never_corrupts_what_was_written() {
    if !require_kvm() {
        return;
    }
    let trials: usize = std::env::var("VMRR_CRASH_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let d = tmp();
    // A real-mode loop writing newlines to the serial port: one exit per byte, and the
    // console file (flushed at each newline) shows how many exits were handled, so what a
    // kill lost is measured: `mov dx, 0x3f8; mov al, 10; l: out dx, al; jmp l`.
    let image = real_mode_image(&d, "newlines.bin", &[0xba, 0xf8, 0x03, 0xb0, 0x0a, 0xee, 0xeb, 0xfd]);
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let (mut worst_torn_bytes, mut worst_records_per_chunk, mut snapshots_checked, mut repaired) =
        (0u64, 0u64, 0, 0);
    let (mut empty, mut worst_lost, mut total_handled, mut checkpoint_records) = (0, 0u64, 0u64, 0);
    for t in 0..trials {
        let out = at(&d, &format!("k{t}.vmrr"));
        let serial = at(&d, &format!("k{t}.serial"));
        record_and_kill(&image, &out, &serial, t, &mut rng);

        // 1. What was written reads, contiguously from 0; damage only at the tail.
        let w = read_what_was_written(&out, t);
        if w.records == 0 {
            // Killed before the first chunk reached the file: a valid, empty trace.
            assert_eq!(t % 10, 0, "trial {t}: killed after its first chunk, yet nothing reads");
            empty += 1;
        }
        // Exits the guest made that the trace does not hold: the serial file has one byte
        // per handled exit (the exit being handled at the kill may be in either).
        let handled = std::fs::metadata(&serial).map(|m| m.len()).unwrap_or(0);
        assert!(w.serial_records <= handled + 1, "trial {t}: the trace holds no exit that did not happen");
        worst_lost = worst_lost.max(handled.saturating_sub(w.serial_records));
        total_handled += handled;
        let (torn, per_chunk) = torn_tail(&out);
        worst_torn_bytes = worst_torn_bytes.max(torn);
        worst_records_per_chunk = worst_records_per_chunk.max(per_chunk);

        // 2. verify says so; --repair recovers an intact trace with the same records.
        let fixed = at(&d, &format!("k{t}.fixed.vmrr"));
        verify_and_repair(&out, &fixed, w.records, t);
        repaired += 1;

        // 3. Every snapshot present is complete and valid, and every checkpoint record names
        //    one that is present (a record is written once its snapshot is durable).
        let root = vmrr_engine::snapshot::dir_for_trace(&out);
        checkpoint_records += w.checkpoints.len();
        snapshots_checked += check_snapshots(&root, &w.checkpoints, t);
        // 4. A repaired trace replays (every 10th trial, to keep the test short).
        if t % 10 == 0 && w.records > 0 {
            replay_repaired(&root, &fixed, t);
        }
        let _ = std::fs::remove_file(&out);
        let _ = std::fs::remove_file(&fixed);
        let _ = std::fs::remove_file(&serial);
        let _ = std::fs::remove_dir_all(&root);
    }
    eprintln!(
        "crash: {trials} trials ({empty} killed before the first chunk), {total_handled} exits handled, {repaired} \
         repaired, {snapshots_checked} snapshots valid, {checkpoint_records} checkpoint records; worst torn tail \
         {worst_torn_bytes} bytes; at most {worst_records_per_chunk} records in one chunk; worst loss {worst_lost} \
         exits"
    );
    // The trials tested something: all but the early-kill tenth read records, and
    // snapshots were there to check (the initial one at least, in nearly every trial).
    let early = trials.div_ceil(10);
    assert!(trials - empty >= trials - early, "{empty} empty trials of {trials}");
    assert!(snapshots_checked >= (trials - early) / 2, "only {snapshots_checked} snapshots checked");
    // The bounds documented in docs/RELIABILITY.md: no partial chunk is left behind, and a
    // kill loses at most the open chunk, the writer's queue (4) and the chunk being written.
    assert!(worst_torn_bytes <= (256 << 10) + 4096, "a torn tail is at most one chunk");
    assert!(worst_lost <= 6 * worst_records_per_chunk.max(1) + 1, "lost {worst_lost} exits");
}

/// Records `image` into `out` and kills vmrr with SIGKILL after a random moment (nine
/// trials in ten once its first chunk is in the file).
fn record_and_kill(image: &[String], out: &Path, serial: &Path, t: usize, rng: &mut Rng) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmrr"))
        .args(record_args(image, &["--checkpoint-every", "400", "-o", s(out), "--serial", s(serial)]))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    if t % 10 != 0 {
        // From the first chunk on (the header alone is at most 4 KiB): progress, not time.
        let started = std::time::Instant::now();
        while std::fs::metadata(out).map_or(0, |m| m.len()) <= 4096 {
            assert!(child.try_wait().unwrap().is_none(), "trial {t}: vmrr ended on its own");
            assert!(started.elapsed() < Duration::from_secs(600), "trial {t}: hang: no chunk written");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    std::thread::sleep(Duration::from_millis(rng.next() % 1100));
    child.kill().unwrap();
    child.wait().unwrap();
}

/// What a killed recording's trace holds.
struct Written {
    /// Records read, contiguously from 0.
    records: u64,
    /// Of them, serial port writes.
    serial_records: u64,
    /// The snapshots its checkpoint records name.
    checkpoints: Vec<u64>,
}

/// Reads the trace, asserting its records are contiguous from 0 and any damage is at the
/// tail only.
fn read_what_was_written(out: &Path, t: usize) -> Written {
    let mut r = TraceReader::open(out).unwrap_or_else(|e| panic!("trial {t}: header unreadable: {e}"));
    let mut w = Written { records: 0, serial_records: 0, checkpoints: Vec::new() };
    let mut damaged_at: Option<String> = None;
    while let Some(item) = r.next_record() {
        match item {
            Ok(rec) => {
                assert!(
                    damaged_at.is_none(),
                    "trial {t}: a record after damage ({damaged_at:?}): mid-file damage"
                );
                assert_eq!(rec.seq, w.records, "trial {t}: sequence numbers are contiguous");
                w.records += 1;
                if matches!(rec.body, Body::Io(io) if io.port == 0x3f8) {
                    w.serial_records += 1;
                }
                if let Body::Checkpoint(c) = rec.body {
                    w.checkpoints.push(c.snapshot_id);
                }
            }
            Err(e @ ReadError::Invalid { .. }) => damaged_at = Some(e.to_string()),
            Err(e) => panic!("trial {t}: {e}"),
        }
    }
    w
}

/// How much is torn off (bytes after the last complete chunk), and the most records a
/// complete chunk holds.
fn torn_tail(out: &Path) -> (u64, u64) {
    let mut r = TraceReader::open(out).unwrap();
    let mut good_end = u64::from(r.header().header_size);
    let mut per_chunk = 0u64;
    while let Some(c) = r.next_chunk_header().unwrap() {
        if let Ok(c) = c {
            good_end = c.offset + c.header.total_size();
            per_chunk = per_chunk.max(u64::from(c.header.record_count));
        }
    }
    (r.data_end().saturating_sub(good_end), per_chunk)
}

/// `verify` counts the `records` that read; `--repair` writes them as a trace that verifies.
fn verify_and_repair(out: &Path, fixed: &Path, records: u64, t: usize) {
    let v = vmrr(&["verify", s(out), "--json"]);
    let rep: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
    assert!(matches!(v.status.code(), Some(0 | 3)), "trial {t}");
    assert_eq!(rep["records_readable"], records, "trial {t}");
    let o = vmrr(&["verify", s(out), "--repair", s(fixed)]);
    assert_eq!(o.status.code(), Some(0), "trial {t}: {}", stderr(&o));
    let v2 = vmrr(&["verify", s(fixed), "--json"]);
    assert_eq!(v2.status.code(), Some(0), "trial {t}: the repaired trace verifies");
    let rep2: serde_json::Value = serde_json::from_slice(&v2.stdout).unwrap();
    assert_eq!(rep2["records_readable"], records);
}

/// Asserts every checkpoint record's snapshot is there and every snapshot present loads;
/// returns how many were loaded.
fn check_snapshots(root: &Path, checkpoints: &[u64], t: usize) -> usize {
    for id in checkpoints {
        let dir = vmrr_engine::snapshot::snapshot_dir(root, *id);
        assert!(dir.is_dir(), "trial {t}: checkpoint record for snapshot {id}, which is not there");
    }
    let mut checked = 0;
    if let Ok(rd) = std::fs::read_dir(root) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("snap-") && !name.contains('.') {
                vmrr_engine::snapshot::load_chain(&e.path(), u64::MAX)
                    .unwrap_or_else(|err| panic!("trial {t}: {name} is present but invalid: {err}"));
                checked += 1;
            }
        }
    }
    checked
}

/// The repaired trace, given the killed one's snapshots, replays to completion.
fn replay_repaired(root: &Path, fixed: &Path, t: usize) {
    let fixed_snaps = vmrr_engine::snapshot::dir_for_trace(fixed);
    if root.exists() {
        std::fs::rename(root, &fixed_snaps).unwrap();
    }
    let o = vmrr(&["replay", s(fixed), "--json"]);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["outcome"], "completed", "trial {t}: {r}");
    let _ = std::fs::remove_dir_all(&fixed_snaps);
}

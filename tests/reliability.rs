//! What `vmrr record` promises when things go wrong on the recording host: each `--sync`
//! mode, and a disk that fills up mid-run. (SIGKILL is in `crash.rs`.)

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;

fn stats(trace: &Path) -> serde_json::Value {
    let o = vmrr(&["stats", s(trace), "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("stats JSON")
}

#[test]
fn sync_modes_end_to_end() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    for mode in ["always", "chunk", "never"] {
        let out = at(&d, &format!("{mode}.vmrr"));
        let o = vmrr(&[
            "record",
            "--guest",
            "pio-storm",
            "--iterations",
            "3000",
            "--sync",
            mode,
            "-o",
            s(&out),
            "--serial",
            "none",
        ]);
        assert_eq!(o.status.code(), Some(0), "{mode}: {}", stderr(&o));
        let st = stats(&out);
        let (records, chunks) = (st["records"].as_u64().unwrap(), st["chunks"].as_u64().unwrap());
        assert!(records > 3000, "{mode}: {records} records");
        if mode == "always" {
            // Each record is its own chunk, written and synced before the guest resumes.
            assert_eq!(chunks, records, "always: one chunk per record");
        } else {
            assert!(chunks * 20 < records, "{mode}: records are batched ({chunks} chunks)");
        }
        assert_eq!(vmrr(&["verify", s(&out)]).status.code(), Some(0), "{mode}");
    }
    let o = vmrr(&["record", "--guest", "hello", "--sync", "sometimes", "-o", s(&at(&d, "x.vmrr"))]);
    assert_eq!(o.status.code(), Some(2), "an unknown --sync is a usage error");
}

/// A size-limited tmpfs, unmounted on drop.
struct TinyFs(PathBuf);

impl TinyFs {
    fn mount(dir: &Path, size: &str) -> Result<TinyFs, String> {
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", s(dir)])
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !o.status.success() {
            return Err(format!("mount -t tmpfs failed: {}", String::from_utf8_lossy(&o.stderr).trim()));
        }
        Ok(TinyFs(dir.to_path_buf()))
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Records `guest_args` into `out` on the tiny file system; expects the disk-full exit.
fn record_until_full(out: &Path, guest_args: &[&str]) -> String {
    let mut args = vec!["record"];
    args.extend_from_slice(guest_args);
    args.extend_from_slice(&["--max-seconds", "120", "-o", s(out), "--serial", "none"]);
    let o = vmrr(&args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(6), "{err}");
    assert!(err.contains("the disk is full"), "{err}");
    err
}

#[test]
fn a_full_disk_ends_the_run_cleanly_and_keeps_what_was_written() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let mnt = at(&d, "tiny");
    std::fs::create_dir(&mnt).unwrap();
    let _fs = match TinyFs::mount(&mnt, "640k") {
        Ok(f) => f,
        Err(why) => {
            // Strict runs (CI) fail rather than skip, as for a missing /dev/kvm.
            assert!(
                std::env::var("VMRR_REQUIRE_KVM").as_deref() != Ok("1"),
                "VMRR_REQUIRE_KVM=1 but the disk-full test cannot mount its tmpfs: {why} (needs root)"
            );
            eprintln!(
                "skipped: the disk-full test cannot mount a small tmpfs: {why} (needs root); set VMRR_REQUIRE_KVM=1 to fail instead"
            );
            return;
        }
    };
    // 1. The trace itself fills the disk: the writer drops the partial chunk and seals the
    //    file at the last complete one.
    let out = mnt.join("storm.vmrr");
    let err =
        record_until_full(&out, &["--guest", "pio-storm", "--iterations", "1000000000", "--no-snapshot"]);
    assert!(err.contains("No space left on device"), "{err}");
    let v = vmrr(&["verify", s(&out), "--json"]);
    assert_eq!(v.status.code(), Some(0), "the sealed trace verifies: {}", stdout(&v));
    let st = stats(&out);
    assert!(st["records"].as_u64().unwrap() > 10_000, "what fitted is kept: {st}");
    assert_eq!(st["damaged_chunks"], 0);
    std::fs::remove_file(&out).unwrap();

    // 2. A checkpoint fills the disk: the run stops, the trace is closed with an
    //    END_OF_RUN output_error, no half-written snapshot is left, and it replays.
    let out = mnt.join("churn.vmrr");
    let err = record_until_full(&out, &["--guest", "memory-churn", "--checkpoint-every", "40"]);
    assert!(err.contains("trace was closed"), "{err}");
    assert_eq!(vmrr(&["verify", s(&out)]).status.code(), Some(0));
    let recs = records(&out);
    let end = recs.last().unwrap();
    assert_eq!((end.kind, end.json["reason"].as_str()), ("end_of_run", Some("output_error")));
    let snaps = vmrr_engine::snapshot::dir_for_trace(&out);
    for e in std::fs::read_dir(&snaps).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(!name.ends_with(".tmp"), "no half-written snapshot is left: {name}");
        vmrr_engine::snapshot::load_chain(&e.path(), u64::MAX).unwrap();
    }
    // Replay from the last checkpoint that made it to disk reaches the end of the trace.
    let r = vmrr(&["replay", s(&out), "--json"]);
    let rep: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(rep["outcome"], "completed", "{rep}");
}

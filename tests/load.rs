//! Under load: memory does not grow with a recording's length, and reading a large trace
//! streams.
//!
//! CI sizes are small enough for a 2-core runner; the figures in docs/RELIABILITY.md come
//! from the same tests with larger sizes:
//! `VMRR_LOAD_EXITS=10000000 VMRR_LOAD_TRACE_MIB=4096 cargo test --release --test load -- --nocapture`.

mod common;
use common::*;

use std::time::Instant;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Records `exits` exits of a real-mode `out` loop with 8 checkpoints on the way; returns
/// the peak resident memory of the `vmrr record` process (KiB, from `wait4`).
fn record_peak_kib(d: &tempfile::TempDir, exits: u64) -> u64 {
    // `mov dx, 0x5c0; l: out dx, al; jmp l`: the fastest exit source on any host (one
    // exit per iteration, nothing else).
    let image = real_mode_image(d, "pio.bin", &[0xba, 0xc0, 0x05, 0xee, 0xeb, 0xfd]);
    let out = at(d, &format!("load-{exits}.vmrr"));
    let every = (exits / 8).max(1).to_string();
    let max = exits.to_string();
    let m = MeasuredChild::spawn(&record_args(
        &image,
        &["--max-exits", &max, "--checkpoint-every", &every, "-o", s(&out), "--serial", "none", "--json"],
    ))
    .wait();
    assert_eq!(m.code, Some(0), "{}", m.stderr);
    let summary: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&m.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(summary["exits"], exits);
    assert_eq!(summary["checkpoints"]["count"], 9, "the initial snapshot and 8 on the way");
    // And the trace holds every exit.
    let st = vmrr(&["stats", s(&out), "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(st["exits"], exits);
    m.max_rss_kib
}

/// Memory that grew with the number of exits would show as the difference between the
/// peaks of two recordings that do the same things (start, 8 checkpoints, finish) over 8
/// times as many exits: the kernel's peak, not samples taken at moments a slow or fast
/// host would place differently.
#[test]
fn resident_memory_stays_flat_over_a_long_recording() {
    if !require_kvm() {
        return;
    }
    let exits = env_u64("VMRR_LOAD_EXITS", 1_000_000);
    let d = tmp();
    let short = record_peak_kib(&d, exits / 8);
    let long = record_peak_kib(&d, exits);
    eprintln!("load: peak RSS {short} KiB over {} exits, {long} KiB over {exits}", exits / 8);
    // The trace alone is ~24 bytes per exit before compression: kept, 7/8 of 1,000,000
    // exits would be 20 MiB more.
    assert!(long <= short + 2048, "peak RSS grew from {short} KiB to {long} KiB with 8 times the exits");
}

#[test]
fn verify_and_stats_stream_a_large_trace_in_bounded_memory() {
    use vmrr_format::{Body, Direction, Io, SyncMode, TraceWriter, WriterOptions};
    let d = tmp();
    // Stored uncompressed, so the file is as large as the trace; kept smaller when the
    // disk is short.
    let want_mib = env_u64("VMRR_LOAD_TRACE_MIB", 1024);
    let free_mib = free_bytes(d.path()) >> 20;
    let mib = if free_mib > want_mib * 3 { want_mib } else { (free_mib / 4).min(want_mib) };
    if mib < 64 {
        eprintln!("skipping the large-trace test: only {free_mib} MiB free");
        return;
    }
    let path = at(&d, "big.vmrr");
    let opts = WriterOptions { zstd_level: None, sync: SyncMode::Never, ..Default::default() };
    let mut w = TraceWriter::create(&path, opts).unwrap();
    let mut data = vec![0u8; 4096];
    let mut n = 0u64;
    while w.next_seq() * 4144 < mib << 20 {
        data[..8].copy_from_slice(&n.to_le_bytes());
        let io = Io { direction: Direction::Out, size: 1, port: 0x3f8, count: 4096, data: &data };
        w.append(0, Body::Io(io), None).unwrap();
        n += 1;
    }
    let sum = w.finish().unwrap();
    let file_mib = sum.file_bytes >> 20;
    let t = Instant::now();
    let v = vmrr_measured(&["verify", s(&path), "--json"]);
    let verify_secs = t.elapsed().as_secs_f64();
    assert_eq!(v.code, Some(0), "{}", v.stderr);
    let rep: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
    assert_eq!(rep["records_readable"], n);
    let st = vmrr_measured(&["stats", s(&path), "--json"]);
    assert_eq!(st.code, Some(0), "{}", st.stderr);
    let hello = vmrr_measured(&["stats", "tests/data/spec-example.vmrr", "--json"]);
    eprintln!(
        "load: verify of a {file_mib} MiB trace ({n} records) in {verify_secs:.1} s ({:.0} MiB/s), peak RSS {} \
         KiB; stats {} KiB; stats of a 424-byte trace {} KiB",
        file_mib as f64 / verify_secs,
        v.max_rss_kib,
        st.max_rss_kib,
        hello.max_rss_kib
    );
    // Bounded: a few chunk buffers over what the binary needs for a tiny trace, whatever
    // the file's size.
    for (what, kib) in [("verify", v.max_rss_kib), ("stats", st.max_rss_kib)] {
        assert!(kib <= hello.max_rss_kib + 32 * 1024, "{what} of {file_mib} MiB peaked at {kib} KiB");
    }
}

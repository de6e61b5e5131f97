//! Under load: memory stays flat over a long recording, and reading a large trace streams.
//!
//! CI sizes are small enough for a 2-core runner; the figures in docs/RELIABILITY.md come
//! from the same tests with larger sizes:
//! `VMRR_LOAD_EXITS=10000000 VMRR_LOAD_TRACE_MIB=4096 cargo test --release --test load -- --nocapture`.

mod common;
use common::*;

use std::time::{Duration, Instant};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn resident_memory_stays_flat_over_a_long_recording() {
    if !require_kvm() {
        return;
    }
    let exits = env_u64("VMRR_LOAD_EXITS", 1_000_000);
    let d = tmp();
    // A real-mode loop of OUTs: `mov dx, 0x5c0; l: out dx, al; jmp l`, the fastest exit
    // source on any host (one exit per iteration, nothing else).
    let image = real_mode_image(&d, "pio.bin", &[0xba, 0xc0, 0x05, 0xee, 0xeb, 0xfd]);
    let out = at(&d, "load.vmrr");
    let every = (exits / 8).max(1).to_string();
    let max = exits.to_string();
    let child = MeasuredChild::spawn(&record_args(
        &image,
        &["--max-exits", &max, "--checkpoint-every", &every, "-o", s(&out), "--serial", "none", "--json"],
    ));
    let started = Instant::now();
    let mut samples = Vec::new();
    while let Some(kib) = rss_kib(child.pid()) {
        samples.push((started.elapsed(), kib));
        std::thread::sleep(Duration::from_millis(50));
    }
    let m = child.wait();
    assert_eq!(m.code, Some(0), "{}", m.stderr);
    let summary: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&m.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(summary["exits"], exits);
    assert!(samples.len() >= 10, "sampled {} times", samples.len());
    // Warm-up: the first fifth (the writer's buffers, the first snapshot, the zstd context).
    let warm = samples.len() / 5;
    let baseline = samples[..warm.max(1)].iter().map(|s| s.1).max().unwrap();
    let later = samples[warm..].iter().map(|s| s.1).max().unwrap();
    let secs = samples.last().unwrap().0.as_secs_f64();
    eprintln!(
        "load: {exits} exits in {secs:.1} s; RSS after warm-up {baseline} KiB, highest later {later} KiB, peak \
         {} KiB; {} samples",
        m.max_rss_kib,
        samples.len()
    );
    // Flat: what grows with the number of exits would show as megabytes here (the trace
    // alone is ~24 bytes per exit before compression).
    assert!(later <= baseline + 2048, "RSS grew from {baseline} to {later} KiB");
    assert!(m.max_rss_kib <= baseline + 4096, "peak {} KiB", m.max_rss_kib);
    // And the trace holds every exit.
    let st = vmrr(&["stats", s(&out), "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(st["exits"], exits);
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

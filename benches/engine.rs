//! Engine micro-benchmarks on real KVM: one exit round trip, exit throughput with and
//! without recording (same group, so the ratio is measured side by side), the dirty-bitmap
//! scan, snapshot restore and in-place reset. Without /dev/kvm they print why and skip.
//!
//! `cargo bench --bench engine`

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vmrr_engine::devices::console::Console;
use vmrr_engine::machine::Machine;
use vmrr_engine::session::{GuestSpec, SessionConfig};
use vmrr_engine::snapshot::{self, snapshot_dir};
use vmrr_format::{NullSink, TraceWriter, WriterOptions};

fn kvm() -> bool {
    let ok = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    if !ok {
        eprintln!("skipped: /dev/kvm cannot be opened");
    }
    ok
}

fn machine(guest: &str, it: Option<u64>, mem: u64, dirty: bool) -> Machine {
    SessionConfig {
        guest: GuestSpec::Builtin { name: guest.into(), iterations: it },
        mem_bytes: mem,
        cpuid: Default::default(),
        limits: Default::default(),
        dirty_log: dirty,
    }
    .build(Console::capture_only(), Console::capture_only())
    .expect("machine")
}

const EXITS: u64 = 2000;

/// Snapshot 0 of no trace, full.
const FULL: snapshot::Identity<'static> =
    snapshot::Identity { id: 0, parent: None, trace_id: [0; 16], exit_seq: None, annotations: &[] };

fn exits(c: &mut Criterion) {
    if !kvm() {
        return;
    }
    let mut g = c.benchmark_group("exit");
    g.throughput(Throughput::Elements(EXITS));
    g.bench_function("round_trip_floor", |b| {
        let mut m = machine("pio-storm", Some(u64::MAX / 2), 128 << 20, false);
        b.iter(|| {
            let mut n = 0;
            while n < EXITS {
                if m.run_to_exit().expect("run") {
                    n += 1;
                }
            }
        })
    });
    g.bench_function("pio_storm_plain", |b| {
        b.iter(|| {
            let mut m = machine("pio-storm", Some(EXITS), 128 << 20, false);
            black_box(m.run().expect("run").exits)
        })
    });
    g.bench_function("pio_storm_recording", |b| {
        b.iter(|| {
            let mut m = machine("pio-storm", Some(EXITS), 128 << 20, false);
            let w =
                TraceWriter::with_sink(NullSink, "bench".into(), WriterOptions::default()).expect("writer");
            let rec = m.recorder_for(w).expect("recorder");
            m.start_recording(rec);
            let s = m.run().expect("run");
            m.stop_recording().map(|r| r.finish(s.outcome.end_reason(), 0));
            black_box(s.exits)
        })
    });
    g.finish();
}

fn dirty_bitmap(c: &mut Criterion) {
    let mut g = c.benchmark_group("dirty_bitmap");
    let pages = (1u64 << 30) / 4096;
    for pct in [1u64, 10] {
        let mut bm = vec![0u64; usize::try_from(pages / 64).unwrap()];
        let step = 100 / pct;
        for p in (0..pages).step_by(usize::try_from(step).unwrap()) {
            bm[usize::try_from(p / 64).unwrap()] |= 1 << (p % 64);
        }
        g.throughput(Throughput::Elements(pages));
        g.bench_function(format!("scan_1gib_{pct}pct"), |b| {
            b.iter(|| black_box(snapshot::bitmap_runs(black_box(&bm), pages).len()))
        });
    }
    g.finish();
}

fn snapshots(c: &mut Criterion) {
    if !kvm() {
        return;
    }
    let d = tempfile::tempdir().expect("tempdir");
    let mut g = c.benchmark_group("snapshot");
    for mib in [128u64, 1024, 8192] {
        let dir = snapshot_dir(&d.path().join(format!("r{mib}")), 0);
        let mut m = machine("hello-long", None, mib << 20, false);
        snapshot::take(&mut m, &dir, &FULL).expect("snapshot");
        drop(m);
        g.bench_function(format!("restore_{mib}mib_cold"), |b| {
            b.iter(|| {
                let chain = snapshot::load_chain(&dir, u64::MAX).expect("load");
                black_box(
                    snapshot::restore(&chain, Console::capture_only(), Console::capture_only(), false)
                        .expect("restore"),
                )
            })
        });
        // Restore over a machine of the same layout: its VM and slots are kept.
        let chain = snapshot::load_chain(&dir, u64::MAX).expect("load");
        let mut m = snapshot::restore(&chain, Console::capture_only(), Console::capture_only(), false)
            .expect("restore");
        g.bench_function(format!("restore_over_{mib}mib"), |b| {
            b.iter(|| {
                let chain = snapshot::load_chain(&dir, u64::MAX).expect("load");
                black_box(snapshot::restore_over(&mut m, &chain).expect("restore over"))
            })
        });
    }
    let dir = snapshot_dir(&d.path().join("reset"), 0);
    let mut m = machine("dirty-pages", Some(64), 128 << 20, true);
    m.set_max_exits(Some(1));
    m.run().expect("run");
    snapshot::take(&mut m, &dir, &FULL).expect("snapshot");
    let chain = snapshot::load_chain(&dir, u64::MAX).expect("load");
    let mut r =
        snapshot::restore(&chain, Console::capture_only(), Console::capture_only(), true).expect("restore");
    g.bench_function("run_64_pages_and_reset", |b| {
        b.iter(|| {
            while !r.run_to_exit().expect("run") {}
            black_box(snapshot::reset(&mut r, &chain).expect("reset"))
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = exits, dirty_bitmap, snapshots
}
criterion_main!(benches);

//! Engine micro-benchmarks on real KVM: one exit round trip, exit throughput with and
//! without recording (same group, so the ratio is measured side by side), the dirty-bitmap
//! scan, harvesting dirty pages through KVM's dirty ring and bitmap, snapshot restore and
//! in-place reset. Without /dev/kvm they print why and skip.
//! `record_timing` needs no KVM: the recorder's work per exit with and without per-exit
//! timing, side by side.
//!
//! `cargo bench --bench engine`

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vmrr_engine::devices::console::Console;
use vmrr_engine::machine::Machine;
use vmrr_engine::recording::{Runner, Snapshots};
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

fn config(guest: &str, it: Option<u64>, mem: u64, dirty: bool) -> SessionConfig {
    SessionConfig {
        guest: GuestSpec::Builtin { name: guest.into(), iterations: it },
        mem_bytes: mem,
        cpuid: Default::default(),
        limits: Default::default(),
        dirty_log: dirty,
        vcpus: 1,
        irqchip: None,
    }
}

fn machine(guest: &str, it: Option<u64>, mem: u64, dirty: bool) -> Machine {
    config(guest, it, mem, dirty).build(Console::capture_only(), Console::capture_only()).expect("machine")
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
        let c = config("pio-storm", Some(EXITS), 128 << 20, false);
        b.iter(|| {
            let m = c.build(Console::capture_only(), Console::capture_only()).expect("machine");
            let w =
                TraceWriter::with_sink(NullSink, "bench".into(), WriterOptions::default()).expect("writer");
            let mut r = Runner::start(m, &c, w, Snapshots::None).expect("recording");
            let s = r.run().expect("run");
            black_box(r.finish(s).expect("finish").summary.exits)
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

/// Harvesting the pages a guest dirtied (what a checkpoint's pause and a reset read):
/// KVM's dirty ring against the bitmap, 1 GiB of guest memory with 1% and 10% of its pages
/// dirtied by the `dirty-pages` guest between two harvests, and 256 pages of 8 GiB. Only the harvest is timed (the
/// guest's round is not); each sample is one harvest.
fn dirty_harvest(c: &mut Criterion) {
    use vmrr_engine::kvm::dirty::DirtyTracking;
    use vmrr_engine::kvm::memory::SlotKind;
    if !kvm() {
        return;
    }
    let mut g = c.benchmark_group("dirty_harvest");
    g.sampling_mode(criterion::SamplingMode::Flat);
    for (mem, n, label) in [
        (1u64 << 30, (1u64 << 30) / 4096 / 100, "1gib_1pct"),
        (1 << 30, (1 << 30) / 4096 / 10, "1gib_10pct"),
        // The restore benchmark's case: few pages of a large guest.
        (8 << 30, 256, "8gib_256pages"),
    ] {
        for (name, tracking) in [("bitmap", DirtyTracking::Bitmap), ("ring", DirtyTracking::Auto)] {
            let c = config("dirty-pages", Some(n), mem, true);
            let mut m = c
                .build_tracking(Console::capture_only(), Console::capture_only(), tracking)
                .expect("machine");
            g.throughput(Throughput::Elements(n));
            g.bench_function(format!("{label}_{name}"), |b| {
                b.iter_custom(|iters| {
                    let mut spent = Duration::ZERO;
                    for _ in 0..iters {
                        m.set_max_exits(Some(m.exits() + 1));
                        m.run().expect("run");
                        let t = std::time::Instant::now();
                        for s in m.memory().slots().iter().filter(|s| s.spec().kind == SlotKind::Ram) {
                            black_box(m.vm().take_dirty(s).expect("dirty pages").runs(s.pages()).len());
                        }
                        spent += t.elapsed();
                    }
                    spent
                })
            });
        }
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

/// A `kvm_run` region as KVM leaves it at an `out` to port 0x5c0 with synced registers.
fn fake_run_page() -> Vec<u8> {
    use vmrr_engine::exit::offsets as off;
    let mut p = vec![0u8; 3 * 4096];
    let mut put = |at: usize, v: &[u8]| p[at..at + v.len()].copy_from_slice(v);
    put(off::EXIT_REASON, &u32::from(vmrr_format::kind::IO).to_le_bytes());
    put(off::EXIT + off::io::DIRECTION, &[1]);
    put(off::EXIT + off::io::SIZE, &[1]);
    put(off::EXIT + off::io::PORT, &0x5c0u16.to_le_bytes());
    put(off::EXIT + off::io::COUNT, &1u32.to_le_bytes());
    put(off::EXIT + off::io::DATA_OFFSET, &4096u64.to_le_bytes());
    put(off::VALID_REGS, &1u64.to_le_bytes());
    put(off::SYNC_REGS + off::regs::RIP, &0x40_1005u64.to_le_bytes());
    put(off::SYNC_REGS + off::regs::RSP, &0x7fff_f000u64.to_le_bytes());
    put(off::SYNC_REGS + off::regs::RFLAGS, &0x3202u64.to_le_bytes());
    p
}

/// The vCPU thread's recording work per exit, as the machine does it (decode `kvm_run`
/// once, encode into the writer's chunk), without and with timing (the two clock
/// reads of `entering`/`exited` and the payload). No KVM: the `kvm_run` bytes are fixed.
fn record_timing(c: &mut Criterion) {
    use vmrr_engine::exit::{RipConvention, RunView};
    use vmrr_engine::record::ExitClock;
    const N: u64 = 100_000;
    let mut g = c.benchmark_group("record_timing");
    g.throughput(Throughput::Elements(N));
    let conv = RipConvention { io_after: true, mmio_after: true };
    for timing in [false, true] {
        g.bench_function(if timing { "on" } else { "off" }, |b| {
            let mut page = fake_run_page();
            let opts = WriterOptions { zstd_level: None, timing, ..Default::default() };
            let mut w = TraceWriter::with_sink(NullSink, "bench".into(), opts).expect("writer");
            let mut clock = ExitClock::new();
            b.iter(|| {
                for i in 0..N {
                    page[4096] = u8::try_from(i & 0xff).unwrap_or(0);
                    if timing {
                        clock.entering();
                        clock.exited();
                    }
                    let exit = RunView::new(black_box(&page)).expect("page").exit(false, conv);
                    let (body, regs) = (exit.body(&page), exit.regs());
                    if timing {
                        w.append_timed(0, body, regs, clock.take()).expect("append");
                    } else {
                        w.append(0, body, regs).expect("append");
                    }
                }
            });
            w.finish().expect("finish");
        });
    }
    // What timing adds, apart: the clock's work alone (two clock reads and the payload),
    // and, for comparison, two `CLOCK_MONOTONIC` reads (what the clock cost before it read
    // the time-stamp counter).
    g.bench_function("clock_only", |b| {
        let mut clock = ExitClock::new();
        b.iter(|| {
            for _ in 0..N {
                clock.entering();
                clock.exited();
                black_box(clock.take());
            }
        })
    });
    g.bench_function("two_clock_reads", |b| {
        b.iter(|| {
            for _ in 0..N {
                black_box(std::time::Instant::now());
                black_box(std::time::Instant::now());
            }
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = exits, dirty_bitmap, snapshots
}
criterion_group! {
    name = harvest;
    // One guest round (~0.1-1 s of emulated writes) per harvest: as few as criterion allows.
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_millis(1)).warm_up_time(Duration::from_millis(1));
    targets = dirty_harvest
}
criterion_group! {
    name = recording;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(5));
    targets = record_timing
}
criterion_main!(benches, harvest, recording);

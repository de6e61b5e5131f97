//! Trace format micro-benchmarks: record encode/decode, whole-trace write and read with
//! and without zstd, chunk compression, guest-memory writes (DMA) of 4 KiB to 16 MiB, and
//! appends from 1, 2 and 4 threads at once through a `SharedTrace` (`record_threads`).
//! Figures go to docs/PERFORMANCE.md.
//!
//! `cargo bench --bench format`

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vmrr_format::*;

const N: u64 = 100_000;

fn io_body(i: u64) -> ([u8; 1], RegsSample) {
    (
        [u8::try_from(i % 64).unwrap() + b' '],
        RegsSample { rip: 0x40_1005, rsp: 0x7fff_f000, rflags: 0x3202, flags: RegsSample::RIP_AFTER_INSN },
    )
}

fn encoded(n: u64) -> Vec<u8> {
    let mut buf = Vec::with_capacity(usize::try_from(n).unwrap() * 80);
    for i in 0..n {
        let (d, r) = io_body(i);
        let io = Io { direction: Direction::Out, size: 1, port: 0x3f8, count: 1, data: &d };
        encode(&Record::new(i, 0, Body::Io(io)).with_regs(r), &mut buf).unwrap();
    }
    buf
}

fn trace(n: u64, level: Option<i32>) -> Vec<u8> {
    let sink = MemorySink::default();
    let opts = WriterOptions { zstd_level: level, sync: SyncMode::Never, ..Default::default() };
    let mut w = TraceWriter::with_sink(sink.clone(), "bench".into(), opts).unwrap();
    for i in 0..n {
        let (d, r) = io_body(i);
        let io = Io { direction: Direction::Out, size: 1, port: 0x3f8, count: 1, data: &d };
        w.append(0, Body::Io(io), Some(r)).unwrap();
    }
    w.finish().unwrap();
    sink.bytes()
}

fn record(c: &mut Criterion) {
    let mut g = c.benchmark_group("record");
    g.throughput(Throughput::Elements(N));
    let mut buf = Vec::with_capacity(usize::try_from(N).unwrap() * 80);
    g.bench_function("encode_io_exit", |b| {
        b.iter(|| {
            buf.clear();
            for i in 0..N {
                let (d, r) = io_body(i);
                let io = Io { direction: Direction::Out, size: 1, port: 0x3f8, count: 1, data: &d };
                encode(black_box(&Record::new(i, 0, Body::Io(io)).with_regs(r)), &mut buf).unwrap();
            }
            black_box(buf.len())
        })
    });
    let bytes = encoded(N);
    g.bench_function("decode_io_exit", |b| {
        b.iter(|| {
            let mut pos = 0;
            let mut sum = 0u64;
            while pos < bytes.len() {
                let (rec, size) = decode(black_box(&bytes[pos..])).unwrap();
                if let Body::Io(io) = rec.body {
                    sum += u64::from(io.data[0]);
                }
                pos += size;
            }
            black_box(sum)
        })
    });
    g.finish();
}

fn trace_write(c: &mut Criterion) {
    let mut g = c.benchmark_group("trace_write");
    g.throughput(Throughput::Elements(N));
    for (name, level) in [("store", None), ("zstd1", Some(1)), ("zstd3", Some(3))] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let opts = WriterOptions { zstd_level: level, sync: SyncMode::Never, ..Default::default() };
                let mut w = TraceWriter::with_sink(NullSink, "bench".into(), opts).unwrap();
                for i in 0..N {
                    let (d, r) = io_body(i);
                    let io = Io { direction: Direction::Out, size: 1, port: 0x3f8, count: 1, data: &d };
                    w.append(0, Body::Io(io), Some(r)).unwrap();
                }
                black_box(w.finish().unwrap())
            })
        });
    }
    g.finish();
}

fn trace_read(c: &mut Criterion) {
    let mut g = c.benchmark_group("trace_read");
    for (name, level) in [("store", None), ("zstd3", Some(3))] {
        let bytes = trace(N, level);
        let raw = {
            let mut r = TraceReader::from_bytes(bytes.clone(), "b").unwrap();
            stats(&mut r).unwrap().bytes
        };
        // Throughput in bytes of records (decompressed), the figure the target names.
        g.throughput(Throughput::Bytes(raw));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut r = TraceReader::from_bytes(bytes.clone(), "b").unwrap();
                let mut n = 0u64;
                while let Some(rec) = r.next_record() {
                    rec.unwrap();
                    n += 1;
                }
                assert_eq!(n, N);
                black_box(n)
            })
        });
    }
    g.finish();
}

fn chunk_compression(c: &mut Criterion) {
    let mut g = c.benchmark_group("chunk_compress");
    let mut raw = encoded(3200); // about one 256 KiB chunk
    chunk::seq_delta(&mut raw, 0, true);
    g.throughput(Throughput::Bytes(u64::try_from(raw.len()).unwrap()));
    for level in [1, 3, 9] {
        let mut comp = zstd::bulk::Compressor::new(level).unwrap();
        g.bench_function(format!("zstd{level}"), |b| {
            b.iter(|| black_box(comp.compress(black_box(&raw)).unwrap().len()))
        });
    }
    let packed = zstd::bulk::compress(&raw, 3).unwrap();
    g.bench_function("unzstd3", |b| {
        let mut out = vec![0u8; raw.len()];
        let mut d = zstd::bulk::Decompressor::new().unwrap();
        b.iter(|| black_box(d.decompress_to_buffer(black_box(&packed), &mut out).unwrap()))
    });
    g.finish();
}

/// A device's write: `len` bytes of which half are zero (a disk block or packet is rarely
/// all entropy), the rest xorshift output.
fn dma_data(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&(x & 0x00ff_00ff_00ff_00ff).to_le_bytes());
    }
    v.truncate(len);
    v
}

/// `TraceWriter::append_guest_write` end to end (encode into the chunk buffer, split at
/// `MAX_GUEST_WRITE_DATA`, the writer thread's compression and CRC, a null sink): the cost
/// per byte a recorded DMA adds, throughput in bytes of guest data.
fn guest_write(c: &mut Criterion) {
    let mut g = c.benchmark_group("guest_write");
    g.sample_size(10);
    for (label, len) in [("4KiB", 4usize << 10), ("64KiB", 64 << 10), ("1MiB", 1 << 20), ("16MiB", 16 << 20)]
    {
        let data = dma_data(len);
        // Enough writes per iteration to fill a few chunks at the small sizes.
        let reps = (16usize << 20).div_ceil(len).min(256);
        g.throughput(Throughput::Bytes(u64::try_from(len * reps).unwrap()));
        for (name, level) in [("store", None), ("zstd3", Some(3))] {
            g.bench_function(format!("{name}/{label}"), |b| {
                b.iter(|| {
                    let opts = WriterOptions {
                        zstd_level: level,
                        sync: SyncMode::Never,
                        guest_writes: true,
                        ..Default::default()
                    };
                    let mut w = TraceWriter::with_sink(NullSink, "bench".into(), opts).unwrap();
                    for i in 0..reps {
                        w.append_guest_write(0, 0x10_0000 * u64::try_from(i).unwrap(), &data).unwrap();
                    }
                    black_box(w.finish().unwrap())
                })
            });
        }
    }
    g.finish();
}

/// Recording work per exit with 1, 2 and 4 threads recording into one trace at once, as
/// the vCPU threads of a machine with several vCPUs do (each through its own
/// `TraceStream`), and one thread on a plain `TraceWriter` (what one vCPU uses). Each
/// iteration is one exit record (I/O exit with a register sample) appended by every
/// thread; the time is the busiest thread's own CPU time per record, so sharing two cores
/// between four threads does not count, and a lock convoy (threads spinning or waking
/// each other, cache lines bouncing) does.
fn record_threads(c: &mut Criterion) {
    use cpu_time::ThreadTime;
    let mut g = c.benchmark_group("record_threads");
    g.throughput(Throughput::Elements(1));
    let append_n = |w: &mut dyn FnMut(u32, Body<'_>, Option<RegsSample>), vcpu: u32, n: u64| {
        for i in 0..n {
            let (d, r) = io_body(i);
            let io = Io { direction: Direction::Out, size: 1, port: 0x3f8, count: 1, data: &d };
            w(vcpu, Body::Io(io), Some(r));
        }
    };
    g.bench_function("writer_1", |b| {
        b.iter_custom(|iters| {
            let opts = WriterOptions { zstd_level: Some(3), sync: SyncMode::Never, ..Default::default() };
            let mut w = TraceWriter::with_sink(NullSink, "bench".into(), opts).unwrap();
            let t = ThreadTime::now();
            append_n(
                &mut |v, body, r| {
                    black_box(w.append(v, body, r).unwrap());
                },
                0,
                iters,
            );
            let spent = t.elapsed();
            w.finish().unwrap();
            spent
        })
    });
    for threads in [1u32, 2, 4] {
        g.bench_function(format!("streams_{threads}"), |b| {
            b.iter_custom(|iters| {
                let opts = WriterOptions {
                    zstd_level: Some(3),
                    sync: SyncMode::Never,
                    threads: true,
                    ..Default::default()
                };
                let w = TraceWriter::with_sink(NullSink, "bench".into(), opts).unwrap();
                let shared = w.into_shared();
                let start = std::sync::Barrier::new(threads as usize);
                let spent = std::thread::scope(|s| {
                    let handles: Vec<_> = (0..threads)
                        .map(|v| {
                            let mut stream = shared.stream();
                            let start = &start;
                            s.spawn(move || {
                                start.wait();
                                let t = ThreadTime::now();
                                append_n(
                                    &mut |v, body, r| {
                                        black_box(stream.append(v, body, r).unwrap());
                                    },
                                    v,
                                    iters,
                                );
                                t.elapsed()
                            })
                        })
                        .collect();
                    handles.into_iter().map(|h| h.join().unwrap()).max().unwrap_or_default()
                });
                shared.finish().unwrap();
                spent
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = record, trace_write, trace_read, chunk_compression, guest_write, record_threads
}
criterion_main!(benches);

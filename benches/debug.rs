//! What debugging a replay costs on real KVM: one instruction forward, one back (inside
//! a stretch between exits, and across an exit), and `reverse-continue` back across N
//! exits to a breakpoint hit once at the start. Each measurement starts from the same
//! point (reached untimed). Without /dev/kvm it prints why and skips.
//!
//! `cargo bench --bench debug`

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use vmrr_format::TraceReader;
use vmrr_replay::debugger::{Position, Session, Settings, Stopped};
use vmrr_replay::{Options, source};

fn kvm() -> bool {
    let ok = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    if !ok {
        eprintln!("skipped: /dev/kvm cannot be opened");
    }
    ok
}

fn record(dir: &Path, guest: &str, extra: &[&str]) -> PathBuf {
    let out = dir.join(format!("{guest}.vmrr"));
    let mut args = vec!["record", "--guest", guest, "-o", out.to_str().expect("utf-8"), "--serial", "none"];
    args.extend_from_slice(extra);
    let o = Command::new(env!("CARGO_BIN_EXE_vmrr")).args(&args).output().expect("vmrr records");
    assert!(matches!(o.status.code(), Some(0 | 5)), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

fn open(trace: &Path) -> Session {
    let src = source::open(trace, &vmrr_format::bundle::Budgets::memory_only(1 << 30)).expect("trace");
    Session::open(src, &Options::default(), Settings::default()).expect("session")
}

fn never() -> impl FnMut() -> bool {
    || false
}

/// Times `op` from `from`, going back to `from` untimed before each run.
fn from_point(
    s: &mut Session,
    from: &Position,
    op: impl Fn(&mut Session) -> Stopped,
) -> impl FnMut(u64) -> Duration {
    let from = from.clone();
    move |iters| {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            s.goto(&from, &mut never()).expect("goto");
            let t = Instant::now();
            std::hint::black_box(op(s));
            total += t.elapsed();
        }
        total
    }
}

/// The sequence number of the `n`-th exit record of a trace.
fn nth_exit(trace: &Path, n: usize) -> u64 {
    let mut r = TraceReader::open(trace).expect("trace");
    let mut seen = 0;
    while let Some(rec) = r.next_record() {
        let rec = rec.expect("intact");
        if rec.body.is_exit() {
            seen += 1;
            if seen == n {
                return rec.seq;
            }
        }
    }
    panic!("the trace has fewer than {n} exits");
}

fn steps(c: &mut Criterion) {
    if !kvm() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    // The emulation-failure guest: 160 exits, a checkpoint every 20.
    let trace = record(dir.path(), "emulation-failure", &["--checkpoint-every", "20"]);
    let mut s = open(&trace);
    let mut g = c.benchmark_group("debug");
    g.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    // A point 10 instructions after an exit in the middle of the run.
    let mid = nth_exit(&trace, 80);
    s.goto_record(mid, &mut never()).expect("goto");
    for _ in 0..10 {
        s.step(&mut never()).expect("step");
    }
    let inside = s.position().clone();
    g.bench_function("stepi", |b| {
        b.iter_custom(from_point(&mut s, &inside, |s| s.step(&mut never()).expect("step")))
    });
    g.bench_function("reverse_stepi/inside_a_stretch", |b| {
        b.iter_custom(from_point(&mut s, &inside, |s| s.reverse_step(&mut never()).expect("reverse")))
    });
    // Right after an exit: one back is the previous stretch's last instruction (its
    // length learnt once, then known).
    let after_exit = Position::at_record(Some(mid));
    g.bench_function("reverse_stepi/across_an_exit", |b| {
        b.iter_custom(from_point(&mut s, &after_exit, |s| s.reverse_step(&mut never()).expect("reverse")))
    });
    g.finish();
}

fn reverse_continue(c: &mut Criterion) {
    if !kvm() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    // The interrupts guest: a timer interrupt per `hlt`, about 1,100 exits, a checkpoint
    // every 100 exits.
    let trace = record(dir.path(), "interrupts", &["--iterations", "1050", "--checkpoint-every", "100"]);
    let mut s = open(&trace);
    let start = s.start().clone();
    // A breakpoint on the guest's second instruction, which runs once.
    let early = 0x10_0007;
    assert!(s.add_breakpoint(early));
    let mut g = c.benchmark_group("debug/reverse_continue");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    for n in [10usize, 100, 1000] {
        let from = Position::at_record(Some(nth_exit(&trace, n)));
        s.goto(&from, &mut never()).expect("goto");
        assert_eq!(s.reverse_cont(&mut never()).expect("rc"), Stopped::Breakpoint(early));
        s.goto(&start, &mut never()).expect("start");
        g.bench_with_input(BenchmarkId::new("exits", n), &n, |b, _| {
            b.iter_custom(from_point(&mut s, &from, |s| s.reverse_cont(&mut never()).expect("rc")))
        });
    }
    g.finish();
}

criterion_group!(benches, steps, reverse_continue);
criterion_main!(benches);

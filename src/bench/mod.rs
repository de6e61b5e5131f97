//! `vmrr bench`: every figure measured side by side in one process, medians over
//! repetitions, modes interleaved within each repetition so that their ratios share the
//! machine's noise (`interleave`), each compared figure with its 95% confidence interval
//! (`interval`), repeated until the intervals are narrower than 2 points or the time
//! allowance is spent. See docs/PERFORMANCE.md for what each figure means.

mod interleave;
mod interval;
mod plot;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vmrr_engine::devices::console::Console;
use vmrr_engine::exit::{RipConvention, RunView};
use vmrr_engine::machine::{ExitHook, Machine, Outcome, RunError};
use vmrr_engine::recording::{Finished, RecordError, Runner, Snapshots};
use vmrr_engine::session::{GuestSpec, SessionConfig};
use vmrr_engine::snapshot::{self, snapshot_dir};
use vmrr_format::{NullSink, TraceReader, TraceWriter, WriterOptions};

use crate::exit_code::{CliError, CliResult};
use interleave::{Allowance, Compared, Difference, interleaved};
use interval::{Estimate, estimate};

/// How much to measure.
#[derive(Debug, Clone, Copy)]
struct Plan {
    reps: usize,
    storm: u64,
    floor: u64,
    encode: u64,
    resets: usize,
    /// Each exit storm's plain/record/replay comparison.
    storms: Allowance,
    /// The checkpoint-overhead comparison (its runs last `paced_secs` each).
    overhead: Allowance,
    paced_secs: f64,
}

/// The widest interval a compared figure may have: 2 points of a fraction.
const TWO_POINTS: f64 = 0.02;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn err(what: &str, e: impl std::fmt::Display) -> CliError {
    CliError::Replay(format!("bench: {what}: {e}"))
}

fn cfg(guest: &str, iterations: Option<u64>, mem_bytes: u64, dirty_log: bool) -> SessionConfig {
    SessionConfig {
        guest: GuestSpec::Builtin { name: guest.into(), iterations },
        mem_bytes,
        cpuid: Default::default(),
        limits: Default::default(),
        dirty_log,
        vcpus: 1,
        irqchip: None,
    }
}

fn build(c: &SessionConfig) -> Result<Machine, CliError> {
    Ok(c.build(Console::capture_only(), Console::capture_only())?)
}

/// Plain run: the bus answers, nothing is recorded. Exits per second.
fn plain(guest: &str, n: u64) -> Result<f64, CliError> {
    let mut m = build(&cfg(guest, Some(n), 128 << 20, false))?;
    let s = m.run()?;
    Ok(s.exits as f64 / s.elapsed.as_secs_f64())
}

/// Recording run into `trace`. Exits per second and the trace's stored bytes.
fn record(guest: &str, n: u64, trace: &Path) -> Result<(f64, u64, u64), CliError> {
    let c = cfg(guest, Some(n), 128 << 20, false);
    let w = TraceWriter::create(trace, WriterOptions::default())?;
    let done = recording(build(&c)?, &c, w, Snapshots::None, None)?;
    let (s, stored) = (done.summary, done.trace.map_or(0, |x| x.stored_bytes));
    Ok((s.exits as f64 / s.elapsed.as_secs_f64(), stored, s.exits))
}

/// Records `m` (built from `c`) into `w` keeping `snapshots`, with `also` after each exit.
fn recording(
    m: Machine,
    c: &SessionConfig,
    w: TraceWriter,
    snapshots: Snapshots,
    also: Option<&mut dyn ExitHook>,
) -> Result<Finished, CliError> {
    let fail = |e: RecordError| match e {
        RecordError::Start(e) => CliError::Recorder(e),
        RecordError::Stopped { error, .. } => CliError::Run(error),
    };
    let mut r = Runner::start(m, c, w, snapshots).map_err(fail)?;
    let s = r.run_with(also).map_err(fail)?;
    r.finish(s).map_err(fail)
}

/// Replay of `trace` (guest rebuilt from the trace). Exits per second of the replay loop.
fn replay(trace: &Path) -> Result<f64, CliError> {
    let src = vmrr_replay::source::Source::new(trace.to_path_buf(), None);
    let opts = vmrr_replay::Options { start: vmrr_replay::StartFrom::Rebuild, ..Default::default() };
    let r = vmrr_replay::replay(&src, &opts).map_err(crate::cmd::replay_err)?;
    if r.outcome != vmrr_replay::Outcome::Completed {
        return Err(err("replay", format!("{:?}: {:?}", r.outcome, r.divergence.map(|d| d.reason))));
    }
    Ok(r.exits_per_s)
}

/// The floor: KVM_RUN round trips with no handler at all. Nanoseconds per exit.
fn exit_floor(n: u64) -> Result<f64, CliError> {
    let mut m = build(&cfg("pio-storm", Some(n + 16), 128 << 20, false))?;
    for _ in 0..16 {
        m.run_to_exit()?;
    }
    let t = Instant::now();
    let mut done = 0;
    while done < n {
        if m.run_to_exit()? {
            done += 1;
        }
    }
    Ok(t.elapsed().as_nanos() as f64 / n as f64)
}

/// Takes snapshot `id` (incremental on `parent`) of `m` into `dir`.
fn take_snapshot(
    m: &mut Machine,
    dir: &Path,
    id: u64,
    parent: Option<u64>,
) -> Result<snapshot::CaptureStats, CliError> {
    let who = snapshot::Identity { id, parent, trace_id: [0; 16], exit_seq: None, annotations: &[] };
    snapshot::take(m, dir, &who).map_err(|e| err("snapshot", e))
}

/// A `kvm_run` region as KVM leaves it at an `out` to port 0x5c0 with synced registers.
fn fake_run_page() -> Vec<u8> {
    use vmrr_engine::exit::offsets as off;
    let mut p = vec![0u8; 3 * 4096];
    let mut put = |at: usize, v: &[u8]| p[at..at + v.len()].copy_from_slice(v);
    put(off::EXIT_REASON, &u32::from(vmrr_format::kind::IO).to_le_bytes()); // KVM_EXIT_IO
    put(off::EXIT + off::io::DIRECTION, &[1]); // out
    put(off::EXIT + off::io::SIZE, &[1]);
    put(off::EXIT + off::io::PORT, &0x5c0u16.to_le_bytes());
    put(off::EXIT + off::io::COUNT, &1u32.to_le_bytes());
    put(off::EXIT + off::io::DATA_OFFSET, &4096u64.to_le_bytes());
    put(off::VALID_REGS, &1u64.to_le_bytes()); // KVM_SYNC_X86_REGS
    put(off::SYNC_REGS + off::regs::RIP, &0x40_1005u64.to_le_bytes());
    put(off::SYNC_REGS + off::regs::RSP, &0x7fff_f000u64.to_le_bytes());
    put(off::SYNC_REGS + off::regs::RFLAGS, &0x3202u64.to_le_bytes());
    p
}

/// Recording work alone, without KVM: decode the `kvm_run` bytes into a record and append
/// it to a writer. With `zstd` false this is the vCPU thread's work per exit (compression
/// runs on the writer's thread); with it true, the sustained rate when the writer's thread
/// has to keep up with a vCPU that exits back to back. Nanoseconds per exit.
fn record_work(n: u64, zstd: bool) -> Result<(f64, f64), CliError> {
    let mut page = fake_run_page();
    let conv = RipConvention { io_after: true, mmio_after: true };
    let opts = WriterOptions { zstd_level: zstd.then_some(3), ..WriterOptions::default() };
    let mut w = TraceWriter::with_sink(NullSink, "bench".into(), opts)?;
    let t = Instant::now();
    for i in 0..n {
        page[4096] = (i & 0xff) as u8;
        // What the vCPU thread does per exit: decode the exit once, append it.
        let exit = RunView::new(&page).map_err(|e| err("kvm_run page", e))?.exit(false, conv);
        w.append(0, exit.body(&page), exit.regs())?;
    }
    let ns = t.elapsed().as_nanos() as f64 / n as f64;
    let s = w.finish()?;
    Ok((ns, s.raw_bytes as f64 / s.records.max(1) as f64))
}

/// Reading a trace back: records per second.
fn decode_rate(trace: &Path) -> Result<f64, CliError> {
    let t = Instant::now();
    let mut r = TraceReader::open(trace)?;
    let mut n = 0u64;
    while let Some(item) = r.next_record() {
        item?;
        n += 1;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// Restore latency: cold (a new VM created as part of the restore) and warm (into a VM
/// shell created beforehand, as a replay or fuzzing host would keep ready: slots still to
/// register). Each includes loading and validating the snapshot. Median ms.
fn restore_ms(mem_mib: u64, reps: usize, dir: &Path) -> Result<(f64, f64), CliError> {
    let root = dir.join(format!("restore-{mem_mib}"));
    let snap = snapshot_dir(&root, 0);
    {
        let mut m = build(&cfg("hello-long", None, mem_mib << 20, false))?;
        take_snapshot(&mut m, &snap, 0, None)?;
    }
    let (mut times, mut warm) = (Vec::new(), Vec::new());
    for r in 0..reps {
        let t = Instant::now();
        let chain = snapshot::load_chain(&snap, u64::MAX).map_err(|e| err("load", e))?;
        let mut m = snapshot::restore(&chain, Console::capture_only(), Console::capture_only(), false)
            .map_err(|e| err("restore", e))?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        let shell = vmrr_engine::kvm::EmptyVm::create().map_err(|e| CliError::Session(e.into()))?;
        let t = Instant::now();
        let chain = snapshot::load_chain(&snap, u64::MAX).map_err(|e| err("load", e))?;
        let w =
            snapshot::restore_into(shell, &chain, Console::capture_only(), Console::capture_only(), false)
                .map_err(|e| err("restore", e))?;
        warm.push(t.elapsed().as_secs_f64() * 1000.0);
        drop(w);
        if r == 0 {
            // The restored guest runs: it prints its greeting and exits.
            let s = m.run()?;
            if !matches!(s.outcome, Outcome::GuestExit(0)) {
                return Err(err("restored guest", s.outcome.name()));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&root);
    Ok((median(&mut times), median(&mut warm)))
}

/// Pages that differ between the two snapshots [`remap_ms`] switches between.
const REMAP_PAGES: u64 = 256;

/// Restore over a kept machine when [`REMAP_PAGES`] pages differ: a machine switched back
/// and forth between a snapshot and its incremental child (the guest dirtied those pages in
/// between). Median ms of: loading and validating the chain (its page bitmaps grow with
/// guest memory, one bit per page), `restore_over` remapping only what differs, and
/// `restore_over` remapping every page (the cost before differences were tracked); and the
/// pages the last changed-only restore remapped.
fn remap_ms(mem_mib: u64, reps: usize, dir: &Path) -> Result<Remapped, CliError> {
    let root = dir.join(format!("remap-{mem_mib}"));
    {
        let mut m = build(&cfg("dirty-pages", Some(REMAP_PAGES), mem_mib << 20, true))?;
        m.set_max_exits(Some(1));
        m.run()?;
        take_snapshot(&mut m, &snapshot_dir(&root, 0), 0, None)?;
        m.set_max_exits(Some(2));
        m.run()?;
        take_snapshot(&mut m, &snapshot_dir(&root, 1), 1, Some(0))?;
    }
    let load = |id| snapshot::load_chain(&snapshot_dir(&root, id), u64::MAX).map_err(|e| err("load", e));
    let mut m = snapshot::restore(&load(0)?, Console::capture_only(), Console::capture_only(), true)
        .map_err(|e| err("restore", e))?;
    let (mut loading, mut changed, mut whole, mut pages) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for how in [snapshot::Remap::Changed, snapshot::Remap::Whole] {
        for r in 0..2 * reps {
            let t = Instant::now();
            let chain = load(u64::from(r % 2 == 0))?;
            loading.push(t.elapsed().as_secs_f64() * 1000.0);
            let s = snapshot::restore_over_with(&mut m, &chain, how).map_err(|e| err("restore over", e))?;
            let ms = s.elapsed.as_secs_f64() * 1000.0;
            match how {
                snapshot::Remap::Changed => {
                    changed.push(ms);
                    pages = s.pages;
                }
                snapshot::Remap::Whole => whole.push(ms),
            }
        }
    }
    let _ = std::fs::remove_dir_all(&root);
    Ok(Remapped {
        load: median(&mut loading),
        changed: median(&mut changed),
        whole: median(&mut whole),
        pages,
    })
}

/// What [`remap_ms`] measured.
struct Remapped {
    load: f64,
    changed: f64,
    whole: f64,
    pages: u64,
}

/// What `KVM_SET_USER_MEMORY_REGION2` alone costs for `mem_mib` of RAM in a fresh VM (no
/// vmrr work at all): the part of restore latency that grows with guest memory. Median ms.
fn memslot_ms(mem_mib: u64, reps: usize) -> Result<f64, CliError> {
    let mut times = Vec::new();
    for _ in 0..reps {
        let kvm = vmrr_engine::kvm::open_kvm().map_err(|e| err("opening /dev/kvm", e))?;
        let mut vm = vmrr_engine::kvm::VmSlots::new(kvm.create_vm().map_err(|e| err("KVM_CREATE_VM", e))?);
        let mut mem = vmrr_engine::kvm::memory::GuestMemory::create(&vmrr_engine::kvm::memory::ram_layout(
            mem_mib << 20,
        ))
        .map_err(|e| err("guest memory", e))?;
        let t = Instant::now();
        mem.register(&mut vm, true, false).map_err(|e| err("KVM_SET_USER_MEMORY_REGION2", e))?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(median(&mut times))
}

/// One capture figure: median pause and median time until durable (ms), pages captured.
struct Capture {
    pause_ms: f64,
    durable_ms: f64,
    pages: u64,
}

/// Incremental captures of a 1 GiB guest that dirtied `pct`% of its pages since the last:
/// stopped-world (`background` false: the pause is the whole write and sync) or in the
/// background (the pause arms write-protection; durable when the writer has synced and
/// renamed the snapshot).
/// With `vcpus` above 1 the machine has that many vCPUs on KVM's in-kernel irqchip (the
/// APs wait for INIT/SIPI): the pause then saves every vCPU and local APIC and the VM's
/// irqchip.
fn capture_ms(pct: u64, reps: usize, dir: &Path, background: bool, vcpus: u32) -> Result<Capture, CliError> {
    let mem = 1u64 << 30;
    let pages = (mem - vmrr_engine::guests::CHURN_START) / 4096;
    let n = (pages * pct / 100).max(1);
    let mut c = cfg("dirty-pages", Some(n), mem, true);
    c.vcpus = vcpus;
    let mut m = build(&c)?;
    let root = dir.join(format!("capture-{pct}-{vcpus}-{}", if background { "bg" } else { "sw" }));
    m.set_max_exits(Some(1));
    m.run()?;
    take_snapshot(&mut m, &snapshot_dir(&root, 0), 0, None)?;
    let mut bg = if background {
        Some(
            snapshot::Background::new(vmrr_engine::checkpoint::DEFAULT_BUFFER_BYTES)
                .map_err(|e| err("background capture", e))?,
        )
    } else {
        None
    };
    let (mut pauses, mut durable) = (Vec::new(), Vec::new());
    let mut dirty = 0;
    for r in 1..=reps as u64 {
        m.set_max_exits(Some(m.exits() + 1));
        m.run()?;
        let dir = snapshot_dir(&root, r);
        let s = match bg.as_mut() {
            Some(b) => {
                let who = snapshot::Identity {
                    id: r,
                    parent: Some(r - 1),
                    trace_id: [0; 16],
                    exit_seq: None,
                    annotations: &[],
                };
                let (inflight, _) = b.start(&mut m, &dir, &who).map_err(|e| err("snapshot", e))?;
                inflight.wait().map_err(|e| err("snapshot", e))?
            }
            None => take_snapshot(&mut m, &dir, r, Some(r - 1))?,
        };
        dirty = s.pages_considered;
        pauses.push(s.pause.as_secs_f64() * 1000.0);
        durable.push(s.durable.as_secs_f64() * 1000.0);
    }
    let _ = std::fs::remove_dir_all(&root);
    Ok(Capture { pause_ms: median(&mut pauses), durable_ms: median(&mut durable), pages: dirty })
}

/// Pages per round of `dirty-paced` that make it dirty `target` pages per second of a
/// 1 GiB guest on this host (measured: its rate is set by its fixed work per round).
fn paced_pages(target: f64) -> Result<u64, CliError> {
    // Two steps: the rate is not quite proportional to the pages per round (each page
    // costs a fault, the work between rounds is fixed).
    let mut pages = 64u64;
    for _ in 0..2 {
        let mut c = cfg("dirty-paced", Some(pages), 1 << 30, true);
        c.limits.max_duration = Some(Duration::from_millis(700));
        let mut m = build(&c)?;
        let s = m.run()?;
        let rate = s.exits as f64 * pages as f64 / s.elapsed.as_secs_f64().max(1e-9);
        // Clamped to 1..=65536 first: the cast is exact.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let next = (pages as f64 * target / rate.max(1.0)).round().clamp(1.0, 65536.0) as u64;
        pages = next;
    }
    Ok(pages)
}

/// Forgets the dirty log every second (what a checkpoint does to dirty tracking, without a
/// snapshot).
struct ForgetEverySecond(Instant);

impl ExitHook for ForgetEverySecond {
    fn after_exit(&mut self, m: &mut Machine, exit: u64) -> Result<(), RunError> {
        if self.0.elapsed() >= Duration::from_secs(1) {
            self.0 = Instant::now();
            snapshot::forget_dirty_pages(m).map_err(|e| RunError::Hook {
                hook: "dirty-log reset",
                exit,
                source: Box::new(e),
            })?;
        }
        Ok(())
    }
}

/// What a paced run does every second.
#[derive(Clone, Copy)]
enum Every {
    /// Nothing.
    Nothing,
    /// Reads and forgets the dirty log.
    ForgetDirtyLog,
    /// A checkpoint.
    Checkpoint(vmrr_engine::checkpoint::CaptureMode),
}

/// One recording of `dirty-paced` (`pages` per round, 1 GiB) for `secs`, doing `every`
/// every second besides its initial snapshot. Rounds of guest work per second, and pages
/// dirtied per second.
fn paced_run(pages: u64, secs: f64, every: Every, dir: &Path) -> Result<(f64, f64), CliError> {
    use vmrr_engine::checkpoint::{CaptureMode, Policy};
    let mut c = cfg("dirty-paced", Some(pages), 1 << 30, true);
    c.limits.max_duration = Some(Duration::from_secs_f64(secs));
    let trace = dir.join("paced.vmrr");
    let w = TraceWriter::create(&trace, WriterOptions::default())?;
    let root = dir.join("paced.snapshots");
    let _ = std::fs::remove_dir_all(&root);
    let (capture, interval) = match every {
        Every::Checkpoint(mode) => (mode, Some(Duration::from_secs(1))),
        _ => (CaptureMode::StopWorld, None),
    };
    let snapshots = Snapshots::Checkpoints {
        root: root.clone(),
        policy: Policy { every_exits: None, interval },
        capture,
    };
    let mut forget = ForgetEverySecond(Instant::now());
    let also: Option<&mut dyn ExitHook> = match every {
        Every::ForgetDirtyLog => Some(&mut forget),
        _ => None,
    };
    let s = recording(build(&c)?, &c, w, snapshots, also)?.summary;
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_file(&trace);
    let t = s.elapsed.as_secs_f64().max(1e-9);
    Ok((s.exits as f64 / t, s.exits as f64 * pages as f64 / t))
}

/// Throughput lost to a checkpoint every second by a guest dirtying 10% of 1 GiB per
/// second, recorded: `1 - rounds/s with / rounds/s without`, for background and
/// stopped-world capture, and for the dirty log alone read and forgotten every second (KVM
/// write-protecting the pages again: the part no capture design avoids); and background
/// against the dirty log alone. The four runs of a repetition are interleaved (see
/// `interleave`); the dirty rate achieved is the run without checkpoints'.
fn checkpoint_overhead(allow: Allowance, secs: f64, dir: &Path) -> Result<Overhead, CliError> {
    use vmrr_engine::checkpoint::{CaptureMode, DEFAULT_BUFFER_BYTES};
    let total = ((1u64 << 30) - vmrr_engine::guests::CHURN_START) as f64 / 4096.0;
    let pages = paced_pages(total * 0.10)?;
    let background = CaptureMode::Background { budget_bytes: DEFAULT_BUFFER_BYTES };
    let modes = [
        Every::Nothing,
        Every::Checkpoint(background),
        Every::Checkpoint(CaptureMode::StopWorld),
        Every::ForgetDirtyLog,
    ];
    let mut rate = Vec::new();
    let c = interleaved(
        modes.len(),
        allow,
        &[
            Difference { name: "checkpoint_overhead", of: |m| lost(m, 1) },
            Difference { name: "checkpoint_overhead_stop_world", of: |m| lost(m, 2) },
            Difference { name: "checkpoint_overhead_dirty_log_only", of: |m| lost(m, 3) },
            Difference {
                name: "checkpoint_overhead_background_vs_dirty_log",
                of: |m| lost(m, 1) - lost(m, 3),
            },
        ],
        |mode, _| {
            let (rounds, dirtied) = paced_run(pages, secs, modes[mode], dir)?;
            if mode == 0 {
                rate.push(100.0 * dirtied / total);
            }
            Ok(rounds)
        },
    )?;
    Ok(Overhead { compared: c, rate: estimate(&rate).median })
}

/// Throughput lost by mode `i` of a checkpoint-overhead repetition against mode 0 (no
/// checkpoints).
fn lost(m: &[f64], i: usize) -> f64 {
    1.0 - ratio(m[i], m[0])
}

/// What [`checkpoint_overhead`] measured.
struct Overhead {
    compared: Compared,
    rate: f64,
}

/// In-place resets at 64 dirty pages, `count` of them in 10 blocks or more: resets per
/// second (a block's rate is one over its median reset time; the figure is the median block
/// and its interval), run-and-reset cycles per second, and the dirty pages each reset
/// found.
fn resets(count: usize, dir: &Path) -> Result<(Estimate, f64, u64), CliError> {
    let mut m = build(&cfg("dirty-pages", Some(64), 128 << 20, true))?;
    let root = dir.join("reset");
    m.set_max_exits(Some(1));
    m.run()?;
    take_snapshot(&mut m, &snapshot_dir(&root, 0), 0, None)?;
    drop(m);
    let chain = snapshot::load_chain(&snapshot_dir(&root, 0), u64::MAX).map_err(|e| err("load", e))?;
    let mut m = snapshot::restore(&chain, Console::capture_only(), Console::capture_only(), true)
        .map_err(|e| err("restore", e))?;
    let block = (count / 20).max(10);
    let mut rates = Vec::new();
    let mut times = Vec::with_capacity(block);
    let mut dirty = 0;
    let t0 = Instant::now();
    for i in 0..count.max(10 * block) {
        // The guest dirties 64 pages and exits...
        while !m.run_to_exit()? {}
        // ...and goes back to the snapshot.
        let t = Instant::now();
        let st = snapshot::reset(&mut m, &chain).map_err(|e| err("reset", e))?;
        times.push(t.elapsed().as_secs_f64());
        dirty = st.dirty_pages;
        if (i + 1) % block == 0 {
            rates.push(1.0 / median(&mut times));
            times.clear();
        }
    }
    let cycle = count.max(10 * block) as f64 / t0.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&root);
    Ok((estimate(&rates), cycle, dirty))
}

/// The interval of `e` as JSON: `[low, high]`, or `null` with too few values for one.
fn ci(e: &Estimate) -> Value {
    e.ci95.map_or(Value::Null, |(lo, hi)| json!([lo, hi]))
}

/// What a comparison's JSON says about its repetitions.
fn interval_note(c: &Compared) -> Value {
    json!({"repetitions": c.modes.first().map_or(0, Vec::len), "within_2_points": c.converged, "seconds": c.seconds})
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// Runs the benchmark.
pub fn run(
    quick: bool,
    as_json: bool,
    plot_dir: Option<&Path>,
    force: bool,
    allowance: Option<Duration>,
) -> CliResult {
    // The output rule, checked before the minutes of measuring.
    if let Some(d) = plot_dir {
        crate::output::directory(d)?;
        for name in PLOTS {
            crate::output::check_file(&d.join(name), &[], force)?;
        }
    }
    let plan = plan(quick, allowance);
    let t0 = Instant::now();
    let work = tempfile::Builder::new().prefix("vmrr-bench-").tempdir().map_err(|e| err("temp dir", e))?;
    let dir = work.path();
    let say = |s: &str| {
        if !as_json {
            eprintln!("bench: {s}");
        }
    };
    let mut report = json!({
        "quick": quick,
        "repetitions": plan.reps,
        "storm_exits": plan.storm + 1,
        "host": {"kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
                 "cpu": vmrr_engine::record::prelude::cpu_model(), "cpus": std::thread::available_parallelism().map_or(1, |n| n.get())},
    });
    let mut intervals: Value = json!({});
    exit_figures(&plan, dir, &say, &mut report, &mut intervals)?;
    restore_figures(&plan, dir, &say, &mut report)?;
    checkpoint_figures(&plan, dir, &say, &mut report, &mut intervals)?;
    report["intervals"] = intervals;
    report["seconds"] = json!(t0.elapsed().as_secs_f64());
    if let Some(d) = plot_dir {
        write_plots(d, &report, force)?;
    }
    if as_json {
        crate::cmd::print_json(&report)?;
    } else {
        print_human(&report);
    }
    Ok(())
}

/// How much a quick or full run measures; `allowance` overrides the time the interleaved
/// comparisons may take.
fn plan(quick: bool, allowance: Option<Duration>) -> Plan {
    let storms = |min_reps, time| Allowance { min_reps, max_reps: 400, time, width: TWO_POINTS };
    let mut plan = if quick {
        Plan {
            reps: 3,
            storm: 10_000,
            floor: 10_000,
            encode: 2_000_000,
            resets: 200,
            storms: storms(interval::MIN_VALUES, Duration::from_secs(10)),
            // One repetition: the quick run shows the figures, not their intervals.
            overhead: Allowance { min_reps: 1, max_reps: 1, time: Duration::ZERO, width: TWO_POINTS },
            paced_secs: 3.0,
        }
    } else {
        Plan {
            reps: 7,
            storm: 60_000,
            floor: 50_000,
            encode: 10_000_000,
            resets: 2000,
            storms: storms(7, Duration::from_secs(180)),
            overhead: Allowance {
                min_reps: interval::MIN_VALUES,
                max_reps: 200,
                time: Duration::from_secs(1200),
                width: TWO_POINTS,
            },
            paced_secs: 5.0,
        }
    };
    if let Some(t) = allowance {
        plan.storms.time = t;
        plan.overhead.time = t;
        plan.overhead.max_reps = plan.overhead.max_reps.max(plan.overhead.min_reps);
    }
    plan
}

/// Exits: the KVM round trip, recording work without KVM, and each storm plain, recorded
/// and replayed (interleaved until their intervals are narrow enough); the trace's cost.
fn exit_figures(
    plan: &Plan,
    dir: &Path,
    say: &dyn Fn(&str),
    report: &mut Value,
    intervals: &mut Value,
) -> CliResult {
    say("exit floor");
    let mut floor: Vec<f64> = (0..plan.reps).map(|_| exit_floor(plan.floor)).collect::<Result<_, _>>()?;
    say("recording work without KVM");
    let (mut rec_ns, mut rec_ns_z) = (Vec::new(), Vec::new());
    let mut raw_per_exit = 0.0;
    for _ in 0..plan.reps {
        let (ns, raw) = record_work(plan.encode, false)?;
        rec_ns.push(ns);
        raw_per_exit = raw;
        rec_ns_z.push(record_work(plan.encode, true)?.0);
    }
    let mut modes: Value = json!({});
    let mut bytes_per_exit = 0.0;
    let mut decode = Vec::new();
    for guest in ["pio-storm", "mmio-storm"] {
        say(&format!("{guest}: plain, record, replay, interleaved until the intervals are within 2 points"));
        let c = storm_modes(guest, plan, dir, &mut bytes_per_exit, &mut decode)?;
        let (p, r, rp) = (c.mode(0), c.mode(1), c.mode(2));
        let (over, rvr) = (c.difference("record_overhead"), c.difference("replay_vs_record"));
        modes[guest] = json!({
            "plain_exits_per_s": p.median, "plain_exits_per_s_ci95": ci(&p),
            "record_exits_per_s": r.median, "record_exits_per_s_ci95": ci(&r),
            "replay_exits_per_s": rp.median, "replay_exits_per_s_ci95": ci(&rp),
            "record_overhead": over.median, "record_overhead_ci95": ci(&over),
            "replay_vs_record": rvr.median, "replay_vs_record_ci95": ci(&rvr),
        });
        intervals[guest] = interval_note(&c);
    }
    let pio = &modes["pio-storm"];
    // The pio storm's figures and their intervals at the top level, as before.
    for k in [
        "plain_exits_per_s",
        "record_exits_per_s",
        "replay_exits_per_s",
        "record_overhead",
        "replay_vs_record",
    ] {
        report[k] = pio[k].clone();
        report[format!("{k}_ci95")] = pio[format!("{k}_ci95")].clone();
    }
    report["mmio"] = modes["mmio-storm"].clone();
    report["exit_ns_floor"] = json!(median(&mut floor));
    report["record_ns_per_exit"] = json!(median(&mut rec_ns));
    report["record_ns_per_exit_sustained_zstd"] = json!(median(&mut rec_ns_z));
    report["bytes_per_exit"] = json!(bytes_per_exit);
    report["raw_bytes_per_exit"] = json!(raw_per_exit);
    report["decode_records_per_s"] = json!(median(&mut decode));
    Ok(())
}

/// `guest` run plain, recorded and replayed, interleaved (see `interleave`); the pio storm's
/// trace cost and decode rate noted on the way.
fn storm_modes(
    guest: &str,
    plan: &Plan,
    dir: &Path,
    bytes_per_exit: &mut f64,
    decode: &mut Vec<f64>,
) -> Result<Compared, CliError> {
    // The replay mode replays the trace the record mode wrote last (in this repetition
    // or the one before: the first repetition records first).
    let mut latest: Option<PathBuf> = None;
    let c = interleaved(
        3,
        plan.storms,
        &[
            Difference { name: "record_overhead", of: |m| 1.0 - ratio(m[1], m[0]) },
            Difference { name: "replay_vs_record", of: |m| ratio(m[2], m[1]) },
        ],
        |mode, rep| match mode {
            0 => plain(guest, plan.storm),
            1 => {
                let p = dir.join(format!("{guest}-{rep}.vmrr"));
                let (rate, stored, exits) = record(guest, plan.storm, &p)?;
                if guest == "pio-storm" {
                    *bytes_per_exit = stored as f64 / exits as f64;
                }
                if let Some(old) = latest.replace(p) {
                    let _ = std::fs::remove_file(old);
                }
                Ok(rate)
            }
            _ => {
                let p = latest.clone().ok_or_else(|| err("replay", "no trace recorded yet"))?;
                let r = replay(&p)?;
                if guest == "pio-storm" {
                    decode.push(decode_rate(&p)?);
                }
                Ok(r)
            }
        },
    )?;
    if let Some(old) = latest.take() {
        let _ = std::fs::remove_file(old);
    }
    Ok(c)
}

/// Restores at 128 MiB, 1 GiB and 8 GiB: cold, warm, over a kept machine, and KVM's
/// memslot alone.
fn restore_figures(plan: &Plan, dir: &Path, say: &dyn Fn(&str), report: &mut Value) -> CliResult {
    let (mut restore, mut restore_warm, mut restore_remap, mut restore_whole, mut restore_load, mut memslot) =
        (json!({}), json!({}), json!({}), json!({}), json!({}), json!({}));
    let mut remap_pages = 0;
    for mib in [128u64, 1024, 8192] {
        say(&format!("restore latency at {mib} MiB"));
        let (cold, warm) = restore_ms(mib, plan.reps.max(5), dir)?;
        restore[mib.to_string()] = json!(cold);
        restore_warm[mib.to_string()] = json!(warm);
        let r = remap_ms(mib, plan.reps.max(5), dir)?;
        restore_remap[mib.to_string()] = json!(r.changed);
        restore_whole[mib.to_string()] = json!(r.whole);
        restore_load[mib.to_string()] = json!(r.load);
        remap_pages = r.pages;
        memslot[mib.to_string()] = json!(memslot_ms(mib, plan.reps.max(5))?);
    }
    for (k, v) in [
        ("restore_ms", restore),
        ("restore_warm_ms", restore_warm),
        ("restore_remap_ms", restore_remap),
        ("restore_remap_whole_ms", restore_whole),
        ("restore_remap_load_ms", restore_load),
        ("restore_remap_pages", json!(remap_pages)),
        ("memslot_ms", memslot),
    ] {
        report[k] = v;
    }
    Ok(())
}

/// Checkpoints: capture pauses at 1% and 10% dirty of 1 GiB, the throughput a checkpoint
/// every second costs (interleaved), and in-place resets.
fn checkpoint_figures(
    plan: &Plan,
    dir: &Path,
    say: &dyn Fn(&str),
    report: &mut Value,
    intervals: &mut Value,
) -> CliResult {
    let (mut capture, mut capture_durable, mut capture_sw, mut capture_pages, mut capture4) =
        (json!({}), json!({}), json!({}), json!({}), json!({}));
    for pct in [1u64, 10] {
        say(&format!("capture pause at {pct}% dirty, background and stopped-world"));
        let b = capture_ms(pct, plan.reps, dir, true, 1)?;
        let s = capture_ms(pct, plan.reps, dir, false, 1)?;
        say(&format!("capture pause at {pct}% dirty with 4 vCPUs, background"));
        capture4[pct.to_string()] = json!(capture_ms(pct, plan.reps, dir, true, 4)?.pause_ms);
        capture[pct.to_string()] = json!(b.pause_ms);
        capture_durable[pct.to_string()] = json!(b.durable_ms);
        capture_sw[pct.to_string()] = json!(s.pause_ms);
        capture_pages[pct.to_string()] = json!(b.pages.min(s.pages));
    }
    say("checkpoint overhead: 10% of 1 GiB dirtied per second, a checkpoint every second");
    let overhead = checkpoint_overhead(plan.overhead, plan.paced_secs, dir)?;
    intervals["checkpoint_overhead"] = interval_note(&overhead.compared);
    say("in-place resets at 64 dirty pages");
    let (rps, cycles, dirty) = resets(plan.resets, dir)?;
    for (k, v) in [
        ("capture_pause_ms", capture),
        ("capture_pause_4_vcpus_ms", capture4),
        ("capture_durable_ms", capture_durable),
        ("capture_pause_stop_world_ms", capture_sw),
        ("capture_dirty_pages", capture_pages),
        ("checkpoint_overhead_dirty_pct_per_s", json!(overhead.rate)),
        ("resets_per_s", json!(rps.median)),
        ("resets_per_s_ci95", ci(&rps)),
        ("reset_cycles_per_s", json!(cycles)),
        ("reset_dirty_pages", json!(dirty)),
    ] {
        report[k] = v;
    }
    for k in [
        "checkpoint_overhead",
        "checkpoint_overhead_stop_world",
        "checkpoint_overhead_dirty_log_only",
        "checkpoint_overhead_background_vs_dirty_log",
    ] {
        let e = overhead.compared.difference(k);
        report[k] = json!(e.median);
        report[format!("{k}_ci95")] = ci(&e);
    }
    Ok(())
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

fn print_human(r: &Value) {
    println!(
        "vmrr bench ({}; {} repetitions of absolute figures, medians; compared figures with their 95% intervals; {:.0} s)",
        if r["quick"] == true { "quick" } else { "full" },
        r["repetitions"],
        f(&r["seconds"])
    );
    println!("  exit round trip (floor)      {:>10.0} ns", f(&r["exit_ns_floor"]));
    println!(
        "  recording work per exit      {:>10.1} ns  (no KVM; {:.0} raw bytes/exit; {:.1} ns sustained with zstd)",
        f(&r["record_ns_per_exit"]),
        f(&r["raw_bytes_per_exit"]),
        f(&r["record_ns_per_exit_sustained_zstd"])
    );
    for (name, m) in [("pio-storm", r.clone()), ("mmio-storm", r["mmio"].clone())] {
        println!(
            "  {name:<10} plain {:>8.0}/s  record {:>8.0}/s  replay {:>8.0}/s  overhead {}  replay/record {:.2} {}  ({})",
            f(&m["plain_exits_per_s"]),
            f(&m["record_exits_per_s"]),
            f(&m["replay_exits_per_s"]),
            pct_ci(&m["record_overhead"], &m["record_overhead_ci95"]),
            f(&m["replay_vs_record"]),
            ratio_ci(&m["replay_vs_record_ci95"]),
            reps_note(&r["intervals"][name])
        );
    }
    println!(
        "  trace: {:.2} bytes/exit compressed, decode {:.1} M records/s",
        f(&r["bytes_per_exit"]),
        f(&r["decode_records_per_s"]) / 1e6
    );
    for (k, what) in [
        ("restore_ms", "cold"),
        ("restore_warm_ms", "warm"),
        ("restore_remap_ms", "remap, changed pages"),
        ("restore_remap_whole_ms", "remap, every page"),
        ("restore_remap_load_ms", "remap's chain load"),
        ("memslot_ms", "KVM memslot alone"),
    ] {
        println!(
            "  restore ({what}): 128 MiB {:.2} ms, 1 GiB {:.2} ms, 8 GiB {:.2} ms",
            f(&r[k]["128"]),
            f(&r[k]["1024"]),
            f(&r[k]["8192"])
        );
    }
    println!(
        "  capture pause (1 GiB guest, background): 1% dirty {:.2} ms (durable {:.1} ms), 10% dirty {:.2} ms (durable {:.1} ms)",
        f(&r["capture_pause_ms"]["1"]),
        f(&r["capture_durable_ms"]["1"]),
        f(&r["capture_pause_ms"]["10"]),
        f(&r["capture_durable_ms"]["10"])
    );
    println!(
        "  capture pause (1 GiB guest, 4 vCPUs, background): 1% dirty {:.2} ms, 10% dirty {:.2} ms",
        f(&r["capture_pause_4_vcpus_ms"]["1"]),
        f(&r["capture_pause_4_vcpus_ms"]["10"])
    );
    println!(
        "  capture pause (stopped world):           1% dirty {:.1} ms, 10% dirty {:.1} ms",
        f(&r["capture_pause_stop_world_ms"]["1"]),
        f(&r["capture_pause_stop_world_ms"]["10"])
    );
    let k = |key: &str| pct_ci(&r[key], &r[format!("{key}_ci95")]);
    println!(
        "  checkpoint every second, guest dirtying {:.1}% of 1 GiB/s: throughput lost {} (background), {} (stopped world), {} (dirty log alone); background - dirty log alone {}  ({})",
        f(&r["checkpoint_overhead_dirty_pct_per_s"]),
        k("checkpoint_overhead"),
        k("checkpoint_overhead_stop_world"),
        k("checkpoint_overhead_dirty_log_only"),
        k("checkpoint_overhead_background_vs_dirty_log"),
        reps_note(&r["intervals"]["checkpoint_overhead"])
    );
    let resets_ci = match r["resets_per_s_ci95"].as_array().map(|a| (f(&a[0]), f(&a[1]))) {
        Some((lo, hi)) => format!(" [{lo:.0}, {hi:.0}]"),
        None => String::new(),
    };
    println!(
        "  in-place reset at {} dirty pages: {:.0}{resets_ci} resets/s ({:.0} run+reset cycles/s)",
        r["reset_dirty_pages"],
        f(&r["resets_per_s"]),
        f(&r["reset_cycles_per_s"])
    );
}

/// A fraction as a percentage with its 95% interval: `5.1% [3.2, 7.0]`, or `5.1% [no
/// interval]` with too few repetitions.
fn pct_ci(v: &Value, ci: &Value) -> String {
    match ci.as_array().map(|a| (f(&a[0]), f(&a[1]))) {
        Some((lo, hi)) => format!("{:.1}% [{:.1}, {:.1}]", 100.0 * f(v), 100.0 * lo, 100.0 * hi),
        None => format!("{:.1}% [no interval]", 100.0 * f(v)),
    }
}

/// A ratio's 95% interval: `[0.93, 0.98]`, or nothing without one.
fn ratio_ci(ci: &Value) -> String {
    match ci.as_array().map(|a| (f(&a[0]), f(&a[1]))) {
        Some((lo, hi)) => format!("[{lo:.2}, {hi:.2}]"),
        None => "[no interval]".into(),
    }
}

/// `12 repetitions, within 2 points` or `... not within 2 points in the allowance`.
fn reps_note(i: &Value) -> String {
    let n = i["repetitions"].as_u64().unwrap_or(0);
    if n < interval::MIN_VALUES as u64 {
        format!("{}: too few for an interval", vmrr_format::describe::count(n, "repetition"))
    } else if i["within_2_points"] == true {
        format!("{n} repetitions, intervals within 2 points")
    } else {
        format!("{n} repetitions, intervals not within 2 points in the time allowed")
    }
}

/// The charts `--plot` writes.
const PLOTS: [&str; 3] = ["throughput.svg", "restore.svg", "bytes-per-exit.svg"];

fn write_plots(dir: &Path, r: &Value, force: bool) -> CliResult {
    let b = |label: &str, value: f64, text: String| plot::Bar { label: label.into(), value, text };
    let mut tp = Vec::new();
    for (g, m) in [("pio", r.clone()), ("mmio", r["mmio"].clone())] {
        for mode in ["plain", "record", "replay"] {
            let v = f(&m[format!("{mode}_exits_per_s")]);
            tp.push(b(&format!("{g} {mode}"), v, format!("{v:.0} exits/s")));
        }
    }
    let floor = 1e9 / f(&r["exit_ns_floor"]).max(1.0);
    tp.push(b("KVM round trip (floor)", floor, format!("{floor:.0} exits/s")));
    let mut restore: Vec<plot::Bar> = Vec::new();
    for (key, what) in [
        ("restore_ms", "cold"),
        ("restore_warm_ms", "warm"),
        ("restore_remap_ms", "remap, changed pages"),
        ("restore_remap_whole_ms", "remap, every page"),
        ("memslot_ms", "KVM memslot alone"),
    ] {
        for k in ["128", "1024", "8192"] {
            let v = f(&r[key][k]);
            restore.push(b(&format!("{k} MiB, {what}"), v, format!("{v:.2} ms")));
        }
    }
    let bytes = vec![
        b("compressed on disk", f(&r["bytes_per_exit"]), format!("{:.2} B", f(&r["bytes_per_exit"]))),
        b(
            "in memory (raw record)",
            f(&r["raw_bytes_per_exit"]),
            format!("{:.0} B", f(&r["raw_bytes_per_exit"])),
        ),
    ];
    let host = format!(
        "{} | {}",
        r["host"]["cpu"].as_str().unwrap_or(""),
        r["host"]["kernel"].as_str().unwrap_or("")
    );
    for (name, svg) in [
        ("throughput.svg", plot::bars("Exit throughput per mode", &host, &tp)),
        (
            "restore.svg",
            plot::bars("Restore vs guest memory (the slope is KVM's per-page work)", &host, &restore),
        ),
        ("bytes-per-exit.svg", plot::bars("Trace bytes per exit (pio-storm)", &host, &bytes)),
    ] {
        crate::output::write_bytes(&dir.join(name), &[], force, svg.as_bytes())?;
    }
    let _ = Duration::ZERO;
    Ok(())
}

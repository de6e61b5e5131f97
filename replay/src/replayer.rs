//! The replay loop: restore (or rebuild) the machine, then for every recorded exit run the
//! guest to its next exit, check it against the record, and answer it from the record.
//! Recorded interrupts and interrupt-window requests are applied after the exit they
//! followed. Device models see every access (so a snapshot taken during replay holds their
//! guest-visible state) but never answer the guest and never raise interrupts: the trace
//! does both.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vmrr_engine::devices::console::Console;
use vmrr_engine::machine::watchdog::{Fired, Watchdog};
use vmrr_engine::machine::{Machine, Reply};
use vmrr_engine::snapshot::{self, snapshot_dir};
use vmrr_format::{Direction, TraceReader};

use crate::cpu_check;
use crate::error::ReplayError;
use crate::expect::{Actual, Expected, Shape, Verdict, match_regs, match_shape};
use crate::feed::{Feed, Item};
use crate::report::{Divergence, FailureReport, Outcome, Report, Start, regs_json};
use crate::source::Source;
use vmrr_format::overview::{self, CheckpointMark, TraceOverview};

/// Where to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// With `--goto`, the nearest checkpoint at or before it; without, the first (initial)
    /// snapshot; without snapshots, a guest rebuilt from the trace.
    #[default]
    Auto,
    /// Rebuild the guest from the trace's description (image, built-in, firmware),
    /// ignoring snapshots.
    Rebuild,
    /// A given checkpoint.
    Checkpoint(u64),
}

/// Replay settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Stop after the record with this sequence number.
    pub goto: Option<u64>,
    /// With `goto`: write a full snapshot of the replayed machine into this directory.
    pub snapshot_at: Option<PathBuf>,
    /// Where to start.
    pub start: StartFrom,
    /// Refuse to run when this host lacks a CPU feature the recorded guest saw.
    pub strict_cpu: bool,
    /// Where the replayed guest's serial output goes.
    pub serial: Console,
    /// Use this image instead of the one the trace names (`StartFrom::Rebuild`).
    pub image: Option<PathBuf>,
    /// Largest memory a snapshot may ask for.
    pub max_mem: u64,
    /// Give up when no exit happens for this long (a diverged guest may spin forever).
    pub stall: Duration,
    /// Show progress on stderr when it is a terminal.
    pub progress: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            goto: None,
            snapshot_at: None,
            start: StartFrom::Auto,
            strict_cpu: false,
            serial: Console::capture_only(),
            image: None,
            max_mem: 16 << 30,
            stall: Duration::from_secs(60),
            progress: false,
        }
    }
}

/// Exits kept for reports.
const HISTORY: usize = 8;

fn unreplayable(s: impl Into<String>) -> ReplayError {
    ReplayError::Unreplayable(s.into())
}

/// Builds the machine and says where it starts.
fn prepare(src: &Source, f: &TraceOverview, opts: &Options) -> Result<(Machine, Start), ReplayError> {
    let debugcon = Console::capture_only();
    let checkpoint = match opts.start {
        StartFrom::Rebuild => None,
        StartFrom::Checkpoint(id) => Some(
            f.checkpoints
                .iter()
                .find(|c| c.snapshot_id == id)
                .copied()
                .ok_or_else(|| unreplayable(format!("the trace has no checkpoint {id}")))?,
        ),
        StartFrom::Auto => {
            let present = |c: &&CheckpointMark| {
                src.snapshots.as_ref().is_some_and(|r| snapshot_dir(r, c.snapshot_id).is_dir())
            };
            match opts.goto {
                // The nearest checkpoint at or before the target.
                Some(g) => f.checkpoints.iter().rev().filter(|c| c.record_seq <= g).find(present).copied(),
                // A whole replay starts from the initial snapshot.
                None => f.checkpoints.iter().find(present).copied(),
            }
        }
    };
    if let Some(c) = checkpoint {
        let root = src.snapshots.as_ref().ok_or_else(|| {
            unreplayable(format!("checkpoint {} needs the snapshot directory", c.snapshot_id))
        })?;
        let chain = snapshot::load_chain(&snapshot_dir(root, c.snapshot_id), opts.max_mem)?;
        if chain.last().is_some_and(|l| l.state.trace_id != f.trace_id) {
            return Err(unreplayable(format!("snapshot {} belongs to another trace", c.snapshot_id)));
        }
        let m = snapshot::restore(&chain, opts.serial.clone(), debugcon, false)?;
        return Ok((m, Start { snapshot: Some(c.snapshot_id), seq: c.record_seq + 1 }));
    }
    let mut cfg = vmrr_engine::session::from_annotations(&f.annotations)
        .ok_or_else(|| unreplayable("the trace does not describe its guest (vmrr.* annotations missing)"))?;
    if let (Some(img), vmrr_engine::session::GuestSpec::Image { path, .. }) = (&opts.image, &mut cfg.guest) {
        *path = img.clone();
    }
    let m = cfg.build(opts.serial.clone(), debugcon)?;
    if !f.cpuid.is_empty() {
        // The guest must see the CPUID it saw when recorded, not this host's.
        let entries = vmrr_engine::kvm::cpuid::from_format(&f.cpuid);
        let c = kvm_bindings::CpuId::from_entries(&entries)
            .map_err(|_| unreplayable(format!("{} CPUID entries are too many", entries.len())))?;
        m.vm.vcpu.set_cpuid2(&c).map_err(|source| {
            ReplayError::Run(vmrr_engine::error::RunError::Kvm { what: "KVM_SET_CPUID2", source })
        })?;
    }
    Ok((m, Start { snapshot: None, seq: 0 }))
}

/// Merges the following recorded string-I/O exits into `exp` until it covers `want` items
/// (a host that batches a `rep ins/outs` the recording host split).
fn absorb(feed: &mut Feed, exp: &mut Expected, want: u32) -> Result<(), ReplayError> {
    while let Shape::Io { dir, size, port, count, data } = &mut exp.shape {
        if *count >= want {
            break;
        }
        match feed.next_item()? {
            Some(Item::Exit(Expected {
                shape: Shape::Io { dir: d, size: s, port: p, count: c, data: more },
                ..
            })) if d == *dir && s == *size && p == *port => {
                *count += c;
                data.extend_from_slice(&more);
            }
            Some(other) => {
                feed.push_front(other);
                break;
            }
            None => break,
        }
    }
    Ok(())
}

/// Fills the exit's reply from the record; returns the bytes supplied (IN / MMIO read).
fn answer(exp: &Expected, reply: Reply<'_>) -> Option<Vec<u8>> {
    match (reply, &exp.shape) {
        (Reply::In(buf), Shape::Io { dir: Direction::In, data, .. }) => {
            let n = buf.len().min(data.len());
            buf[..n].copy_from_slice(&data[..n]);
            buf[n..].fill(0xff);
            Some(buf.to_vec())
        }
        (Reply::MmioRead(buf), Shape::Mmio { data, .. }) => {
            let n = buf.len().min(8);
            buf[..n].copy_from_slice(&data[..n]);
            Some(buf.to_vec())
        }
        (Reply::RdMsr { data, error }, Shape::Msr { data: d, error: e, .. }) => {
            *data = *d;
            *error = *e;
            None
        }
        (Reply::WrMsr { error }, Shape::Msr { error: e, .. }) => {
            *error = *e;
            None
        }
        (Reply::Hypercall { ret }, Shape::Hypercall { ret: r, .. }) => {
            *ret = *r;
            None
        }
        _ => None,
    }
}

/// Lets the device models see an access (their guest-visible state stays in step), without
/// letting them answer.
fn show_devices(m: &mut Machine, shape: &Shape) {
    let mut scratch = [0u8; 8];
    match shape {
        Shape::Io { dir: Direction::Out, port, data, .. } => {
            m.bus.pio_write(*port, data);
        }
        Shape::Io { dir: Direction::In, port, size, .. } => {
            let n = usize::from(*size).min(8);
            m.bus.pio_read(*port, &mut scratch[..n]);
        }
        Shape::Mmio { addr, len, write: true, data } => {
            m.bus.mmio_write(*addr, &data[..usize::try_from(*len).unwrap_or(8).min(8)]);
        }
        Shape::Mmio { addr, len, write: false, .. } => {
            m.bus.mmio_read(*addr, &mut scratch[..usize::try_from(*len).unwrap_or(8).min(8)]);
        }
        _ => {}
    }
}

/// Replays `src`.
///
/// # Errors
/// The replay could not run: damaged input, KVM, a missing CPU feature with
/// `strict_cpu`. A divergence is not an error: it is the report's outcome.
pub fn replay(src: &Source, opts: &Options) -> Result<Report, ReplayError> {
    let t0 = Instant::now();
    let f = overview::scan(&src.trace)?;
    let mut notes = Vec::new();
    if f.unfinished {
        notes.push(
            "the trace's writer did not finish (no index or a torn last chunk): replaying what is intact"
                .into(),
        );
    }
    let cpu_warnings = match cpu_check::host_cpuid() {
        Ok(host) => cpu_check::missing(&f.cpuid, &host),
        Err(e) => vec![format!("(could not read this host's CPUID: {e})")],
    };
    if opts.strict_cpu && !cpu_warnings.is_empty() {
        return Err(ReplayError::CpuMismatch(cpu_warnings.join(", ")));
    }
    let (mut m, start) = prepare(src, &f, opts)?;
    let mut feed = Feed::new(TraceReader::open(&src.trace)?);
    feed.seek(start.seq)?;

    let t_loop = Instant::now();
    let watchdog = Watchdog::start(None).map_err(|source| ReplayError::Io {
        what: "starting the replay watchdog",
        path: String::new(),
        source,
    })?;
    let conv = vmrr_engine::kvm::probe::rip_convention().unwrap_or_default();
    let system_event_data = m.vm.caps.system_event_data;
    let mut history: VecDeque<u64> = VecDeque::new();
    let mut exits_replayed = 0u64;
    let mut divergence: Option<Divergence> = None;
    let mut failure: Option<(bool, FailureReport)> = None;
    let mut stopped_at = None;
    let mut pending: Option<Expected> = None;
    let progress = opts.progress && std::io::stderr().is_terminal() && f.exits > 100_000;
    let mut last_progress = Instant::now();
    let mut last_input: Option<u64> = None;
    let diverge = |m: &Machine,
                   feed: &mut Feed,
                   seq: u64,
                   reason: String,
                   actual: serde_json::Value,
                   hist: &VecDeque<u64>,
                   after_input: Option<u64>| {
        let hs: Vec<u64> = hist.iter().copied().collect();
        let expected = feed.records_json(&[seq]).pop().unwrap_or(serde_json::Value::Null);
        Divergence {
            seq,
            reason,
            after_input,
            expected,
            actual,
            last_matching: feed.records_json(&hs),
            registers: m.vm.vcpu.get_regs().map(|r| regs_json(&r)).unwrap_or(serde_json::Value::Null),
        }
    };

    'run: loop {
        let item = match pending.take() {
            Some(e) => Item::Exit(e),
            None => match feed.next_item()? {
                Some(i) => i,
                None => break,
            },
        };
        if opts.goto.is_some_and(|g| item.seq() > g) {
            stopped_at = opts.goto;
            break;
        }
        let mut exp = match item {
            Item::Exit(e) => e,
            Item::Interrupt { seq, vector } => {
                let view = m.view();
                if !(view.ready_for_interrupt_injection() && view.if_flag()) {
                    let d = diverge(
                        &m,
                        &mut feed,
                        seq,
                        format!(
                            "interrupt {vector:#x} was injected here when recording, but the replayed guest cannot take it (interrupts disabled or not ready)"
                        ),
                        serde_json::Value::Null,
                        &history,
                        last_input,
                    );
                    divergence = Some(d);
                    break;
                }
                m.bus.irq.acknowledge_vector(vector);
                m.inject_interrupt(vector)?;
                continue;
            }
            Item::Window { request, .. } => {
                m.set_interrupt_window(request)?;
                continue;
            }
            Item::Checkpoint { .. } => continue,
            Item::End { .. } => break,
        };
        if failure.is_some() {
            // Nothing can follow a fatal exit.
            let d = diverge(
                &m,
                &mut feed,
                exp.seq,
                "the trace continues after the fatal exit".into(),
                serde_json::Value::Null,
                &history,
                last_input,
            );
            divergence = Some(d);
            break;
        }
        // Run to the next exit and answer it from the record.
        let mut actual: Option<Actual> = None;
        let mut absorb_err = None;
        loop {
            let ran = m.step(|view, reply| {
                let body = view.body(system_event_data);
                let Some(mut shape) = Shape::of(&body) else { return };
                let regs = view.regs_sample(conv);
                if let (Shape::Io { count: ac, .. }, Shape::Io { count, .. }) = (&shape, &exp.shape) {
                    if ac > count {
                        if let Err(e) = absorb(&mut feed, &mut exp, *ac) {
                            absorb_err = Some(e);
                        }
                    }
                }
                if let Some(supplied) = answer(&exp, reply) {
                    match &mut shape {
                        Shape::Io { data, .. } => *data = supplied,
                        Shape::Mmio { data, .. } => {
                            let n = supplied.len().min(8);
                            data[..n].copy_from_slice(&supplied[..n]);
                        }
                        _ => {}
                    }
                }
                actual = Some(Actual { shape, regs });
            })?;
            if ran {
                break;
            }
            if let Some(Fired::Stopped | Fired::Deadline) = watchdog.flags.fired() {
                let d = diverge(
                    &m,
                    &mut feed,
                    exp.seq,
                    format!(
                        "the replayed guest made no exit within {} s; the recording's next exit is this record",
                        opts.stall.as_secs()
                    ),
                    serde_json::Value::Null,
                    &history,
                    last_input,
                );
                divergence = Some(d);
                break 'run;
            }
        }
        if let Some(e) = absorb_err {
            return Err(e);
        }
        let Some(act) = actual else {
            return Err(unreplayable("an exit could not be read"));
        };
        exits_replayed += 1;
        show_devices(&mut m, &act.shape);
        let verdict = match_shape(&mut exp, &act.shape);
        let regs_check = match &verdict {
            Verdict::Mismatch(why) => Err(why.clone()),
            Verdict::Partial => Ok(()),
            Verdict::Match => match_regs(exp.regs, act.regs, &|rip| m.instruction_len_at(rip)),
        };
        if let Err(why) = regs_check {
            let d = diverge(&m, &mut feed, exp.seq, why, act.json(exp.seq), &history, last_input);
            divergence = Some(d);
            break;
        }
        if verdict == Verdict::Partial {
            pending = Some(exp);
            continue;
        }
        if let Shape::Internal { .. }
        | Shape::FailEntry { .. }
        | Shape::Other { kind: vmrr_format::kind::SHUTDOWN, .. } = act.shape
        {
            let r = m.fatal_report();
            let memory = r.memory_operand.map(|a| {
                let mut b = [0u8; 16];
                match m.vm.memory.read(a, &mut b) {
                    Some(()) => b.iter().map(|x| format!("{x:02x}")).collect(),
                    None => "mmio (no memory slot)".to_string(),
                }
            });
            let mut before: Vec<u64> = history.iter().copied().collect();
            before.push(exp.seq);
            let is_emulation = r.suberror == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION
                && r.exit_reason == kvm_bindings::KVM_EXIT_INTERNAL_ERROR;
            let n = r.insn_len.unwrap_or(r.insn_bytes.len()).min(r.insn_bytes.len());
            failure = Some((
                is_emulation,
                FailureReport {
                    exit: vmrr_format::kind::kvm_exit_name(r.exit_reason).to_string(),
                    suberror: r.suberror,
                    flags: r.flags,
                    rip: r.rip,
                    insn_bytes: r.insn_bytes[..n].iter().map(|x| format!("{x:02x}")).collect(),
                    insn_size: r.insn_size,
                    disassembly: r.disassembly.clone(),
                    insn_len: r.insn_len,
                    memory_operand: r.memory_operand,
                    memory,
                    registers: regs_json(&r.regs),
                    exits_before: feed.records_json(&before),
                },
            ));
        }
        if matches!(
            exp.shape,
            Shape::Io { dir: Direction::In, .. }
                | Shape::Mmio { write: false, .. }
                | Shape::Msr { read: true, .. }
                | Shape::Hypercall { .. }
        ) {
            last_input = Some(exp.seq);
        }
        history.push_back(exp.seq);
        if history.len() > HISTORY {
            history.pop_front();
        }
        if progress && last_progress.elapsed() > Duration::from_millis(250) {
            last_progress = Instant::now();
            eprint!("\rreplay: {exits_replayed} / {} exits", f.exits);
        }
    }
    let loop_seconds = t_loop.elapsed().as_secs_f64();
    drop(watchdog);
    if progress {
        eprintln!();
    }
    let mut snapshot_written = None;
    if let (Some(dir), None) = (&opts.snapshot_at, &divergence) {
        let at = stopped_at.or(opts.goto);
        snapshot::take(&mut m, dir, 0, None, f.trace_id, at, &f.annotations)?;
        snapshot_written = Some(dir.display().to_string());
    }
    // Every write the guest made to the serial port was checked byte for byte against the
    // recording (a difference is a divergence), so without a divergence the replayed
    // console printed exactly what the recorded one did over the replayed span.
    let serial_output_matches = divergence.is_none();
    let outcome = match (&divergence, &failure) {
        (Some(_), _) => Outcome::Diverged,
        (None, Some(_)) => Outcome::Reproduced,
        (None, None) => Outcome::Completed,
    };
    let (emulation_failure, failure) = match failure {
        Some((true, r)) => (Some(r), None),
        Some((false, r)) => (None, Some(r)),
        None => (None, None),
    };
    let secs = t0.elapsed().as_secs_f64();
    Ok(Report {
        outcome,
        exits_replayed,
        start,
        stopped_at,
        divergence,
        emulation_failure,
        failure,
        serial_output_matches,
        serial_bytes: m.serial.total(),
        cpu_warnings,
        notes,
        snapshot_written,
        seconds: secs,
        loop_seconds,
        exits_per_s: if loop_seconds > 0.0 { exits_replayed as f64 / loop_seconds } else { 0.0 },
    })
}

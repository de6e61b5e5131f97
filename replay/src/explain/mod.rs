//! Naming the cause of a divergence.
//!
//! When replay diverges at record N, everything the guest did since the last input it
//! consumed was deterministic except instructions whose result does not come through an
//! exit (the TSC, random numbers, ...). So the search replays again from the nearest
//! checkpoint, this time single-stepping a window that ends at the divergence, decoding
//! every instruction before it runs, and reports those instructions ([`Suspect`]). The
//! first window starts at the last input (record K); when it holds no suspect, the window
//! grows backwards (to four times its length each time) until one is found, the window
//! reaches where replay can start, or the step limit is spent. Each search replay is a
//! fresh run: the values those instructions read differ again, so it may diverge earlier
//! than N; it is stepped to wherever it stops.

mod suspects;

use std::time::Instant;

use serde::Serialize;
use vmrr_engine::machine::debug::DebugStops;
use vmrr_format::TraceReader;
use vmrr_format::overview::TraceOverview;
use vmrr_format::progress::{Progress, Unit};

pub use crate::report::Suspect;
use crate::report::{Divergence, Search};
pub use suspects::RecordingHost;

use crate::error::ReplayError;
use crate::options::{Options, StartFrom};
use crate::replayer::{Event, Replayer, Stop};
use crate::source::Source;

/// The search's bound, and whether to show progress.
#[derive(Debug, Clone, Copy)]
pub struct SearchLimits {
    /// Most instructions single-stepped over all windows.
    pub max_steps: u64,
    /// Show a progress line on a terminal.
    pub progress: bool,
}

/// What the search found.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// One sentence a VMM engineer can act on.
    pub cause: String,
    /// Instructions whose results bypass the trace, most likely first.
    pub suspects: Vec<Suspect>,
    /// Why nothing was found, and what it could be (when `suspects` is empty).
    pub why_none: Option<String>,
    /// What the search covered.
    pub search: Search,
}

impl Explanation {
    /// Writes the cause, the suspects and what the search covered into `d`.
    pub fn explain(self, d: &mut Divergence) {
        d.cause = Some(self.cause);
        d.suspects = self.suspects;
        d.why_none = self.why_none;
        d.search = Some(self.search);
    }
}

/// Searches for the cause of the divergence at record `seq` whose last input was
/// `after_input`.
///
/// # Errors
/// The search replays could not run (KVM, the trace).
pub fn explain(
    src: &Source,
    f: &TraceOverview,
    opts: &Options,
    seq: u64,
    after_input: Option<u64>,
    limits: SearchLimits,
) -> Result<Explanation, ReplayError> {
    let t0 = Instant::now();
    let host = RecordingHost { cpuid_enforced: f.annotation("kvm.cpuid_enforced").map(|v| v == "true") };
    let earliest = earliest_start(src, f, opts);
    let mut from = after_input.unwrap_or(seq.saturating_sub(32)).max(earliest);
    let mut steps = 0u64;
    let mut cut = false;
    loop {
        let mut collector = suspects::Collector::new(host);
        let budget = limits.max_steps - steps;
        let w = step_window(src, f, opts, from, seq, budget, &mut collector, limits.progress, steps)?;
        let (to_seq, unstepped) = (w.to_seq, w.unstepped);
        steps += w.steps;
        cut |= w.cut;
        let found = !collector.is_empty();
        if found || cut || from <= earliest {
            let suspects = collector.into_suspects();
            let cause = cause(&suspects, host, from, seq);
            let why_none =
                suspects.is_empty().then(|| why_none(steps, from, seq, cut, limits.max_steps, unstepped));
            return Ok(Explanation {
                cause,
                suspects,
                why_none,
                search: Search {
                    from_seq: from,
                    to_seq,
                    steps,
                    cut,
                    unstepped,
                    seconds: t0.elapsed().as_secs_f64(),
                },
            });
        }
        // Nothing between the window's start and the divergence: look further back.
        let len = seq.saturating_sub(from).max(16);
        from = from.saturating_sub(4 * len).max(earliest);
    }
}

/// The earliest record a search replay can start stepping after.
fn earliest_start(src: &Source, f: &TraceOverview, opts: &Options) -> u64 {
    match opts.start {
        StartFrom::Rebuild => 0,
        _ => f
            .checkpoints
            .iter()
            .find(|c| {
                src.snapshots
                    .as_ref()
                    .is_some_and(|r| vmrr_format::layout::snapshot_dir(r, c.snapshot_id).is_dir())
            })
            .map_or(0, |c| c.at()),
    }
}

/// What one search replay covered.
struct Window {
    /// Where it stopped.
    to_seq: u64,
    /// Instructions stepped.
    steps: u64,
    /// The step budget ended it.
    cut: bool,
    /// Ring-3 stretches run unstepped.
    unstepped: u64,
}

/// One search replay: from the nearest checkpoint at or before `from`, replayed normally
/// to record `from`, then single-stepped to the divergence at `seq` (or wherever this run
/// stops).
#[allow(clippy::too_many_arguments)]
fn step_window(
    src: &Source,
    f: &TraceOverview,
    opts: &Options,
    from: u64,
    seq: u64,
    budget: u64,
    collector: &mut suspects::Collector,
    progress: bool,
    steps_before: u64,
) -> Result<Window, ReplayError> {
    let start = match opts.start {
        StartFrom::Rebuild => StartFrom::Rebuild,
        _ => f
            .checkpoints
            .iter()
            .rev()
            .filter(|c| c.at() <= from)
            .find(|c| {
                src.snapshots
                    .as_ref()
                    .is_some_and(|r| vmrr_format::layout::snapshot_dir(r, c.snapshot_id).is_dir())
            })
            .map_or(StartFrom::Auto, |c| StartFrom::Checkpoint(c.snapshot_id)),
    };
    let search_opts = Options {
        goto: None,
        snapshot_at: None,
        start,
        serial: vmrr_engine::devices::console::Console::capture_only(),
        progress: false,
        ..opts.clone()
    };
    let (machine, first) = crate::start::prepare(src, f, &search_opts)?;
    let mut r = Replayer::new(machine, TraceReader::open(&src.trace)?, &first, f.exits, &search_opts)?;
    let bar = if progress {
        Progress::spinner("explaining the divergence:", Unit::Count("instructions stepped"))
    } else {
        Progress::hidden()
    };
    // Replay normally to the window's start, then single-step. A window that starts
    // before what this replay can see is stepped from the replay's start.
    let begin_now = first.seq > from;
    let mut last = first.seq;
    let mut stepping = false;
    let mut steps = 0u64;
    loop {
        if !stepping && (begin_now || r.position().0.is_some_and(|s| s >= from)) {
            r.set_debug_stops(DebugStops { single_step: true, ..DebugStops::default() })?;
            stepping = true;
        }
        match r.step()? {
            Event::Debug { executed: Some(e), .. } => {
                steps += 1;
                let ecx =
                    r.machine().regs().map(|g| u32::try_from(g.rcx & 0xffff_ffff).unwrap_or(0)).unwrap_or(0);
                collector.saw(e.rip, &e.insn, ecx, steps_before + steps);
                bar.set(steps_before + steps);
                if steps >= budget {
                    let to_seq = r.position().0.unwrap_or(last);
                    return Ok(Window { to_seq, steps, cut: true, unstepped: r.unstepped() });
                }
            }
            Event::Debug { .. } => steps += 1,
            Event::Exit { seq: s } | Event::Applied { seq: s } | Event::Failure { seq: s } => {
                last = s;
                if s >= seq && stepping {
                    break;
                }
            }
            Event::Stopped(Stop::Diverged(d)) => {
                last = d.seq;
                break;
            }
            Event::Stopped(_) => break,
        }
    }
    Ok(Window { to_seq: last, steps, cut: false, unstepped: r.unstepped() })
}

fn cause(found: &[Suspect], host: RecordingHost, from: u64, seq: u64) -> String {
    match found.first() {
        Some(s) => format!(
            "the guest {} at {} ({}, {} time{} since record {from}); {}",
            suspects::reads(s),
            s.rip,
            s.instruction,
            s.count,
            if s.count == 1 { "" } else { "s" },
            suspects::bypasses(s, host)
        ),
        None => format!(
            "no instruction between record {from} and the divergence at record {seq} reads a value that bypasses the trace; the difference comes from an input vmrr does not record"
        ),
    }
}

fn why_none(steps: u64, from: u64, seq: u64, cut: bool, max: u64, unstepped: u64) -> String {
    let scope = if cut {
        format!(
            "single-stepping stopped at the limit of {max} instructions (--explain-steps) after record {from}, before the divergence at record {seq}"
        )
    } else {
        format!(
            "single-stepping the {steps} instructions from record {from} to the divergence at record {seq} found no instruction whose result bypasses the trace"
        )
    };
    let blind = if unstepped > 0 {
        format!(
            " ({unstepped} stretches of ring-3 code ran unstepped: this host's KVM cannot single-step ring 3, measured at start)"
        )
    } else {
        String::new()
    };
    format!(
        "{scope}{blind}; the cause is an input vmrr does not model: a device or the VMM writing guest memory without an exit (DMA, a paravirtual clock page), an interrupt delivered by an in-kernel irqchip, or this host's KVM emulating an instruction differently"
    )
}

//! The replay loop, as a type: [`Replayer`] holds the machine, the recorded stream, the
//! recent history and the last input the guest consumed, and each [`Replayer::step`] does
//! one named thing: apply a recorded event, or replay one exit (run the guest to its next
//! exit, answer it from the record, check it), diverging or noting a reproduced failure on
//! the way. Device models see every access (so a snapshot taken during replay holds their
//! guest-visible state) but never answer the guest and never raise interrupts: the trace
//! does both.

mod divergence;
mod failure;

pub(crate) use failure::decode as failure_report;

use divergence::Found;

use std::collections::VecDeque;
use std::time::Duration;

use vmrr_engine::disasm::Decoded;
use vmrr_engine::machine::Machine;
use vmrr_engine::machine::debug::{DebugHit, DebugStops, HwStop, Watch};
use vmrr_engine::machine::watchdog::StallWatch;
use vmrr_format::progress::{Progress, Unit};
use vmrr_format::{Body, Direction, RecordBuf, TraceReader};

use crate::error::ReplayError;
use crate::matching::{IoBatch, Verdict, match_exit, match_io, match_regs};
use crate::options::Options;
use crate::recorded::{RecordStream, Recorded};
use crate::report::{Divergence, FailureReport, Start};

/// An instruction single-stepped: where it was, and what.
#[derive(Debug, Clone)]
pub struct Executed {
    /// Its address (RIP before it ran).
    pub rip: u64,
    /// The instruction.
    pub insn: Decoded,
}

/// Exits kept for reports.
const HISTORY: usize = 8;

/// A recorded exit the guest is still heading for.
#[derive(Debug, Clone)]
enum Waiting {
    /// Any exit but port I/O.
    Exit(RecordBuf),
    /// Port I/O (a batch, possibly partly matched), and its first record.
    Io(IoBatch, RecordBuf),
}

/// What one entry into the guest ended with.
enum Entered {
    /// An exit of the guest's own.
    Exit,
    /// A debug stop.
    Debug(Event),
    /// No exit within the stall limit.
    Stalled,
}

/// Why a replay stopped.
#[derive(Debug, Clone)]
pub enum Stop {
    /// The trace ended (its end-of-run record, or its last record).
    End,
    /// The `--goto` target was reached.
    Goto(u64),
    /// The guest did something other than what the trace recorded.
    Diverged(Box<Divergence>),
}

/// What one [`Replayer::step`] did.
#[derive(Debug, Clone)]
pub enum Event {
    /// A recorded exit happened again and was answered.
    Exit {
        /// Its record.
        seq: u64,
    },
    /// A recorded event was applied (an interrupt injected, the interrupt window set, a
    /// checkpoint passed).
    Applied {
        /// Its record.
        seq: u64,
    },
    /// The recorded fatal exit happened again.
    Failure {
        /// Its record.
        seq: u64,
    },
    /// A debug stop asked for with [`Replayer::set_debug_stops`]: one instruction
    /// single-stepped, or a hardware breakpoint or watchpoint. The recorded exit the guest
    /// is heading for is still expected.
    Debug {
        /// Where the guest is now (the next instruction).
        rip: u64,
        /// Single-stepping moved the guest one instruction boundary on (counted in
        /// [`Replayer::position`]): an instruction ran, or an injected interrupt was
        /// delivered (the guest now stands at its handler's first instruction).
        step: bool,
        /// What DR6 reported (hardware stops of the caller's; the replayer's own are
        /// removed).
        hit: DebugHit,
        /// The instruction it executed to get here, when single-stepping (decoded before
        /// it ran).
        executed: Option<Executed>,
    },
    /// The replay is over.
    Stopped(Stop),
}

/// One replay in progress.
pub struct Replayer {
    machine: Machine,
    records: RecordStream,
    goto: Option<u64>,
    stall_limit: Duration,
    /// The last exits that matched, oldest first.
    history: VecDeque<RecordBuf>,
    /// The most recent recorded input the guest consumed (an IN, MMIO read, RDMSR or
    /// hypercall answer).
    last_input: Option<u64>,
    /// The recorded exit the guest is heading for, when a debug stop or a partly
    /// matched string I/O batch interrupted it.
    waiting: Option<Waiting>,
    /// When single-stepping: the instruction about to run (decoded before each entry).
    next_insn: Option<Executed>,
    /// The last record consumed (an exit matched, an event applied, or the checkpoint
    /// replay started after): with `steps_since`, the replay's position.
    consumed: Option<u64>,
    /// Instruction boundaries single-stepped since `consumed`.
    steps_since: u64,
    /// An interrupt injected at the last event, not yet delivered (the next entry does).
    delivering: Option<u8>,
    /// Entries that ran ring-3 code without single-stepping it, on a host that cannot
    /// single-step ring 3 ([`vmrr_engine::machine::debug::host_steps_ring3`]).
    unstepped: u64,
    failure: Option<FailureReport>,
    exits_replayed: u64,
    stall: StallWatch,
    /// Exits replayed so far, on a terminal (`vmrr_format::progress`).
    progress: Progress,
}

impl Replayer {
    /// A replay of `machine` from `start` on: the records of `trace` from there.
    ///
    /// # Errors
    /// The trace cannot be read, or the stall guard cannot start.
    pub fn new(
        machine: Machine,
        trace: TraceReader,
        start: &Start,
        exits_total: u64,
        opts: &Options,
    ) -> Result<Self, ReplayError> {
        crate::error::check_replay_features(&trace)?;
        let mut records = RecordStream::new(trace);
        records.seek(start.seq)?;
        let stall = StallWatch::start(opts.stall)
            .map_err(|source| ReplayError::Os { what: "starting the replay's stall guard", source })?;
        let progress = if opts.progress && exits_total > 100_000 {
            Progress::bar("replay", exits_total, Unit::Count("exits"))
        } else {
            Progress::hidden()
        };
        Ok(Replayer {
            machine,
            records,
            goto: opts.goto,
            stall_limit: opts.stall,
            history: VecDeque::new(),
            last_input: None,
            waiting: None,
            next_insn: None,
            consumed: start.seq.checked_sub(1),
            steps_since: 0,
            delivering: None,
            unstepped: 0,
            failure: None,
            exits_replayed: 0,
            stall,
            progress,
        })
    }

    /// Sets where the replay stops next (`None`: at the trace's end). After a
    /// [`Stop::Goto`], stepping again goes on from the record after it.
    pub fn set_goto(&mut self, goto: Option<u64>) {
        self.goto = goto;
    }

    /// The replayed machine.
    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// The replayed machine, to snapshot it where the replay stopped.
    pub fn machine_mut(&mut self) -> &mut Machine {
        &mut self.machine
    }

    /// Exits replayed so far.
    pub fn exits_replayed(&self) -> u64 {
        self.exits_replayed
    }

    /// The recorded fatal exit, once it happened again.
    pub fn failure(&self) -> Option<&FailureReport> {
        self.failure.as_ref()
    }

    /// Clears the progress bar on a terminal, if one was shown.
    pub fn end_progress(&mut self) {
        self.progress = Progress::hidden();
    }

    /// Does the next recorded thing.
    ///
    /// # Errors
    /// The trace or KVM failed (a divergence is an [`Event::Stopped`], not an error).
    pub fn step(&mut self) -> Result<Event, ReplayError> {
        match self.waiting.take() {
            Some(Waiting::Exit(rec)) => return self.replay_exit(rec),
            Some(Waiting::Io(batch, rec)) => return self.replay_io(batch, rec),
            None => {}
        }
        let Some(item) = self.records.next_recorded()? else { return Ok(Event::Stopped(Stop::End)) };
        if let Some(g) = self.goto.filter(|g| item.seq() > *g) {
            // Kept for a replay that goes on past `g` ([`Replayer::set_goto`]).
            self.records.push_front(item);
            return Ok(Event::Stopped(Stop::Goto(g)));
        }
        match item {
            Recorded::Exit(rec) => self.replay_exit(rec),
            Recorded::End { .. } => Ok(Event::Stopped(Stop::End)),
            event => self.apply_event(event),
        }
    }

    /// Applies the events recorded next (interrupts, window changes, checkpoints) up to
    /// the next exit, without entering the guest: they happen at the boundary the replay
    /// stands at. Returns their sequence numbers; stops early at a divergence (an
    /// interrupt the guest cannot take), returning it.
    ///
    /// # Errors
    /// The trace or KVM failed.
    pub fn apply_events(&mut self) -> Result<(Vec<u64>, Option<Event>), ReplayError> {
        let mut applied = Vec::new();
        if self.waiting.is_some() {
            return Ok((applied, None));
        }
        while let Some(item) = self.records.next_recorded()? {
            if matches!(item, Recorded::Exit(_) | Recorded::End { .. })
                || self.goto.is_some_and(|g| item.seq() > g)
            {
                self.records.push_front(item);
                break;
            }
            match self.apply_event(item)? {
                Event::Applied { seq } => applied.push(seq),
                other => return Ok((applied, Some(other))),
            }
        }
        Ok((applied, None))
    }

    /// Applies a recorded interrupt, window change or checkpoint.
    fn apply_event(&mut self, event: Recorded) -> Result<Event, ReplayError> {
        let seq = event.seq();
        match event {
            Recorded::Interrupt { vector, .. } => {
                if !self.machine.can_take_interrupt() {
                    let reason = format!(
                        "interrupt {vector:#x} was injected here when recording, but the replayed guest cannot take it (interrupts disabled or not ready)"
                    );
                    return Ok(self.diverge(Found { seq, reason, recorded: None, live: None }));
                }
                self.machine.inject_recorded_interrupt(vector)?;
                self.delivering = Some(vector);
            }
            Recorded::Window { request, .. } => self.machine.set_interrupt_window(request)?,
            Recorded::IrqLine { gsi, level, .. } => self.machine.set_recorded_irq_line(gsi, level)?,
            Recorded::GuestWrite { gpa, data, .. } => {
                self.machine.write_phys(gpa, &data).map_err(|source| ReplayError::GuestWrite {
                    trace: self.records.trace_name().to_string(),
                    seq,
                    gpa,
                    len: data.len(),
                    source,
                })?;
            }
            Recorded::Checkpoint { .. } | Recorded::Exit(_) | Recorded::End { .. } => {}
        }
        self.consumed = Some(seq);
        self.steps_since = 0;
        Ok(Event::Applied { seq })
    }

    /// Replays one recorded exit: port I/O as a batch, anything else on its own.
    fn replay_exit(&mut self, rec: RecordBuf) -> Result<Event, ReplayError> {
        if self.failure.is_some() {
            let reason = "the trace continues after the fatal exit".into();
            return Ok(self.diverge(Found { seq: rec.seq(), reason, recorded: None, live: None }));
        }
        // The record is decoded once, here.
        let recorded = rec.record();
        if let Some(batch) = IoBatch::of(&recorded) {
            return self.replay_io(batch, rec);
        }
        match self.enter()? {
            Entered::Exit => {}
            Entered::Debug(event) => {
                self.waiting = Some(Waiting::Exit(rec));
                return Ok(event);
            }
            Entered::Stalled => return Ok(self.stalled(rec.seq())),
        };
        let verdict = match self.answer(&recorded.body) {
            Some(refused) => refused,
            None => match match_exit(&recorded.body, &self.machine.exit().body) {
                Verdict::Match => self.check_regs(recorded.regs, self.machine.exit().regs),
                other => other,
            },
        };
        let live = self.machine.exit();
        if let Verdict::Mismatch(reason) = verdict {
            let found = Found { seq: rec.seq(), reason, recorded: Some(recorded.body), live: Some(live) };
            let d =
                divergence::build(&self.machine, &mut self.records, &self.history, found, self.last_input);
            return Ok(Event::Stopped(Stop::Diverged(Box::new(d))));
        }
        let fatal = matches!(recorded.body, Body::InternalError(_) | Body::FailEntry(_) | Body::Shutdown);
        if matches!(recorded.body, Body::Mmio(m) if !m.is_write)
            || matches!(recorded.body, Body::RdMsr(_) | Body::Hypercall(_))
        {
            self.last_input = Some(rec.seq());
        }
        if fatal {
            self.failure = Some(failure::report(&self.machine, &self.history, &rec));
        }
        let seq = rec.seq();
        self.matched(rec);
        if fatal {
            return Ok(Event::Failure { seq });
        }
        self.complete_exit()?;
        Ok(Event::Exit { seq })
    }

    /// Replays recorded port I/O (`rec` starts the batch): one live exit consumes all or
    /// part of the batch, or a batch merged from the following recorded exits.
    fn replay_io(&mut self, mut batch: IoBatch, rec: RecordBuf) -> Result<Event, ReplayError> {
        let seq = batch.seq;
        match self.enter()? {
            Entered::Exit => {}
            Entered::Debug(event) => {
                self.waiting = Some(Waiting::Io(batch, rec));
                return Ok(event);
            }
            Entered::Stalled => return Ok(self.stalled(seq)),
        }
        let live_count = match self.machine.exit().body {
            Body::Io(io) => io.count,
            _ => 0,
        };
        while live_count > batch.count() {
            let Some(next) = self.records.next_recorded()? else { break };
            let merged = matches!(&next, Recorded::Exit(r) if batch.absorb(&r.record()));
            if !merged {
                self.records.push_front(next);
                break;
            }
        }
        let verdict = match self.answer(&batch.body()) {
            Some(refused) => refused,
            None => match match_io(&mut batch, &self.machine.exit().body) {
                Verdict::Match => self.check_regs(batch.regs, self.machine.exit().regs),
                other => other,
            },
        };
        let live = self.machine.exit();
        if let Verdict::Mismatch(reason) = verdict {
            let recorded = rec.record();
            let found = Found { seq, reason, recorded: Some(recorded.body), live: Some(live) };
            let d =
                divergence::build(&self.machine, &mut self.records, &self.history, found, self.last_input);
            return Ok(Event::Stopped(Stop::Diverged(Box::new(d))));
        }
        if batch.direction == Direction::In {
            self.last_input = Some(seq);
        }
        if verdict == Verdict::Partial {
            self.waiting = Some(Waiting::Io(batch, rec));
            return Ok(Event::Exit { seq });
        }
        let last = batch.last_seq;
        self.matched(rec);
        self.consumed = Some(last);
        self.complete_exit()?;
        Ok(Event::Exit { seq: last })
    }

    /// Answers the live exit with `reply` (the recorded exit's body) when it fits: the
    /// same kind and direction. One that does not fit is not answered (matching the live
    /// exit then reports the difference); an answer KVM's page refuses is a divergence.
    fn answer(&mut self, reply: &Body<'_>) -> Option<Verdict> {
        if !self.machine.answer_fits(reply) {
            return None;
        }
        let refused = self.machine.answer(reply).err()?;
        Some(Verdict::Mismatch(format!("the recorded reply cannot be given: {refused}")))
    }

    /// Runs the guest to its next exit or debug stop.
    fn enter(&mut self) -> Result<Entered, ReplayError> {
        let stops = self.machine.debug_stops();
        let delivering = self.delivering.take();
        if !stops.single_step {
            return self.run_entry(false);
        }
        if self.machine.cpl()? == 3 && !vmrr_engine::machine::debug::host_steps_ring3() {
            // This host would hand the step trap to the guest: run to the next exit unstepped.
            self.unstepped += 1;
            return self.unstepped_entry(stops);
        }
        if let Some(vector) = delivering {
            if let Some(entered) = self.deliver_stepped(vector, stops)? {
                return Ok(entered);
            }
        }
        let rip = self.machine.regs()?.rip;
        self.next_insn = self.machine.instruction_at(rip).map(|insn| Executed { rip, insn });
        if self.next_insn.as_ref().is_some_and(|e| e.insn.halts) {
            // `hlt` is not stepped: it ends the stretch with its own exit, as every exiting
            // instruction does (KVM reports a step past it instead of the HLT exit on some
            // hosts, and leaves the vCPU halted on others).
            self.next_insn = None;
            return self.unstepped_entry(stops);
        }
        self.run_entry(true)
    }

    /// Single-stepping into an injected interrupt: the entry that delivers it runs with a
    /// hardware breakpoint on the handler's first instruction instead of the step trap,
    /// so the guest stops there (a step trap would stop one instruction into the handler,
    /// or, on hosts that clear TF for the handler, after it). `None` when no debug
    /// register is free or the handler cannot be found: the entry is stepped as usual.
    fn deliver_stepped(&mut self, vector: u8, stops: DebugStops) -> Result<Option<Entered>, ReplayError> {
        let Some(handler) = self.machine.interrupt_handler(vector) else { return Ok(None) };
        let Some(slot) = stops.hw.iter().position(Option::is_none) else { return Ok(None) };
        let mut at_handler = DebugStops { single_step: false, ..stops };
        at_handler.hw[slot] = Some(HwStop { addr: handler, watch: Watch::Execute });
        self.machine.set_debug_stops(at_handler)?;
        let entered = self.run_entry(false);
        self.machine.set_debug_stops(stops)?;
        Ok(Some(match entered? {
            Entered::Debug(Event::Debug { rip, hit, .. }) if hit.fired(slot) => {
                self.steps_since += 1;
                let hit = DebugHit { step: false, hw: hit.hw & !(1 << slot) };
                Entered::Debug(Event::Debug { rip, step: true, hit, executed: None })
            }
            other => other,
        }))
    }

    /// One entry with single-stepping off (hardware stops stay armed).
    fn unstepped_entry(&mut self, stops: DebugStops) -> Result<Entered, ReplayError> {
        self.machine.set_debug_stops(DebugStops { single_step: false, ..stops })?;
        let entered = self.run_entry(false);
        self.machine.set_debug_stops(stops)?;
        entered
    }

    fn run_entry(&mut self, stepping: bool) -> Result<Entered, ReplayError> {
        loop {
            if self.machine.run_to_exit()? {
                self.stall.progress();
                break;
            }
            if self.stall.stalled() {
                return Ok(Entered::Stalled);
            }
        }
        let executed = self.next_insn.take();
        if let Body::Debug(d) = self.machine.exit().body {
            if self.machine.debug_stops().any() {
                let hit = DebugHit::of(d.dr6);
                let step = stepping && hit.step;
                self.steps_since += u64::from(step);
                let rip = self.machine.regs()?.rip;
                let executed = executed.filter(|_| step);
                return Ok(Entered::Debug(Event::Debug { rip, step, hit, executed }));
            }
        }
        self.exits_replayed += 1;
        self.show_progress();
        Ok(Entered::Exit)
    }

    /// Lets KVM finish the instruction an exit interrupted (an IN's register, RIP past an
    /// OUT) with single-stepping off, so no step trap fires for it: with stepping on, the
    /// position after an exit is the instruction after the exiting one on every host (a
    /// hardware host completing a port write under the trap flag would otherwise report a
    /// step that executed nothing).
    fn complete_exit(&mut self) -> Result<(), ReplayError> {
        if !self.machine.debug_stops().single_step {
            return Ok(());
        }
        self.complete_pending()
    }

    /// Sets what the guest stops for besides its exits (each stop is an [`Event::Debug`]).
    ///
    /// # Errors
    /// KVM refused.
    pub fn set_debug_stops(&mut self, stops: DebugStops) -> Result<(), ReplayError> {
        if stops.single_step && !self.machine.debug_stops().single_step {
            self.machine.set_debug_stops(DebugStops::default())?;
            self.machine.complete_pending_io()?;
        }
        self.machine.set_debug_stops(stops)?;
        Ok(())
    }

    /// Whether the replay stands at a record's boundary with nothing in flight (no
    /// recorded exit half-matched, no injected interrupt waiting for delivery): a
    /// snapshot taken now, restored and replayed from the next record, continues exactly
    /// as this replay would.
    pub fn resumable(&self) -> bool {
        self.waiting.is_none() && self.delivering.is_none() && self.steps_since == 0
    }

    /// Lets KVM finish the instruction the last exit interrupted, with no step trap (see
    /// [`Replayer::set_debug_stops`]): registers read afterwards are those after it.
    ///
    /// # Errors
    /// KVM failed.
    pub fn complete_pending(&mut self) -> Result<(), ReplayError> {
        let stops = self.machine.debug_stops();
        self.machine.set_debug_stops(DebugStops::default())?;
        self.machine.complete_pending_io()?;
        self.machine.set_debug_stops(stops)?;
        Ok(())
    }

    /// Takes the machine back (to restore a snapshot over it and replay again).
    pub fn into_machine(self) -> Machine {
        self.machine
    }

    /// Entries that ran ring-3 code unstepped because this host cannot single-step it.
    pub fn unstepped(&self) -> u64 {
        self.unstepped
    }

    /// Where the replay is: the last record consumed (an exit matched, an event applied;
    /// `None` before the first of a replay rebuilt from the trace), and the instruction
    /// boundaries single-stepped since. Between two records the guest is deterministic, so
    /// this pair names one point of the run exactly (see docs/DEBUGGING.md).
    pub fn position(&self) -> (Option<u64>, u64) {
        (self.consumed, self.steps_since)
    }

    fn check_regs(
        &self,
        recorded: Option<vmrr_format::RegsSample>,
        live: Option<vmrr_format::RegsSample>,
    ) -> Verdict {
        match match_regs(recorded, live, &|rip| self.machine.instruction_len_at(rip)) {
            Ok(()) => Verdict::Match,
            Err(why) => Verdict::Mismatch(why),
        }
    }

    fn stalled(&mut self, seq: u64) -> Event {
        let reason = format!(
            "the replayed guest made no exit within {} s; the recording's next exit is this record",
            self.stall_limit.as_secs()
        );
        self.diverge(Found { seq, reason, recorded: None, live: None })
    }

    fn diverge(&mut self, found: Found<'_>) -> Event {
        let d = divergence::build(&self.machine, &mut self.records, &self.history, found, self.last_input);
        Event::Stopped(Stop::Diverged(Box::new(d)))
    }

    /// Keeps a matched exit in the history.
    fn matched(&mut self, rec: RecordBuf) {
        self.consumed = Some(rec.seq());
        self.steps_since = 0;
        self.history.push_back(rec);
        if self.history.len() > HISTORY {
            self.history.pop_front();
        }
    }

    fn show_progress(&mut self) {
        self.progress.set(self.exits_replayed);
    }
}

//! The replay loop, as a type: [`Replayer`] holds the machine, the recorded stream, the
//! recent history and the last input the guest consumed, and each [`Replayer::step`] does
//! one named thing: apply a recorded event, or replay one exit (run the guest to its next
//! exit, answer it from the record, check it), diverging or noting a reproduced failure on
//! the way. Device models see every access (so a snapshot taken during replay holds their
//! guest-visible state) but never answer the guest and never raise interrupts: the trace
//! does both.

mod divergence;
mod failure;

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use vmrr_engine::machine::Machine;
use vmrr_engine::machine::watchdog::StallWatch;
use vmrr_format::{Body, Direction, RecordBuf, TraceReader};

use crate::error::ReplayError;
use crate::matching::{IoBatch, Verdict, match_exit, match_io, match_regs};
use crate::options::Options;
use crate::recorded::{RecordStream, Recorded};
use crate::report::{Divergence, FailureReport, Start};

/// Exits kept for reports.
const HISTORY: usize = 8;

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
    /// The replay is over.
    Stopped(Stop),
}

/// One replay in progress.
pub struct Replayer<'o> {
    machine: Machine,
    records: RecordStream,
    opts: &'o Options,
    exits_total: u64,
    /// The last exits that matched, oldest first.
    history: VecDeque<RecordBuf>,
    /// The most recent recorded input the guest consumed (an IN, MMIO read, RDMSR or
    /// hypercall answer).
    last_input: Option<u64>,
    /// Recorded string I/O partly matched by earlier live exits, and its first record.
    pending_io: Option<(IoBatch, RecordBuf)>,
    failure: Option<FailureReport>,
    exits_replayed: u64,
    stall: StallWatch,
    progress: Option<Instant>,
}

impl<'o> Replayer<'o> {
    /// A replay of `machine` from `start` on: the records of `trace` from there.
    ///
    /// # Errors
    /// The trace cannot be read, or the stall guard cannot start.
    pub fn new(
        machine: Machine,
        trace: TraceReader,
        start: &Start,
        exits_total: u64,
        opts: &'o Options,
    ) -> Result<Self, ReplayError> {
        let mut records = RecordStream::new(trace);
        records.seek(start.seq)?;
        let stall = StallWatch::start(opts.stall)
            .map_err(|source| ReplayError::Os { what: "starting the replay's stall guard", source })?;
        let progress =
            (opts.progress && std::io::stderr().is_terminal() && exits_total > 100_000).then(Instant::now);
        Ok(Replayer {
            machine,
            records,
            opts,
            exits_total,
            history: VecDeque::new(),
            last_input: None,
            pending_io: None,
            failure: None,
            exits_replayed: 0,
            stall,
            progress,
        })
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

    /// Ends the progress line on a terminal, if one was shown.
    pub fn end_progress(&mut self) {
        if self.progress.take().is_some() {
            eprintln!();
        }
    }

    /// Does the next recorded thing.
    ///
    /// # Errors
    /// The trace or KVM failed (a divergence is an [`Event::Stopped`], not an error).
    pub fn step(&mut self) -> Result<Event, ReplayError> {
        if let Some((batch, rec)) = self.pending_io.take() {
            return self.replay_io(batch, rec);
        }
        let Some(item) = self.records.next_recorded()? else { return Ok(Event::Stopped(Stop::End)) };
        if let Some(g) = self.opts.goto.filter(|g| item.seq() > *g) {
            return Ok(Event::Stopped(Stop::Goto(g)));
        }
        match item {
            Recorded::Exit(rec) => self.replay_exit(rec),
            Recorded::End { .. } => Ok(Event::Stopped(Stop::End)),
            event => self.apply_event(event),
        }
    }

    /// Applies a recorded interrupt, window change or checkpoint.
    fn apply_event(&mut self, event: Recorded) -> Result<Event, ReplayError> {
        let seq = event.seq();
        match event {
            Recorded::Interrupt { vector, .. } => {
                if !self.machine.can_take_interrupt() {
                    let why = format!(
                        "interrupt {vector:#x} was injected here when recording, but the replayed guest cannot take it (interrupts disabled or not ready)"
                    );
                    return Ok(self.diverge(seq, why, None));
                }
                self.machine.inject_recorded_interrupt(vector)?;
            }
            Recorded::Window { request, .. } => self.machine.set_interrupt_window(request)?,
            Recorded::Checkpoint { .. } | Recorded::Exit(_) | Recorded::End { .. } => {}
        }
        Ok(Event::Applied { seq })
    }

    /// Replays one recorded exit: port I/O as a batch, anything else on its own.
    fn replay_exit(&mut self, rec: RecordBuf) -> Result<Event, ReplayError> {
        if self.failure.is_some() {
            return Ok(self.diverge(rec.seq(), "the trace continues after the fatal exit".into(), None));
        }
        let batch = IoBatch::of(&rec.record());
        if let Some(batch) = batch {
            return self.replay_io(batch, rec);
        }
        if !self.enter()? {
            return Ok(self.stalled(rec.seq()));
        }
        let recorded = rec.record();
        // A reply of another kind does not fit the exit: nothing is answered, and the
        // check below reports the difference.
        let _ = self.machine.answer(&recorded.body);
        let live = self.machine.exit();
        let verdict = match match_exit(&recorded.body, &live.body) {
            Verdict::Match => self.check_regs(recorded.regs, live.regs),
            other => other,
        };
        if let Verdict::Mismatch(why) = verdict {
            let actual = divergence::live_json(rec.seq(), &live);
            return Ok(self.diverge(rec.seq(), why, Some(actual)));
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
        Ok(if fatal { Event::Failure { seq } } else { Event::Exit { seq } })
    }

    /// Replays recorded port I/O (`rec` starts the batch): one live exit consumes all or
    /// part of the batch, or a batch merged from the following recorded exits.
    fn replay_io(&mut self, mut batch: IoBatch, rec: RecordBuf) -> Result<Event, ReplayError> {
        let seq = batch.seq;
        if !self.enter()? {
            return Ok(self.stalled(seq));
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
        let _ = self.machine.answer(&batch.body());
        let live = self.machine.exit();
        let verdict = match match_io(&mut batch, &live.body) {
            Verdict::Match => self.check_regs(batch.regs, live.regs),
            other => other,
        };
        if let Verdict::Mismatch(why) = verdict {
            let actual = divergence::live_json(seq, &live);
            return Ok(self.diverge(seq, why, Some(actual)));
        }
        if batch.direction == Direction::In {
            self.last_input = Some(seq);
        }
        if verdict == Verdict::Partial {
            self.pending_io = Some((batch, rec));
        } else {
            self.matched(rec);
        }
        Ok(Event::Exit { seq })
    }

    /// Runs the guest to its next exit; `false` when it made none within the stall limit.
    fn enter(&mut self) -> Result<bool, ReplayError> {
        loop {
            if self.machine.run_to_exit()? {
                self.stall.progress();
                self.exits_replayed += 1;
                self.show_progress();
                return Ok(true);
            }
            if self.stall.stalled() {
                return Ok(false);
            }
        }
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
        let why = format!(
            "the replayed guest made no exit within {} s; the recording's next exit is this record",
            self.opts.stall.as_secs()
        );
        self.diverge(seq, why, None)
    }

    fn diverge(&mut self, seq: u64, reason: String, actual: Option<serde_json::Value>) -> Event {
        let d = divergence::build(
            &self.machine,
            &mut self.records,
            &self.history,
            seq,
            reason,
            actual,
            self.last_input,
        );
        Event::Stopped(Stop::Diverged(Box::new(d)))
    }

    /// Keeps a matched exit in the history.
    fn matched(&mut self, rec: RecordBuf) {
        self.history.push_back(rec);
        if self.history.len() > HISTORY {
            self.history.pop_front();
        }
    }

    fn show_progress(&mut self) {
        if self.progress.is_some_and(|l| l.elapsed() > Duration::from_millis(250)) {
            self.progress = Some(Instant::now());
            eprint!("\rreplay: {} / {} exits", self.exits_replayed, self.exits_total);
        }
    }
}

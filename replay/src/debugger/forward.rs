//! Running forward: one loop serves every forward move (a step, a continue, replaying to a
//! record, walking a position's path, surveying a stretch for hits), so each finds the
//! same boundaries the same way.
//!
//! Per entry into the guest the loop decides: single-step (a step was asked for, a
//! watchpoint needs decoding, or RIP stands on a breakpoint, which is stepped over so it
//! does not fire again) or run with the debug registers armed. Then it hands the entry to
//! the [`Replayer`](crate::replayer::Replayer), which answers exits from the trace, and
//! looks at what came back: a debug stop (a boundary), an exit or event (a new record), the
//! recorded failure, the end, or a divergence.

use std::ops::ControlFlow;
use std::sync::Arc;

use vmrr_engine::disasm::{self, MemAccess};
use vmrr_engine::machine::debug::{DebugHit, DebugStops};

use super::stops::{Armed, Fired, StopSet};
use super::{DebugError, FailureKind, Position, Session, Stopped, Stretch, Terminal};
use crate::replayer::{Event, Stop};

/// What a forward run is for.
#[derive(Debug, Clone)]
pub(super) enum Goal {
    /// One instruction boundary (a debugger's `stepi`).
    Step,
    /// The next breakpoint or watchpoint.
    Continue,
    /// The boundary right after this record (no stops).
    Record(Option<u64>),
    /// This many boundaries single-stepped (no stops).
    Steps(u64),
    /// The n-th boundary where these stops fire.
    Hits(Arc<StopSet>, u64),
    /// To the boundary after this record, noting the last boundary before it where these
    /// stops fire ([`Session::survey_hit`](super::Session)).
    Survey(Arc<StopSet>, Option<u64>),
}

impl Goal {
    /// Whether the run looks for stops.
    fn counts(&self) -> bool {
        matches!(self, Goal::Step | Goal::Continue | Goal::Hits(..) | Goal::Survey(..))
    }

    /// Whether every entry is single-stepped.
    fn steps(&self) -> bool {
        matches!(self, Goal::Step | Goal::Steps(_))
    }
}

/// How often (in replay steps) a long run asks whether the user interrupted it.
const POLL_EVERY: u32 = 16;

/// One forward run in progress: what it looks for and what it counted.
struct Run<'g> {
    goal: &'g Goal,
    /// The breakpoints and watchpoints it looks for (none for a run that does not count).
    stops: Arc<StopSet>,
    /// Boundaries single-stepped.
    steps: u64,
    /// Hits of `stops` (for [`Goal::Hits`]).
    hits: u64,
    /// Entries into the guest (a poll of the user now and then).
    polls: u32,
    /// A run that looks for stops records hits in the position, not the steps between
    /// them: these count the steps since the last mark (the start, a record, a hit) and
    /// whether every entry since was single-stepped, so an interrupted run can still say
    /// exactly where it stopped.
    since_mark: u64,
    stepped_since_mark: bool,
    /// Whether each step is recorded in the position.
    records_steps: bool,
}

impl<'g> Run<'g> {
    fn new(goal: &'g Goal, session_stops: &Arc<StopSet>) -> Self {
        let stops = match goal {
            Goal::Step | Goal::Continue => Arc::clone(session_stops),
            Goal::Hits(s, _) | Goal::Survey(s, _) => Arc::clone(s),
            Goal::Record(_) | Goal::Steps(_) => Arc::new(StopSet::default()),
        };
        Run {
            goal,
            stops,
            steps: 0,
            hits: 0,
            polls: 0,
            since_mark: 0,
            stepped_since_mark: true,
            records_steps: matches!(goal, Goal::Step | Goal::Steps(_)),
        }
    }

    /// A record or a hit marks the position afresh.
    fn mark(&mut self) {
        (self.since_mark, self.stepped_since_mark) = (0, true);
    }
}

/// How the guest is entered once.
struct Entry {
    /// Single-stepped.
    stepped: bool,
    /// The debug registers set and what each holds.
    armed: Armed,
    /// The memory accesses of the instruction about to run (a stepped entry watching).
    accesses: Vec<MemAccess>,
}

impl Session {
    /// Runs forward toward `goal`; `interrupted` is asked now and then whether the user
    /// wants the run to stop.
    pub(super) fn forward(
        &mut self,
        goal: &Goal,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Stopped, DebugError> {
        self.checkpoints.run_started();
        let out = self.run_forward(goal, interrupted);
        self.checkpoints.run_ended();
        out
    }

    fn run_forward(
        &mut self,
        goal: &Goal,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Stopped, DebugError> {
        if let Some(t) = &self.terminal {
            return Ok(t.stop());
        }
        let mut run = Run::new(goal, &self.stops);
        self.survey_hit = None;
        self.fired = None;
        loop {
            if let Some(stop) = self.goal_reached(&run)? {
                return Ok(stop);
            }
            if let Some(stop) = self.poll(&mut run, interrupted)? {
                return Ok(stop);
            }
            let entry = self.enter(&run)?;
            let before = self.pos.record;
            let event = self.replayer_mut().step()?;
            let flow = match event {
                Event::Debug { step, hit, .. } => self.on_debug(&mut run, &entry, step, hit)?,
                Event::Exit { .. } | Event::Applied { .. } => {
                    self.on_record(&mut run, before, matches!(event, Event::Exit { .. }))?
                }
                Event::Failure { seq } => ControlFlow::Break(self.on_failure(before, seq)),
                Event::Stopped(Stop::End | Stop::Goto(_)) => {
                    self.terminal = Some(Terminal::End);
                    ControlFlow::Break(Stopped::End)
                }
                Event::Stopped(Stop::Diverged(d)) => {
                    self.diverged(d);
                    ControlFlow::Break(Stopped::Diverged)
                }
            };
            if let ControlFlow::Break(stop) = flow {
                return Ok(stop);
            }
        }
    }

    /// The stop when the run's goal is reached before the next entry.
    fn goal_reached(&mut self, run: &Run<'_>) -> Result<Option<Stopped>, DebugError> {
        match run.goal {
            Goal::Record(r) | Goal::Survey(_, r) if self.pos.record >= *r && self.pos.path.is_empty() => {
                self.complete()?;
                Ok(Some(Stopped::Step))
            }
            Goal::Steps(n) if run.steps == *n => Ok(Some(Stopped::Step)),
            _ => Ok(None),
        }
    }

    /// Asks the user now and then whether to stop, where the point can be named.
    fn poll(
        &mut self,
        run: &mut Run<'_>,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Option<Stopped>, DebugError> {
        run.polls += 1;
        let representable = run.records_steps || run.since_mark == 0 || run.stepped_since_mark;
        if !(representable && run.polls % POLL_EVERY == 0 && interrupted()) {
            return Ok(None);
        }
        if !run.records_steps && run.since_mark > 0 {
            for _ in 0..run.since_mark {
                self.pos.step();
            }
        }
        self.complete()?;
        Ok(Some(Stopped::Interrupted))
    }

    /// Decides how the guest is entered next (single-stepped or not, which debug
    /// registers) and sets the registers.
    fn enter(&mut self, run: &Run<'_>) -> Result<Entry, DebugError> {
        let (goal, stops) = (run.goal, &run.stops);
        let counts = goal.counts();
        let on_breakpoint =
            counts && !stops.exec.is_empty() && stops.exec.contains(&self.machine().linear_pc()?);
        let mut stepped = goal.steps()
            || self.force_steps
            || on_breakpoint
            || (counts && stops.watch_needs_steps(self.host_watches));
        if stepped && !vmrr_engine::machine::debug::host_steps_ring3() && self.machine().cpl()? == 3 {
            // This host cannot single-step ring 3 (measured): the entry runs to the next
            // exit, breakpoints on the debug registers. Points inside such a stretch are
            // named by hits, not steps.
            stepped = false;
            self.ring3_unstepped += 1;
        }
        // Standing on a breakpoint that cannot be stepped over (ring 3 here), the entry
        // runs without it: it fires again only after the next exit.
        let step_over_by_disarming = on_breakpoint && !stepped;
        let armed = if step_over_by_disarming {
            let pc = self.machine().linear_pc()?;
            let mut without = (**stops).clone();
            without.exec.remove(&pc);
            without.arm(false, self.host_watches)
        } else if counts {
            stops.arm(stepped, self.host_watches)
        } else {
            StopSet::default().arm(stepped, false)
        };
        self.arm(armed.stops)?;
        let accesses =
            if stepped && counts && !stops.watch.is_empty() { self.next_accesses() } else { Vec::new() };
        Ok(Entry { stepped, armed, accesses })
    }

    /// A debug stop: one boundary single-stepped, or a hardware breakpoint or watchpoint.
    fn on_debug(
        &mut self,
        run: &mut Run<'_>,
        entry: &Entry,
        step: bool,
        hit: DebugHit,
    ) -> Result<ControlFlow<Stopped>, DebugError> {
        if step {
            if run.records_steps {
                self.pos.step();
            }
            self.stepped += 1;
            run.steps += 1;
            run.since_mark += 1;
        } else if hit.hw == 0 {
            return Ok(ControlFlow::Continue(()));
        }
        run.stepped_since_mark &= entry.stepped;
        let fired = if run.goal.counts() {
            run.stops.fired(self.machine().linear_pc()?, hit, &entry.armed, &entry.accesses)
        } else {
            None
        };
        self.fired = fired;
        if run.records_steps && !step && fired.is_some() {
            // An unstepped entry (ring 3 here) stopped at a breakpoint: the point is
            // named by the hit.
            self.pos.hit(&run.stops);
        }
        Ok(match (run.goal, fired) {
            (Goal::Step, Some(f @ Fired::Watch(..))) => ControlFlow::Break(f.stop()),
            (Goal::Step, _) => ControlFlow::Break(Stopped::Step),
            (Goal::Continue, Some(f)) => {
                self.pos.hit(&run.stops);
                ControlFlow::Break(f.stop())
            }
            (Goal::Hits(_, n), Some(_)) => {
                run.hits += 1;
                self.pos.hit(&run.stops);
                run.mark();
                if run.hits == *n { ControlFlow::Break(Stopped::Step) } else { ControlFlow::Continue(()) }
            }
            (Goal::Survey(..), Some(f)) => {
                self.pos.hit(&run.stops);
                run.mark();
                self.survey_hit = Some((self.pos.clone(), f));
                ControlFlow::Continue(())
            }
            _ => ControlFlow::Continue(()),
        })
    }

    /// A recorded exit happened again (`ran`) or an event was applied: a new record.
    fn on_record(
        &mut self,
        run: &mut Run<'_>,
        before: Option<u64>,
        ran: bool,
    ) -> Result<ControlFlow<Stopped>, DebugError> {
        let (record, _) = self.replayer().position();
        if record == before {
            // Part of a string I/O batch: the instruction goes on.
            return Ok(ControlFlow::Continue(()));
        }
        self.crossed(before, record, ran);
        run.mark();
        if !ran {
            return Ok(ControlFlow::Continue(()));
        }
        if let Some(stop) = self.apply_events()? {
            return Ok(ControlFlow::Break(stop));
        }
        self.maybe_checkpoint()?;
        match run.goal {
            Goal::Step => {
                self.complete()?;
                Ok(ControlFlow::Break(Stopped::Step))
            }
            Goal::Steps(_) | Goal::Hits(..) => {
                Err(DebugError::Lost(format!("{} (an exit came first)", self.pos)))
            }
            Goal::Continue | Goal::Survey(..) if !run.stops.exec.is_empty() => {
                self.breakpoint_after_exit(run)
            }
            _ => Ok(ControlFlow::Continue(())),
        }
    }

    /// After an exit, a run looking for breakpoints checks the boundary the exit left the
    /// guest at (the debug registers did not see it: the instruction was emulated).
    fn breakpoint_after_exit(&mut self, run: &Run<'_>) -> Result<ControlFlow<Stopped>, DebugError> {
        if let Goal::Survey(_, until) = run.goal {
            if self.pos.record >= *until {
                return Ok(ControlFlow::Continue(()));
            }
        }
        self.complete()?;
        let pc = self.machine().linear_pc()?;
        if run.stops.exec.contains(&pc) {
            if matches!(run.goal, Goal::Continue) {
                return Ok(ControlFlow::Break(Stopped::Breakpoint(pc)));
            }
            self.survey_hit = Some((self.pos.clone(), Fired::Breakpoint(pc)));
        }
        Ok(ControlFlow::Continue(()))
    }

    /// The recorded fatal exit happened again: the guest stands at the failing
    /// instruction, for good.
    fn on_failure(&mut self, before: Option<u64>, seq: u64) -> Stopped {
        self.crossed(before, Some(seq), true);
        let report = self.replayer().failure().cloned();
        let kind = report.as_ref().map_or(FailureKind::InternalError, kind_of);
        if let Some(r) = report {
            self.terminal = Some(Terminal::Failure(kind, Box::new(r)));
        }
        // One name for the failure point: the failing instruction's boundary, in steps
        // after the record before it, when the stretch's length is known.
        let known = self
            .failure_at
            .clone()
            .or_else(|| self.lengths.get(&before).map(|&n| Position::stepped(before, n)));
        if let Some(p) = known {
            self.failure_at = Some(p.clone());
            self.pos = p;
        }
        Stopped::Failure(kind)
    }

    /// The replay crossed from the boundary after `from` to the one after `to`: the path
    /// starts again, and the stretch is remembered (and its length, when every
    /// instruction of it was single-stepped from its start).
    fn crossed(&mut self, from: Option<u64>, to: Option<u64>, ran: bool) {
        if let Some(t) = to {
            self.before.insert(t, Stretch { from, ran });
            if ran && self.whole_stretch_stepped {
                if let Some(k) = self.pos.steps() {
                    self.lengths.insert(from, k);
                }
            }
            self.pos.consumed(t);
        }
        self.whole_stretch_stepped = true;
    }

    /// Applies the events recorded right after the exit just matched, so the boundary
    /// after an exit is always named by its last event (one name for one point). A
    /// divergence while applying them is returned as the stop.
    pub(super) fn apply_events(&mut self) -> Result<Option<Stopped>, DebugError> {
        let (applied, stop) = self.replayer_mut().apply_events()?;
        for seq in applied {
            self.crossed(self.pos.record, Some(seq), false);
        }
        match stop {
            Some(Event::Stopped(Stop::Diverged(d))) => {
                self.diverged(d);
                Ok(Some(Stopped::Diverged))
            }
            _ => Ok(None),
        }
    }

    /// The recorded path ended in a divergence: keep it and say why at the next stop.
    fn diverged(&mut self, mut d: Box<crate::report::Divergence>) {
        self.notes
            .push(format!("vmrr: the replay diverged from the recording at record {}: {}", d.seq, d.summary));
        if let Some(max_steps) = self.explain_steps {
            let limits = crate::explain::SearchLimits { max_steps, progress: false };
            match crate::explain::explain(&self.src, &self.overview, &self.opts, d.seq, d.after_input, limits)
            {
                Ok(e) => {
                    self.notes.push(format!("vmrr: cause: {}", e.cause));
                    e.explain(&mut d);
                }
                Err(e) => self.notes.push(format!("vmrr: the search for the divergence's cause failed: {e}")),
            }
        }
        self.notes.push(
            "vmrr: the guest stands where it diverged; `monitor report` shows the divergence, reverse execution goes back along the recorded path".into(),
        );
        self.terminal = Some(Terminal::Diverged(d));
    }

    /// Sets the debug registers when they change.
    pub(super) fn arm(&mut self, stops: DebugStops) -> Result<(), DebugError> {
        if self.armed != Some(stops) {
            self.replayer_mut().set_debug_stops(stops)?;
            self.armed = Some(stops);
        }
        if !stops.single_step {
            self.whole_stretch_stepped = false;
        }
        Ok(())
    }

    /// Finishes the instruction the last exit interrupted, so registers read now are those
    /// after it.
    pub(super) fn complete(&mut self) -> Result<(), DebugError> {
        self.replayer_mut().complete_pending()?;
        Ok(())
    }

    /// The memory accesses of the instruction about to run.
    fn next_accesses(&self) -> Vec<MemAccess> {
        let m = self.machine();
        let (Ok(regs), Ok(sregs), Ok(pc)) = (m.regs(), m.sregs(), m.linear_pc()) else { return Vec::new() };
        let mut bytes = [0u8; 15];
        // An instruction may end before a page it does not touch: read what can be read.
        let n = (1..=bytes.len()).rev().find(|&n| m.read_linear(pc, &mut bytes[..n]).is_ok()).unwrap_or(0);
        disasm::memory_accesses(&bytes[..n], regs.rip, &regs, &sregs).unwrap_or_default()
    }

    /// Takes a session checkpoint at this exit boundary when the policy says so.
    fn maybe_checkpoint(&mut self) -> Result<(), DebugError> {
        if self.live.is_none() && self.replayer().resumable() && self.checkpoints.due(self.pos.record) {
            self.checkpoint_here()?;
        }
        Ok(())
    }
}

impl Fired {
    /// The stop a debugger sees.
    pub(super) fn stop(self) -> Stopped {
        match self {
            Fired::Breakpoint(a) => Stopped::Breakpoint(a),
            Fired::Watch(watch, addr) => Stopped::Watch { watch, addr },
        }
    }
}

impl Terminal {
    /// The stop a debugger sees when running forward from here.
    pub(super) fn stop(&self) -> Stopped {
        match self {
            Terminal::Failure(..) | Terminal::End => Stopped::End,
            Terminal::Diverged(_) => Stopped::Diverged,
        }
    }
}

/// What kind of failure a report describes.
fn kind_of(r: &crate::report::FailureReport) -> FailureKind {
    use vmrr_format::kind::{FAIL_ENTRY, SHUTDOWN, kvm_exit_name};
    if r.is_emulation_failure() {
        FailureKind::EmulationFailure
    } else if r.exit == kvm_exit_name(u32::from(SHUTDOWN)) {
        FailureKind::TripleFault
    } else if r.exit == kvm_exit_name(u32::from(FAIL_ENTRY)) {
        FailureKind::FailEntry
    } else {
        FailureKind::InternalError
    }
}

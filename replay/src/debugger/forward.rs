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

use std::sync::Arc;

use vmrr_engine::disasm::{self, MemAccess};
use vmrr_engine::machine::debug::DebugStops;

use super::stops::{Fired, StopSet};
use super::{DebugError, FailureKind, Session, Stopped, Stretch, Terminal};
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
        let stops = match goal {
            Goal::Step | Goal::Continue => Arc::clone(&self.stops),
            Goal::Hits(s, _) | Goal::Survey(s, _) => Arc::clone(s),
            Goal::Record(_) | Goal::Steps(_) => Arc::new(StopSet::default()),
        };
        self.survey_hit = None;
        self.fired = None;
        let (mut steps, mut hits, mut polls) = (0u64, 0u64, 0u32);
        // A run that looks for stops records hits in the position, not the steps between
        // them: these count the steps since the last mark (the start, a record, a hit)
        // and whether every entry since was single-stepped, so an interrupted run can
        // still say exactly where it stopped.
        let (mut since_mark, mut stepped_since_mark) = (0u64, true);
        let records_steps = matches!(goal, Goal::Step | Goal::Steps(_));
        loop {
            match goal {
                Goal::Record(r) | Goal::Survey(_, r) if self.pos.record >= *r && self.pos.path.is_empty() => {
                    self.complete()?;
                    return Ok(Stopped::Step);
                }
                Goal::Steps(n) if steps == *n => return Ok(Stopped::Step),
                _ => {}
            }
            polls += 1;
            let representable = records_steps || since_mark == 0 || stepped_since_mark;
            if representable && polls % POLL_EVERY == 0 && interrupted() {
                if !records_steps && since_mark > 0 {
                    for _ in 0..since_mark {
                        self.pos.step();
                    }
                }
                self.complete()?;
                return Ok(Stopped::Interrupted);
            }
            let counts = goal.counts();
            let on_breakpoint =
                counts && !stops.exec.is_empty() && stops.exec.contains(&self.machine().linear_pc()?);
            let mut stepped = goal.steps()
                || self.force_steps
                || on_breakpoint
                || (counts && stops.watch_needs_steps(self.host_watches));
            if stepped && !vmrr_engine::machine::debug::host_steps_ring3() && self.machine().cpl()? == 3 {
                // This host cannot single-step ring 3 (measured): the entry runs to the
                // next exit, breakpoints on the debug registers. Points inside such a
                // stretch are named by hits, not steps.
                stepped = false;
                self.ring3_unstepped += 1;
            }
            // Standing on a breakpoint that cannot be stepped over (ring 3 here), the entry
            // runs without it: it fires again only after the next exit.
            let step_over_by_disarming = on_breakpoint && !stepped;
            let armed = if step_over_by_disarming {
                let pc = self.machine().linear_pc()?;
                let mut without = (*stops).clone();
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
            let before = self.pos.record;
            let event = self.replayer_mut().step()?;
            match event {
                Event::Debug { step, hit, .. } => {
                    if step {
                        if records_steps {
                            self.pos.step();
                        }
                        self.stepped += 1;
                        steps += 1;
                        since_mark += 1;
                    } else if hit.hw == 0 {
                        continue;
                    }
                    stepped_since_mark &= stepped;
                    let fired = if counts {
                        stops.fired(self.machine().linear_pc()?, hit, &armed, &accesses)
                    } else {
                        None
                    };
                    self.fired = fired;
                    if records_steps && !step && fired.is_some() {
                        // An unstepped entry (ring 3 here) stopped at a breakpoint: the
                        // point is named by the hit.
                        self.pos.hit(&stops);
                    }
                    match (goal, fired) {
                        (Goal::Step, Some(f @ Fired::Watch(..))) => return Ok(f.stop()),
                        (Goal::Step, _) => return Ok(Stopped::Step),
                        (Goal::Continue, Some(f)) => {
                            self.pos.hit(&stops);
                            return Ok(f.stop());
                        }
                        (Goal::Hits(_, n), Some(_)) => {
                            hits += 1;
                            self.pos.hit(&stops);
                            (since_mark, stepped_since_mark) = (0, true);
                            if hits == *n {
                                return Ok(Stopped::Step);
                            }
                        }
                        (Goal::Survey(..), Some(f)) => {
                            self.pos.hit(&stops);
                            (since_mark, stepped_since_mark) = (0, true);
                            self.survey_hit = Some((self.pos.clone(), f));
                        }
                        _ => {}
                    }
                }
                Event::Exit { .. } | Event::Applied { .. } => {
                    let (record, _) = self.replayer().position();
                    if record == before {
                        // Part of a string I/O batch: the instruction goes on.
                        continue;
                    }
                    let ran = matches!(event, Event::Exit { .. });
                    self.crossed(before, record, ran);
                    (since_mark, stepped_since_mark) = (0, true);
                    if !ran {
                        continue;
                    }
                    if let Some(stop) = self.apply_events()? {
                        return Ok(stop);
                    }
                    self.maybe_checkpoint()?;
                    match goal {
                        Goal::Step => {
                            self.complete()?;
                            return Ok(Stopped::Step);
                        }
                        Goal::Steps(_) | Goal::Hits(..) => {
                            return Err(DebugError::Lost(format!("{} (an exit came first)", self.pos)));
                        }
                        Goal::Continue | Goal::Survey(..) if !stops.exec.is_empty() => {
                            if let Goal::Survey(_, until) = goal {
                                if self.pos.record >= *until {
                                    continue;
                                }
                            }
                            self.complete()?;
                            let pc = self.machine().linear_pc()?;
                            if stops.exec.contains(&pc) {
                                if matches!(goal, Goal::Continue) {
                                    return Ok(Stopped::Breakpoint(pc));
                                }
                                self.survey_hit = Some((self.pos.clone(), Fired::Breakpoint(pc)));
                            }
                        }
                        _ => {}
                    }
                }
                Event::Failure { seq } => {
                    self.crossed(before, Some(seq), true);
                    let report = self.replayer().failure().cloned();
                    let kind = report.as_ref().map_or(FailureKind::InternalError, kind_of);
                    if let Some(r) = report {
                        self.terminal = Some(Terminal::Failure(kind, Box::new(r)));
                    }
                    return Ok(Stopped::Failure(kind));
                }
                Event::Stopped(Stop::End | Stop::Goto(_)) => {
                    self.terminal = Some(Terminal::End);
                    return Ok(Stopped::End);
                }
                Event::Stopped(Stop::Diverged(d)) => {
                    self.diverged(d);
                    return Ok(Stopped::Diverged);
                }
            }
        }
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

//! Going back: to a position (restore the nearest checkpoint at or before it, replay to
//! its record, walk its path), one instruction boundary back, and back to the last
//! breakpoint or watchpoint hit.
//!
//! One boundary back from `k > 0` steps after a record is `k - 1` steps after it. From a
//! record's boundary it is the last boundary of the stretch before: the session learns
//! which record came before (replaying from the checkpoint before it) and how many
//! boundaries that stretch holds (single-stepping it once); both are kept, so stepping
//! back across the same exit again costs a restore and the steps. An event record (an
//! interrupt injected, a checkpoint) takes no instruction: its boundary is its
//! predecessor's. The recorded failure stands at the failing instruction, which never
//! completed: one back from it is the instruction before.

use std::sync::Arc;

use super::forward::Goal;
use super::position::{Leg, Position};
use super::stops::Fired;
use super::{DebugError, Session, Stopped};

impl Session {
    /// Goes to `target`, replaying from the nearest checkpoint at or before it (or on
    /// from here, when it lies ahead with no checkpoint in between).
    ///
    /// # Errors
    /// Replay errors; [`DebugError::Lost`] when the replay does not reach it again.
    pub fn goto(
        &mut self,
        target: &Position,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Stopped, DebugError> {
        let nearest = self.checkpoints.nearest(target.record);
        let ahead = self.terminal.is_none()
            && self.live.is_none()
            && (self.pos.record < target.record
                || (self.pos.record == target.record && self.pos.path.is_empty()))
            && nearest.is_none_or(|i| self.checkpoints.list()[i].at <= self.pos.record);
        if !ahead {
            self.restore(nearest.unwrap_or(0))?;
        }
        if self.pos.record != target.record || !self.pos.path.is_empty() {
            match self.forward(&Goal::Record(target.record), interrupted)? {
                Stopped::Step => {}
                // `goto` a record past the end, the failure or a divergence: stop there.
                other => return Ok(other),
            }
        }
        for leg in &target.path {
            let stop = match leg {
                Leg::Steps(n) => self.forward(&Goal::Steps(*n), interrupted)?,
                Leg::Hits { stops, n } => self.forward(&Goal::Hits(Arc::clone(stops), *n), interrupted)?,
            };
            match stop {
                Stopped::Step => {}
                Stopped::Interrupted => return Ok(Stopped::Interrupted),
                _ => return Err(DebugError::Lost(target.to_string())),
            }
        }
        self.pos = target.clone();
        Ok(Stopped::Step)
    }

    /// One instruction boundary back.
    ///
    /// # Errors
    /// Replay errors.
    pub fn reverse_step(&mut self, interrupted: &mut dyn FnMut() -> bool) -> Result<Stopped, DebugError> {
        if self.off_path() {
            return Ok(Stopped::Begin);
        }
        let ring3 = self.ring3_unstepped;
        let out = self.reverse_step_inner(interrupted);
        if self.ring3_unstepped > ring3 && !self.said_ring3 {
            self.said_ring3 = true;
            self.notes.push(
                "vmrr: this host's KVM cannot single-step ring-3 guest code (measured): instructions there are not counted, so stepping back inside ring-3 code goes back to the last exit or breakpoint hit before it".into(),
            );
        }
        out
    }

    fn reverse_step_inner(&mut self, interrupted: &mut dyn FnMut() -> bool) -> Result<Stopped, DebugError> {
        let (record, steps, uncounted) = self.here_in_steps(interrupted)?;
        if uncounted {
            // Ring-3 code this host cannot step lies between the last counted boundary
            // and here: back to that boundary.
            let stop = self.goto(&Position::stepped(record, steps), interrupted)?;
            return Ok(if stop == Stopped::Interrupted { stop } else { Stopped::Step });
        }
        match self.prev_of(record, steps, interrupted)? {
            Some((r, k)) => {
                let stop = self.goto(&Position::stepped(r, k), interrupted)?;
                Ok(if stop == Stopped::Interrupted { stop } else { Stopped::Step })
            }
            None => {
                let start = self.start.clone();
                self.goto(&start, interrupted)?;
                Ok(Stopped::Begin)
            }
        }
    }

    /// Back to the last point before this one where a breakpoint or watchpoint stops a
    /// reverse run, or to the start. A breakpoint stops at its boundary (before the
    /// instruction there runs), as forwards. A watchpoint stops before the instruction
    /// that made the access (the writer, for `watch`): going back, that instruction is
    /// where the watched value changes. So from the boundary right after an access, the
    /// first stop back is one instruction back, at the access's instruction.
    ///
    /// # Errors
    /// Replay errors.
    pub fn reverse_cont(&mut self, interrupted: &mut dyn FnMut() -> bool) -> Result<Stopped, DebugError> {
        if self.off_path() {
            return Ok(Stopped::Begin);
        }
        let stops = Arc::clone(&self.stops);
        if stops.is_empty() {
            let start = self.start.clone();
            self.goto(&start, interrupted)?;
            return Ok(Stopped::Begin);
        }
        // The common case needs no stepping: continuing stopped at the n-th hit of these
        // very stops, so the one before is this hit's access, or hit n - 1, or the
        // record's own boundary, or an earlier stretch.
        let same_hits = match (self.at_failure(), self.pos.path.as_slice()) {
            (false, [Leg::Hits { stops: s, n }]) if **s == *stops => Some(*n),
            _ => None,
        };
        if let Some(n) = same_hits {
            return self.reverse_cont_from_hit(n, &stops, interrupted);
        }
        let (record, steps, _) = self.here_in_steps(interrupted)?;
        // In this stretch: the boundaries from the record's up to here.
        self.goto(&Position::at_record(record), interrupted)?;
        let mut last = self.fires_here(&stops)?.map(|f| (0, f));
        for i in 1..=steps {
            match self.forward(&Goal::Step, interrupted)? {
                Stopped::Step | Stopped::Watch { .. } => {}
                Stopped::Interrupted => return Ok(Stopped::Interrupted),
                _ => return Err(DebugError::Lost(Position::stepped(record, i).to_string())),
            }
            match self.fired {
                // An access by the instruction that led to boundary i: it stops at i - 1,
                // before here even when i is here.
                Some(f @ Fired::Watch(..)) => last = Some((i - 1, f)),
                Some(f @ Fired::Breakpoint(_)) if i < steps => last = Some((i, f)),
                _ => {}
            }
        }
        if let Some((i, f)) = last {
            let stop = self.goto(&Position::stepped(record, i), interrupted)?;
            return Ok(if stop == Stopped::Interrupted { stop } else { f.stop() });
        }
        self.reverse_cont_before(record, &stops, interrupted)
    }

    /// [`Session::reverse_cont`] from the `n`-th hit of `stops` after the record.
    fn reverse_cont_from_hit(
        &mut self,
        n: u64,
        stops: &Arc<super::StopSet>,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Stopped, DebugError> {
        let record = self.pos.record;
        if let Some(f @ Fired::Watch(..)) = self.fired {
            // Right after an access: back to the instruction that made it.
            return self.reverse_stop(None, f, interrupted);
        }
        if n > 1 {
            let target = Position { record, path: vec![Leg::Hits { stops: Arc::clone(stops), n: n - 1 }] };
            self.goto(&target, interrupted)?;
            return match self.fired.take().or_else(|| self.fires_here(stops).ok().flatten()) {
                Some(f) => self.reverse_stop(None, f, interrupted),
                None => Ok(Stopped::Step),
            };
        }
        self.goto(&Position::at_record(record), interrupted)?;
        if let Some(f) = self.fires_here(stops)? {
            return Ok(f.stop());
        }
        self.reverse_cont_before(record, stops, interrupted)
    }

    /// The stop a reverse run makes at the hit `at` (or here) where `f` fired: there for
    /// a breakpoint; one instruction back for a watchpoint, before the instruction that
    /// made the access.
    fn reverse_stop(
        &mut self,
        at: Option<&Position>,
        f: Fired,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Stopped, DebugError> {
        if let Some(p) = at {
            if self.goto(p, interrupted)? == Stopped::Interrupted {
                return Ok(Stopped::Interrupted);
            }
        }
        if let Fired::Watch(..) = f {
            if self.reverse_step_inner(interrupted)? == Stopped::Interrupted {
                return Ok(Stopped::Interrupted);
            }
        }
        Ok(f.stop())
    }

    /// Back to the last hit of `stops` before the boundary after `record` (surveying the
    /// stretches from each checkpoint back), or to the start.
    fn reverse_cont_before(
        &mut self,
        record: Option<u64>,
        stops: &Arc<super::StopSet>,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Stopped, DebugError> {
        let mut upto = record;
        while let Some(i) = self.checkpoints.before(upto) {
            let from = self.checkpoints.list()[i].at;
            self.restore(i)?;
            let mut found = self.fires_here(stops)?.map(|f| (Position::at_record(from), f));
            match self.forward(&Goal::Survey(Arc::clone(stops), upto), interrupted)? {
                Stopped::Step => {}
                Stopped::Interrupted => return Ok(Stopped::Interrupted),
                _ => return Err(DebugError::Lost(Position::at_record(upto).to_string())),
            }
            if let Some(h) = self.survey_hit.take() {
                found = Some(h);
            }
            if let Some((p, f)) = found {
                return self.reverse_stop(Some(&p), f, interrupted);
            }
            upto = from;
        }
        let start = self.start.clone();
        self.goto(&start, interrupted)?;
        Ok(Stopped::Begin)
    }

    /// Whether the session left the recorded path (there is no history to go back along):
    /// says so.
    fn off_path(&mut self) -> bool {
        if let Some(p) = &self.live {
            let note = format!(
                "vmrr: the guest runs live since a write at {p}: there is no recorded history to go back along; `monitor goto` a record returns to the recorded path"
            );
            self.notes.push(note);
            return true;
        }
        false
    }

    /// What the stops fire for at the current boundary (a breakpoint at RIP).
    fn fires_here(&self, stops: &super::StopSet) -> Result<Option<Fired>, DebugError> {
        let pc = self.machine().linear_pc()?;
        Ok(stops.exec.contains(&pc).then_some(Fired::Breakpoint(pc)))
    }

    /// The current point as a record and a number of boundaries after it (the failure:
    /// the failing instruction's boundary, in the stretch before its record), and whether
    /// uncounted ring-3 code (on a host that cannot step it) lies between those boundaries
    /// and the point.
    fn here_in_steps(
        &mut self,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<(Option<u64>, u64, bool), DebugError> {
        if self.at_failure() {
            let (record, n) = self.failing_boundary(interrupted)?;
            return Ok((record, n, false));
        }
        if let Some(k) = self.pos.steps() {
            return Ok((self.pos.record, k, false));
        }
        // Walk the path again, single-stepping, counting boundaries.
        let here = self.pos.clone();
        self.goto(&Position::at_record(here.record), interrupted)?;
        self.force_steps = true;
        let start = self.stepped;
        let ring3 = self.ring3_unstepped;
        let walked = self.walk(&here, interrupted);
        self.force_steps = false;
        walked?;
        let k = self.stepped - start;
        let uncounted = self.ring3_unstepped != ring3;
        if !uncounted {
            // The same point, named by its steps from now on.
            self.pos = Position::stepped(here.record, k);
        }
        Ok((here.record, k, uncounted))
    }

    /// The failing instruction's boundary as a record and a number of boundaries after
    /// it: learnt once (the stretch before the failure, single-stepped), then the name of
    /// the failure point.
    pub(super) fn failing_boundary(
        &mut self,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<(Option<u64>, u64), DebugError> {
        if let Some((record, Some(k))) = self.failure_at.as_ref().map(|p| (p.record, p.steps())) {
            return Ok((record, k));
        }
        let stretch = self.stretch_before(self.pos.record, interrupted)?;
        let n = self.stretch_length(stretch.from, interrupted)?;
        let p = Position::stepped(stretch.from, n);
        if self.at_failure() {
            self.pos = p.clone();
        }
        self.failure_at = Some(p);
        Ok((stretch.from, n))
    }

    fn walk(&mut self, p: &Position, interrupted: &mut dyn FnMut() -> bool) -> Result<(), DebugError> {
        for leg in &p.path {
            let goal = match leg {
                Leg::Steps(n) => Goal::Steps(*n),
                Leg::Hits { stops, n } => Goal::Hits(Arc::clone(stops), *n),
            };
            if self.forward(&goal, interrupted)? != Stopped::Step {
                return Err(DebugError::Lost(p.to_string()));
            }
        }
        Ok(())
    }

    /// The boundary one before `steps` boundaries after `record`; `None` at the start.
    fn prev_of(
        &mut self,
        record: Option<u64>,
        steps: u64,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Option<(Option<u64>, u64)>, DebugError> {
        let (mut record, steps) = (record, steps);
        if steps > 0 {
            return Ok(Some((record, steps - 1)));
        }
        loop {
            if record <= self.start.record {
                return Ok(None);
            }
            let stretch = self.stretch_before(record, interrupted)?;
            if !stretch.ran {
                record = stretch.from;
                continue;
            }
            let n = self.stretch_length(stretch.from, interrupted)?;
            return Ok(Some((stretch.from, n)));
        }
    }

    /// The stretch that ends at `record`'s boundary: learnt by replaying to it from the
    /// checkpoint before it.
    fn stretch_before(
        &mut self,
        record: Option<u64>,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<super::Stretch, DebugError> {
        let key = record.unwrap_or(0);
        if let Some(s) = self.before.get(&key).filter(|_| record.is_some()) {
            return Ok(*s);
        }
        let i = self.checkpoints.before(record).unwrap_or(0);
        self.restore(i)?;
        self.forward(&Goal::Record(record), interrupted)?;
        self.before
            .get(&key)
            .copied()
            .ok_or_else(|| DebugError::Lost(Position::at_record(record).to_string()))
    }

    /// How many boundaries the stretch after `record` holds before the instruction that
    /// ends it: learnt by single-stepping it once.
    fn stretch_length(
        &mut self,
        record: Option<u64>,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<u64, DebugError> {
        if let Some(n) = self.lengths.get(&record) {
            return Ok(*n);
        }
        self.goto(&Position::at_record(record), interrupted)?;
        // Count the boundaries single-stepping reached (ring-3 code on a host that cannot
        // step it runs through uncounted).
        let start = self.stepped;
        loop {
            let stop = self.forward(&Goal::Step, interrupted)?;
            if self.pos.record != record
                || !matches!(stop, Stopped::Step | Stopped::Watch { .. } | Stopped::Breakpoint(_))
            {
                break;
            }
        }
        let n = self.stepped - start;
        self.lengths.insert(record, n);
        Ok(n)
    }
}

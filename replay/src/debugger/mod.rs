//! Debugging a replay, forwards and backwards.
//!
//! A [`Session`] replays a trace the way `vmrr replay` does, but stops where a debugger
//! asks: one instruction further, at a breakpoint or watchpoint, at a record. It keeps its
//! place exactly ([`Position`]: the last record consumed and a path from there), so it can
//! go back: restore the nearest checkpoint before the point wanted, replay to its record,
//! and walk the rest of the way, single-stepping only inside the last stretch between two
//! records. Checkpoints are the trace's own plus the session's, taken as it goes.
//!
//! The recorded failure stops the guest at the failing instruction; the end of the trace
//! and a divergence stop it too. A write to registers or memory leaves the recorded path:
//! from there the guest runs live, its own devices answering (see [`Session::write_regs`]).
//!
//! docs/DEBUGGING.md says how positions are kept exact and what going back costs.

mod checkpoints;
mod error;
mod forward;
mod live;
mod position;
mod reverse;
mod stops;
mod vcpus;

use std::collections::HashMap;
use std::sync::Arc;

use vmrr_engine::machine::Machine;
use vmrr_engine::machine::debug::DebugStops;
use vmrr_engine::snapshot::StoredSnapshot;
use vmrr_format::TraceReader;
use vmrr_format::overview::{self, TraceOverview};

pub use checkpoints::{Checkpoint, Origin, Policy};
pub use error::DebugError;
pub use position::{Leg, Position};
pub use stops::{Fired, StopSet, WatchKind, WatchPoint};

use crate::options::{Options, StartFrom};
use crate::replayer::Replayer;
use crate::report::{Divergence, FailureReport, Start};
use crate::source::Source;
use checkpoints::Checkpoints;

/// How a failure looks to a debugger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// KVM could not emulate the instruction (`KVM_INTERNAL_ERROR_EMULATION`).
    EmulationFailure,
    /// Another KVM internal error.
    InternalError,
    /// The vCPU could not enter the guest.
    FailEntry,
    /// The guest triple-faulted (`KVM_EXIT_SHUTDOWN`).
    TripleFault,
}

/// Why the guest stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// One instruction boundary further (or back).
    Step,
    /// At a breakpoint (its linear address).
    Breakpoint(u64),
    /// After an access a watchpoint watches.
    Watch {
        /// The watchpoint.
        watch: WatchPoint,
        /// The access's first byte within it.
        addr: u64,
    },
    /// At the recorded failure: the guest stands at the failing instruction.
    Failure(FailureKind),
    /// At the end of the trace: nothing more was recorded.
    End,
    /// At the start of what can be replayed: nothing earlier.
    Begin,
    /// The replay diverged from the recording here ([`Session::divergence`] says how).
    Diverged,
    /// The user interrupted a run.
    Interrupted,
    /// Running live, the guest's run ended (it exited, failed or halted for good).
    LiveEnded(String),
}

/// Where the recorded path ended, once the replay got there.
#[derive(Debug, Clone)]
enum Terminal {
    /// The recorded failure happened again.
    Failure(FailureKind, Box<FailureReport>),
    /// The trace has nothing more.
    End,
    /// The replay left the recorded path.
    Diverged(Box<Divergence>),
}

/// A stretch between two records, learnt by replaying it.
#[derive(Debug, Clone, Copy)]
struct Stretch {
    /// The record consumed before it.
    from: Option<u64>,
    /// Whether the guest ran to end it (an exit), rather than an event being applied.
    ran: bool,
}

/// Settings of a session.
#[derive(Debug, Clone, Copy, Default)]
pub struct Settings {
    /// When the session takes its own checkpoints.
    pub policy: Policy,
}

/// A replay under a debugger.
pub struct Session {
    src: Source,
    overview: TraceOverview,
    opts: Options,
    replayer: Option<Replayer>,
    pos: Position,
    start: Position,
    stops: Arc<StopSet>,
    host_watches: bool,
    checkpoints: Checkpoints,
    /// The snapshot chain the machine's memory comes from (what a session checkpoint is
    /// incremental over).
    base: Option<Arc<Vec<StoredSnapshot>>>,
    /// For a record: the record consumed before it, and whether the guest ran to reach it.
    before: HashMap<u64, Stretch>,
    /// For a record: how many instruction boundaries its stretch holds before the
    /// instruction that ends it.
    lengths: HashMap<Option<u64>, u64>,
    terminal: Option<Terminal>,
    /// The failing instruction's boundary, named by its steps after the record before it,
    /// once known: the recorded failure's one name, however it was reached.
    failure_at: Option<Position>,
    /// Set once a write from the debugger left the recorded path: where it did.
    live: Option<Position>,
    /// Messages for the user at the next stop.
    notes: Vec<String>,
    /// The debug registers as last set (set again only when they change).
    armed: Option<DebugStops>,
    /// Single-step every entry (normalizing a position to steps).
    force_steps: bool,
    /// Instruction boundaries single-stepped, ever (a counter to take differences of).
    stepped: u64,
    /// Every entry since the last record was single-stepped (its length is then known).
    whole_stretch_stepped: bool,
    /// What fired at the last boundary a forward run checked.
    fired: Option<Fired>,
    /// The last hit a survey found.
    survey_hit: Option<(Position, Fired)>,
    /// The user was told watchpoints are single-stepped here.
    said_watch_steps: bool,
    /// On a divergence, single-step at most this many instructions looking for its cause.
    explain_steps: Option<u64>,
    /// The vCPU that runs (the one that failed, at a failure point of several vCPUs: see
    /// `vcpus.rs`); the others never run.
    vcpu: u32,
    /// Entries that ran ring-3 code unstepped because this host cannot single-step it.
    ring3_unstepped: u64,
    /// The user was told ring 3 is not stepped here.
    said_ring3: bool,
}

impl Session {
    /// Opens `src` for debugging: the machine where replay starts (the trace's first
    /// checkpoint, or the guest rebuilt from the trace, then checkpointed at once so it
    /// can be returned to), standing before the guest's first instruction.
    ///
    /// # Errors
    /// The trace or snapshot is unusable, or KVM failed.
    pub fn open(src: Source, opts: &Options, settings: Settings) -> Result<Self, DebugError> {
        let overview = overview::scan(&src.trace).map_err(crate::ReplayError::from)?;
        let explain_steps = opts.explain_steps;
        let opts = Options {
            goto: None,
            snapshot_at: None,
            progress: false,
            explain_steps: None,
            failure_point: false,
            dirty_log: true,
            ..opts.clone()
        };
        let limits = crate::hosts::path_limits(&overview);
        // A path that cannot replay deterministically is not debugged: the session starts
        // at the failure point, before the failing instruction.
        let failure_start = overview
            .failure_point()
            .filter(|_| !limits.is_empty() && !opts.force_path && opts.start == StartFrom::Auto);
        let checkpoints = match failure_start {
            Some(mark) => Checkpoints::at_failure_point(
                &overview,
                src.snapshots.as_deref(),
                settings.policy,
                opts.max_mem,
                mark,
            ),
            None => Checkpoints::of_trace(&overview, src.snapshots.as_deref(), settings.policy, opts.max_mem),
        };
        let mut s = Session {
            src,
            overview,
            opts,
            replayer: None,
            pos: Position::default(),
            start: Position::default(),
            stops: Arc::new(StopSet::default()),
            host_watches: vmrr_engine::machine::debug::host_watches_ring0(),
            checkpoints,
            base: None,
            before: HashMap::new(),
            lengths: HashMap::new(),
            terminal: None,
            failure_at: None,
            live: None,
            notes: Vec::new(),
            armed: None,
            force_steps: false,
            stepped: 0,
            whole_stretch_stepped: true,
            fired: None,
            survey_hit: None,
            said_watch_steps: false,
            explain_steps,
            vcpu: 0,
            ring3_unstepped: 0,
            said_ring3: false,
        };
        let at_failure_point = failure_start.is_some() && !s.checkpoints.list().is_empty();
        let path_asked = s.opts.force_path || s.opts.start != StartFrom::Auto;
        s.vcpu = vcpus::running_vcpu(&s.overview, &s.src.trace, at_failure_point, path_asked)?;
        if s.opts.start == StartFrom::Rebuild {
            s.checkpoints.forget_trace();
        }
        if let (Some(mark), false) = (failure_start, s.checkpoints.list().is_empty()) {
            for why in &limits {
                s.notes.push(format!("vmrr: the recorded path cannot replay deterministically: {why}"));
            }
            s.notes.push(format!(
                "vmrr: debugging starts at the failure point (snapshot {}), before the failing instruction: `continue` or `stepi` runs it again; going back stops here",
                mark.snapshot_id
            ));
        }
        if s.checkpoints.list().is_empty() {
            let (machine, start) = crate::start::prepare(&s.src, &s.overview, &s.opts)?;
            s.resume(machine, &start)?;
            let chain = s.with_machine(|m, cps, base, f| cps.take(m, base, None, f))?;
            s.base = Some(chain);
        } else {
            s.restore(0)?;
        }
        s.start = s.pos.clone();
        if let StartFrom::Checkpoint(id) = s.opts.start {
            let i = s
                .checkpoints
                .list()
                .iter()
                .position(|c| c.origin == Origin::Trace && c.snapshot_id == id)
                .ok_or_else(|| {
                    crate::ReplayError::Unreplayable(format!("the trace has no checkpoint {id}"))
                })?;
            s.restore(i)?;
        }
        Ok(s)
    }

    /// One instruction forward (live, once a write left the recorded path).
    ///
    /// # Errors
    /// Replay or KVM errors.
    pub fn step(&mut self, interrupted: &mut dyn FnMut() -> bool) -> Result<Stopped, DebugError> {
        if self.live.is_some() {
            return self.live_forward(live::LiveGoal::Step, interrupted);
        }
        self.forward(&forward::Goal::Step, interrupted)
    }

    /// Forward to the next breakpoint or watchpoint, the failure, the end of the trace or
    /// a divergence.
    ///
    /// # Errors
    /// Replay or KVM errors.
    pub fn cont(&mut self, interrupted: &mut dyn FnMut() -> bool) -> Result<Stopped, DebugError> {
        if self.live.is_some() {
            return self.live_forward(live::LiveGoal::Continue, interrupted);
        }
        self.forward(&forward::Goal::Continue, interrupted)
    }

    /// To the boundary right after record `seq` (forward or back).
    ///
    /// # Errors
    /// Replay errors.
    pub fn goto_record(
        &mut self,
        seq: u64,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Stopped, DebugError> {
        self.goto(&Position::at_record(Some(seq)), interrupted)
    }

    /// The replayed machine (registers, memory).
    pub fn machine(&self) -> &Machine {
        self.replayer().machine()
    }

    /// Where the session stands.
    pub fn position(&self) -> &Position {
        &self.pos
    }

    /// Where replay starts: going back stops here.
    pub fn start(&self) -> &Position {
        &self.start
    }

    /// The kernel symbols given with `--system-map`.
    pub fn system_map(&self) -> Option<&crate::symbols::SymbolMap> {
        self.opts.system_map.as_deref()
    }

    /// The trace's overview.
    pub fn overview(&self) -> &TraceOverview {
        &self.overview
    }

    /// The breakpoints and watchpoints set.
    pub fn stops(&self) -> &StopSet {
        &self.stops
    }

    /// Sets a breakpoint at linear address `addr`; `false` when the debug registers a run
    /// without single-stepping needs are all taken.
    pub fn add_breakpoint(&mut self, addr: u64) -> bool {
        if self.stops.exec.contains(&addr) {
            return true;
        }
        if !self.stops.has_room_for(None, self.host_watches) {
            return false;
        }
        Arc::make_mut(&mut self.stops).exec.insert(addr);
        true
    }

    /// Removes a breakpoint; `false` when none was there.
    pub fn remove_breakpoint(&mut self, addr: u64) -> bool {
        Arc::make_mut(&mut self.stops).exec.remove(&addr)
    }

    /// Sets a watchpoint; `false` when it needs a debug register and none is free.
    pub fn add_watchpoint(&mut self, w: WatchPoint) -> bool {
        if self.stops.watch.contains(&w) {
            return true;
        }
        if !self.stops.has_room_for(Some(&w), self.host_watches) {
            return false;
        }
        let alone = StopSet { watch: vec![w], ..StopSet::default() };
        if alone.watch_needs_steps(self.host_watches) && !self.said_watch_steps {
            self.said_watch_steps = true;
            self.note_once(
                "watchpoints are found by single-stepping here (this host's KVM does not stop for hardware watchpoints in emulated code, or the range has no debug-register form): runs are slower while one is set",
            );
        }
        Arc::make_mut(&mut self.stops).watch.push(w);
        true
    }

    /// Removes a watchpoint; `false` when none was there.
    pub fn remove_watchpoint(&mut self, w: &WatchPoint) -> bool {
        let set = Arc::make_mut(&mut self.stops);
        let before = set.watch.len();
        set.watch.retain(|x| x != w);
        set.watch.len() != before
    }

    /// Removes every breakpoint and watchpoint (a debugger that connects again sets its
    /// own).
    pub fn clear_stops(&mut self) {
        self.stops = Arc::new(StopSet::default());
    }

    /// The divergence, once the replay diverged.
    pub fn divergence(&self) -> Option<&Divergence> {
        match &self.terminal {
            Some(Terminal::Diverged(d)) => Some(d),
            _ => None,
        }
    }

    /// The recorded failure, once the replay reproduced it.
    pub fn failure(&self) -> Option<&FailureReport> {
        match &self.terminal {
            Some(Terminal::Failure(_, r)) => Some(r),
            _ => None,
        }
    }

    /// The recorded failure's kind, once the replay reproduced it.
    pub fn failure_kind(&self) -> Option<FailureKind> {
        match &self.terminal {
            Some(Terminal::Failure(k, _)) => Some(*k),
            _ => None,
        }
    }

    /// Session checkpoints taken so far.
    pub fn checkpoints_taken(&self) -> usize {
        self.checkpoints.taken()
    }

    /// Whether the session stands at the recorded failure (the guest at the failing
    /// instruction, which did not complete).
    pub fn at_failure(&self) -> bool {
        matches!(self.terminal, Some(Terminal::Failure(..))) && self.live.is_none()
    }

    /// Whether the session stands at the failing instruction's boundary without having
    /// run it (reached by stepping): the recorded failure is the next thing that happens.
    pub fn at_failing_instruction(&self) -> bool {
        !self.at_failure() && self.live.is_none() && self.failure_at.as_ref() == Some(&self.pos)
    }

    /// Names the current point the way reverse execution does, so that one point has one
    /// name however it was reached: at the recorded failure, the failing instruction's
    /// boundary counted in instructions after the record before it (learnt once, by
    /// single-stepping that stretch from the checkpoint before it).
    ///
    /// # Errors
    /// Replay errors.
    pub fn settle_position(&mut self, interrupted: &mut dyn FnMut() -> bool) -> Result<(), DebugError> {
        if self.at_failure() {
            self.failing_boundary(interrupted)?;
        }
        Ok(())
    }

    /// Where a write from the debugger left the recorded path, if one did.
    pub fn left_path_at(&self) -> Option<&Position> {
        self.live.as_ref()
    }

    /// The checkpoints the session can restore.
    pub fn checkpoints(&self) -> &[Checkpoint] {
        self.checkpoints.list()
    }

    /// The checkpoint policy in force.
    pub fn policy(&self) -> Policy {
        self.checkpoints.policy()
    }

    /// Takes session checkpoints every `every` of replay time from now on.
    pub fn set_checkpoint_interval(&mut self, every: std::time::Duration) {
        self.checkpoints.set_every(every);
    }

    /// Messages for the user gathered since the last call (a divergence's cause, leaving
    /// the recorded path, ...).
    pub fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    fn note_once(&mut self, s: &str) {
        if !self.notes.iter().any(|n| n == s) {
            self.notes.push(s.to_string());
        }
    }

    /// Takes a session checkpoint here. Only at a record's boundary, on the recorded path.
    ///
    /// # Errors
    /// `Ok(false)` when this is not such a point; errors writing the snapshot.
    pub fn checkpoint_here(&mut self) -> Result<bool, DebugError> {
        if self.live.is_some() || !self.pos.path.is_empty() || !self.replayer().resumable() {
            return Ok(false);
        }
        if self.checkpoints.list().iter().any(|c| c.at == self.pos.record) {
            return Ok(true);
        }
        let at = self.pos.record;
        let chain = self.with_machine(|m, cps, base, f| cps.take(m, base, at, f))?;
        self.base = Some(chain);
        Ok(true)
    }

    /// The records around the current one, as `vmrr inspect` prints them: `before`
    /// records up to it and `after` past it.
    ///
    /// # Errors
    /// The trace could not be read.
    pub fn records_around(&self, before: u64, after: u64) -> Result<Vec<String>, DebugError> {
        let here = self.pos.record.unwrap_or(0);
        let mut r = TraceReader::open(&self.src.trace).map_err(crate::ReplayError::from)?;
        r.seek_seq(here.saturating_sub(before)).map_err(crate::ReplayError::from)?;
        let mut out = Vec::new();
        while let Some(rec) = r.next_record() {
            let rec = rec.map_err(crate::ReplayError::from)?;
            if rec.seq > here + after {
                break;
            }
            let mark = if Some(rec.seq) == self.pos.record { "=>" } else { "  " };
            out.push(format!("{mark} {}", vmrr_format::describe::record_line(&rec)));
        }
        Ok(out)
    }

    fn replayer(&self) -> &Replayer {
        self.replayer.as_ref().expect("a session always holds its replayer between calls")
    }

    fn replayer_mut(&mut self) -> &mut Replayer {
        self.replayer.as_mut().expect("a session always holds its replayer between calls")
    }

    /// Runs `f` with the machine, the checkpoints, the base chain and the overview.
    fn with_machine<T>(
        &mut self,
        f: impl FnOnce(
            &mut Machine,
            &mut Checkpoints,
            Option<&Arc<Vec<StoredSnapshot>>>,
            &TraceOverview,
        ) -> Result<T, DebugError>,
    ) -> Result<T, DebugError> {
        let stops = self.machine().debug_stops();
        let r = self.replayer.as_mut().expect("a session always holds its replayer between calls");
        r.set_debug_stops(DebugStops::default())?;
        let out = f(r.machine_mut(), &mut self.checkpoints, self.base.as_ref(), &self.overview);
        r.set_debug_stops(stops)?;
        out
    }

    /// Starts replaying `machine` at `start`.
    fn resume(&mut self, mut machine: Machine, start: &Start) -> Result<(), DebugError> {
        machine.focus(self.vcpu)?;
        let trace = TraceReader::open(&self.src.trace).map_err(crate::ReplayError::from)?;
        let r = Replayer::new(machine, trace, start, self.overview.exits, &self.opts)?;
        self.pos = Position::at_record(r.position().0);
        self.replayer = Some(r);
        self.terminal = None;
        self.armed = None;
        self.whole_stretch_stepped = true;
        self.apply_events()?;
        Ok(())
    }

    /// Restores checkpoint `i` (over the kept machine when its layout allows, else into
    /// a new one) and stands at its boundary.
    fn restore(&mut self, i: usize) -> Result<(), DebugError> {
        let chain = self.checkpoints.chain(i)?;
        let at = self.checkpoints.list()[i].at;
        let snapshot = Some(self.checkpoints.list()[i].snapshot_id);
        let machine = match self.replayer.take() {
            Some(r) => {
                let mut m = r.into_machine();
                m.set_debug_stops(DebugStops::default())?;
                match vmrr_engine::snapshot::restore_over(&mut m, &chain) {
                    Ok(_) => m,
                    Err(_) => self.fresh(&chain)?,
                }
            }
            None => self.fresh(&chain)?,
        };
        self.base = Some(chain);
        self.live = None;
        self.checkpoints.restored();
        self.resume(machine, &Start { snapshot, seq: at.map_or(0, |a| a + 1) })
    }

    fn fresh(&self, chain: &[StoredSnapshot]) -> Result<Machine, DebugError> {
        let debugcon = vmrr_engine::devices::console::Console::capture_only();
        Ok(vmrr_engine::snapshot::restore(chain, self.opts.serial.clone(), debugcon, true)
            .map_err(crate::ReplayError::from)?)
    }
}

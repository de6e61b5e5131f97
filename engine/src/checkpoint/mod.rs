//! Checkpoints while running: snapshots taken at exit boundaries, each announced in the
//! trace by a checkpoint record (snapshot id, the record sequence it follows, exits), of
//! vmrr's own machine or of a VM another VMM runs ([`Checkpointed`]).
//!
//! The first snapshot (id 0, before the first exit) is full; the following ones are
//! incremental, each holding the pages dirtied since the previous one (where the VM logs
//! dirty pages).

pub mod flight;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::machine::{ExitHook, Machine, Outcome, RunError};
use crate::record::Recorder;
use crate::snapshot::{self, CaptureStats, Identity, SnapshotError};

/// What checkpoints are taken of and recorded into: vmrr's own [`Machine`], or a VM another
/// VMM runs (`crate::embed`).
pub trait Checkpointed {
    /// The recorder checkpoint records go to (`None`: snapshots only).
    fn recorder(&mut self) -> Option<&mut Recorder>;

    /// Exits so far.
    fn exits(&self) -> u64;

    /// Whether each checkpoint after the first is incremental on the one before (the VM
    /// logs its dirty pages); otherwise every checkpoint is a full snapshot.
    fn chains(&self) -> bool;

    /// Captures snapshot `who` into `dir` with the guest stopped until it is durable.
    ///
    /// # Errors
    /// KVM, vCPU state or file-system failures.
    fn capture(&mut self, dir: &Path, who: &Identity<'_>) -> Result<CaptureStats, SnapshotError>;

    /// vmrr's machine, whose memory background capture can write-protect (`None`:
    /// checkpoints stop the guest).
    fn machine(&mut self) -> Option<&mut Machine>;
}

impl Checkpointed for Machine {
    fn recorder(&mut self) -> Option<&mut Recorder> {
        self.recorder_mut()
    }

    fn exits(&self) -> u64 {
        Machine::exits(self)
    }

    fn chains(&self) -> bool {
        // Incremental snapshots need the dirty log; without it `snapshot::take` says so.
        true
    }

    fn capture(&mut self, dir: &Path, who: &Identity<'_>) -> Result<CaptureStats, SnapshotError> {
        snapshot::take(self, dir, who)
    }

    fn machine(&mut self) -> Option<&mut Machine> {
        Some(self)
    }
}

/// A checkpoint could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The snapshot could not be written.
    #[error("cannot write snapshot {id}")]
    Snapshot {
        /// Its id.
        id: u64,
        /// Why the capture failed.
        #[source]
        source: SnapshotError,
    },
    /// The trace could not record the checkpoint (the snapshot exists, unannounced).
    #[error("cannot record checkpoint {id} in the trace")]
    Record {
        /// Its id.
        id: u64,
        /// Why the trace could not take the record.
        #[source]
        source: vmrr_format::WriteError,
    },
}

/// When to take checkpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// Every this many exits.
    pub every_exits: Option<u64>,
    /// At the first exit after this much time since the previous checkpoint.
    pub interval: Option<Duration>,
}

impl Policy {
    /// True when no periodic checkpoint is asked for.
    pub fn is_none(&self) -> bool {
        self.every_exits.is_none() && self.interval.is_none()
    }
}

/// One checkpoint taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// Snapshot id.
    pub id: u64,
    /// Exits before it.
    pub exits: u64,
    /// Last trace record before it.
    pub exit_seq: Option<u64>,
    /// Capture statistics (`durable` measured from the pause to the record's sync).
    pub stats: CaptureStats,
}

/// How checkpoints capture memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureMode {
    /// The guest stays paused until every page is written and synced.
    StopWorld,
    /// The guest is paused only to arm write-protection; pages are written while it runs,
    /// with at most `budget_bytes` of old page contents held aside at once.
    Background {
        /// The budget for pages written by the guest before the writer reached them.
        budget_bytes: u64,
    },
}

/// Default budget of old page contents held aside by a background capture (64 MiB).
pub const DEFAULT_BUFFER_BYTES: u64 = 64 << 20;

/// A background capture whose snapshot is not yet durable.
#[derive(Debug)]
struct Pending {
    inflight: snapshot::InFlight,
    id: u64,
    exit_seq: Option<u64>,
    exits: u64,
    started: Instant,
}

/// Totals over the background captures of a run (the flight recorder's summary).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackgroundTotals {
    /// Checkpoints written in the background.
    pub captures: u64,
    /// Pages whose old contents were set aside because the guest wrote them first.
    pub pages_saved: u64,
    /// Pages the guest wrote while the budget was spent: the vCPU waited for each.
    pub pages_waited: u64,
    /// Most pages held aside at once.
    pub peak_saved_pages: u64,
}

/// Takes checkpoints into a snapshot directory.
///
/// With [`CaptureMode::Background`], [`Self::begin`] returns as soon as the guest may run
/// again; the snapshot becomes durable later and only then is its checkpoint record
/// appended to the trace ([`Self::poll`] after each exit, [`Self::finish`] at the end),
/// carrying the pause's position (`exit_seq`), not the position where it is appended.
#[derive(Debug)]
pub struct Checkpointer {
    root: PathBuf,
    policy: Policy,
    trace_id: [u8; 16],
    annotations: Vec<(String, String)>,
    next_id: u64,
    last_time: Instant,
    background: Option<snapshot::Background>,
    note: Option<String>,
    pending: Option<Pending>,
    /// Checkpoints taken, in order.
    pub taken: Vec<Taken>,
}

/// The directory and identity of checkpoint `id`, taken now of `m`: incremental on the
/// last checkpoint taken (when `m` chains them), after the last record written.
fn next_snapshot<'a>(
    root: &std::path::Path,
    taken: &[Taken],
    trace_id: [u8; 16],
    annotations: &'a [(String, String)],
    id: u64,
    m: &mut dyn Checkpointed,
) -> (PathBuf, snapshot::Identity<'a>) {
    let who = snapshot::Identity {
        id,
        parent: taken.last().map(|t| t.id).filter(|_| m.chains()),
        trace_id,
        exit_seq: m.recorder().and_then(|r| r.next_seq().checked_sub(1)),
        annotations,
    };
    (snapshot::snapshot_dir(root, id), who)
}

impl Checkpointer {
    /// Checkpoints into `root` (created if needed) for the trace `trace_id`, stopping the
    /// guest while each is written (see [`Self::with_capture`]).
    pub fn new(
        root: PathBuf,
        policy: Policy,
        trace_id: [u8; 16],
        annotations: Vec<(String, String)>,
    ) -> Self {
        Checkpointer {
            root,
            policy,
            trace_id,
            annotations,
            next_id: 0,
            last_time: Instant::now(),
            background: None,
            note: None,
            pending: None,
            taken: Vec::new(),
        }
    }

    /// Captures as `mode` says. When background capture is asked for and this host cannot
    /// write-protect guest memory, checkpoints stop the guest instead and
    /// [`Self::capture_note`] says why.
    pub fn with_capture(mut self, mode: CaptureMode) -> Self {
        self.background = None;
        self.note = None;
        if let CaptureMode::Background { budget_bytes } = mode {
            match snapshot::Background::new(budget_bytes) {
                Ok(b) => self.background = Some(b),
                Err(e) => {
                    let cause = std::error::Error::source(&e).map(|c| format!(": {c}")).unwrap_or_default();
                    self.note = Some(format!(
                        "background checkpoints unavailable ({e}{cause}); checkpoints stop the guest while they write"
                    ));
                }
            }
        }
        self
    }

    /// Testing only: background writers start only when their capture is finished (see
    /// `Background::defer_writes`).
    #[cfg(feature = "testing")]
    pub fn defer_background_writes(&mut self) {
        if let Some(b) = self.background.as_mut() {
            b.defer_writes();
        }
    }

    /// How checkpoints are captured: `"background"` or `"stop-world"`.
    pub fn capture_name(&self) -> &'static str {
        if self.background.is_some() { "background" } else { "stop-world" }
    }

    /// Why background capture was asked for and is not used, if so.
    pub fn capture_note(&self) -> Option<&str> {
        self.note.as_deref()
    }

    /// Totals over the background captures taken so far.
    pub fn background_totals(&self) -> BackgroundTotals {
        let mut t = BackgroundTotals::default();
        for s in self.taken.iter().map(|t| t.stats).filter(|s| s.background) {
            t.captures += 1;
            t.pages_saved += s.pages_saved;
            t.pages_waited += s.pages_waited;
            t.peak_saved_pages = t.peak_saved_pages.max(s.peak_saved_pages);
        }
        t
    }

    /// The snapshot directory.
    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    /// Takes the next checkpoint now (the first is full, later ones incremental), waits
    /// until it is durable and records it in the trace when `m` is recording.
    ///
    /// # Errors
    /// The snapshot or its trace record could not be written.
    pub fn checkpoint(&mut self, m: &mut dyn Checkpointed) -> Result<Taken, CheckpointError> {
        let id = self.begin(m)?;
        self.finish(m)?;
        self.taken.last().copied().filter(|t| t.id == id).ok_or(CheckpointError::Snapshot {
            id,
            source: SnapshotError::Background(snapshot::BackgroundError::Lost),
        })
    }

    /// Starts the next checkpoint: returns its id once the guest may run again (at once
    /// for a background capture, after the snapshot and its record are durable for a
    /// stopped-world one). A previous background capture is finished first.
    ///
    /// # Errors
    /// The snapshot or a trace record could not be written.
    pub fn begin(&mut self, m: &mut dyn Checkpointed) -> Result<u64, CheckpointError> {
        self.finish(m)?;
        let id = self.next_id;
        let exits = m.exits();
        let (dir, who) = next_snapshot(&self.root, &self.taken, self.trace_id, &self.annotations, id, m);
        let machine = m.machine().filter(|m| snapshot::Background::supports(m));
        let (Some(bg), Some(machine)) = (self.background.as_mut(), machine) else {
            self.stop_world(m)?;
            return Ok(id);
        };
        let exit_seq = who.exit_seq;
        let started = Instant::now();
        let (inflight, _pause) =
            bg.start(machine, &dir, &who).map_err(|source| CheckpointError::Snapshot { id, source })?;
        self.pending = Some(Pending { inflight, id, exit_seq, exits, started });
        self.next_id += 1;
        self.last_time = Instant::now();
        Ok(id)
    }

    /// Finishes the background capture in flight, if its snapshot is durable already.
    ///
    /// # Errors
    /// As for [`Self::finish`].
    pub fn poll(&mut self, m: &mut dyn Checkpointed) -> Result<(), CheckpointError> {
        if self.pending.as_ref().is_some_and(|p| p.inflight.is_done()) {
            self.finish(m)?;
        }
        Ok(())
    }

    /// Waits for the background capture in flight, if any, and once its snapshot is
    /// durable appends its checkpoint record (at the pause's position) and syncs the trace.
    ///
    /// # Errors
    /// The snapshot or its trace record could not be written.
    pub fn finish(&mut self, m: &mut dyn Checkpointed) -> Result<Option<Taken>, CheckpointError> {
        let Some(p) = self.pending.take() else { return Ok(None) };
        let id = p.id;
        let stats = p.inflight.wait().map_err(|source| CheckpointError::Snapshot { id, source })?;
        if let Some(rec) = m.recorder() {
            let exit_seq = p.exit_seq.unwrap_or(0);
            rec.record_checkpoint_at(id, exit_seq, p.exits)
                .and_then(|_| rec.sync())
                .map_err(|source| CheckpointError::Record { id, source })?;
        }
        let stats = CaptureStats { durable: p.started.elapsed().max(stats.durable), ..stats };
        let t = Taken { id, exits: p.exits, exit_seq: p.exit_seq, stats };
        self.taken.push(t);
        Ok(Some(t))
    }

    /// A stopped-world checkpoint: written, synced and recorded before returning.
    fn stop_world(&mut self, m: &mut dyn Checkpointed) -> Result<Taken, CheckpointError> {
        let id = self.next_id;
        let (dir, who) = next_snapshot(&self.root, &self.taken, self.trace_id, &self.annotations, id, m);
        let exit_seq = who.exit_seq;
        let stats = m.capture(&dir, &who).map_err(|source| CheckpointError::Snapshot { id, source })?;
        if let Some(rec) = m.recorder() {
            // The checkpoint record is made durable together with its snapshot: a crash
            // after this point never leaves a snapshot the trace does not mention.
            rec.record_checkpoint(id)
                .and_then(|_| rec.sync())
                .map_err(|source| CheckpointError::Record { id, source })?;
        }
        let t = Taken { id, exits: m.exits(), exit_seq, stats };
        self.taken.push(t);
        self.next_id += 1;
        self.last_time = Instant::now();
        Ok(t)
    }

    /// Takes the failure-point checkpoint after a run that ended in `outcome`, when it is a
    /// failure a repro is for (emulation failure, internal error, triple fault, failed
    /// entry): the vCPU as KVM reported it at the failing exit and the memory then,
    /// incremental on the last checkpoint. Its record follows the fatal exit's; replay
    /// restores it to reproduce the failure whatever happened on the way to it.
    ///
    /// # Errors
    /// As for [`Self::checkpoint`].
    pub fn failure_point(
        &mut self,
        m: &mut dyn Checkpointed,
        outcome: &Outcome,
    ) -> Result<Option<Taken>, CheckpointError> {
        self.finish(m)?;
        if !vmrr_format::end_reason::is_failure(outcome.end_reason()) {
            return Ok(None);
        }
        // The guest will not run again: nothing to gain from writing in the background.
        self.stop_world(m).map(Some)
    }

    /// The id the next checkpoint gets.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// The trace these checkpoints belong to.
    pub fn trace_id(&self) -> [u8; 16] {
        self.trace_id
    }

    /// Whether a checkpoint is due after exit `exits`.
    pub fn due(&self, exits: u64) -> bool {
        self.policy.every_exits.is_some_and(|n| n > 0 && exits % n == 0)
            || self.policy.interval.is_some_and(|i| self.last_time.elapsed() >= i)
    }
}

impl ExitHook for Checkpointer {
    fn after_exit(&mut self, m: &mut Machine, exits: u64) -> Result<(), RunError> {
        let hook = |e| RunError::Hook { hook: "checkpoint", exit: exits, source: Box::new(e) };
        self.poll(m).map_err(hook)?;
        if self.due(exits) {
            self.begin(m).map_err(hook)?;
        }
        Ok(())
    }
}

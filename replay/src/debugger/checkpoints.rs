//! The points a debugging session can restore: the trace's checkpoints (snapshots the
//! recording took) and the session's own, taken as the replay goes so that going back is
//! fast where the user has been. A session checkpoint is an incremental snapshot over the
//! one the machine was last restored from (only the pages dirtied since), written to a
//! private temporary directory removed when the session ends.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmrr_engine::machine::Machine;
use vmrr_engine::snapshot::{self, Identity, StoredSnapshot};
use vmrr_format::overview::TraceOverview;

use super::error::DebugError;

/// Session checkpoints get ids from here up, apart from the trace's.
const SESSION_IDS: u64 = 1 << 40;

/// Who took a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The recording (a checkpoint record in the trace).
    Trace,
    /// This session.
    Session,
}

/// One restorable point: the boundary right after a record.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The record consumed before it (`None`: before the first record).
    pub at: Option<u64>,
    /// Who took it.
    pub origin: Origin,
    /// Its snapshot's id.
    pub snapshot_id: u64,
    /// Its snapshot chain, once loaded (oldest first).
    chain: Option<Arc<Vec<StoredSnapshot>>>,
}

/// When to take checkpoints, and how many at most.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Take one at an exit boundary once this much replay time has passed since the last
    /// checkpoint restored or taken.
    pub every: Duration,
    /// Most session checkpoints (the oldest are kept: later ones build on them).
    pub max: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { every: Duration::from_millis(250), max: 256 }
    }
}

/// The checkpoints of a session, sorted by position.
#[derive(Debug)]
pub struct Checkpoints {
    list: Vec<Checkpoint>,
    trace_root: Option<PathBuf>,
    dir: Option<vmrr_format::scratch::Scratch>,
    next_id: u64,
    taken: usize,
    policy: Policy,
    max_mem: u64,
    /// Replay time since the last checkpoint was restored or taken (what going back to a
    /// later point would cost), excluding the current run.
    work: Duration,
    /// When the current run started.
    run: Option<Instant>,
}

impl Checkpoints {
    /// The trace's checkpoints (those whose snapshot is present; not the failure-point
    /// snapshot, which lies past the trace's last exit and is no point of the replayed
    /// path).
    pub fn of_trace(f: &TraceOverview, snapshots: Option<&Path>, policy: Policy, max_mem: u64) -> Self {
        let last = f.last_exit_seq.unwrap_or(u64::MAX);
        let list = f
            .checkpoints
            .iter()
            .filter(|c| c.at() <= last)
            .filter(|c| {
                snapshots.is_some_and(|r| vmrr_format::layout::snapshot_dir(r, c.snapshot_id).is_dir())
            })
            .map(|c| Checkpoint {
                at: Some(c.at()),
                origin: Origin::Trace,
                snapshot_id: c.snapshot_id,
                chain: None,
            })
            .collect();
        Checkpoints {
            list,
            trace_root: snapshots.map(Path::to_path_buf),
            dir: None,
            next_id: SESSION_IDS,
            taken: 0,
            policy,
            max_mem,
            work: Duration::ZERO,
            run: None,
        }
    }

    /// Only the failure-point snapshot `mark`, placed right before the fatal exit it was
    /// taken at: a session over a trace whose path cannot replay deterministically starts
    /// (and stops going back) there.
    pub fn at_failure_point(
        f: &TraceOverview,
        snapshots: Option<&Path>,
        policy: Policy,
        max_mem: u64,
        mark: vmrr_format::overview::CheckpointMark,
    ) -> Self {
        let mut c = Self::of_trace(f, snapshots, policy, max_mem);
        let present =
            snapshots.is_some_and(|r| vmrr_format::layout::snapshot_dir(r, mark.snapshot_id).is_dir());
        c.list = match (f.last_exit_seq, present) {
            (Some(last), true) => vec![Checkpoint {
                at: last.checked_sub(1),
                origin: Origin::Trace,
                snapshot_id: mark.snapshot_id,
                chain: None,
            }],
            _ => Vec::new(),
        };
        c
    }

    /// Drops the trace's checkpoints (a session that rebuilds the guest from the trace).
    pub fn forget_trace(&mut self) {
        self.list.retain(|c| c.origin == Origin::Session);
    }

    /// All checkpoints, by position.
    pub fn list(&self) -> &[Checkpoint] {
        &self.list
    }

    /// The policy in force.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Changes how often checkpoints are taken.
    pub fn set_every(&mut self, every: Duration) {
        self.policy.every = every;
    }

    /// The index of the last checkpoint at or before the boundary after `record`.
    pub fn nearest(&self, record: Option<u64>) -> Option<usize> {
        self.list.iter().rposition(|c| c.at <= record)
    }

    /// The index of the last checkpoint strictly before the boundary after `record`.
    pub fn before(&self, record: Option<u64>) -> Option<usize> {
        self.list.iter().rposition(|c| c.at < record)
    }

    /// Checkpoint `i`'s snapshot chain (a trace checkpoint's is loaded and checked the
    /// first time).
    ///
    /// # Errors
    /// The snapshot is missing, damaged or invalid.
    pub fn chain(&mut self, i: usize) -> Result<Arc<Vec<StoredSnapshot>>, DebugError> {
        if let Some(c) = self.list[i].chain.as_ref() {
            return Ok(Arc::clone(c));
        }
        let root = self.trace_root.as_deref().unwrap_or(Path::new("."));
        let dir = vmrr_format::layout::snapshot_dir(root, self.list[i].snapshot_id);
        let chain = Arc::new(snapshot::load_chain(&dir, self.max_mem).map_err(crate::ReplayError::from)?);
        self.list[i].chain = Some(Arc::clone(&chain));
        Ok(chain)
    }

    /// A checkpoint was restored: the policy's clock starts again.
    pub fn restored(&mut self) {
        self.work = Duration::ZERO;
        if self.run.is_some() {
            self.run = Some(Instant::now());
        }
    }

    /// The replay runs from now (the policy's clock counts replay time only, not the time
    /// the session waits for the user).
    pub fn run_started(&mut self) {
        self.run = Some(Instant::now());
    }

    /// The replay stopped.
    pub fn run_ended(&mut self) {
        if let Some(t) = self.run.take() {
            self.work += t.elapsed();
        }
    }

    /// Whether the policy wants a checkpoint now (at an exit boundary after `at`).
    pub fn due(&self, at: Option<u64>) -> bool {
        let work = self.work + self.run.map_or(Duration::ZERO, |t| t.elapsed());
        self.taken < self.policy.max && work >= self.policy.every && self.list.iter().all(|c| c.at != at)
    }

    /// Takes a session checkpoint of `m` at the boundary after `at`: incremental over
    /// `base` (the chain the machine's memory comes from) when the machine logs dirty
    /// pages, full otherwise. Returns the new checkpoint's chain (the machine's base from
    /// now on).
    ///
    /// # Errors
    /// The snapshot could not be written.
    pub fn take(
        &mut self,
        m: &mut Machine,
        base: Option<&Arc<Vec<StoredSnapshot>>>,
        at: Option<u64>,
        f: &TraceOverview,
    ) -> Result<Arc<Vec<StoredSnapshot>>, DebugError> {
        if self.dir.is_none() {
            // Removed when the session ends, or when vmrr is stopped by a signal.
            let d = vmrr_format::scratch::Scratch::dir_in(&std::env::temp_dir(), "vmrr-debug-")
                .map_err(DebugError::TempDir)?;
            self.dir = Some(d);
        }
        let root = self.dir.as_ref().map(|d| d.path().to_path_buf()).unwrap_or_default();
        let id = self.next_id;
        self.next_id += 1;
        let incremental = base.filter(|_| m.vm().config().dirty_log);
        let parent = incremental.and_then(|b| b.last()).map(|s| s.state.id);
        let who = Identity { id, parent, trace_id: f.trace_id, exit_seq: at, annotations: &f.annotations };
        let dir = vmrr_format::layout::snapshot_dir(&root, id);
        snapshot::take(m, &dir, &who).map_err(DebugError::Checkpoint)?;
        let top = snapshot::load(&dir, u64::MAX).map_err(DebugError::Checkpoint)?;
        let mut chain = incremental.map(|b| b.as_ref().clone()).unwrap_or_default();
        chain.push(top);
        let chain = Arc::new(chain);
        let c = Checkpoint { at, origin: Origin::Session, snapshot_id: id, chain: Some(Arc::clone(&chain)) };
        let i = self.list.partition_point(|x| x.at <= at);
        self.list.insert(i, c);
        self.taken += 1;
        self.restored();
        Ok(chain)
    }

    /// Session checkpoints taken.
    pub fn taken(&self) -> usize {
        self.taken
    }
}

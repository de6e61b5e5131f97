//! Checkpoints while running: snapshots taken at exit boundaries, each announced in the
//! trace by a checkpoint record (snapshot id, the record sequence it follows, exits).
//!
//! The first snapshot (id 0, before the first exit) is full; the following ones are
//! incremental, each holding the pages dirtied since the previous one.

pub mod flight;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::machine::{ExitHook, Machine, Outcome, RunError};
use crate::snapshot::{self, CaptureStats, SnapshotError};

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
    /// Capture statistics.
    pub stats: CaptureStats,
}

/// Takes checkpoints into a snapshot directory.
#[derive(Debug)]
pub struct Checkpointer {
    root: PathBuf,
    policy: Policy,
    trace_id: [u8; 16],
    annotations: Vec<(String, String)>,
    next_id: u64,
    last_time: Instant,
    /// Checkpoints taken, in order.
    pub taken: Vec<Taken>,
}

impl Checkpointer {
    /// Checkpoints into `root` (created if needed) for the trace `trace_id`.
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
            taken: Vec::new(),
        }
    }

    /// The snapshot directory.
    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    /// Takes the next checkpoint now (the first is full, later ones incremental) and
    /// records it in the trace when `m` is recording.
    ///
    /// # Errors
    /// The snapshot or its trace record could not be written.
    pub fn checkpoint(&mut self, m: &mut Machine) -> Result<Taken, CheckpointError> {
        let id = self.next_id;
        let parent = self.taken.last().map(|t| t.id);
        let exit_seq = m.recorder().and_then(|r| r.next_seq().checked_sub(1));
        let dir = snapshot::snapshot_dir(&self.root, id);
        let who = snapshot::Identity {
            id,
            parent,
            trace_id: self.trace_id,
            exit_seq,
            annotations: &self.annotations,
        };
        let stats =
            snapshot::take(m, &dir, &who).map_err(|source| CheckpointError::Snapshot { id, source })?;
        if let Some(rec) = m.recorder_mut() {
            // The checkpoint record is made durable together with its snapshot: a crash
            // after this point never leaves a snapshot the trace does not mention.
            rec.record_checkpoint(id)
                .and_then(|_| rec.writer_mut().sync())
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
        m: &mut Machine,
        outcome: &Outcome,
    ) -> Result<Option<Taken>, CheckpointError> {
        if !vmrr_format::end_reason::is_failure(outcome.end_reason()) {
            return Ok(None);
        }
        self.checkpoint(m).map(Some)
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
        if self.due(exits) {
            self.checkpoint(m).map_err(|e| RunError::Hook {
                hook: "checkpoint",
                exit: exits,
                source: Box::new(e),
            })?;
        }
        Ok(())
    }
}

//! The flight recorder: record continuously at bounded cost, keep only the recent past.
//!
//! Layout under `<out>.flight/`: `prologue.vmrr` (the run's annotations and CPUID),
//! `seg-<id>.vmrr` (the trace from checkpoint `<id>` up to the next), and `snapshots/`.
//! Only the last `keep` checkpoints, and the segments from the oldest of them, are kept:
//! when a new checkpoint is taken beyond that, the oldest segment is deleted and the
//! oldest (full) snapshot is squashed into the next one, which becomes full. Disk use is
//! bounded by one full snapshot, `keep - 1` incremental ones and `keep` segments, whatever
//! the run's length; memory by the trace writer's fixed buffers.
//!
//! When the run ends in a failure (or is stopped), [`FlightRecorder::assemble`] joins the
//! prologue and the kept segments into one trace (sequence numbers preserved; the gap
//! before the oldest kept checkpoint is allowed by replay) beside the kept snapshots,
//! ready to pack into a bundle that replays to that moment.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use vmrr_format::{TraceReader, TraceWriter, WriterOptions};

use crate::checkpoint::{CheckpointError, Checkpointed, Checkpointer, Policy};
use crate::machine::{ExitHook, Machine, RunError};
use crate::record::Recording;
use crate::snapshot::{self, SnapshotError};
use vmrr_format::FileError;

/// The flight recorder could not keep, drop or assemble its recording.
#[derive(Debug, thiserror::Error)]
pub enum FlightError {
    /// A trace segment could not be written or finished.
    #[error("cannot write a trace segment")]
    Segment(#[from] vmrr_format::WriteError),
    /// A kept segment could not be read back.
    #[error("cannot read a trace segment")]
    Read(#[from] vmrr_format::ReadError),
    /// A checkpoint could not be taken.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The oldest checkpoint could not be folded into the next.
    #[error("cannot drop the oldest checkpoint")]
    Squash(#[source] SnapshotError),
    /// A file of the flight directory could not be created, moved or removed.
    #[error(transparent)]
    File(#[from] FileError),
    /// Packing the bundle failed.
    #[error(transparent)]
    Pack(#[from] vmrr_format::bundle::BundleError),
}

/// How a flight recorder keeps its recording.
#[derive(Debug, Clone)]
pub struct FlightSettings {
    /// When to take checkpoints (each starts a new segment).
    pub policy: Policy,
    /// How many checkpoints (and segments from the oldest on) to keep.
    pub keep: usize,
    /// How segments are written.
    pub opts: WriterOptions,
    /// How checkpoints capture memory.
    pub capture: crate::checkpoint::CaptureMode,
}

/// A flight recorder attached to a recording machine.
#[derive(Debug)]
pub struct FlightRecorder {
    dir: PathBuf,
    cp: Checkpointer,
    keep: usize,
    opts: WriterOptions,
    segments: VecDeque<(u64, PathBuf)>,
    /// The failure-point snapshot, once taken (kept beside the segments' checkpoints).
    failure_point: Option<u64>,
    /// Segments and snapshots dropped so far.
    pub dropped: u64,
}

impl FlightRecorder {
    /// The directory for a flight recording whose bundle goes to `out`: its whole name
    /// and `.flight` (`fr.vmrrb` -> `fr.vmrrb.flight`), so two outputs never share one.
    pub fn dir_for(out: &Path) -> PathBuf {
        let mut s = out.as_os_str().to_owned();
        s.push(".flight");
        PathBuf::from(s)
    }

    /// The prologue trace path (record annotations and CPUID into a writer created on it,
    /// then call [`Self::start`]).
    pub fn prologue_path(dir: &Path) -> PathBuf {
        dir.join("prologue.vmrr")
    }

    /// Starts: takes checkpoint 0 into the first segment. `m` must be recording into the
    /// prologue.
    ///
    /// # Errors
    /// Snapshot or trace failures.
    pub fn start(
        m: &mut dyn Checkpointed,
        dir: PathBuf,
        settings: FlightSettings,
        recording: &Recording,
    ) -> Result<Self, FlightError> {
        let FlightSettings { policy, keep, opts, capture } = settings;
        let cp = Checkpointer::new(
            dir.join("snapshots"),
            policy,
            recording.trace_id,
            recording.annotations.clone(),
        )
        .with_capture(capture);
        let mut fr = FlightRecorder {
            dir,
            cp,
            keep: keep.max(1),
            opts,
            segments: VecDeque::new(),
            failure_point: None,
            dropped: 0,
        };
        fr.rotate(m)?;
        Ok(fr)
    }

    /// New segment, then a checkpoint as its first record; drops what falls out of `keep`.
    fn rotate(&mut self, m: &mut dyn Checkpointed) -> Result<(), FlightError> {
        // The previous checkpoint's record belongs to its own segment: finish it there.
        self.cp.finish(m)?;
        let id = self.cp.taken.last().map_or(0, |t| t.id + 1);
        let path = self.dir.join(format!("seg-{id:06}.vmrr"));
        let mut opts = self.opts.clone();
        opts.trace_id = Some(self.cp_trace_id());
        let w = TraceWriter::create(&path, opts)?;
        if let Some(rec) = m.recorder() {
            let old = rec.replace_writer(w)?;
            old.finish()?;
        }
        let new_id = self.cp.begin(m)?;
        self.segments.push_back((new_id, path));
        while self.segments.len() > self.keep {
            let Some((old_id, old_seg)) = self.segments.pop_front() else { break };
            let next_id = self.segments.front().map_or(new_id, |s| s.0);
            if next_id == new_id {
                // Folding into the capture in flight: it must be complete first.
                self.cp.finish(m)?;
            }
            let root = self.cp.root().to_path_buf();
            snapshot::squash(&snapshot::snapshot_dir(&root, old_id), &snapshot::snapshot_dir(&root, next_id))
                .map_err(FlightError::Squash)?;
            std::fs::remove_file(&old_seg).map_err(FileError::on("removing", &old_seg))?;
            self.dropped += 1;
        }
        Ok(())
    }

    fn cp_trace_id(&self) -> [u8; 16] {
        self.cp.trace_id()
    }

    /// Finishes the background checkpoint in flight (its record goes into the current
    /// segment). Call when the run ends, before [`Self::failure_point`] or assembling.
    ///
    /// # Errors
    /// The snapshot or its record could not be written.
    pub fn finish(&mut self, m: &mut dyn Checkpointed) -> Result<(), FlightError> {
        self.cp.finish(m)?;
        Ok(())
    }

    /// Its checkpointer (capture mode, checkpoints taken, background totals).
    pub fn checkpointer(&self) -> &Checkpointer {
        &self.cp
    }

    /// Takes the failure-point snapshot (see `Checkpointer::failure_point`) after a run
    /// that ended in `outcome`, in the current segment; the bundle keeps it.
    ///
    /// # Errors
    /// The snapshot or its record could not be written.
    pub fn failure_point(
        &mut self,
        m: &mut dyn Checkpointed,
        outcome: &crate::machine::Outcome,
    ) -> Result<(), FlightError> {
        if let Some(t) = self.cp.failure_point(m, outcome)? {
            self.failure_point = Some(t.id);
        }
        Ok(())
    }

    /// The kept checkpoint ids, oldest first.
    pub fn kept(&self) -> Vec<u64> {
        self.segments.iter().map(|s| s.0).collect()
    }

    /// Joins the prologue and the kept segments into `<staging>/trace.vmrr` and moves the
    /// kept snapshots to `<staging>/trace.snapshots`. Call after the recorder finished.
    ///
    /// # Errors
    /// A segment cannot be read or the result written.
    pub fn assemble(&self, staging: &Path) -> Result<PathBuf, FlightError> {
        std::fs::create_dir_all(staging).map_err(FileError::on("creating", staging))?;
        let trace = staging.join("trace.vmrr");
        let mut opts = self.opts.clone();
        opts.trace_id = Some(self.cp_trace_id());
        let mut w = TraceWriter::create(&trace, opts)?;
        let mut parts = vec![Self::prologue_path(&self.dir)];
        parts.extend(self.segments.iter().map(|s| s.1.clone()));
        for p in parts {
            let mut r = TraceReader::open(&p)?;
            while let Some(item) = r.next_record() {
                match item {
                    Ok(rec) => w.append_record(&rec)?,
                    // A torn tail of the last segment (the run was killed): keep what is intact.
                    Err(_) => break,
                }
            }
        }
        w.finish()?;
        let to = snapshot::dir_for_trace(&trace);
        std::fs::create_dir_all(&to).map_err(FileError::on("creating", &to))?;
        for id in self.segments.iter().map(|s| s.0).chain(self.failure_point) {
            let from = snapshot::snapshot_dir(self.cp.root(), id);
            std::fs::rename(&from, snapshot::snapshot_dir(&to, id))
                .map_err(FileError::on("moving", &from))?;
        }
        Ok(trace)
    }

    /// Assembles the kept recording (see [`Self::assemble`]) in a staging directory and
    /// packs it into the bundle `out`.
    ///
    /// # Errors
    /// Assembling or packing failed.
    pub fn write_bundle(&self, out: &Path) -> Result<vmrr_format::bundle::Manifest, FlightError> {
        let trace = self.assemble(&self.dir.join("staging"))?;
        let chains = snapshot::ChainCheck::new(u64::MAX);
        let opts = vmrr_format::bundle::PackOptions {
            check: &|dir| chains.check(dir),
            guest_file: None,
            initrd_file: None,
            identity: Some(&crate::guests::linux::check_identity_boxed),
            // The recorder's own output, written again at each trigger.
            replace: true,
        };
        Ok(vmrr_format::bundle::pack(&trace, out, &opts)?)
    }

    /// The flight directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl ExitHook for FlightRecorder {
    fn after_exit(&mut self, m: &mut Machine, exits: u64) -> Result<(), RunError> {
        self.cp.poll(m).map_err(|e| RunError::Hook {
            hook: "flight recorder",
            exit: exits,
            source: Box::new(e),
        })?;
        if self.cp.due(exits) {
            self.rotate(m).map_err(|e| RunError::Hook {
                hook: "flight recorder",
                exit: exits,
                source: Box::new(e),
            })?;
        }
        Ok(())
    }
}

//! One recording of vmrr's own machine from start to close: the mirror of
//! `vmrr_replay::replay`, and the one place its lifecycle is written. `vmrr record` (with
//! or without the flight recorder) and `vmrr bench` record through it.
//!
//! 1. [`Runner::start`]: the trace's prelude (how to rebuild the run, where it ran, the
//!    guest's CPUID), the snapshots kept beside it ([`Snapshots`]), and the first
//!    checkpoint.
//! 2. [`Runner::run`]: the machine's run loop, checkpoints taken as their policy says.
//! 3. [`Runner::finish`]: the checkpoint in flight made durable, the failure-point snapshot
//!    of a run that ended in a failure, the end-of-run record, the trace's index and
//!    trailer.
//!
//! When vmrr itself cannot go on (a full disk, a failed ioctl) the trace is closed with an
//! end record naming why ([`RecordError`] says how it was left), so what was recorded stays
//! readable. An embedded recording (`crate::embed`) takes its snapshots through the same
//! [`Checkpointer`] and capture, and writes the same prelude and end record; its VMM runs
//! the loop.

use std::path::PathBuf;

use vmrr_format::{TraceWriter, WriterSummary, end_reason};

use crate::checkpoint::flight::{FlightRecorder, FlightSettings};
use crate::checkpoint::{CaptureMode, Checkpointer, Policy};
use crate::machine::queue_device::QueueDeviceError;
use crate::machine::{ExitHook, Machine, RunError, RunSummary};
use crate::record::{RecorderError, Recording};
use crate::session::SessionConfig;

/// What a recording keeps besides its trace.
#[derive(Debug, Clone)]
pub enum Snapshots {
    /// Nothing: the trace alone (replay rebuilds the guest from its description).
    None,
    /// Checkpoints in `root` (normally `<trace>.snapshots/`), the first before the first
    /// exit, then as `policy` says, captured as `capture` says.
    Checkpoints {
        /// The snapshot directory.
        root: PathBuf,
        /// When to take checkpoints after the first.
        policy: Policy,
        /// How they capture memory.
        capture: CaptureMode,
    },
    /// The flight recorder in `dir`: only the last checkpoints and the trace segments since
    /// the oldest of them (the writer handed to [`Runner::start`] writes the prologue,
    /// `FlightRecorder::prologue_path(dir)`).
    Flight {
        /// The flight directory.
        dir: PathBuf,
        /// What it keeps and how.
        settings: FlightSettings,
    },
}

/// Who takes the checkpoints.
#[derive(Debug)]
enum Keeper {
    None,
    Checkpoints(Box<Checkpointer>),
    Flight(Box<FlightRecorder>),
}

/// What became of the trace when a recording failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Nothing was being recorded.
    NotRecording,
    /// The trace was closed with an end record saying why (`reason`, a
    /// `vmrr_format::end_reason`), after `exits` exits; it holds `records` records.
    Closed {
        /// Exits recorded.
        exits: u64,
        /// Records in the trace.
        records: u64,
        /// The end record's reason.
        reason: u32,
    },
    /// The trace could not take the end record: its writer sealed it at the last complete
    /// chunk, after `exits` exits.
    Sealed {
        /// Exits recorded.
        exits: u64,
    },
}

/// A recording that could not start, or that vmrr could not continue.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The recorder could not attach, or the trace's prelude could not be written: nothing
    /// was recorded.
    #[error(transparent)]
    Start(#[from] RecorderError),
    /// The recording stopped because `error` failed; `closed` says what became of the
    /// trace.
    #[error("{error}")]
    Stopped {
        /// What failed.
        #[source]
        error: RunError,
        /// What became of the trace.
        closed: Closed,
    },
}

/// What a recording that ran to its end left.
#[derive(Debug)]
pub struct Finished {
    /// How the run ended.
    pub summary: RunSummary,
    /// The finished trace, when recording.
    pub trace: Option<WriterSummary>,
    /// The checkpoints taken (with the flight recorder, its own checkpointer's).
    pub checkpoints: Option<Checkpointer>,
    /// The flight recorder, when it kept the recording (to write its bundle).
    pub flight: Option<Box<FlightRecorder>>,
    /// The machine, as the run left it.
    pub machine: Machine,
}

/// A recording of vmrr's machine in progress (see the module docs).
#[derive(Debug)]
pub struct Runner {
    machine: Machine,
    keeper: Keeper,
}

impl Runner {
    /// A run of `machine` that records nothing (the baseline `vmrr bench` compares with).
    pub fn plain(machine: Machine) -> Self {
        Runner { machine, keeper: Keeper::None }
    }

    /// Starts recording `machine`, built from `cfg`, into `writer`: the prelude, then the
    /// first checkpoint `snapshots` asks for. When background capture was asked for and
    /// this host cannot do it, checkpoints stop the guest and the trace says why
    /// (`checkpoint.capture_note`, also [`Self::capture_note`]).
    ///
    /// # Errors
    /// The recorder cannot attach, or the prelude or first checkpoint cannot be written;
    /// the trace is then closed.
    pub fn start(
        mut machine: Machine,
        cfg: &SessionConfig,
        writer: TraceWriter,
        snapshots: Snapshots,
    ) -> Result<Self, RecordError> {
        let recording = cfg.start_recording(&mut machine, writer)?;
        let mut r = Runner { machine, keeper: Keeper::None };
        r.keeper = match r.keep(snapshots, recording) {
            Ok(k) => k,
            Err(error) => return Err(r.close(error)),
        };
        Ok(r)
    }

    /// The snapshot keeping `snapshots` asks for, with its first checkpoint taken.
    fn keep(&mut self, snapshots: Snapshots, recording: Recording) -> Result<Keeper, RunError> {
        let m = &mut self.machine;
        match snapshots {
            Snapshots::None => Ok(Keeper::None),
            Snapshots::Checkpoints { root, policy, capture } => {
                let mut cp = Checkpointer::new(root, policy, recording.trace_id, recording.annotations)
                    .with_capture(capture);
                if let (Some(note), Some(rec)) = (cp.capture_note(), m.recorder_mut()) {
                    // The trace says how its checkpoints were taken, and why. A trace that
                    // cannot take it fails the first checkpoint's record just after.
                    let _ = rec.annotate("checkpoint.capture_note", note);
                }
                cp.checkpoint(m).map_err(|e| hook("initial snapshot", 0, e))?;
                Ok(Keeper::Checkpoints(Box::new(cp)))
            }
            Snapshots::Flight { dir, settings } => {
                let fr = FlightRecorder::start(m, dir, settings, &recording)
                    .map_err(|e| hook("flight recorder", 0, e))?;
                Ok(Keeper::Flight(Box::new(fr)))
            }
        }
    }

    /// Why checkpoints stop the guest although background capture was asked for, if so.
    pub fn capture_note(&self) -> Option<&str> {
        self.checkpointer().and_then(Checkpointer::capture_note)
    }

    /// The checkpoints taken so far (the flight recorder's included).
    pub fn checkpointer(&self) -> Option<&Checkpointer> {
        match &self.keeper {
            Keeper::None => None,
            Keeper::Checkpoints(cp) => Some(cp.as_ref()),
            Keeper::Flight(fr) => Some(fr.checkpointer()),
        }
    }

    /// The machine.
    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// Runs the machine to its end (see [`Machine::run`]), taking checkpoints as their
    /// policy says.
    ///
    /// # Errors
    /// As for [`Self::run_with`].
    pub fn run(&mut self) -> Result<RunSummary, RecordError> {
        self.run_with(None)
    }

    /// As [`Self::run`], with `also` called after every exit, after the checkpoints.
    ///
    /// # Errors
    /// KVM, the trace, a checkpoint or `also` failed; the trace is then closed.
    pub fn run_with(&mut self, also: Option<&mut dyn ExitHook>) -> Result<RunSummary, RecordError> {
        let keeper: Option<&mut dyn ExitHook> = match &mut self.keeper {
            Keeper::None => None,
            Keeper::Checkpoints(cp) => Some(cp.as_mut()),
            Keeper::Flight(fr) => Some(fr.as_mut()),
        };
        let run = match (keeper, also) {
            (Some(k), Some(a)) => self.machine.run_with(Some(&mut Both(k, a))),
            (Some(h), None) | (None, Some(h)) => self.machine.run_with(Some(h)),
            (None, None) => self.machine.run(),
        };
        run.map_err(|e| self.close(e))
    }

    /// Ends the recording after a run that ended as `summary` says: the checkpoint in
    /// flight made durable, the failure-point snapshot when the run ended in a failure
    /// (the vCPU as KVM reported it at the failing exit), the end record, the trace
    /// finished.
    ///
    /// # Errors
    /// A snapshot or the trace could not be written; the trace is then closed.
    pub fn finish(mut self, summary: RunSummary) -> Result<Finished, RecordError> {
        let exits = summary.exits;
        if let Err(e) = self.annotate_failure(&summary) {
            return Err(self.close(RunError::Trace(e)));
        }
        let kept = match &mut self.keeper {
            Keeper::None => Ok(()),
            Keeper::Checkpoints(cp) => cp
                .finish(&mut self.machine)
                .map_err(|e| hook("checkpoint", exits, e))
                .and_then(|_| {
                    cp.failure_point(&mut self.machine, &summary.outcome)
                        .map_err(|e| hook("failure-point snapshot", exits, e))
                })
                .map(|_| ()),
            Keeper::Flight(fr) => {
                fr.finish(&mut self.machine).map_err(|e| hook("flight recorder", exits, e)).and_then(|()| {
                    fr.failure_point(&mut self.machine, &summary.outcome)
                        .map_err(|e| hook("failure-point snapshot", exits, e))
                })
            }
        };
        if let Err(e) = kept {
            return Err(self.close(e));
        }
        let trace = match self.machine.stop_recording() {
            Some(rec) => {
                Some(rec.finish(summary.outcome.end_reason(), summary.outcome.status()).map_err(|e| {
                    RecordError::Stopped { error: RunError::Trace(e), closed: Closed::Sealed { exits } }
                })?)
            }
            None => None,
        };
        let (checkpoints, flight) = match self.keeper {
            Keeper::None => (None, None),
            Keeper::Checkpoints(cp) => (Some(*cp), None),
            Keeper::Flight(fr) => (None, Some(fr)),
        };
        Ok(Finished { summary, trace, checkpoints, flight, machine: self.machine })
    }

    /// Says which vCPU failed and which record is its failing exit, on a machine with
    /// several vCPUs (`failure.vcpu`, `failure.seq`; REPLAY.md): replay runs that vCPU from
    /// the failure point and compares it with that record.
    fn annotate_failure(&mut self, summary: &RunSummary) -> Result<(), vmrr_format::WriteError> {
        let Some(report) = summary.outcome.report() else { return Ok(()) };
        if self.machine.vcpu_count() < 2 {
            return Ok(());
        }
        let (vcpu, seq) = (report.vcpu.to_string(), report.seq.map(|s| s.to_string()));
        if let Some(rec) = self.machine.recorder_mut() {
            rec.annotate("failure.vcpu", &vcpu)?;
            if let Some(seq) = seq {
                rec.annotate("failure.seq", &seq)?;
            }
        }
        Ok(())
    }

    /// Closes the trace after `error`: an end record saying vmrr's output failed
    /// (`OUTPUT_ERROR`: the trace, a snapshot, a device's output) or vmrr itself did
    /// (`VMM_ERROR`: KVM, the OS), then the index and trailer; or, when the trace cannot
    /// take them, its writer has sealed it at the last complete chunk.
    fn close(&mut self, error: RunError) -> RecordError {
        let reason = match &error {
            RunError::Trace(_) | RunError::Hook { .. } | RunError::Output(_) => end_reason::OUTPUT_ERROR,
            RunError::Device(QueueDeviceError::Events(_)) => end_reason::OUTPUT_ERROR,
            RunError::Kvm(_) | RunError::Os { .. } | RunError::Answer(_) | RunError::Device(_) => {
                end_reason::VMM_ERROR
            }
        };
        let closed = match self.machine.stop_recording() {
            None => Closed::NotRecording,
            Some(rec) => {
                let exits = rec.exits();
                match rec.finish(reason, 0) {
                    Ok(t) => Closed::Closed { exits, records: t.records, reason },
                    Err(_) => Closed::Sealed { exits },
                }
            }
        };
        RecordError::Stopped { error, closed }
    }
}

fn hook(what: &'static str, exit: u64, e: impl std::error::Error + Send + Sync + 'static) -> RunError {
    RunError::Hook { hook: what, exit, source: Box::new(e) }
}

/// The checkpoint keeper's hook, then the caller's.
struct Both<'a>(&'a mut dyn ExitHook, &'a mut dyn ExitHook);

impl ExitHook for Both<'_> {
    fn after_exit(&mut self, machine: &mut Machine, exits: u64) -> Result<(), RunError> {
        self.0.after_exit(machine, exits)?;
        self.1.after_exit(machine, exits)
    }
}

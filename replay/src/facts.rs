//! One pass over a trace before replaying it: how to rebuild the machine, the CPUID the
//! guest saw, where the checkpoints are, how the run ended, and what the guest printed.

use std::path::Path;

use vmrr_engine::devices::console::Console;
use vmrr_engine::devices::serial::Serial;
use vmrr_engine::devices::{Clock, Device, DeviceCtx, Interrupts};
use vmrr_format::{Body, CpuidEntry, Direction, EndOfRun, ReadError, TraceReader, end_reason, kind};

use crate::error::ReplayError;

/// A checkpoint record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointMark {
    /// The checkpoint record's own sequence number.
    pub record_seq: u64,
    /// Snapshot id.
    pub snapshot_id: u64,
    /// Exits before it.
    pub exits: u64,
}

/// What a trace says about its run.
#[derive(Debug, Clone)]
pub struct TraceFacts {
    /// The trace's id.
    pub trace_id: [u8; 16],
    /// Annotations, in order.
    pub annotations: Vec<(String, String)>,
    /// The CPUID set the guest saw.
    pub cpuid: Vec<CpuidEntry>,
    /// Checkpoints, in order.
    pub checkpoints: Vec<CheckpointMark>,
    /// The end-of-run record and its sequence number.
    pub end: Option<(u64, EndOfRun)>,
    /// Exit records.
    pub exits: u64,
    /// Records.
    pub records: u64,
    /// What the guest printed on the serial console while recording.
    pub serial: Vec<u8>,
    /// `(seq, bytes printed up to and including that record)` for each serial write.
    pub serial_marks: Vec<(u64, usize)>,
    /// The file has no index (its writer did not finish); it was read by scanning.
    pub unfinished: bool,
}

impl TraceFacts {
    /// The value of annotation `key` (the last one).
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Bytes the guest had printed before record `seq`.
    pub fn serial_before(&self, seq: u64) -> usize {
        let i = self.serial_marks.partition_point(|(s, _)| *s < seq);
        i.checked_sub(1).and_then(|j| self.serial_marks.get(j)).map_or(0, |(_, n)| *n)
    }

    /// True when the recorded run ended in a failure a repro is for.
    pub fn ended_in_failure(&self) -> bool {
        self.end.is_some_and(|(_, e)| {
            matches!(
                e.reason,
                end_reason::EMULATION_FAILURE
                    | end_reason::INTERNAL_ERROR
                    | end_reason::SHUTDOWN
                    | end_reason::FAIL_ENTRY
            )
        })
    }
}

/// Most serial output kept for comparison.
const MAX_SERIAL: usize = 64 << 20;

/// Reads the whole trace once.
///
/// # Errors
/// The trace is unreadable, or damaged other than a torn tail (which a killed writer
/// leaves and which loses only what was never complete).
pub fn scan(path: &Path) -> Result<TraceFacts, ReplayError> {
    let mut r = TraceReader::open(path)?;
    if let Some(e) = r.index_damage().filter(|e| !e.could_be_torn_write()) {
        // A checksummed trailer or index that makes impossible claims was written that
        // way: refuse the file rather than guess. (A torn index is read around.)
        return Err(ReadError::Invalid { path: r.name().to_string(), error: e.clone() }.into());
    }
    let mut f = TraceFacts {
        trace_id: r.header().trace_id,
        annotations: Vec::new(),
        cpuid: Vec::new(),
        checkpoints: Vec::new(),
        end: None,
        exits: 0,
        records: 0,
        serial: Vec::new(),
        serial_marks: Vec::new(),
        unfinished: r.index().is_none(),
    };
    let console = Console::capture_only();
    let mut uart = Serial::new(console.clone());
    let (mut irq, mut stop, clock) = (Interrupts::default(), None, Clock::default());
    let mut last: Option<u64> = None;
    while let Some(item) = r.next_record() {
        let rec = match item {
            Ok(rec) => rec,
            Err(e @ ReadError::Invalid { .. }) => {
                // Damage in the middle (a later record exists) is fatal for replay, and so
                // is damage no crash can cause (see `could_be_torn_write`); a torn tail
                // (nothing readable after it) is what a killed writer leaves.
                if e.decode_error().is_some_and(|d| !d.could_be_torn_write()) {
                    return Err(e.into());
                }
                let msg = e.to_string();
                if r.next_record().is_some() {
                    return Err(ReplayError::Unreplayable(format!(
                        "trace is damaged in the middle ({msg}); `vmrr verify` shows what is readable"
                    )));
                }
                f.unfinished = true;
                break;
            }
            Err(e) => return Err(e.into()),
        };
        f.records += 1;
        if let Some(p) = last {
            // A flight recording keeps its prologue and the trace from its oldest kept
            // checkpoint: a gap is allowed only right before a checkpoint record.
            if rec.seq != p + 1 && !matches!(rec.body, Body::Checkpoint(_)) {
                return Err(ReplayError::Unreplayable(format!(
                    "records {}..{} are missing",
                    p + 1,
                    rec.seq - 1
                )));
            }
        }
        last = Some(rec.seq);
        if kind::is_exit(rec.body.kind()) {
            f.exits += 1;
        }
        match rec.body {
            Body::Annotation(a) => f.annotations.push((a.key.to_string(), a.value.to_string())),
            Body::Cpuid(c) => f.cpuid = c.iter().collect(),
            Body::Checkpoint(c) => f.checkpoints.push(CheckpointMark {
                record_seq: rec.seq,
                snapshot_id: c.snapshot_id,
                exits: c.exits,
            }),
            Body::EndOfRun(e) => f.end = Some((rec.seq, e)),
            Body::Io(io)
                if io.direction == Direction::Out
                    && (0x3f8..0x400).contains(&io.port)
                    && console.total() < MAX_SERIAL as u64 =>
            {
                let mut ctx = DeviceCtx { irq: &mut irq, stop: &mut stop, clock: &clock };
                uart.write(u64::from(io.port - 0x3f8), io.data, &mut ctx);
                f.serial_marks.push((rec.seq, usize::try_from(console.total()).unwrap_or(usize::MAX)));
            }
            _ => {}
        }
    }
    f.serial = console.captured();
    Ok(f)
}

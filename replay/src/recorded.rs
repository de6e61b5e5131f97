//! The trace as replay consumes it: a stream of what was recorded (exits to reproduce,
//! interrupts and window changes to apply, checkpoints, the end), each owned so the reader
//! can move on, with push-back for look-ahead.

use std::collections::VecDeque;

use vmrr_format::{Body, EndOfRun, RecordBuf, TraceReader};

use crate::error::ReplayError;

/// One thing the trace recorded that replay acts on.
#[derive(Debug, Clone)]
pub enum Recorded {
    /// The guest's next exit must be this one.
    Exit(RecordBuf),
    /// Inject this vector before re-entry.
    Interrupt {
        /// Record sequence number.
        seq: u64,
        /// The interrupt vector.
        vector: u8,
    },
    /// Set or withdraw the interrupt-window request.
    Window {
        /// Record sequence number.
        seq: u64,
        /// The request.
        request: bool,
    },
    /// Change this line of KVM's in-kernel irqchip before re-entry (format 1.2).
    IrqLine {
        /// Record sequence number.
        seq: u64,
        /// The line (GSI).
        gsi: u32,
        /// `IRQ_LEVEL_LOW`, `IRQ_LEVEL_HIGH` or `IRQ_LEVEL_PULSE`.
        level: u32,
    },
    /// Write these bytes into guest memory before re-entry (what a device of the recording
    /// VMM wrote there).
    GuestWrite {
        /// Record sequence number.
        seq: u64,
        /// Guest physical address.
        gpa: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// A checkpoint was taken here.
    Checkpoint {
        /// Record sequence number.
        seq: u64,
        /// Snapshot id.
        id: u64,
    },
    /// The run ended.
    End {
        /// Record sequence number.
        seq: u64,
        /// The record.
        end: EndOfRun,
    },
}

impl Recorded {
    /// The record's sequence number.
    pub fn seq(&self) -> u64 {
        match self {
            Recorded::Exit(e) => e.seq(),
            Recorded::Interrupt { seq, .. }
            | Recorded::Window { seq, .. }
            | Recorded::IrqLine { seq, .. }
            | Recorded::GuestWrite { seq, .. }
            | Recorded::Checkpoint { seq, .. }
            | Recorded::End { seq, .. } => *seq,
        }
    }
}

/// The records of a trace, from a position on.
pub struct RecordStream {
    reader: TraceReader,
    back: VecDeque<Recorded>,
}

impl RecordStream {
    /// Records of `reader`, from its current position.
    pub fn new(reader: TraceReader) -> Self {
        RecordStream { reader, back: VecDeque::new() }
    }

    /// The trace's name.
    pub fn trace_name(&self) -> &str {
        self.reader.name()
    }

    /// The next thing to act on, skipping annotations, CPUID records and unknown events.
    ///
    /// # Errors
    /// Damage or I/O errors.
    pub fn next_recorded(&mut self) -> Result<Option<Recorded>, ReplayError> {
        if let Some(i) = self.back.pop_front() {
            return Ok(Some(i));
        }
        loop {
            let Some(r) = self.reader.next_record_raw() else { return Ok(None) };
            let (rec, raw) = r?;
            let seq = rec.seq;
            let item = match rec.body {
                Body::Interrupt(i) => {
                    let refuse = |field, value, why| ReplayError::UndefinedValue {
                        trace: self.reader.name().to_string(),
                        seq,
                        field,
                        value,
                        why,
                    };
                    // vmrr injects external interrupts only (`KVM_INTERRUPT`); an NMI or a
                    // source a newer writer defined is refused, not replayed as another.
                    match i.source {
                        vmrr_format::INTERRUPT_EXTERNAL => {}
                        vmrr_format::INTERRUPT_NMI => {
                            return Err(refuse(
                                "interrupt source",
                                1,
                                "an NMI; this replayer injects external interrupts only",
                            ));
                        }
                        s => {
                            return Err(refuse(
                                "interrupt source",
                                u64::from(s),
                                "not defined by trace format 1.0",
                            ));
                        }
                    }
                    let vector = u8::try_from(i.vector).map_err(|_| {
                        refuse("interrupt vector", u64::from(i.vector), "x86 vectors are 0..=255")
                    })?;
                    Recorded::Interrupt { seq, vector }
                }
                Body::InterruptWindow(w) => Recorded::Window { seq, request: w.request != 0 },
                // Format 1.2's irqchip line changes, applied as recorded; a level or a way
                // in this replayer does not define is refused rather than guessed.
                Body::IrqLine(l) => {
                    let undefined = |field, value: u32, why| ReplayError::UndefinedValue {
                        trace: self.reader.name().to_string(),
                        seq,
                        field,
                        value: u64::from(value),
                        why,
                    };
                    if l.level > vmrr_format::IRQ_LEVEL_PULSE {
                        return Err(undefined("irq_line level", l.level, "not a level this replayer knows"));
                    }
                    if l.via > vmrr_format::IRQ_VIA_IRQFD {
                        return Err(undefined("irq_line via", l.via, "not a way this replayer knows"));
                    }
                    Recorded::IrqLine { seq, gsi: l.gsi, level: l.level }
                }
                Body::GuestWrite(g) => Recorded::GuestWrite { seq, gpa: g.gpa, data: g.data.to_vec() },
                Body::Checkpoint(c) => Recorded::Checkpoint { seq, id: c.snapshot_id },
                Body::EndOfRun(end) => Recorded::End { seq, end },
                ref b if b.is_exit() => Recorded::Exit(RecordBuf::from_raw(raw, seq)),
                _ => continue,
            };
            return Ok(Some(item));
        }
    }

    /// Puts `item` back to be returned next.
    pub fn push_front(&mut self, item: Recorded) {
        self.back.push_front(item);
    }

    /// Positions at the first record with sequence number `>= seq`.
    ///
    /// # Errors
    /// I/O errors.
    pub fn seek(&mut self, seq: u64) -> Result<(), ReplayError> {
        self.back.clear();
        self.reader.seek_seq(seq)?;
        Ok(())
    }

    /// Reads records `seqs` again (for reports), as `vmrr inspect --json` prints them.
    /// The stream's position is lost: call it when replay is over.
    pub fn records_json(&mut self, seqs: &[u64]) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for &s in seqs {
            if self.reader.seek_seq(s).is_err() {
                continue;
            }
            if let Some(Ok(rec)) = self.reader.next_record() {
                if rec.seq == s {
                    out.push(vmrr_format::describe::record_json(&rec));
                }
            }
        }
        out
    }
}

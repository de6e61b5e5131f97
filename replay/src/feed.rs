//! The trace as a stream of owned items replay acts on.

use std::collections::VecDeque;

use vmrr_format::{Body, EndOfRun, ReadError, TraceReader};

use crate::error::ReplayError;
use crate::expect::{Expected, Shape};

/// One thing replay must do next.
#[derive(Debug, Clone)]
pub enum Item {
    /// The guest's next exit must be this.
    Exit(Expected),
    /// Inject this vector before re-entry.
    Interrupt {
        /// Record sequence number.
        seq: u64,
        /// Vector.
        vector: u8,
    },
    /// Set or withdraw the interrupt-window request.
    Window {
        /// Record sequence number.
        seq: u64,
        /// The request.
        request: bool,
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

impl Item {
    /// The record's sequence number.
    pub fn seq(&self) -> u64 {
        match self {
            Item::Exit(e) => e.seq,
            Item::Interrupt { seq, .. }
            | Item::Window { seq, .. }
            | Item::Checkpoint { seq, .. }
            | Item::End { seq, .. } => *seq,
        }
    }
}

/// Reads items from a trace, with push-back for look-ahead.
pub struct Feed {
    reader: TraceReader,
    back: VecDeque<Item>,
}

impl Feed {
    /// Items of `reader`, from its current position.
    pub fn new(reader: TraceReader) -> Self {
        Feed { reader, back: VecDeque::new() }
    }

    /// The next item, skipping annotations, CPUID records and unknown events.
    ///
    /// # Errors
    /// Damage or I/O errors.
    pub fn next_item(&mut self) -> Result<Option<Item>, ReplayError> {
        if let Some(i) = self.back.pop_front() {
            return Ok(Some(i));
        }
        loop {
            let Some(r) = self.reader.next_record() else { return Ok(None) };
            let rec = match r {
                Ok(rec) => rec,
                Err(e @ ReadError::Invalid { .. }) => return Err(e.into()),
                Err(e) => return Err(e.into()),
            };
            let seq = rec.seq;
            let item = match rec.body {
                Body::Interrupt(i) => {
                    Item::Interrupt { seq, vector: u8::try_from(i.vector & 0xff).unwrap_or(0) }
                }
                Body::InterruptWindow(w) => Item::Window { seq, request: w.request != 0 },
                Body::Checkpoint(c) => Item::Checkpoint { seq, id: c.snapshot_id },
                Body::EndOfRun(end) => Item::End { seq, end },
                ref b => match Shape::of(b) {
                    Some(shape) => Item::Exit(Expected { seq, shape, regs: rec.regs }),
                    None => continue,
                },
            };
            return Ok(Some(item));
        }
    }

    /// Puts `item` back to be returned next.
    pub fn push_front(&mut self, item: Item) {
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

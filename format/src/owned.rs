//! A record that owns its bytes: what a reader hands on when it must move past the chunk a
//! record was decoded from (replay keeps the exit it waits for, and a few before it for
//! reports). It keeps the record encoded, as the format stores it, and decodes it on
//! demand: no second model of a record exists.

use crate::{Record, WriteError, decode, encode};

/// One record, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordBuf {
    bytes: Vec<u8>,
    seq: u64,
}

impl RecordBuf {
    /// Copies `rec`.
    ///
    /// # Errors
    /// The record cannot be encoded (a record read from a trace always can).
    pub fn new(rec: &Record<'_>) -> Result<Self, WriteError> {
        let mut bytes = Vec::new();
        encode(rec, &mut bytes)?;
        Ok(RecordBuf { bytes, seq: rec.seq })
    }

    /// Copies a record's bytes as a reader hands them over with it
    /// (`TraceReader::next_record_raw`): cheaper than encoding it again. `seq` is the
    /// record's sequence number (a chunk may store it as a delta).
    pub fn from_raw(raw: &[u8], seq: u64) -> Self {
        RecordBuf { bytes: raw.to_vec(), seq }
    }

    /// The record's sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The record.
    pub fn record(&self) -> Record<'_> {
        // The bytes were written by `encode` (`new`, and what `encode` writes `decode`
        // reads: the round trip is tested and fuzzed) or already decoded once by a reader
        // (`from_raw`).
        let mut rec = decode(&self.bytes).map(|(r, _)| r).expect("a record RecordBuf holds decodes");
        rec.seq = self.seq;
        rec
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Body, Direction, Io, RegsSample};

    #[test]
    fn keeps_a_record() {
        let io = Io { direction: Direction::In, size: 1, port: 0x3f8, count: 2, data: b"ab" };
        let regs = RegsSample { rip: 1, rsp: 2, rflags: 3, flags: 0 };
        let rec = Record::new(7, 0, Body::Io(io)).with_regs(regs);
        let buf = RecordBuf::new(&rec).unwrap();
        assert_eq!(buf.seq(), 7);
        assert_eq!(buf.record(), rec);
        let mut raw = Vec::new();
        crate::encode(&rec, &mut raw).unwrap();
        assert_eq!(RecordBuf::from_raw(&raw, 7), buf);
    }
}

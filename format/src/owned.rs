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

    /// The record's sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The record.
    pub fn record(&self) -> Record<'_> {
        // `new` wrote these bytes with `encode`, and what `encode` writes `decode` reads
        // (the round trip is tested and fuzzed).
        decode(&self.bytes).map(|(r, _)| r).expect("a record encoded by RecordBuf::new decodes")
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
    }
}

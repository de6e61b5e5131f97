//! The chunk index at the end of a finished trace, and the trailer that locates it.
//!
//! Index block:
//!
//! | off | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `"VIDX"` |
//! | 4 | 2 | `entry_size` (32 in this version; at least 32, multiple of 8) |
//! | 6 | 2 | reserved, zero |
//! | 8 | 8 | `entry_count` |
//! | 16 | 8 | `record_count`: records in the whole trace |
//! | 24 | `entry_size` each | entries |
//! | end-8 | 4 | reserved, zero |
//! | end-4 | 4 | CRC32C of the block before it |
//!
//! Entry: `chunk_offset u64, first_seq u64, record_count u32, raw_size u32,
//! stored_size u32, reserved u32`.
//!
//! Trailer (the file's last 24 bytes): `index_offset u64, index_size u64,
//! crc32c u32` (of the 16 bytes before it), magic `"VEND"`.

use crate::bytes::{PutLe, all_zero, u64_from, usize_from};
use crate::checksum;
use crate::cursor::{u16_at, u32_at, u64_at};
use crate::error::{DecodeError, Reason};

/// Index magic.
pub const INDEX_MAGIC: [u8; 4] = *b"VIDX";
/// Trailer magic (the last four bytes of a finished file).
pub const TRAILER_MAGIC: [u8; 4] = *b"VEND";
/// Trailer size.
pub const TRAILER_SIZE: usize = 24;
/// Index entry size in this version.
pub const INDEX_ENTRY_SIZE: usize = 32;
/// Index header size.
pub const INDEX_HEADER_SIZE: usize = 24;
/// Largest index a reader loads (2^21 chunks, enough for terabyte traces).
pub const MAX_INDEX_SIZE: u64 = 64 << 20;

/// One index entry: where a chunk is and which records it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// File offset of the chunk header.
    pub chunk_offset: u64,
    /// First sequence number in the chunk.
    pub first_seq: u64,
    /// Records in the chunk.
    pub record_count: u32,
    /// Decompressed payload size.
    pub raw_size: u32,
    /// Stored payload size.
    pub stored_size: u32,
}

/// The decoded index.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Index {
    /// Entries in file order.
    pub entries: Vec<IndexEntry>,
    /// Records in the trace.
    pub record_count: u64,
}

/// The decoded trailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    /// File offset of the index block.
    pub index_offset: u64,
    /// Size of the index block.
    pub index_size: u64,
}

impl Index {
    /// Encodes the index block.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&INDEX_MAGIC);
        out.put_u16(u16::try_from(INDEX_ENTRY_SIZE).unwrap_or(0));
        out.put_u16(0);
        out.put_u64(u64_from(self.entries.len()));
        out.put_u64(self.record_count);
        for e in &self.entries {
            out.put_u64(e.chunk_offset);
            out.put_u64(e.first_seq);
            out.put_u32(e.record_count);
            out.put_u32(e.raw_size);
            out.put_u32(e.stored_size);
            out.put_u32(0);
        }
        out.put_u32(0);
        checksum::seal(out, start);
    }

    /// Decodes an index block found at file `offset` (where chunks end) in a file whose
    /// header is `header_size` bytes: every entry must point between the two, in increasing
    /// order. Entry bytes past the 32 this version knows belong to later versions and are
    /// ignored.
    ///
    /// # Errors
    /// Any structural problem, at its offset.
    pub fn decode(b: &[u8], offset: u64, header_size: u64) -> Result<Self, DecodeError> {
        let at = |o: usize| offset + u64_from(o);
        if b.len() < INDEX_HEADER_SIZE + 8 {
            return Err(DecodeError::at(
                offset,
                Reason::Truncated {
                    what: "index",
                    need: u64_from(INDEX_HEADER_SIZE + 8),
                    have: u64_from(b.len()),
                },
            ));
        }
        if b[..4] != INDEX_MAGIC {
            return Err(DecodeError::at(
                offset,
                Reason::BadMagic { what: "index", found: crate::describe::hex(&b[..4]) },
            ));
        }
        let crc_off = b.len() - 4;
        checksum::check(b, crc_off, "index", offset)?;
        let esize = usize::from(u16_at(b, 4).unwrap_or(0));
        if esize < INDEX_ENTRY_SIZE || esize % 8 != 0 {
            return Err(DecodeError::at(
                at(4),
                Reason::InvalidValue { field: "index entry_size", value: u64_from(esize) },
            ));
        }
        if !all_zero(&b[6..8]) || !all_zero(&b[crc_off - 4..crc_off]) {
            return Err(DecodeError::at(at(6), Reason::NonZeroPadding { what: "index reserved field" }));
        }
        let count = u64_at(b, 8).unwrap_or(0);
        let avail = u64_from(crc_off - 4 - INDEX_HEADER_SIZE);
        if count.checked_mul(u64_from(esize)) != Some(avail) {
            return Err(DecodeError::at(
                at(8),
                Reason::CountMismatch {
                    what: "index entry_count",
                    count,
                    unit: u32::from(u16_at(b, 4).unwrap_or(0)),
                    available: u32::try_from(avail).unwrap_or(u32::MAX),
                },
            ));
        }
        let record_count = u64_at(b, 16).unwrap_or(0);
        let body = &b[INDEX_HEADER_SIZE..crc_off - 4];
        let mut entries = Vec::with_capacity(body.len() / esize);
        let mut prev_end = header_size;
        let mut prev_seq: Option<u64> = None;
        let mut total = 0u64;
        for (i, e) in body.chunks_exact(esize).enumerate() {
            let eoff = INDEX_HEADER_SIZE + i * esize;
            if !all_zero(&e[28..32]) {
                return Err(DecodeError::at(
                    at(eoff + 28),
                    Reason::NonZeroPadding { what: "index entry reserved field" },
                ));
            }
            let entry = IndexEntry {
                chunk_offset: u64_at(e, 0).unwrap_or(0),
                first_seq: u64_at(e, 8).unwrap_or(0),
                record_count: u32_at(e, 16).unwrap_or(0),
                raw_size: u32_at(e, 20).unwrap_or(0),
                stored_size: u32_at(e, 24).unwrap_or(0),
            };
            if entry.chunk_offset < prev_end || entry.chunk_offset >= offset || entry.chunk_offset % 8 != 0 {
                return Err(DecodeError::at(
                    at(eoff),
                    Reason::InvalidValue { field: "index chunk_offset", value: entry.chunk_offset },
                ));
            }
            if prev_seq.is_some_and(|p| entry.first_seq <= p) {
                return Err(DecodeError::at(
                    at(eoff + 8),
                    Reason::SequenceOrder { previous: prev_seq.unwrap_or(0), found: entry.first_seq },
                ));
            }
            prev_seq = Some(entry.first_seq);
            prev_end = entry.chunk_offset + 40;
            total = total.saturating_add(u64::from(entry.record_count));
            entries.push(entry);
        }
        if total != record_count {
            return Err(DecodeError::at(
                at(16),
                Reason::ChunkMismatch { what: "index record_count", expected: record_count, found: total },
            ));
        }
        Ok(Index { entries, record_count })
    }

    /// Index of the entry holding `seq` (the last chunk whose `first_seq <= seq`).
    pub fn find(&self, seq: u64) -> Option<usize> {
        let i = self.entries.partition_point(|e| e.first_seq <= seq);
        i.checked_sub(1)
    }
}

impl Trailer {
    /// Encodes the trailer.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.put_u64(self.index_offset);
        out.put_u64(self.index_size);
        checksum::seal(out, start);
        out.extend_from_slice(&TRAILER_MAGIC);
    }

    /// Decodes the last [`TRAILER_SIZE`] bytes of a file of `file_len` bytes whose header is
    /// `header_size` bytes. `Ok(None)` when there is no trailer (a writer that died, or a
    /// torn one whose checksum fails): the caller then scans chunks instead. An error when
    /// a checksummed trailer makes an impossible claim (an index larger than
    /// [`MAX_INDEX_SIZE`], or one that does not end where the trailer starts).
    ///
    /// # Errors
    /// The impossible claim, located at the trailer.
    pub fn decode(b: &[u8], file_len: u64, header_size: u64) -> Result<Option<Self>, DecodeError> {
        if b.len() != TRAILER_SIZE || b[20..24] != TRAILER_MAGIC {
            return Ok(None);
        }
        if checksum::check(b, 16, "trailer", 0).is_err() {
            return Ok(None);
        }
        let at = file_len.saturating_sub(u64_from(TRAILER_SIZE));
        let t = Trailer { index_offset: u64_at(b, 0).unwrap_or(0), index_size: u64_at(b, 8).unwrap_or(0) };
        if t.index_size > MAX_INDEX_SIZE {
            return Err(DecodeError::at(
                at + 8,
                Reason::TooLarge { what: "trailer index_size", size: t.index_size, max: MAX_INDEX_SIZE },
            ));
        }
        let end = t.index_offset.checked_add(t.index_size);
        if t.index_offset < header_size || t.index_offset % 8 != 0 || end != Some(at) {
            return Err(DecodeError::at(
                at,
                Reason::InvalidValue {
                    field: "trailer index_offset (the index must end at the trailer)",
                    value: t.index_offset,
                },
            ));
        }
        Ok(Some(t))
    }

    /// Where chunk data ends according to a trailer that failed [`Self::decode`]: its
    /// `index_offset` when plausible, else the trailer's own offset.
    pub fn plausible_data_end(b: &[u8], file_len: u64, header_size: u64) -> u64 {
        let at = file_len.saturating_sub(u64_from(TRAILER_SIZE));
        match u64_at(b, 0) {
            Some(off) if off >= header_size && off <= at && off % 8 == 0 => off,
            _ => at,
        }
    }

    /// The index size as `usize` (bounded by [`MAX_INDEX_SIZE`]).
    pub fn index_len(&self) -> usize {
        usize_from(u32::try_from(self.index_size).unwrap_or(u32::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_entry() -> Index {
        let e =
            IndexEntry { chunk_offset: 104, first_seq: 0, record_count: 4, raw_size: 192, stored_size: 192 };
        Index { entries: vec![e], record_count: 4 }
    }

    #[test]
    fn round_trip_and_size_formula() {
        let ix = one_entry();
        let mut b = Vec::new();
        ix.encode(&mut b);
        // index_size = 24 + entry_size x entry_count + 8
        assert_eq!(b.len(), 24 + 32 + 8);
        assert_eq!(Index::decode(&b, 0x150, 104).expect("decodes"), ix);
    }

    #[test]
    fn entry_bytes_past_32_are_a_later_version_s_and_ignored() {
        let mut b = Vec::new();
        b.extend_from_slice(&INDEX_MAGIC);
        b.put_u16(40);
        b.put_u16(0);
        b.put_u64(1);
        b.put_u64(4);
        for v in [104u64, 0] {
            b.put_u64(v);
        }
        for v in [4u32, 192, 192, 0] {
            b.put_u32(v);
        }
        b.put_u64(0xdead_beef); // a later version's field
        b.put_u32(0);
        checksum::seal(&mut b, 0);
        assert_eq!(Index::decode(&b, 0x150, 104).expect("decodes"), one_entry());
    }

    #[test]
    fn a_count_that_does_not_fill_the_index_says_so() {
        let mut b = Vec::new();
        one_entry().encode(&mut b);
        // Eight more bytes of entries than entry_count x entry_size.
        b.truncate(b.len() - 8);
        b.extend_from_slice(&[0; 8]);
        b.put_u32(0);
        checksum::seal(&mut b, 0);
        let e = Index::decode(&b, 0x150, 104).expect_err("refused");
        assert_eq!(e.location.offset, 0x158);
        assert_eq!(
            e.reason.to_string(),
            "index entry_count 1 x 32 bytes fills 32 bytes, but 40 bytes of entries are there"
        );
    }
}

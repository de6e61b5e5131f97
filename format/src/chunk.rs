//! Chunks: groups of records, size-prefixed, checksummed, optionally zstd-compressed.
//!
//! | off | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `"VCHK"` |
//! | 4 | 2 | `header_size` (40 in this version; multiple of 8, at most 256) |
//! | 6 | 1 | `codec`: 0 none, 1 zstd |
//! | 7 | 1 | `flags`: bit 0 `SEQ_DELTA`; other bits zero |
//! | 8 | 4 | `stored_size`: payload bytes in the file |
//! | 12 | 4 | `raw_size`: payload bytes after decompression (at most 16 MiB) |
//! | 16 | 8 | `first_seq` |
//! | 24 | 4 | `record_count` |
//! | 28 | 4 | `payload_crc32c` over the stored payload |
//! | 32 | 4 | reserved, zero |
//! | 36 | 4 | `header_crc32c` over bytes `[0, header_size-4)` |
//!
//! The payload follows the header and is zero-padded to a multiple of 8.

use crate::bytes::{PutLe, all_zero, u64_from, usize_from};
use crate::checksum;
use crate::cursor::{u16_at, u32_at, u64_at};
use crate::decode::{self, RecordError};
use crate::error::{DecodeError, Location, Reason};
use crate::record::Record;

/// Chunk magic.
pub const CHUNK_MAGIC: [u8; 4] = *b"VCHK";
/// Chunk header size in this version.
pub const CHUNK_HEADER_SIZE: usize = 40;
/// Largest chunk header a reader accepts.
pub const MAX_CHUNK_HEADER_SIZE: usize = 256;
/// Largest decompressed payload a reader accepts (and a writer produces).
pub const MAX_CHUNK_RAW: u32 = 16 << 20;
/// Largest stored payload a reader accepts (zstd's worst-case bound of the raw maximum).
pub const MAX_CHUNK_STORED: u32 = MAX_CHUNK_RAW + (MAX_CHUNK_RAW >> 7) + (1 << 16);
/// Codec: stored as is.
pub const CODEC_NONE: u8 = 0;
/// Codec: one zstd frame.
pub const CODEC_ZSTD: u8 = 1;
/// Chunk flag: each record's `seq` field holds `seq - (first_seq + i)` (wrapping), where
/// `i` is the record's index in the chunk. Applied before compression, undone after.
pub const CHUNK_FLAG_SEQ_DELTA: u8 = 1;
/// Chunk flags this version knows.
pub const KNOWN_CHUNK_FLAGS: u8 = CHUNK_FLAG_SEQ_DELTA;

/// A decoded chunk header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    /// Header size (payload starts here).
    pub header_size: u16,
    /// [`CODEC_NONE`] or [`CODEC_ZSTD`].
    pub codec: u8,
    /// Payload bytes in the file.
    pub stored_size: u32,
    /// Payload bytes after decompression.
    pub raw_size: u32,
    /// Sequence number of the first record.
    pub first_seq: u64,
    /// Number of records.
    pub record_count: u32,
    /// CRC32C of the stored payload.
    pub payload_crc32c: u32,
    /// Chunk flags ([`CHUNK_FLAG_SEQ_DELTA`]).
    pub flags: u8,
}

impl ChunkHeader {
    /// Bytes from the chunk's start to the next chunk (header, payload, padding).
    pub fn total_size(&self) -> u64 {
        let end = u64::from(self.header_size) + u64::from(self.stored_size);
        (end + 7) & !7
    }

    /// Encodes this version's 40-byte header.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&CHUNK_MAGIC);
        out.put_u16(u16::try_from(CHUNK_HEADER_SIZE).unwrap_or(0));
        out.put_u8(self.codec);
        out.put_u8(self.flags);
        out.put_u32(self.stored_size);
        out.put_u32(self.raw_size);
        out.put_u64(self.first_seq);
        out.put_u32(self.record_count);
        out.put_u32(self.payload_crc32c);
        out.put_u32(0);
        checksum::seal(out, start);
    }

    /// How many header bytes to read, from the first 8 bytes at `offset`: validates the
    /// magic and the `header_size` bounds.
    ///
    /// # Errors
    /// Bad magic or an out-of-range header size.
    pub fn peek_size(prefix: &[u8], offset: u64) -> Result<usize, DecodeError> {
        if prefix.len() < 8 {
            return Err(DecodeError::at(
                offset,
                Reason::Truncated { what: "chunk header", need: 8, have: u64_from(prefix.len()) },
            ));
        }
        if prefix[..4] != CHUNK_MAGIC {
            return Err(DecodeError::at(
                offset,
                Reason::BadMagic { what: "chunk", found: crate::describe::hex(&prefix[..4]) },
            ));
        }
        let hs = usize::from(u16_at(prefix, 4).unwrap_or(0));
        if hs < CHUNK_HEADER_SIZE {
            return Err(DecodeError::at(
                offset + 4,
                Reason::TooSmall {
                    what: "chunk header_size",
                    size: u64_from(hs),
                    min: u64_from(CHUNK_HEADER_SIZE),
                },
            ));
        }
        if hs > MAX_CHUNK_HEADER_SIZE || hs % 8 != 0 {
            return Err(DecodeError::at(
                offset + 4,
                Reason::InvalidValue { field: "chunk header_size", value: u64_from(hs) },
            ));
        }
        Ok(hs)
    }

    /// Decodes and validates a chunk header found at file `offset`.
    ///
    /// # Errors
    /// A [`DecodeError`] at the offending field.
    pub fn decode(bytes: &[u8], offset: u64) -> Result<Self, DecodeError> {
        let h = Self::sealed(bytes, offset)?;
        let header = Self::fields(h);
        header.check_size(offset)?;
        header.check_rest(h, offset)?;
        Ok(header)
    }

    /// The size of the chunk at `offset` (header, payload and padding) when its header is
    /// sealed (magic, `header_size` and CRC check out) and its `stored_size` is within the
    /// format's limit, even if another field is invalid (unknown flag bits or codec, a
    /// non-zero reserved word): such a chunk is damage a reader skips by this size, which
    /// the checksum vouches for, rather than by scanning (FORMAT.md §8.4).
    pub fn sealed_size(bytes: &[u8], offset: u64) -> Option<u64> {
        let header = Self::fields(Self::sealed(bytes, offset).ok()?);
        header.check_size(offset).ok()?;
        Some(header.total_size())
    }

    /// The header's bytes once magic, `header_size` and the header CRC check out.
    fn sealed(bytes: &[u8], offset: u64) -> Result<&[u8], DecodeError> {
        let hs = Self::peek_size(bytes, offset)?;
        let Some(h) = bytes.get(..hs) else {
            return Err(DecodeError::at(
                offset,
                Reason::Truncated { what: "chunk header", need: u64_from(hs), have: u64_from(bytes.len()) },
            ));
        };
        checksum::check(h, hs - 4, "chunk header", offset)?;
        Ok(h)
    }

    /// The fields of a sealed header, unchecked.
    fn fields(h: &[u8]) -> Self {
        ChunkHeader {
            header_size: u16::try_from(h.len()).unwrap_or(u16::MAX),
            codec: h[6],
            stored_size: u32_at(h, 8).unwrap_or(0),
            raw_size: u32_at(h, 12).unwrap_or(0),
            first_seq: u64_at(h, 16).unwrap_or(0),
            record_count: u32_at(h, 24).unwrap_or(0),
            payload_crc32c: u32_at(h, 28).unwrap_or(0),
            flags: h[7],
        }
    }

    /// The stored size, which places the next chunk, within the format's limit.
    fn check_size(&self, offset: u64) -> Result<(), DecodeError> {
        if self.stored_size > MAX_CHUNK_STORED {
            return Err(DecodeError::at(
                offset + 8,
                Reason::TooLarge {
                    what: "chunk stored_size",
                    size: u64::from(self.stored_size),
                    max: u64::from(MAX_CHUNK_STORED),
                },
            ));
        }
        Ok(())
    }

    /// Every other field: flags, reserved word, codec, decoded size.
    fn check_rest(&self, h: &[u8], offset: u64) -> Result<(), DecodeError> {
        if self.flags & !KNOWN_CHUNK_FLAGS != 0 {
            return Err(DecodeError::at(
                offset + 7,
                Reason::InvalidValue { field: "chunk flags (unknown bits)", value: u64::from(self.flags) },
            ));
        }
        if !all_zero(&h[32..36]) {
            return Err(DecodeError::at(offset + 32, Reason::NonZeroPadding { what: "chunk reserved word" }));
        }
        if self.codec != CODEC_NONE && self.codec != CODEC_ZSTD {
            return Err(DecodeError::at(offset + 6, Reason::UnknownCodec { codec: self.codec }));
        }
        if self.raw_size > MAX_CHUNK_RAW {
            return Err(DecodeError::at(
                offset + 12,
                Reason::TooLarge {
                    what: "chunk raw_size",
                    size: u64::from(self.raw_size),
                    max: u64::from(MAX_CHUNK_RAW),
                },
            ));
        }
        if self.codec == CODEC_NONE && self.stored_size != self.raw_size {
            return Err(DecodeError::at(
                offset + 8,
                Reason::ChunkMismatch {
                    what: "stored_size of an uncompressed chunk",
                    expected: u64::from(self.raw_size),
                    found: u64::from(self.stored_size),
                },
            ));
        }
        Ok(())
    }
}

/// Checks the payload CRC and padding, and decompresses into `raw` (cleared first).
///
/// `stored` is the payload plus its padding, exactly `total_size - header_size` bytes.
/// Memory is bounded by `raw_size`, itself bounded by [`MAX_CHUNK_RAW`].
///
/// # Errors
/// A checksum mismatch, non-zero padding, or a decompression failure.
pub fn unpack_payload(
    header: &ChunkHeader,
    stored: &[u8],
    offset: u64,
    decompressor: &mut Option<zstd::bulk::Decompressor<'static>>,
    raw: &mut Vec<u8>,
) -> Result<(), DecodeError> {
    let payload_off = offset + u64::from(header.header_size);
    let n = usize_from(header.stored_size);
    let (payload, padding) = stored.split_at(n.min(stored.len()));
    if payload.len() < n {
        return Err(DecodeError::at(
            payload_off,
            Reason::Truncated {
                what: "chunk payload",
                need: u64::from(header.stored_size),
                have: u64_from(payload.len()),
            },
        ));
    }
    let computed = crc32c::crc32c(payload);
    if computed != header.payload_crc32c {
        return Err(DecodeError::at(
            payload_off,
            Reason::Checksum { what: "chunk payload", stored: header.payload_crc32c, computed },
        ));
    }
    if !all_zero(padding) {
        return Err(DecodeError::at(
            payload_off + u64_from(n),
            Reason::NonZeroPadding { what: "chunk padding" },
        ));
    }
    raw.clear();
    match header.codec {
        CODEC_NONE => raw.extend_from_slice(payload),
        _ => {
            let cap = usize_from(header.raw_size);
            raw.reserve(cap);
            let dec = match decompressor {
                Some(d) => d,
                None => decompressor.insert(zstd::bulk::Decompressor::new().map_err(|e| {
                    DecodeError::at(payload_off, Reason::Decompress { detail: e.to_string() })
                })?),
            };
            let got = dec
                .decompress_to_buffer(payload, raw)
                .map_err(|e| DecodeError::at(payload_off, Reason::Decompress { detail: e.to_string() }))?;
            if got != cap {
                return Err(DecodeError::at(
                    payload_off,
                    Reason::ChunkMismatch {
                        what: "decompressed size",
                        expected: u64::from(header.raw_size),
                        found: u64_from(got),
                    },
                ));
            }
        }
    }
    if header.flags & CHUNK_FLAG_SEQ_DELTA != 0 {
        seq_delta(raw, header.first_seq, false);
    }
    Ok(())
}

/// Applies (`encode`) or undoes the `SEQ_DELTA` transform in place. Walks records by their
/// size fields; stops at the first size that is not valid, leaving the rest for the decoder
/// to report.
pub fn seq_delta(raw: &mut [u8], first_seq: u64, encode: bool) {
    let mut pos = 0usize;
    let mut expect = first_seq;
    while let Some(hdr) = raw.get_mut(pos..pos + crate::record::RECORD_HEADER_SIZE) {
        let size = usize_from(u32_at(hdr, 0).unwrap_or(0));
        if size < crate::record::RECORD_HEADER_SIZE || size % 8 != 0 {
            return;
        }
        let stored = u64_at(hdr, 8).unwrap_or(0);
        let v = if encode { stored.wrapping_sub(expect) } else { stored.wrapping_add(expect) };
        hdr[8..16].copy_from_slice(&v.to_le_bytes());
        expect = expect.wrapping_add(1);
        match pos.checked_add(size) {
            Some(p) => pos = p,
            None => return,
        }
    }
}

/// Position inside a decompressed chunk payload, checking as it goes that sequence
/// numbers start at `first_seq` and increase, and that the count matches the header.
///
/// It holds no borrow of the payload, so a reader can keep it beside its own buffer.
#[derive(Debug, Clone)]
pub struct ChunkCursor {
    /// The chunk's header.
    pub header: ChunkHeader,
    /// File offset of the chunk.
    pub offset: u64,
    pos: usize,
    seen: u32,
    last_seq: Option<u64>,
    done: bool,
}

/// What [`ChunkCursor::step`] found at the cursor.
#[derive(Debug)]
pub enum Step {
    /// A record of this size starts at the cursor.
    Record(usize),
    /// The payload is exhausted and the count matched.
    End,
}

impl ChunkCursor {
    /// A cursor at the start of the payload of the chunk at file `offset`.
    pub fn new(header: ChunkHeader, offset: u64) -> Self {
        ChunkCursor { header, offset, pos: 0, seen: 0, last_seq: None, done: false }
    }

    /// Offset of the next record inside the payload.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// True once the payload is exhausted or an error ended it.
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn error(&mut self, at: usize, seq: Option<u64>, reason: Reason) -> DecodeError {
        self.done = true;
        DecodeError { location: Location::in_chunk(self.offset, u64_from(at), seq), reason }
    }

    /// Validates the record header at the cursor without decoding its body: its size,
    /// and its sequence number against the chunk header and the previous record.
    ///
    /// # Errors
    /// The first problem found; the cursor is then done.
    #[inline]
    pub fn step(&mut self, raw: &[u8]) -> Result<Step, DecodeError> {
        let at = self.pos;
        let Some(rest) = raw.get(at..).filter(|r| !r.is_empty()) else {
            self.done = true;
            if self.seen != self.header.record_count {
                return Err(self.error(
                    at,
                    None,
                    Reason::ChunkMismatch {
                        what: "record_count",
                        expected: u64::from(self.header.record_count),
                        found: u64::from(self.seen),
                    },
                ));
            }
            return Ok(Step::End);
        };
        let size = match decode::record_size(rest) {
            Ok(s) => s,
            Err(RecordError { offset, seq, reason }) => return Err(self.error(at + offset, seq, reason)),
        };
        let seq = crate::cursor::u64_at(rest, 8).unwrap_or(0);
        match self.last_seq {
            None if seq != self.header.first_seq => {
                return Err(self.error(
                    at + 8,
                    Some(seq),
                    Reason::ChunkMismatch { what: "first_seq", expected: self.header.first_seq, found: seq },
                ));
            }
            Some(prev) if seq <= prev => {
                return Err(self.error(
                    at + 8,
                    Some(seq),
                    Reason::SequenceOrder { previous: prev, found: seq },
                ));
            }
            _ => {}
        }
        Ok(Step::Record(size))
    }

    /// Sequence number of the record at the cursor (after a successful [`Self::step`]).
    pub fn peek_seq(&self, raw: &[u8]) -> Option<u64> {
        crate::cursor::u64_at(raw, self.pos.checked_add(8)?)
    }

    /// Moves past a record of `size` bytes whose header [`Self::step`] validated, without
    /// decoding its body.
    pub fn skip(&mut self, raw: &[u8], size: usize) {
        self.last_seq = self.peek_seq(raw);
        self.seen = self.seen.saturating_add(1);
        self.pos += size;
    }

    /// Decodes the record at the cursor (after [`Self::step`] returned its size) and moves
    /// past it.
    ///
    /// # Errors
    /// The record's decode error; the cursor is then done.
    #[inline]
    pub fn take<'a>(&mut self, raw: &'a [u8], size: usize) -> Result<(Record<'a>, &'a [u8]), DecodeError> {
        let at = self.pos;
        let bytes = raw.get(at..at + size).unwrap_or(&[]);
        match decode::decode(bytes) {
            Ok((rec, _)) => {
                self.last_seq = Some(rec.seq);
                self.seen = self.seen.saturating_add(1);
                self.pos += size;
                Ok((rec, bytes))
            }
            Err(RecordError { offset, seq, reason }) => Err(self.error(at + offset, seq, reason)),
        }
    }
}

/// Iterates over the records of a decompressed chunk payload (see [`ChunkCursor`]).
pub struct ChunkRecords<'a> {
    raw: &'a [u8],
    cursor: ChunkCursor,
}

impl<'a> ChunkRecords<'a> {
    /// Starts iterating `raw`, the payload of the chunk at file `offset`.
    pub fn new(raw: &'a [u8], header: ChunkHeader, offset: u64) -> Self {
        ChunkRecords { raw, cursor: ChunkCursor::new(header, offset) }
    }
}

impl<'a> Iterator for ChunkRecords<'a> {
    type Item = Result<(Record<'a>, &'a [u8]), DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.cursor.is_done() {
            return None;
        }
        match self.cursor.step(self.raw) {
            Ok(Step::End) => None,
            Ok(Step::Record(size)) => Some(self.cursor.take(self.raw, size)),
            Err(e) => Some(Err(e)),
        }
    }
}

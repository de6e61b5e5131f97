//! Trace reader: streaming iteration, seek by sequence number, and recovery from damage.
//!
//! The reader trusts nothing: the header is validated before anything else is read; every
//! size is checked against the format's maxima and the file's length before a buffer is
//! sized from it; a damaged chunk is reported and skipped (by its size when its header is
//! intact, otherwise by scanning for the next valid chunk header), and reading resumes.
//! Memory is bounded by one chunk (16 MiB raw at most) plus the index.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::bytes::{u64_from, usize_from};
use crate::chunk::{self, CHUNK_MAGIC, ChunkCursor, ChunkHeader, MAX_CHUNK_HEADER_SIZE, Step};
use crate::error::{DecodeError, Location, ReadError, Reason};
use crate::header::{FileHeader, MAX_HEADER_SIZE, PREFIX_SIZE};
use crate::index::{Index, TRAILER_SIZE, Trailer};
use crate::record::Record;

/// Source of trace bytes.
pub trait Source: Read + Seek + Send {}
impl<T: Read + Seek + Send> Source for T {}

/// A chunk as found while scanning: where it is and what its header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkInfo {
    /// File offset.
    pub offset: u64,
    /// The validated header.
    pub header: ChunkHeader,
}

/// Streaming reader over one trace.
pub struct TraceReader {
    name: String,
    src: Box<dyn Source>,
    file_len: u64,
    header: FileHeader,
    index: Option<Index>,
    index_damage: Option<DecodeError>,
    data_end: u64,
    pos: u64,
    stored: Vec<u8>,
    raw: Vec<u8>,
    decompressor: Option<zstd::bulk::Decompressor<'static>>,
    cur: Option<ChunkCursor>,
    last_seq: Option<u64>,
    skip_below: u64,
    failed_io: bool,
    chunk_stats: ChunkStats,
}

/// Running totals over the chunks read so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChunkStats {
    /// Chunks read intact.
    pub chunks: u64,
    /// Their decompressed payload bytes.
    pub raw_bytes: u64,
    /// Their stored payload bytes.
    pub stored_bytes: u64,
}

impl TraceReader {
    /// Opens a trace file: validates the header and loads the index when there is a valid
    /// one (a file without one, from a writer that died, is read by scanning).
    ///
    /// # Errors
    /// I/O errors, or an invalid header (bad magic, future major version, unknown required
    /// feature, checksum).
    pub fn open(path: &Path) -> Result<Self, ReadError> {
        Self::open_as(path, path.display().to_string())
    }

    /// Opens a trace file that messages call `name` (a trace extracted from a bundle is
    /// named after the bundle and its entry, not its temporary path).
    ///
    /// # Errors
    /// As for [`Self::open`].
    pub fn open_as(path: &Path, name: String) -> Result<Self, ReadError> {
        let file = crate::input::open_regular(path).map(|(f, _)| f).map_err(|e| match e {
            crate::input::InputError::Io { source, .. } => {
                ReadError::Io { path: name.clone(), offset: 0, source }
            }
            crate::input::InputError::NotRegular { kind, .. } => {
                ReadError::NotRegular { path: name.clone(), kind }
            }
        })?;
        Self::from_source(Box::new(file), name)
    }

    /// Opens a trace held in memory.
    ///
    /// # Errors
    /// As for [`Self::open`].
    pub fn from_bytes(bytes: Vec<u8>, name: &str) -> Result<Self, ReadError> {
        Self::from_source(Box::new(std::io::Cursor::new(bytes)), name.to_string())
    }

    /// Opens a trace from any seekable source.
    ///
    /// # Errors
    /// As for [`Self::open`].
    pub fn from_source(mut src: Box<dyn Source>, name: String) -> Result<Self, ReadError> {
        let io = |offset, source| ReadError::Io { path: name.clone(), offset, source };
        let file_len = src.seek(SeekFrom::End(0)).map_err(|e| io(0, e))?;
        let invalid = |error| ReadError::Invalid { path: name.clone(), error };
        let mut prefix = vec![0u8; PREFIX_SIZE.min(usize::try_from(file_len).unwrap_or(PREFIX_SIZE))];
        read_at(&mut src, 0, &mut prefix).map_err(|e| io(0, e))?;
        let hsize = FileHeader::peek_size(&prefix).map_err(invalid)?;
        debug_assert!(hsize <= MAX_HEADER_SIZE);
        if u64::from(hsize) > file_len {
            return Err(invalid(DecodeError::at(
                0,
                Reason::Truncated { what: "file header", need: u64::from(hsize), have: file_len },
            )));
        }
        let mut hbytes = vec![0u8; usize_from(hsize)];
        read_at(&mut src, 0, &mut hbytes).map_err(|e| io(0, e))?;
        let header = FileHeader::decode(&hbytes).map_err(invalid)?;
        let hs = u64::from(header.header_size);

        let mut index = None;
        let mut index_damage = None;
        let mut data_end = file_len;
        if file_len >= hs + u64_from(TRAILER_SIZE) {
            let mut t = [0u8; TRAILER_SIZE];
            let toff = file_len - u64_from(TRAILER_SIZE);
            read_at(&mut src, toff, &mut t).map_err(|e| io(toff, e))?;
            let trailer = match Trailer::decode(&t, file_len, hs) {
                Ok(tr) => tr,
                Err(e) => {
                    // A checksummed trailer with an impossible claim: no index, and the
                    // chunks end where it says the index starts (when that is plausible).
                    data_end = Trailer::plausible_data_end(&t, file_len, hs);
                    index_damage = Some(e);
                    None
                }
            };
            if let Some(tr) = trailer {
                let mut ib = vec![0u8; tr.index_len()];
                read_at(&mut src, tr.index_offset, &mut ib).map_err(|e| io(tr.index_offset, e))?;
                match Index::decode(&ib, tr.index_offset, hs) {
                    Ok(ix) => {
                        data_end = tr.index_offset;
                        index = Some(ix);
                    }
                    Err(e) => {
                        // A trailer that checks out but points at a bad index: the chunks
                        // still end where the index was meant to start.
                        data_end = tr.index_offset;
                        index_damage = Some(e);
                    }
                }
            }
        }
        Ok(TraceReader {
            name,
            src,
            file_len,
            pos: hs,
            header,
            index,
            index_damage,
            data_end,
            stored: Vec::new(),
            raw: Vec::new(),
            decompressor: None,
            cur: None,
            last_seq: None,
            skip_below: 0,
            failed_io: false,
            chunk_stats: ChunkStats::default(),
        })
    }

    /// The file's name as given.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The validated header.
    pub fn header(&self) -> &FileHeader {
        &self.header
    }

    /// The index, when the file has a valid one.
    pub fn index(&self) -> Option<&Index> {
        self.index.as_ref()
    }

    /// Takes the index out of the reader (which then seeks by scanning), so a caller
    /// that needs it after reading holds one copy, not two.
    pub fn take_index(&mut self) -> Option<Index> {
        self.index.take()
    }

    /// Why the index could not be used, when a trailer pointed at a damaged one.
    pub fn index_damage(&self) -> Option<&DecodeError> {
        self.index_damage.as_ref()
    }

    /// File length.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Where chunk data ends (the index offset, or the file length without an index).
    pub fn data_end(&self) -> u64 {
        self.data_end
    }

    /// Totals over the chunks read intact so far.
    pub fn chunk_stats(&self) -> ChunkStats {
        self.chunk_stats
    }

    fn invalid(&self, error: DecodeError) -> ReadError {
        ReadError::Invalid { path: self.name.clone(), error }
    }

    fn io(&mut self, offset: u64, source: std::io::Error) -> ReadError {
        self.failed_io = true;
        ReadError::Io { path: self.name.clone(), offset, source }
    }

    /// Moves back to the first chunk.
    pub fn rewind(&mut self) {
        self.pos = u64::from(self.header.header_size);
        self.cur = None;
        self.last_seq = None;
        self.skip_below = 0;
    }

    /// Positions the reader so the next record returned is the first with a sequence
    /// number `>= seq`. Uses the index when there is one, else scans chunk headers
    /// (without decompressing payloads).
    ///
    /// # Errors
    /// I/O errors while scanning.
    pub fn seek_seq(&mut self, seq: u64) -> Result<(), ReadError> {
        self.cur = None;
        self.last_seq = None;
        self.skip_below = seq;
        let hs = u64::from(self.header.header_size);
        if let Some(ix) = &self.index {
            self.pos = ix.find(seq).and_then(|i| ix.entries.get(i)).map_or(hs, |e| e.chunk_offset);
            return Ok(());
        }
        self.pos = hs;
        let mut best = hs;
        loop {
            match self.next_chunk_header()? {
                None => break,
                Some(Err(_)) => continue,
                Some(Ok(info)) => {
                    if info.header.first_seq > seq {
                        break;
                    }
                    best = info.offset;
                }
            }
        }
        self.pos = best;
        Ok(())
    }

    /// Scans the next chunk header without reading its payload (for `stats`-style walks and
    /// seeking). On damage, returns the error and moves to the next valid chunk header.
    ///
    /// # Errors
    /// I/O errors (fatal). Damage is returned as `Some(Err(..))` and is not fatal.
    pub fn next_chunk_header(&mut self) -> Result<Option<Result<ChunkInfo, DecodeError>>, ReadError> {
        if self.pos >= self.data_end || self.failed_io {
            return Ok(None);
        }
        let at = self.pos;
        let avail = self.data_end - at;
        let want =
            usize::try_from(avail.min(u64_from(MAX_CHUNK_HEADER_SIZE))).unwrap_or(MAX_CHUNK_HEADER_SIZE);
        let mut hb = vec![0u8; want];
        if let Err(e) = read_at(&mut self.src, at, &mut hb) {
            return Err(self.io(at, e));
        }
        let header = match ChunkHeader::decode(&hb, at) {
            Ok(h) => h,
            Err(e) => {
                // A sealed header with an invalid field is skipped by its size; one whose
                // bytes or size cannot be trusted, by scanning for the next valid header.
                match ChunkHeader::sealed_size(&hb, at).filter(|&total| total <= avail) {
                    Some(total) => self.pos = at + total,
                    None => self.resync(at + 8)?,
                }
                return Ok(Some(Err(e)));
            }
        };
        let total = header.total_size();
        if total > avail {
            // A torn last chunk (the writer died mid-write), or a size that lies.
            let e = DecodeError::at(at, Reason::Truncated { what: "chunk", need: total, have: avail });
            self.resync(at + 8)?;
            return Ok(Some(Err(e)));
        }
        self.pos = at + total;
        Ok(Some(Ok(ChunkInfo { offset: at, header })))
    }

    /// Moves `pos` to the next offset at or after `from` that holds a valid chunk header,
    /// or to the end of the data.
    fn resync(&mut self, from: u64) -> Result<(), ReadError> {
        let mut at = (from + 7) & !7;
        const WINDOW: usize = 64 * 1024;
        let mut buf = vec![0u8; WINDOW + MAX_CHUNK_HEADER_SIZE];
        while at < self.data_end {
            let n = usize::try_from((self.data_end - at).min(u64_from(buf.len()))).unwrap_or(0);
            if let Err(e) = read_at(&mut self.src, at, &mut buf[..n]) {
                return Err(self.io(at, e));
            }
            let mut i = 0;
            while i + 8 <= n && i < WINDOW {
                if buf[i..i + 4] == CHUNK_MAGIC && ChunkHeader::decode(&buf[i..n], at + u64_from(i)).is_ok() {
                    self.pos = at + u64_from(i);
                    return Ok(());
                }
                i += 8;
            }
            at += u64_from(WINDOW);
        }
        self.pos = self.data_end;
        Ok(())
    }

    /// Reads and unpacks the next chunk into the reader's buffers.
    fn advance_chunk(&mut self) -> Option<Result<(), ReadError>> {
        let info = match self.next_chunk_header() {
            Err(e) => return Some(Err(e)),
            Ok(None) => return None,
            Ok(Some(Err(e))) => return Some(Err(self.invalid(e))),
            Ok(Some(Ok(info))) => info,
        };
        let hs = u64::from(info.header.header_size);
        let body_len = info.header.total_size() - hs;
        let n = usize::try_from(body_len).unwrap_or(0);
        self.stored.resize(n, 0);
        if let Err(e) = read_at(&mut self.src, info.offset + hs, &mut self.stored) {
            return Some(Err(self.io(info.offset + hs, e)));
        }
        if let Err(e) = chunk::unpack_payload(
            &info.header,
            &self.stored,
            info.offset,
            &mut self.decompressor,
            &mut self.raw,
        ) {
            return Some(Err(self.invalid(e)));
        }
        if let Some(prev) = self.last_seq {
            if info.header.first_seq <= prev {
                let e = DecodeError {
                    location: Location {
                        offset: info.offset + 16,
                        in_chunk: None,
                        seq: Some(info.header.first_seq),
                    },
                    reason: Reason::SequenceOrder { previous: prev, found: info.header.first_seq },
                };
                return Some(Err(self.invalid(e)));
            }
        }
        self.chunk_stats.chunks += 1;
        self.chunk_stats.raw_bytes += u64::from(info.header.raw_size);
        self.chunk_stats.stored_bytes += u64::from(info.header.stored_size);
        self.cur = Some(ChunkCursor::new(info.header, info.offset));
        Some(Ok(()))
    }

    /// The next record and its raw bytes.
    ///
    /// Damage is returned as `Some(Err(ReadError::Invalid))` and is not fatal: calling
    /// again continues with the next intact chunk. After an I/O error, iteration ends.
    #[inline]
    pub fn next_record_raw(&mut self) -> Option<Result<(Record<'_>, &[u8]), ReadError>> {
        let size = loop {
            if self.failed_io {
                return None;
            }
            let Some(cur) = self.cur.as_mut() else {
                match self.advance_chunk()? {
                    Ok(()) => continue,
                    Err(e) => return Some(Err(e)),
                }
            };
            match cur.step(&self.raw) {
                Ok(Step::End) => {
                    self.cur = None;
                }
                Ok(Step::Record(size)) => {
                    if cur.peek_seq(&self.raw).is_some_and(|s| s < self.skip_below) {
                        cur.skip(&self.raw, size);
                        continue;
                    }
                    break size;
                }
                Err(e) => {
                    self.cur = None;
                    return Some(Err(self.invalid(e)));
                }
            }
        };
        let cur = self.cur.as_mut()?;
        match cur.take(&self.raw, size) {
            Ok((rec, bytes)) => {
                self.last_seq = Some(rec.seq);
                Some(Ok((rec, bytes)))
            }
            Err(e) => {
                self.cur = None;
                Some(Err(ReadError::Invalid { path: self.name.clone(), error: e }))
            }
        }
    }

    /// The next record (see [`Self::next_record_raw`]).
    #[inline]
    pub fn next_record(&mut self) -> Option<Result<Record<'_>, ReadError>> {
        self.next_record_raw().map(|r| r.map(|(rec, _)| rec))
    }
}

fn read_at(src: &mut Box<dyn Source>, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
    src.seek(SeekFrom::Start(offset))?;
    src.read_exact(buf)
}

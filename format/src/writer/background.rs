//! The writer's own thread: it takes closed chunks from the recording thread, compresses
//! and checksums them, writes and (per [`SyncMode`]) syncs them, reserves storage ahead
//! so a full disk fails before a chunk is half written, and writes the index and trailer
//! at the end (or seals what was complete after a failed write).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::bytes::u64_from;
use crate::chunk::{CHUNK_FLAG_SEQ_DELTA, CODEC_NONE, CODEC_ZSTD, ChunkHeader};
use crate::error::WriteError;
use crate::index::{Index, IndexEntry, Trailer};

use super::options::{SyncMode, WriterSummary};
use super::sink::TraceSink;

/// What the recording thread sends: a closed chunk (with an acknowledgement to send once
/// it is written, for a caller that waits), or the end of the run.
pub(super) enum Job {
    Chunk { buf: Vec<u8>, first_seq: u64, count: u32, ack: Option<SyncSender<()>> },
    Finish,
}

/// State both threads see: the flush interval passed, the writer failed, and its error.
pub(super) struct Shared {
    pub(super) flush_due: AtomicBool,
    pub(super) failed: AtomicBool,
    pub(super) error: Mutex<Option<WriteError>>,
}

pub(super) struct Background<S: TraceSink> {
    sink: S,
    name: String,
    rx: Receiver<Job>,
    free: SyncSender<Vec<u8>>,
    shared: Arc<Shared>,
    level: Option<i32>,
    sync: SyncMode,
    flush_interval: Duration,
    offset: u64,
    /// End of the storage reserved with [`TraceSink::reserve`] (0: none).
    reserved_end: u64,
    /// False once the sink said it cannot reserve.
    reserving: bool,
    index: Index,
    summary: WriterSummary,
    scratch: Vec<u8>,
}

/// How far ahead of what the next chunk and the index need the writer reserves storage, so
/// that `fallocate` is called about once per this many bytes.
const RESERVE_AHEAD: u64 = 4 << 20;

impl<S: TraceSink> Background<S> {
    /// Starts the thread writing to `sink` from `offset` (after the header), taking jobs
    /// from `queues.0` and returning emptied buffers on `queues.1`; `cap` is a chunk
    /// buffer's capacity.
    pub(super) fn spawn(
        sink: S,
        name: String,
        queues: (Receiver<Job>, SyncSender<Vec<u8>>),
        shared: Arc<Shared>,
        opts: &super::WriterOptions,
        offset: u64,
        cap: usize,
    ) -> Result<JoinHandle<Result<WriterSummary, WriteError>>, WriteError> {
        let bg = Background {
            sink,
            name: name.clone(),
            rx: queues.0,
            free: queues.1,
            shared,
            level: opts.zstd_level,
            sync: opts.sync,
            flush_interval: opts.flush_interval,
            offset,
            reserved_end: 0,
            reserving: true,
            index: Index::default(),
            summary: WriterSummary::default(),
            scratch: Vec::with_capacity(cap + 256),
        };
        std::thread::Builder::new()
            .name("vmrr-trace-writer".into())
            .spawn(move || bg.run())
            .map_err(|source| WriteError::Io { path: name, source })
    }

    fn run(mut self) -> Result<WriterSummary, WriteError> {
        let mut compressor = match self.level {
            Some(l) => Some(zstd::bulk::Compressor::new(l).map_err(WriteError::Compress)?),
            None => None,
        };
        // Room for the index of an empty trace, before anything else can take the space.
        if let Err(e) = self.reserve_for(0) {
            self.fail(e);
        }
        let mut finishing = false;
        loop {
            let job = match self.rx.recv_timeout(self.flush_interval) {
                Ok(j) => j,
                Err(RecvTimeoutError::Timeout) => {
                    self.shared.flush_due.store(true, Ordering::Relaxed);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            match job {
                Job::Chunk { mut buf, first_seq, count, ack } => {
                    if compressor.is_some() {
                        crate::chunk::seq_delta(&mut buf, first_seq, true);
                    }
                    if !self.shared.failed.load(Ordering::Relaxed) && count > 0 {
                        if let Err(e) = self.write_chunk(&buf, first_seq, count, compressor.as_mut()) {
                            // A full disk (or any write failure): drop the chunk and seal
                            // what was complete, so the file verifies.
                            self.seal();
                            self.fail(e);
                        }
                    }
                    if ack.is_some()
                        && !self.shared.failed.load(Ordering::Relaxed)
                        && self.sync == SyncMode::Never
                    {
                        if let Err(source) = self.sink.sync() {
                            self.fail(WriteError::Io { path: self.name.clone(), source });
                        }
                    }
                    buf.clear();
                    let _ = self.free.try_send(buf);
                    if let Some(a) = ack {
                        let _ = a.send(());
                    }
                }
                Job::Finish => {
                    finishing = true;
                    break;
                }
            }
        }
        if self.shared.failed.load(Ordering::Relaxed) {
            let taken = self.shared.error.lock().ok().and_then(|mut e| e.take());
            return Err(taken.unwrap_or(WriteError::WriterGone { path: self.name.clone() }));
        }
        if !finishing {
            // The writer was dropped: leave the file as a crash would.
            let _ = self.sink.flush();
            return Ok(self.summary);
        }
        self.write_index()?;
        if self.reserved_end > self.offset {
            // Give back the storage reserved past the end.
            let res = self.sink.truncate(self.offset);
            res.map_err(|e| self.io(e))?;
        }
        Ok(self.summary)
    }

    /// Most bytes the index and trailer take with `entries` chunks.
    fn index_bound(entries: usize) -> u64 {
        u64_from(crate::index::INDEX_HEADER_SIZE + 16 + entries * crate::index::INDEX_ENTRY_SIZE)
            + u64_from(crate::index::TRAILER_SIZE)
    }

    /// Makes sure storage is reserved for a chunk of `len` bytes at the current offset and
    /// the index after it. Called before the chunk is written: when it fails, nothing was
    /// written and the earlier reservation still holds the index.
    fn reserve_for(&mut self, len: u64) -> Result<(), WriteError> {
        if !self.reserving {
            return Ok(());
        }
        let need = self.offset + len + Self::index_bound(self.index.entries.len() + 1);
        if need <= self.reserved_end {
            return Ok(());
        }
        // Ahead when there is room, else exactly what is needed.
        for end in [need + RESERVE_AHEAD, need] {
            match self.sink.reserve(self.offset, end - self.offset) {
                Ok(()) => {
                    self.reserved_end = end;
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
                    self.reserving = false;
                    return Ok(());
                }
                Err(e) if end == need => return Err(self.io(e)),
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// After a failed write: cut the file back to the end of the last complete chunk and
    /// write the index and trailer there (they fit in the space the failed chunk needed).
    /// Best effort: if even that fails, the file still ends after a complete chunk and is
    /// read by scanning.
    fn seal(&mut self) {
        // Overwrite (not truncate: that would free the reserved storage) from the end of
        // the last complete chunk, then cut whatever of the failed chunk is left.
        let chunks_end = self.offset;
        if self.sink.rewind(chunks_end).is_err() {
            return;
        }
        if self.write_index().is_err() {
            let _ = self.sink.truncate(chunks_end);
            self.offset = chunks_end;
        } else {
            let _ = self.sink.truncate(self.offset);
        }
        let _ = self.sink.sync();
    }

    fn fail(&mut self, e: WriteError) {
        if let Ok(mut slot) = self.shared.error.lock() {
            if slot.is_none() {
                *slot = Some(e);
            }
        }
        self.shared.failed.store(true, Ordering::Relaxed);
    }

    fn io(&self, source: std::io::Error) -> WriteError {
        WriteError::Io { path: self.name.clone(), source }
    }

    fn write_chunk(
        &mut self,
        raw: &[u8],
        first_seq: u64,
        count: u32,
        compressor: Option<&mut zstd::bulk::Compressor<'static>>,
    ) -> Result<(), WriteError> {
        self.scratch.clear();
        let hsize = crate::chunk::CHUNK_HEADER_SIZE;
        self.scratch.resize(hsize, 0);
        let mut flags = 0;
        let codec = match compressor {
            Some(c) => {
                let bound = zstd::zstd_safe::compress_bound(raw.len());
                self.scratch.reserve(bound);
                // Compress straight into the scratch buffer after the header's place.
                let mut tmp = std::mem::take(&mut self.scratch);
                let n = {
                    let start = tmp.len();
                    tmp.resize(start + bound, 0);
                    let n = c.compress_to_buffer(raw, &mut tmp[start..]).map_err(WriteError::Compress)?;
                    tmp.truncate(start + n);
                    n
                };
                self.scratch = tmp;
                flags = CHUNK_FLAG_SEQ_DELTA;
                if n >= raw.len() {
                    // Incompressible: store instead (still seq-delta transformed).
                    self.scratch.truncate(hsize);
                    self.scratch.extend_from_slice(raw);
                    CODEC_NONE
                } else {
                    CODEC_ZSTD
                }
            }
            None => {
                self.scratch.extend_from_slice(raw);
                CODEC_NONE
            }
        };
        let stored = self.scratch.len() - hsize;
        let header = ChunkHeader {
            header_size: u16::try_from(hsize).unwrap_or(0),
            codec,
            stored_size: u32::try_from(stored).unwrap_or(u32::MAX),
            raw_size: u32::try_from(raw.len()).unwrap_or(u32::MAX),
            first_seq,
            record_count: count,
            payload_crc32c: crc32c::crc32c(&self.scratch[hsize..]),
            flags,
        };
        let mut h = Vec::with_capacity(hsize);
        header.encode(&mut h);
        self.scratch[..hsize].copy_from_slice(&h);
        let pad = (8 - self.scratch.len() % 8) % 8;
        self.scratch.resize(self.scratch.len() + pad, 0);
        self.reserve_for(u64_from(self.scratch.len()))?;
        let res = self.sink.write_all(&self.scratch);
        res.map_err(|e| self.io(e))?;
        if self.sync != SyncMode::Never {
            let res = self.sink.sync();
            res.map_err(|e| self.io(e))?;
        }
        self.index.entries.push(IndexEntry {
            chunk_offset: self.offset,
            first_seq,
            record_count: count,
            raw_size: header.raw_size,
            stored_size: header.stored_size,
        });
        self.index.record_count += u64::from(count);
        self.offset += u64_from(self.scratch.len());
        self.summary.records += u64::from(count);
        self.summary.chunks += 1;
        self.summary.raw_bytes += u64_from(raw.len());
        self.summary.stored_bytes += u64_from(stored);
        self.summary.file_bytes = self.offset;
        Ok(())
    }

    fn write_index(&mut self) -> Result<(), WriteError> {
        let mut out = Vec::with_capacity(64 + self.index.entries.len() * 32);
        self.index.encode(&mut out);
        let trailer = Trailer { index_offset: self.offset, index_size: u64_from(out.len()) };
        trailer.encode(&mut out);
        let res = self.sink.write_all(&out).and_then(|()| self.sink.flush()).and_then(|()| self.sink.sync());
        res.map_err(|e| self.io(e))?;
        self.offset += u64_from(out.len());
        self.summary.file_bytes = self.offset;
        Ok(())
    }
}

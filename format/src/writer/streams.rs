//! Several threads appending to one trace: [`SharedTrace`] and its [`TraceStream`]s.
//!
//! Each thread that records (a vCPU thread, a device thread) takes its own
//! [`TraceStream`]. An append locks only that stream's buffer: it encodes the record there
//! and takes the next sequence number from a counter the streams share (an atomic add), so
//! threads do not wait for one another on the hot path. The stream's lock is contended only
//! while a *collection* runs.
//!
//! A collection takes the trace's collection lock, then every stream's lock (in the order
//! the streams were created), and takes their buffers. Because a stream allocates a number
//! and stores its record under the same lock, once the collector holds every stream's lock
//! each number handed out so far is in some buffer: the buffers together hold one
//! contiguous range of numbers. The collector merges them by number and hands them, in
//! order, to the underlying [`TraceWriter`], whose chunks stay contiguous. The file is an
//! ordinary trace in global sequence order; readers need nothing new to read it. Within one
//! stream, records keep the order they were appended in.
//!
//! A collection runs when an append finds its stream's buffer past
//! `max(chunk_target / 4, 4 KiB)` bytes, when the writer's flush interval has passed (at
//! the next append, or [`TraceStream::poll_flush`]), on [`TraceStream::flush`],
//! [`SharedTrace::sync`] and [`SharedTrace::finish`], and at every append with
//! [`SyncMode::Always`]. Memory is therefore bounded: each stream holds at most that
//! threshold plus one record (1 MiB) before its own thread collects, so `streams ×
//! (chunk_target / 4 + 1 MiB)` on top of the [`TraceWriter`]'s own bound.
//!
//! Not offered: [`TraceWriter::continue_from`] and [`TraceWriter::append_record`] (a
//! continued or copied trace chooses its own numbers, which a shared counter cannot
//! honour): call them on the writer before [`TraceWriter::into_shared`].
//!
//! A trace several threads append to should be created with [`super::WriterOptions::threads`],
//! which tells replayers that its order is the order of appending, not an instruction-level
//! interleaving. Dropping every handle without [`SharedTrace::finish`] leaves the file as a
//! crash would (readable by scanning), without the records not yet collected.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::cursor::{u32_at, u64_at};
use crate::encode::encode;
use crate::error::WriteError;
use crate::header::FileHeader;
use crate::record::{Body, Record, RegsSample, Timing, Unknown};

use super::background::Shared;
use super::{SyncMode, TraceWriter, WriterSummary, check_declared, guest_write_parts, timing_undeclared};

/// Offset of `seq` in an encoded record (FORMAT.md §5.1).
const SEQ_OFFSET: usize = 8;

/// One stream's encoded records, in the order its thread appended them.
#[derive(Default)]
struct StreamBuf {
    buf: Vec<u8>,
    /// Set (under every stream's lock) by [`SharedTrace::finish`]: later appends fail.
    closed: bool,
}

/// What every handle shares.
struct Inner {
    name: String,
    header: FileHeader,
    next_seq: AtomicU64,
    /// The writer's flush flag, read without the collection lock.
    flush: Arc<Shared>,
    sync: SyncMode,
    threshold: usize,
    /// The streams, in creation order (the order a collector locks them in).
    streams: Mutex<Vec<Arc<Mutex<StreamBuf>>>>,
    /// The collection lock and the writer; `None` once finished.
    writer: Mutex<Option<TraceWriter>>,
    finished: AtomicBool,
}

/// A trace several threads append to: see the module docs. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct SharedTrace {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SharedTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTrace").field("name", &self.inner.name).finish()
    }
}

impl std::fmt::Debug for TraceStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceStream").field("name", &self.inner.name).finish()
    }
}

/// One thread's handle for appending to a [`SharedTrace`].
pub struct TraceStream {
    inner: Arc<Inner>,
    buf: Arc<Mutex<StreamBuf>>,
}

impl TraceWriter {
    /// Hands this writer over to several threads: each takes a [`TraceStream`] from the
    /// returned [`SharedTrace`]. Records already appended stay; numbering continues at
    /// [`Self::next_seq`].
    pub fn into_shared(self) -> SharedTrace {
        let threshold = (self.chunk_target() / 4).max(4096);
        let inner = Inner {
            name: self.name.clone(),
            header: self.header.clone(),
            next_seq: AtomicU64::new(self.next_seq),
            flush: Arc::clone(&self.shared),
            sync: self.sync,
            threshold,
            streams: Mutex::new(Vec::new()),
            writer: Mutex::new(Some(self)),
            finished: AtomicBool::new(false),
        };
        SharedTrace { inner: Arc::new(inner) }
    }
}

impl Inner {
    fn gone(&self) -> WriteError {
        WriteError::WriterGone { path: self.name.clone() }
    }

    /// Takes every stream's records and hands them to the writer in sequence order, then
    /// runs `then` on the writer, all under the collection lock. With `close`, marks every
    /// stream closed and returns the writer.
    fn collect(
        &self,
        close: bool,
        then: impl FnOnce(&mut TraceWriter) -> Result<(), WriteError>,
    ) -> Result<Option<TraceWriter>, WriteError> {
        let mut slot = self.writer.lock().map_err(|_| self.gone())?;
        let Some(writer) = slot.as_mut() else {
            return Err(self.gone());
        };
        let taken = {
            let streams = self.streams.lock().map_err(|_| self.gone())?;
            let mut guards: Vec<MutexGuard<'_, StreamBuf>> = Vec::with_capacity(streams.len());
            for s in streams.iter() {
                guards.push(s.lock().map_err(|_| self.gone())?);
            }
            // Every stream is locked: no number is being handed out, and every number
            // handed out so far is in a buffer.
            if close {
                self.finished.store(true, Ordering::Relaxed);
                for g in &mut guards {
                    g.closed = true;
                }
            }
            guards.iter_mut().map(|g| std::mem::take(&mut g.buf)).collect::<Vec<_>>()
        };
        merge(&taken, writer)?;
        then(writer)?;
        if close {
            return Ok(slot.take());
        }
        // Give the emptied buffers back for their capacity, where the stream has not
        // started a new one meanwhile.
        if let Ok(streams) = self.streams.lock() {
            for (s, mut b) in streams.iter().zip(taken) {
                if let Ok(mut g) = s.lock() {
                    if g.buf.is_empty() {
                        b.clear();
                        g.buf = b;
                    }
                }
            }
        }
        Ok(None)
    }

    fn flush_due(&self) -> bool {
        self.flush.flush_due.load(Ordering::Relaxed)
    }
}

/// Hands the records of `bufs` (each in increasing sequence order) to `writer`, lowest
/// sequence number first.
fn merge(bufs: &[Vec<u8>], writer: &mut TraceWriter) -> Result<(), WriteError> {
    let mut pos = vec![0usize; bufs.len()];
    let head = |b: &[u8], at: usize| -> Option<(u64, usize)> {
        let size = usize::try_from(u32_at(b, at)?).ok()?;
        let seq = u64_at(b, at + SEQ_OFFSET)?;
        (size > 0 && at + size <= b.len()).then_some((seq, size))
    };
    loop {
        let mut best: Option<(u64, usize, usize)> = None;
        for (i, b) in bufs.iter().enumerate() {
            if let Some((seq, size)) = head(b, pos[i]) {
                if best.is_none_or(|(s, _, _)| seq < s) {
                    best = Some((seq, i, size));
                }
            }
        }
        let Some((seq, i, size)) = best else {
            return Ok(());
        };
        writer.append_encoded(&bufs[i][pos[i]..pos[i] + size], seq)?;
        pos[i] += size;
    }
}

impl SharedTrace {
    /// A new stream for one appending thread (a vCPU thread or a device thread).
    pub fn stream(&self) -> TraceStream {
        let buf = Arc::new(Mutex::new(StreamBuf {
            buf: Vec::new(),
            closed: self.inner.finished.load(Ordering::Relaxed),
        }));
        if let Ok(mut streams) = self.inner.streams.lock() {
            streams.push(Arc::clone(&buf));
        }
        TraceStream { inner: Arc::clone(&self.inner), buf }
    }

    /// The header written.
    pub fn header(&self) -> &FileHeader {
        &self.inner.header
    }

    /// Collects every stream's records and waits until everything appended so far (by any
    /// stream, before this call) is durable.
    ///
    /// # Errors
    /// A write or sync failure, or the trace was finished.
    pub fn sync(&self) -> Result<(), WriteError> {
        self.inner.collect(false, TraceWriter::sync).map(|_| ())
    }

    /// Collects every stream's records, then writes the index and trailer as
    /// [`TraceWriter::finish`] does. Streams still alive afterwards fail every append with
    /// [`WriteError::WriterGone`].
    ///
    /// # Errors
    /// The first write or sync failure of the run, or the trace was already finished.
    pub fn finish(self) -> Result<WriterSummary, WriteError> {
        match self.inner.collect(true, |_| Ok(()))? {
            Some(writer) => writer.finish(),
            None => Err(self.inner.gone()),
        }
    }
}

impl TraceStream {
    /// Appends a record with the next sequence number of the trace and returns it.
    ///
    /// # Errors
    /// As for [`TraceWriter::append`]; [`WriteError::WriterGone`] after
    /// [`SharedTrace::finish`].
    #[inline]
    pub fn append(&mut self, vcpu: u32, body: Body<'_>, regs: Option<RegsSample>) -> Result<u64, WriteError> {
        check_declared(&self.inner.header, &body)?;
        self.push(&Record { seq: 0, vcpu, body, regs, timing: None, unknown: Unknown::default() })
    }

    /// Appends an exit record with its timing payload.
    ///
    /// # Errors
    /// As for [`TraceWriter::append_timed`].
    #[inline]
    pub fn append_timed(
        &mut self,
        vcpu: u32,
        body: Body<'_>,
        regs: Option<RegsSample>,
        timing: Timing,
    ) -> Result<u64, WriteError> {
        if !self.inner.header.has_timing() {
            return Err(timing_undeclared());
        }
        check_declared(&self.inner.header, &body)?;
        self.push(&Record { seq: 0, vcpu, body, regs, timing: Some(timing), unknown: Unknown::default() })
    }

    /// Appends what a device wrote into guest memory, split as
    /// [`TraceWriter::append_guest_write`] splits it; returns the last record's number.
    /// The parts are consecutive in this stream but other streams' records may come
    /// between them (replay applies them in order all the same).
    ///
    /// # Errors
    /// As for [`TraceWriter::append_guest_write`].
    pub fn append_guest_write(&mut self, vcpu: u32, gpa: u64, data: &[u8]) -> Result<u64, WriteError> {
        guest_write_parts(self.inner.header.has_guest_writes(), gpa, data, |at, part| {
            self.append(vcpu, Body::GuestWrite(crate::GuestWrite { gpa: at, data: part }), None)
        })
    }

    /// Appends one `IRQ_LINE` record (format 1.2).
    ///
    /// # Errors
    /// As for [`TraceWriter::append_irq_line`].
    pub fn append_irq_line(&mut self, vcpu: u32, line: crate::IrqLine) -> Result<u64, WriteError> {
        self.append(vcpu, Body::IrqLine(line), None)
    }

    /// Encodes `rec` into this stream's buffer under its lock, numbering it there, and
    /// collects when the buffer is full or a flush is due.
    #[inline]
    fn push(&mut self, rec: &Record<'_>) -> Result<u64, WriteError> {
        let (seq, full) = {
            let mut g = self.buf.lock().map_err(|_| self.inner.gone())?;
            if g.closed {
                return Err(self.inner.gone());
            }
            let start = g.buf.len();
            if let Err(e) = encode(rec, &mut g.buf) {
                g.buf.truncate(start);
                return Err(e);
            }
            // Numbered only once encoded: a refused record leaves no gap.
            let seq = self.inner.next_seq.fetch_add(1, Ordering::Relaxed);
            g.buf[start + SEQ_OFFSET..start + SEQ_OFFSET + 8].copy_from_slice(&seq.to_le_bytes());
            (seq, g.buf.len() >= self.inner.threshold)
        };
        if self.inner.sync == SyncMode::Always {
            // Durable before append returns, as with TraceWriter.
            self.inner.collect(false, |_| Ok(()))?;
        } else if full || self.inner.flush_due() {
            self.inner.collect(false, TraceWriter::poll_flush)?;
        }
        Ok(seq)
    }

    /// Collects every stream's records if the writer's flush interval has passed, and
    /// closes the open chunk (see [`TraceWriter::poll_flush`]).
    ///
    /// # Errors
    /// As for [`Self::flush`].
    pub fn poll_flush(&mut self) -> Result<(), WriteError> {
        if self.inner.flush_due() {
            self.inner.collect(false, TraceWriter::poll_flush)?;
        }
        Ok(())
    }

    /// Collects every stream's records and hands the open chunk to the writer thread.
    ///
    /// # Errors
    /// An earlier failure of the writer thread, or the trace was finished.
    pub fn flush(&mut self) -> Result<(), WriteError> {
        self.inner.collect(false, TraceWriter::flush).map(|_| ())
    }

    /// Collects every stream's records and waits until they are durable (see
    /// [`SharedTrace::sync`]).
    ///
    /// # Errors
    /// As for [`SharedTrace::sync`].
    pub fn sync(&mut self) -> Result<(), WriteError> {
        self.inner.collect(false, TraceWriter::sync).map(|_| ())
    }

    /// The number the trace's next record will take, from any stream.
    pub fn next_seq(&self) -> u64 {
        self.inner.next_seq.load(Ordering::SeqCst)
    }

    /// The header written.
    pub fn header(&self) -> &FileHeader {
        &self.inner.header
    }
}

//! One trace appended to by several threads (one per vCPU, one per device thread) without
//! a lock they share on the per-record path.
//!
//! Each [`TraceStream`] encodes its records into its own buffer, under its own mutex, which
//! only a collection ever contends for. A record's sequence number comes from one atomic
//! counter, taken while the stream's mutex is held, after the record was encoded (so an
//! unencodable record never takes a number). A collection ([`SharedTrace`]'s, triggered by
//! a stream whose buffer passed its share of a chunk, by the flush interval, by
//! [`SharedTrace::sync`] and [`SharedTrace::finish`]) locks every stream in turn and takes
//! their buffers: since a number is taken and its record buffered under the same mutex,
//! once all the mutexes are held every number taken so far is in some buffer, and the
//! buffers together hold one contiguous range of numbers. The collector merges them by
//! sequence number into the trace writer's chunk, so the file is an ordinary trace in
//! global order, which every reader reads as it always did.
//!
//! Within one `vcpu` value records keep their thread's order; between threads the global
//! order is the order they took their numbers in, which is not an instruction-level
//! interleaving (FORMAT.md §5).
//!
//! Memory: each stream holds at most its threshold plus one record (the writer's chunk
//! target divided by the stream count it was sized for, at least 16 KiB), plus a spare of
//! the same size; the collection adds nothing beyond the trace writer's own bound.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::encode::encode;
use crate::error::WriteError;
use crate::header::FileHeader;
use crate::record::{Body, Record, RegsSample, Timing, Unknown};

use super::background::Shared;
use super::{TraceWriter, WriterSummary, guest_writes_undeclared, timing_undeclared};

/// Smallest per-stream buffer before a collection.
const MIN_THRESHOLD: usize = 16 * 1024;
/// The sequence number's offset in an encoded record (FORMAT.md §5.1).
const SEQ_AT: usize = 8;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One thread's buffered records.
#[derive(Default)]
struct Buffered {
    /// Encoded records, in increasing sequence numbers.
    buf: Vec<u8>,
    /// An emptied buffer kept for the next swap.
    spare: Vec<u8>,
}

struct Inner {
    /// The trace writer, `None` once finished. Held by one collection at a time.
    writer: Mutex<Option<TraceWriter>>,
    /// Every stream made, in creation order (collections lock them in this order).
    streams: Mutex<Vec<Arc<Mutex<Buffered>>>>,
    next_seq: AtomicU64,
    closed: AtomicBool,
    /// What the writer thread shares (its "flush interval passed" flag).
    shared: Arc<Shared>,
    header: FileHeader,
    name: String,
    threshold: usize,
}

/// A trace several threads append to (see the module docs); cheap to clone.
#[derive(Clone)]
pub struct SharedTrace {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SharedTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTrace").field("name", &self.inner.name).finish()
    }
}

/// One thread's way into a [`SharedTrace`]: records appended through it keep their order.
pub struct TraceStream {
    inner: Arc<Inner>,
    mine: Arc<Mutex<Buffered>>,
    /// Where a record is encoded before it takes its number.
    scratch: Vec<u8>,
}

impl std::fmt::Debug for TraceStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceStream").field("name", &self.inner.name).finish()
    }
}

impl TraceWriter {
    /// Turns this writer into a trace that several threads append to, each through its own
    /// [`TraceStream`]; `threads` is how many streams are expected (it sizes each stream's
    /// buffer). Records already appended stay where they are; numbers continue.
    ///
    /// # Errors
    /// The open chunk cannot be handed to the writer thread.
    pub fn into_shared(mut self, threads: usize) -> Result<SharedTrace, WriteError> {
        self.flush()?;
        let inner = Inner {
            next_seq: AtomicU64::new(self.next_seq),
            shared: Arc::clone(&self.shared),
            header: self.header.clone(),
            name: self.name.clone(),
            threshold: (self.target / threads.max(1)).max(MIN_THRESHOLD),
            writer: Mutex::new(Some(self)),
            streams: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        };
        Ok(SharedTrace { inner: Arc::new(inner) })
    }
}

impl SharedTrace {
    /// A new stream for one thread.
    pub fn stream(&self) -> TraceStream {
        let mine = Arc::new(Mutex::new(Buffered::default()));
        lock(&self.inner.streams).push(Arc::clone(&mine));
        TraceStream { inner: Arc::clone(&self.inner), mine, scratch: Vec::new() }
    }

    /// The header written.
    pub fn header(&self) -> &FileHeader {
        &self.inner.header
    }

    /// The sequence number the next record will take.
    pub fn next_seq(&self) -> u64 {
        self.inner.next_seq.load(Ordering::SeqCst)
    }

    /// Collects every stream's records and waits until everything appended so far is
    /// durable.
    ///
    /// # Errors
    /// A write or sync failure, or the trace was finished.
    pub fn sync(&self) -> Result<(), WriteError> {
        self.inner.collect(|w| w.sync())
    }

    /// Collects every stream's records and hands them to the writer thread.
    ///
    /// # Errors
    /// As for [`Self::sync`].
    pub fn flush(&self) -> Result<(), WriteError> {
        self.inner.collect(TraceWriter::flush)
    }

    /// Collects every stream's records, then writes the index and trailer and stops the
    /// writer thread. Streams still alive fail their next append with
    /// [`WriteError::WriterGone`].
    ///
    /// # Errors
    /// The first write or sync failure of the run, or the trace was already finished.
    pub fn finish(self) -> Result<WriterSummary, WriteError> {
        let inner = &self.inner;
        let mut w = lock(&inner.writer);
        let Some(mut writer) = w.take() else {
            return Err(WriteError::WriterGone { path: inner.name.clone() });
        };
        inner.closed.store(true, Ordering::SeqCst);
        let merged = inner.merge_into(&mut writer);
        let summary = writer.finish();
        merged?;
        summary
    }
}

impl Inner {
    /// Takes every stream's records (see the module docs) into the writer, then `then`.
    fn collect(
        &self,
        then: impl FnOnce(&mut TraceWriter) -> Result<(), WriteError>,
    ) -> Result<(), WriteError> {
        let mut w = lock(&self.writer);
        let Some(writer) = w.as_mut() else {
            return Err(WriteError::WriterGone { path: self.name.clone() });
        };
        self.merge_into(writer)?;
        then(writer)
    }

    fn merge_into(&self, writer: &mut TraceWriter) -> Result<(), WriteError> {
        let streams = lock(&self.streams).clone();
        let mut taken: Vec<Vec<u8>> = {
            let mut guards: Vec<_> = streams.iter().map(|s| lock(s)).collect();
            guards
                .iter_mut()
                .map(|g| {
                    let spare = std::mem::take(&mut g.spare);
                    std::mem::replace(&mut g.buf, spare)
                })
                .collect()
        };
        let mut at = vec![0usize; taken.len()];
        let seq_of = |b: &[u8], i: usize| -> Option<u64> {
            let s = b.get(i + SEQ_AT..i + SEQ_AT + 8)?;
            Some(u64::from_le_bytes(s.try_into().ok()?))
        };
        let size_of = |b: &[u8], i: usize| -> Option<usize> {
            let s = b.get(i..i + 4)?;
            usize::try_from(u32::from_le_bytes(s.try_into().ok()?)).ok()
        };
        let mut result = Ok(());
        loop {
            let next = (0..taken.len())
                .filter_map(|k| seq_of(&taken[k], at[k]).map(|s| (s, k)))
                .min_by_key(|&(s, _)| s);
            let Some((seq, k)) = next else { break };
            let Some(len) = size_of(&taken[k], at[k]) else { break };
            let Some(rec) = taken[k].get(at[k]..at[k] + len) else { break };
            if let Err(e) = writer.push_encoded(seq, rec) {
                result = Err(e);
                break;
            }
            at[k] += len;
        }
        // The emptied buffers become the streams' spares.
        for (s, mut b) in streams.iter().zip(taken.drain(..)) {
            b.clear();
            lock(s).spare = b;
        }
        result
    }
}

impl TraceStream {
    /// The header written.
    pub fn header(&self) -> &FileHeader {
        &self.inner.header
    }

    /// The sequence number the trace's next record will take (from any stream).
    pub fn next_seq(&self) -> u64 {
        self.inner.next_seq.load(Ordering::SeqCst)
    }

    /// Collects every stream's records and waits until they are durable (see
    /// [`SharedTrace::sync`]).
    ///
    /// # Errors
    /// As for [`SharedTrace::sync`].
    pub fn sync(&mut self) -> Result<(), WriteError> {
        self.inner.collect(TraceWriter::sync)
    }

    /// Appends a record and returns its sequence number (see [`TraceWriter::append`]).
    ///
    /// # Errors
    /// An unencodable record, a feature the header does not announce, or the writer's
    /// failure (a full disk), or the trace was finished.
    #[inline]
    pub fn append(&mut self, vcpu: u32, body: Body<'_>, regs: Option<RegsSample>) -> Result<u64, WriteError> {
        if matches!(body, Body::GuestWrite(_)) && !self.inner.header.has_guest_writes() {
            return Err(guest_writes_undeclared());
        }
        self.put(&Record { seq: 0, vcpu, body, regs, timing: None, unknown: Unknown::default() })
    }

    /// Appends an exit record with its timing payload (see [`TraceWriter::append_timed`]).
    ///
    /// # Errors
    /// As for [`Self::append`].
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
        self.put(&Record { seq: 0, vcpu, body, regs, timing: Some(timing), unknown: Unknown::default() })
    }

    /// Appends what a device wrote into guest memory (see
    /// [`TraceWriter::append_guest_write`]): the number of the last record.
    ///
    /// # Errors
    /// As for [`TraceWriter::append_guest_write`].
    pub fn append_guest_write(&mut self, vcpu: u32, gpa: u64, data: &[u8]) -> Result<u64, WriteError> {
        if !self.inner.header.has_guest_writes() {
            return Err(guest_writes_undeclared());
        }
        if gpa.checked_add(crate::bytes::u64_from(data.len())).is_none() {
            return Err(WriteError::Unencodable {
                field: "guest_write gpa",
                detail: format!("{gpa:#x} + {} bytes overflows the address space", data.len()),
            });
        }
        let mut parts = data.chunks(crate::MAX_GUEST_WRITE_DATA).peekable();
        if parts.peek().is_none() {
            return self.append(vcpu, Body::GuestWrite(crate::GuestWrite { gpa, data }), None);
        }
        let (mut seq, mut at) = (0, gpa);
        for part in parts {
            seq = self.append(vcpu, Body::GuestWrite(crate::GuestWrite { gpa: at, data: part }), None)?;
            at += crate::bytes::u64_from(part.len());
        }
        Ok(seq)
    }

    /// Collects every stream's records into the trace now (this thread is about to wait).
    ///
    /// # Errors
    /// The writer's failure.
    pub fn flush(&mut self) -> Result<(), WriteError> {
        self.inner.collect(TraceWriter::flush)
    }

    /// Collects when the writer's flush interval has passed.
    ///
    /// # Errors
    /// As for [`Self::flush`].
    pub fn poll_flush(&mut self) -> Result<(), WriteError> {
        if self.inner.shared.flush_due.load(Ordering::Relaxed) { self.flush() } else { Ok(()) }
    }

    /// Encodes `rec` with a placeholder number, takes its number and buffers it under the
    /// stream's mutex, then collects when the buffer is full or the flush interval passed.
    #[inline]
    fn put(&mut self, rec: &Record<'_>) -> Result<u64, WriteError> {
        self.scratch.clear();
        encode(rec, &mut self.scratch)?;
        let (seq, full) = {
            let mut b = lock(&self.mine);
            if self.inner.closed.load(Ordering::SeqCst) {
                return Err(WriteError::WriterGone { path: self.inner.name.clone() });
            }
            let seq = self.inner.next_seq.fetch_add(1, Ordering::SeqCst);
            if let Some(s) = self.scratch.get_mut(SEQ_AT..SEQ_AT + 8) {
                s.copy_from_slice(&seq.to_le_bytes());
            }
            b.buf.extend_from_slice(&self.scratch);
            (seq, b.buf.len() >= self.inner.threshold)
        };
        if full || self.inner.shared.flush_due.load(Ordering::Relaxed) {
            self.inner.collect(TraceWriter::poll_flush)?;
        }
        Ok(seq)
    }
}

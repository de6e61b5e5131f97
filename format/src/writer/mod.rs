//! Streaming trace writer.
//!
//! The recording thread only encodes records into an in-memory chunk buffer: no syscall,
//! no allocation (buffers are pre-allocated and recycled) and no compression on its path.
//! Full chunks go over a bounded queue to the writer's own thread, which compresses,
//! checksums, writes and (per [`SyncMode`]) syncs them. Memory is bounded by
//! `(queue_depth + 2) * (chunk_target + 64 KiB)` whatever the run's length; when the disk
//! is slower than the guest, the recording thread waits for a free buffer (backpressure)
//! rather than dropping records.

mod background;
mod options;
mod sink;
mod streams;

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::bytes::{u64_from, usize_from};
use crate::chunk::MAX_CHUNK_RAW;
use crate::encode::encode;
use crate::error::WriteError;
use crate::features;
use crate::header::FileHeader;
use crate::record::{Body, MAX_RECORD_SIZE, Record, RegsSample, Timing, Unknown};

use background::{Background, Job, Shared};
pub use options::{SyncMode, WriterOptions, WriterSummary};
pub use sink::{MemorySink, NullSink, TraceSink};
pub use streams::{SharedTrace, TraceStream};

/// Streaming writer: see the module docs.
pub struct TraceWriter {
    name: String,
    header: FileHeader,
    buf: Vec<u8>,
    first_seq: u64,
    count: u32,
    next_seq: u64,
    target: usize,
    sync: SyncMode,
    tx: Option<SyncSender<Job>>,
    free: Receiver<Vec<u8>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<Result<WriterSummary, WriteError>>>,
    last_err: Option<String>,
}

#[cold]
pub(crate) fn timing_undeclared() -> WriteError {
    WriteError::Unencodable {
        field: "timing",
        detail: "the trace's header does not announce the timing feature (WriterOptions::timing)".into(),
    }
}

#[cold]
fn guest_writes_undeclared() -> WriteError {
    WriteError::Unencodable {
        field: "guest_write",
        detail: "the trace's header does not announce the guest-write feature (WriterOptions::guest_writes)"
            .into(),
    }
}

#[cold]
fn irq_lines_undeclared() -> WriteError {
    WriteError::Unencodable {
        field: "irq_line",
        detail: "the trace's header does not announce the irq-line feature (WriterOptions::irq_lines)".into(),
    }
}

/// Refuses a body the header does not announce (guest writes, IRQ lines).
#[inline]
fn check_declared(header: &FileHeader, body: &Body<'_>) -> Result<(), WriteError> {
    match body {
        Body::GuestWrite(_) if !header.has_guest_writes() => Err(guest_writes_undeclared()),
        Body::IrqLine(_) if !header.has_irq_lines() => Err(irq_lines_undeclared()),
        _ => Ok(()),
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// 16 random bytes from the OS (falls back to time and pid when unavailable).
pub fn random_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    let ok = File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut id));
    if ok.is_err() {
        id[..8].copy_from_slice(&now_ns().to_le_bytes());
        id[8..12].copy_from_slice(&std::process::id().to_le_bytes());
    }
    id
}

impl TraceWriter {
    /// Creates (truncating) `path` and starts writing a trace to it.
    ///
    /// # Errors
    /// [`WriteError::Io`] when the file cannot be created or the header written.
    pub fn create(path: &Path, opts: WriterOptions) -> Result<Self, WriteError> {
        let name = path.display().to_string();
        let file = File::create(path).map_err(|source| WriteError::Io { path: name.clone(), source })?;
        Self::with_sink(file, name, opts)
    }

    /// Creates `path`, which must not exist (`O_EXCL`), and starts writing a trace to it:
    /// how a recording's trace is created once its output was checked
    /// ([`crate::output::prepare_trace`]).
    ///
    /// # Errors
    /// [`WriteError::Io`] when the file exists or cannot be created, or the header written.
    pub fn create_new(path: &Path, opts: WriterOptions) -> Result<Self, WriteError> {
        let name = path.display().to_string();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|source| WriteError::Io { path: name.clone(), source })?;
        Self::with_sink(file, name, opts)
    }

    /// Starts writing a trace to any sink; `name` is used in error messages.
    ///
    /// # Errors
    /// [`WriteError::Io`] when the header cannot be written.
    pub fn with_sink<S: TraceSink>(
        mut sink: S,
        name: String,
        opts: WriterOptions,
    ) -> Result<Self, WriteError> {
        let mut feats = vec![features::CHUNK_INDEX];
        if opts.timing {
            feats.push(features::TIMING);
        }
        if opts.guest_writes {
            feats.push(features::GUEST_WRITE);
        }
        if opts.irq_lines {
            feats.push(features::IRQ_LINE);
        }
        if opts.threads {
            feats.push(features::THREADS);
        }
        if opts.zstd_level.is_some() {
            feats.push(features::ZSTD);
            feats.push(features::SEQ_DELTA);
        }
        let header = FileHeader::new(
            opts.created_unix_ns.unwrap_or_else(now_ns),
            opts.trace_id.unwrap_or_else(random_id),
            &feats,
        );
        let hbytes = header.encode();
        let io = |source| WriteError::Io { path: name.clone(), source };
        sink.write_all(&hbytes).map_err(io)?;
        if opts.sync != SyncMode::Never {
            sink.sync().map_err(io)?;
        }
        let target = opts.chunk_target.clamp(4096, usize_from(MAX_CHUNK_RAW) - MAX_RECORD_SIZE);
        let depth = opts.queue_depth.max(1);
        let (tx, rx) = sync_channel::<Job>(depth);
        let (free_tx, free_rx) = sync_channel::<Vec<u8>>(depth + 2);
        let cap = target + 64 * 1024;
        for _ in 0..depth + 1 {
            // Pool size is bounded by the free channel's capacity, so this never blocks.
            let _ = free_tx.try_send(Vec::with_capacity(cap));
        }
        let shared = Arc::new(Shared {
            flush_due: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
        });
        let thread = Background::spawn(
            sink,
            name.clone(),
            (rx, free_tx),
            Arc::clone(&shared),
            &opts,
            u64::from(header.header_size),
            cap,
        )?;
        Ok(TraceWriter {
            name,
            header,
            buf: Vec::with_capacity(cap),
            first_seq: 0,
            count: 0,
            next_seq: 0,
            target,
            sync: opts.sync,
            tx: Some(tx),
            free: free_rx,
            shared,
            thread: Some(thread),
            last_err: None,
        })
    }

    /// The header written.
    pub fn header(&self) -> &FileHeader {
        &self.header
    }

    /// Sequence number the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Makes the next record get sequence number `seq` (a trace continued in a new file).
    ///
    /// # Errors
    /// `seq` is below the next sequence number (numbers only increase).
    pub fn continue_from(&mut self, seq: u64) -> Result<(), WriteError> {
        if seq < self.next_seq {
            return Err(WriteError::Unencodable {
                field: "seq",
                detail: format!("{seq} is below the next sequence number {}", self.next_seq),
            });
        }
        if self.count > 0 && seq != self.next_seq {
            self.close_chunk()?;
        }
        self.next_seq = seq;
        Ok(())
    }

    /// Appends a record with the next sequence number and returns that number.
    ///
    /// # Errors
    /// An unencodable record, or an earlier failure of the writer thread (a full disk).
    #[inline]
    pub fn append(&mut self, vcpu: u32, body: Body<'_>, regs: Option<RegsSample>) -> Result<u64, WriteError> {
        check_declared(&self.header, &body)?;
        let seq = self.next_seq;
        let rec = Record { seq, vcpu, body, regs, timing: None, unknown: Unknown::default() };
        self.push(&rec)?;
        Ok(seq)
    }

    /// Appends what a device wrote into guest memory at `gpa`: one `GUEST_WRITE` record,
    /// or several consecutive ones of at most [`crate::MAX_GUEST_WRITE_DATA`] bytes each
    /// for a larger write (replay applies them in order, which is the same). Returns the
    /// sequence number of the last record. The cost is one copy of `data` into the chunk
    /// buffer (then the writer thread's compression), bounded per byte.
    ///
    /// # Errors
    /// The writer was not created with [`WriterOptions::guest_writes`], `gpa + data.len()`
    /// overflows, or as for [`Self::append`].
    pub fn append_guest_write(&mut self, vcpu: u32, gpa: u64, data: &[u8]) -> Result<u64, WriteError> {
        guest_write_parts(self.header.has_guest_writes(), gpa, data, |part_gpa, part| {
            self.append(vcpu, Body::GuestWrite(crate::GuestWrite { gpa: part_gpa, data: part }), None)
        })
    }

    /// Appends one `IRQ_LINE` record: the VMM changed interrupt line `gsi` of KVM's
    /// in-kernel irqchip (format 1.2).
    ///
    /// # Errors
    /// The writer was not created with [`WriterOptions::irq_lines`], or as for
    /// [`Self::append`].
    pub fn append_irq_line(&mut self, vcpu: u32, line: crate::IrqLine) -> Result<u64, WriteError> {
        self.append(vcpu, Body::IrqLine(line), None)
    }
}

/// Splits a guest write into `GUEST_WRITE` records of at most
/// [`crate::MAX_GUEST_WRITE_DATA`] bytes and appends each with `append`; returns the last
/// record's sequence number.
pub(crate) fn guest_write_parts(
    declared: bool,
    gpa: u64,
    data: &[u8],
    mut append: impl FnMut(u64, &[u8]) -> Result<u64, WriteError>,
) -> Result<u64, WriteError> {
    {
        if !declared {
            return Err(guest_writes_undeclared());
        }
        if gpa.checked_add(u64_from(data.len())).is_none() {
            return Err(WriteError::Unencodable {
                field: "guest_write gpa",
                detail: format!("{gpa:#x} + {} bytes overflows the address space", data.len()),
            });
        }
        // An empty write is still one record: the VMM said it wrote nothing there.
        let mut parts = data.chunks(crate::MAX_GUEST_WRITE_DATA).peekable();
        if parts.peek().is_none() {
            return append(gpa, data);
        }
        let mut seq = 0;
        let mut at = gpa;
        for part in parts {
            seq = append(at, part)?;
            at += u64_from(part.len());
        }
        Ok(seq)
    }
}

impl TraceWriter {
    /// Appends an exit record with its timing payload (see [`crate::timing`]).
    ///
    /// # Errors
    /// The writer was not created with [`WriterOptions::timing`], or as for [`Self::append`].
    #[inline]
    pub fn append_timed(
        &mut self,
        vcpu: u32,
        body: Body<'_>,
        regs: Option<RegsSample>,
        timing: Timing,
    ) -> Result<u64, WriteError> {
        if !self.header.has_timing() {
            return Err(timing_undeclared());
        }
        check_declared(&self.header, &body)?;
        let seq = self.next_seq;
        let rec = Record { seq, vcpu, body, regs, timing: Some(timing), unknown: Unknown::default() };
        self.push(&rec)?;
        Ok(seq)
    }

    /// Appends a record read from another trace, keeping its sequence number and any parts
    /// this version does not understand. Sequence numbers must increase.
    ///
    /// # Errors
    /// A sequence number not above the last one written, or as for [`Self::append`].
    pub fn append_record(&mut self, rec: &Record<'_>) -> Result<(), WriteError> {
        // A kind this version does not know is copied as its bytes: a timing payload found
        // in them is not written again.
        let writes_timing = rec.timing.is_some() && !matches!(rec.body, Body::Unknown { .. });
        if writes_timing && !self.header.has_timing() {
            return Err(timing_undeclared());
        }
        check_declared(&self.header, &rec.body)?;
        if rec.seq < self.next_seq {
            return Err(WriteError::Unencodable {
                field: "seq",
                detail: format!("{} does not follow {}", rec.seq, self.next_seq.saturating_sub(1)),
            });
        }
        if rec.seq != self.next_seq && self.count > 0 {
            // A gap: the chunk's records must be contiguous from first_seq, so start a new one.
            self.close_chunk()?;
        }
        self.next_seq = rec.seq;
        self.push(rec)
    }

    /// Appends the records of `raw` (encoded by [`encode`], back to back, sequence numbers
    /// `first_seq..first_seq + count` in order) as they are: how a [`SharedTrace`] hands
    /// its streams' merged records over. The caller guarantees the numbers follow
    /// [`Self::next_seq`] without a gap.
    pub(crate) fn append_encoded(&mut self, raw: &[u8], seq: u64) -> Result<(), WriteError> {
        if self.count > 0 && seq != self.next_seq {
            // Chunks stay contiguous from first_seq (a caller's gap starts a new one).
            self.close_chunk()?;
        }
        if self.count == 0 {
            self.first_seq = seq;
        }
        self.buf.extend_from_slice(raw);
        self.next_seq = seq + 1;
        self.count += 1;
        if self.buf.len() >= self.target || self.sync == SyncMode::Always || self.count == u32::MAX {
            self.close_chunk()?;
        }
        Ok(())
    }

    /// The chunk size this writer aims for.
    pub(crate) fn chunk_target(&self) -> usize {
        self.target
    }

    #[inline]
    fn push(&mut self, rec: &Record<'_>) -> Result<(), WriteError> {
        if self.count == 0 {
            self.first_seq = rec.seq;
        }
        encode(rec, &mut self.buf)?;
        self.next_seq = rec.seq + 1;
        self.count += 1;
        if self.buf.len() >= self.target
            || self.sync == SyncMode::Always
            || self.count == u32::MAX
            || self.shared.flush_due.load(Ordering::Relaxed)
        {
            self.close_chunk()?;
        }
        Ok(())
    }

    /// True once the flush interval has passed without a chunk reaching the writer thread:
    /// the next record, or [`Self::poll_flush`], closes the open chunk.
    pub fn flush_due(&self) -> bool {
        self.shared.flush_due.load(Ordering::Relaxed)
    }

    /// Closes the open chunk if the flush interval has passed; call it when the guest is
    /// about to block (for example in `HLT`) so a quiet guest's last records reach disk.
    ///
    /// # Errors
    /// As for [`Self::flush`].
    pub fn poll_flush(&mut self) -> Result<(), WriteError> {
        if self.count > 0 && self.shared.flush_due.load(Ordering::Relaxed) {
            self.close_chunk()?;
        }
        Ok(())
    }

    /// Hands the open chunk to the writer thread now.
    ///
    /// # Errors
    /// An earlier failure of the writer thread.
    pub fn flush(&mut self) -> Result<(), WriteError> {
        if self.count > 0 {
            self.close_chunk()?;
        }
        Ok(())
    }

    /// Hands the open chunk over and waits until everything written so far is durable.
    ///
    /// # Errors
    /// A write or sync failure.
    pub fn sync(&mut self) -> Result<(), WriteError> {
        self.close_chunk_acked(true)
    }

    fn close_chunk(&mut self) -> Result<(), WriteError> {
        self.close_chunk_acked(self.sync == SyncMode::Always)
    }

    fn gone(&mut self) -> WriteError {
        // The first call takes the thread's stored error; later calls describe it again.
        let taken = self.shared.error.lock().ok().and_then(|mut e| e.take());
        match taken {
            Some(e) => {
                self.last_err = Some(e.to_string());
                e
            }
            None => WriteError::WriterGone { path: self.name.clone() },
        }
    }

    fn close_chunk_acked(&mut self, wait: bool) -> Result<(), WriteError> {
        self.shared.flush_due.store(false, Ordering::Relaxed);
        if self.shared.failed.load(Ordering::Relaxed) {
            return Err(self.gone());
        }
        let Some(tx) = self.tx.as_ref() else {
            return Err(WriteError::WriterGone { path: self.name.clone() });
        };
        let (ack_tx, ack_rx) = if wait {
            let (a, b) = sync_channel(1);
            (Some(a), Some(b))
        } else {
            (None, None)
        };
        if self.count > 0 || wait {
            let next = match self.free.recv() {
                Ok(b) => b,
                Err(_) => return Err(self.gone()),
            };
            let buf = std::mem::replace(&mut self.buf, next);
            let job = Job::Chunk { buf, first_seq: self.first_seq, count: self.count, ack: ack_tx };
            if tx.send(job).is_err() {
                return Err(self.gone());
            }
            self.count = 0;
        }
        if let Some(rx) = ack_rx {
            if rx.recv().is_err() || self.shared.failed.load(Ordering::Relaxed) {
                return Err(self.gone());
            }
        }
        Ok(())
    }

    /// Writes the open chunk, the index and the trailer, syncs, and stops the thread.
    ///
    /// # Errors
    /// The first write or sync failure of the run.
    pub fn finish(mut self) -> Result<WriterSummary, WriteError> {
        let flushed = if self.count > 0 { self.close_chunk_acked(false) } else { Ok(()) };
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Job::Finish);
        }
        let joined = match self.thread.take() {
            Some(t) => t.join().unwrap_or_else(|_| Err(WriteError::WriterGone { path: self.name.clone() })),
            None => Err(WriteError::WriterGone { path: self.name.clone() }),
        };
        flushed?;
        joined
    }
}

impl Drop for TraceWriter {
    fn drop(&mut self) {
        // Dropped without finish(): stop the thread without writing an index, exactly as a
        // crash would leave the file (readable by scanning).
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

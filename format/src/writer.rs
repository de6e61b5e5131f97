//! Streaming trace writer.
//!
//! The recording thread only encodes records into an in-memory chunk buffer: no syscall,
//! no allocation (buffers are pre-allocated and recycled) and no compression on its path.
//! Full chunks go over a bounded queue to the writer's own thread, which compresses,
//! checksums, writes and (per [`SyncMode`]) syncs them. Memory is bounded by
//! `(queue_depth + 2) * (chunk_target + 64 KiB)` whatever the run's length; when the disk
//! is slower than the guest, the recording thread waits for a free buffer (backpressure)
//! rather than dropping records.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::bytes::{u64_from, usize_from};
use crate::chunk::{CHUNK_FLAG_SEQ_DELTA, CODEC_NONE, CODEC_ZSTD, ChunkHeader, MAX_CHUNK_RAW};
use crate::encode::encode;
use crate::error::WriteError;
use crate::features;
use crate::header::FileHeader;
use crate::index::{Index, IndexEntry, Trailer};
use crate::record::{Body, MAX_RECORD_SIZE, Record, RegsSample, Timing, Unknown};

/// When the writer makes data durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// Never `fsync` until [`TraceWriter::finish`]. Each chunk is handed to the kernel when
    /// it is written, so a killed process loses at most the open chunk (bounded by the
    /// flush interval); a host crash may lose what the page cache held.
    Never,
    /// `fdatasync` after every chunk: a host crash loses at most the open chunk.
    #[default]
    Chunk,
    /// Every record is its own chunk and is durable before `append` returns. Slow; for
    /// traces where losing the last exit is unacceptable.
    Always,
}

impl SyncMode {
    /// Parses `always`, `chunk` or `never`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "always" => Some(SyncMode::Always),
            "chunk" => Some(SyncMode::Chunk),
            "never" => Some(SyncMode::Never),
            _ => None,
        }
    }
}

/// Writer settings.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// zstd level, or `None` to store chunks uncompressed.
    pub zstd_level: Option<i32>,
    /// A chunk is closed once its payload reaches this many bytes.
    pub chunk_target: usize,
    /// When written records are synced to the disk (see [`SyncMode`]).
    pub sync: SyncMode,
    /// A chunk open longer than this is closed at the next record (or by
    /// [`TraceWriter::poll_flush`]), bounding what a crash loses in time.
    pub flush_interval: Duration,
    /// Chunks that may wait for the writer thread.
    pub queue_depth: usize,
    /// Identifier; random when `None`.
    pub trace_id: Option<[u8; 16]>,
    /// Creation time; now when `None`.
    pub created_unix_ns: Option<u64>,
    /// The trace will carry per-exit timing payloads: sets the optional `timing` feature
    /// in the header (a writer refuses timed records without it).
    pub timing: bool,
    /// The trace will carry `GUEST_WRITE` records (what an embedding VMM's devices wrote
    /// into guest memory): sets the required `guest-write` feature, which makes the file
    /// format 1.1 (a 1.0 reader refuses it by name). Without it the writer refuses guest
    /// writes and the file stays 1.0.
    pub guest_writes: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            zstd_level: Some(3),
            chunk_target: 256 * 1024,
            sync: SyncMode::default(),
            flush_interval: Duration::from_millis(200),
            queue_depth: 4,
            trace_id: None,
            created_unix_ns: None,
            timing: false,
            guest_writes: false,
        }
    }
}

/// Where a writer's bytes go: a file, or memory in tests and benchmarks.
pub trait TraceSink: Write + Send + 'static {
    /// Makes everything written so far durable (`fdatasync` for files).
    ///
    /// # Errors
    /// The OS error.
    fn sync(&mut self) -> std::io::Result<()>;

    /// Cuts the sink back to `len` bytes and continues writing there (after a failed
    /// write, to drop a partial chunk).
    ///
    /// # Errors
    /// The OS error, or a sink that cannot be cut.
    fn truncate(&mut self, len: u64) -> std::io::Result<()>;

    /// Continues writing at `pos` without changing the sink's length (the bytes after it
    /// are overwritten by what follows).
    ///
    /// # Errors
    /// The OS error.
    fn rewind(&mut self, pos: u64) -> std::io::Result<()>;

    /// Allocates storage for `[offset, offset + len)` without changing the visible length
    /// (`fallocate(FALLOC_FL_KEEP_SIZE)`), so that later writes there cannot fail for lack
    /// of space. The writer keeps room for the next chunk *and* the index this way: when
    /// the disk fills, the reservation fails first and the index still fits.
    ///
    /// # Errors
    /// `ErrorKind::Unsupported` when the sink cannot reserve (the writer then stops trying);
    /// anything else (a full disk) ends the recording.
    fn reserve(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
        let _ = (offset, len);
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

impl TraceSink for File {
    fn sync(&mut self) -> std::io::Result<()> {
        self.sync_data()
    }
    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        use std::io::Seek;
        self.set_len(len)?;
        self.seek(std::io::SeekFrom::Start(len)).map(|_| ())
    }
    fn rewind(&mut self, pos: u64) -> std::io::Result<()> {
        use std::io::Seek;
        self.seek(std::io::SeekFrom::Start(pos)).map(|_| ())
    }
    #[cfg(target_os = "linux")]
    fn reserve(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
        use rustix::fs::{FallocateFlags, fallocate};
        match fallocate(&*self, FallocateFlags::KEEP_SIZE, offset, len) {
            Ok(()) => Ok(()),
            Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => {
                Err(std::io::ErrorKind::Unsupported.into())
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// An in-memory sink whose bytes stay readable after the writer finishes.
#[derive(Debug, Clone, Default)]
pub struct MemorySink(pub Arc<Mutex<Vec<u8>>>);

impl MemorySink {
    /// A copy of the bytes written so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

impl Write for MemorySink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.lock() {
            Ok(mut v) => {
                v.extend_from_slice(buf);
                Ok(buf.len())
            }
            Err(_) => Err(std::io::Error::other("memory sink poisoned")),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl TraceSink for MemorySink {
    fn sync(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        let mut v = self.0.lock().map_err(|_| std::io::Error::other("memory sink poisoned"))?;
        v.truncate(usize::try_from(len).unwrap_or(usize::MAX));
        Ok(())
    }
    fn rewind(&mut self, pos: u64) -> std::io::Result<()> {
        // Appending after a cut is what overwriting from `pos` leaves once the writer
        // truncates to its final length.
        self.truncate(pos)
    }
}

/// A sink that counts bytes and discards them (benchmarks).
#[derive(Debug, Default)]
pub struct NullSink;

impl Write for NullSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl TraceSink for NullSink {
    fn sync(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn truncate(&mut self, _len: u64) -> std::io::Result<()> {
        Ok(())
    }
    fn rewind(&mut self, _pos: u64) -> std::io::Result<()> {
        Ok(())
    }
}

/// What a finished writer wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterSummary {
    /// Records written.
    pub records: u64,
    /// Chunks written.
    pub chunks: u64,
    /// Uncompressed record bytes.
    pub raw_bytes: u64,
    /// Stored chunk payload bytes.
    pub stored_bytes: u64,
    /// Total file size.
    pub file_bytes: u64,
}

enum Job {
    Chunk { buf: Vec<u8>, first_seq: u64, count: u32, ack: Option<SyncSender<()>> },
    Finish,
}

struct Shared {
    flush_due: AtomicBool,
    failed: AtomicBool,
    error: Mutex<Option<WriteError>>,
}

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
fn timing_undeclared() -> WriteError {
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
        let bg = Background {
            sink,
            name: name.clone(),
            rx,
            free: free_tx,
            shared: Arc::clone(&shared),
            level: opts.zstd_level,
            sync: opts.sync,
            flush_interval: opts.flush_interval,
            offset: u64::from(header.header_size),
            reserved_end: 0,
            reserving: true,
            index: Index::default(),
            summary: WriterSummary::default(),
            scratch: Vec::with_capacity(cap + 256),
        };
        let thread = std::thread::Builder::new()
            .name("vmrr-trace-writer".into())
            .spawn(move || bg.run())
            .map_err(|source| WriteError::Io { path: name.clone(), source })?;
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
        if matches!(body, Body::GuestWrite(_)) && !self.header.has_guest_writes() {
            return Err(guest_writes_undeclared());
        }
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
        if !self.header.has_guest_writes() {
            return Err(guest_writes_undeclared());
        }
        if gpa.checked_add(u64_from(data.len())).is_none() {
            return Err(WriteError::Unencodable {
                field: "guest_write gpa",
                detail: format!("{gpa:#x} + {} bytes overflows the address space", data.len()),
            });
        }
        let mut seq = self.next_seq;
        let mut at = gpa;
        // An empty write is still one record: the VMM said it wrote nothing there.
        let mut parts = data.chunks(crate::MAX_GUEST_WRITE_DATA).peekable();
        if parts.peek().is_none() {
            return self.append(vcpu, Body::GuestWrite(crate::GuestWrite { gpa, data }), None);
        }
        for part in parts {
            seq = self.append(vcpu, Body::GuestWrite(crate::GuestWrite { gpa: at, data: part }), None)?;
            at += u64_from(part.len());
        }
        Ok(seq)
    }

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
        if rec.timing.is_some() && !self.header.has_timing() {
            return Err(timing_undeclared());
        }
        if matches!(rec.body, Body::GuestWrite(_)) && !self.header.has_guest_writes() {
            return Err(guest_writes_undeclared());
        }
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

struct Background<S: TraceSink> {
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

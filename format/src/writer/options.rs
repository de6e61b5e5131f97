//! What a writer is asked to do ([`WriterOptions`], [`SyncMode`]) and what it did
//! ([`WriterSummary`]).

use std::time::Duration;

/// When the writer makes data durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// Never `fsync` until [`crate::TraceWriter::finish`]. Each chunk is handed to the kernel when
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
    /// [`crate::TraceWriter::poll_flush`]), bounding what a crash loses in time.
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
    /// The trace will carry `IRQ_LINE` records: sets the replay-required `irq-line`
    /// feature, which makes the file format 1.2. Without it the writer refuses them.
    pub irq_lines: bool,
    /// Several threads (vCPUs, device threads) append to the trace, usually through
    /// [`crate::TraceWriter::into_shared`]: sets the replay-required `threads` feature, which
    /// makes the file format 1.2.
    pub threads: bool,
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
            irq_lines: false,
            threads: false,
        }
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

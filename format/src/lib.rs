//! # vmrr-format: the vmrr trace format
//!
//! A trace is every `kvm_run` exit of a guest, one size-prefixed record each, grouped into
//! checksummed, zstd-compressed chunks behind a versioned header and ahead of a chunk index.
//! The format borrows its extensibility from KVM's own ABI:
//!
//! 1. every record starts with its total size, so a reader skips what it does not know;
//! 2. optional payloads are announced by flag bits and laid out in ascending flag order,
//!    and `ndata`-style counts are never trusted beyond the record's size;
//! 3. a record shorter than this version's layout reads as zeros (an older writer), a
//!    longer one is read for what is known and the rest is kept as raw bytes;
//! 4. padding and reserved fields are explicit, written as zero and rejected otherwise;
//! 5. the header carries a major.minor version and three feature bitmaps (optional,
//!    replay-required, required): a newer minor is read, a newer major or an unknown
//!    required feature is refused with a message naming it, and a replayer also refuses
//!    an unknown replay-required feature; a writer stamps the oldest version its file
//!    needs (1.1 only for a trace with guest-memory writes).
//!
//! The byte-level specification is `docs/FORMAT.md`. This crate has no KVM dependency: it
//! builds and reads traces on any host.
//!
//! ```
//! use vmrr_format::{Body, Direction, Io, TraceReader, TraceWriter, WriterOptions, MemorySink};
//!
//! let sink = MemorySink::default();
//! let mut w = TraceWriter::with_sink(sink.clone(), "mem".into(), WriterOptions::default())?;
//! let io = Io { direction: Direction::Out, size: 1, port: 0x3f8, count: 1, data: b"A" };
//! w.append(0, Body::Io(io), None)?;
//! w.finish()?;
//!
//! let mut r = TraceReader::from_bytes(sink.bytes(), "mem")?;
//! let rec = r.next_record().expect("one record")?;
//! assert_eq!(rec.body, Body::Io(io));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

pub mod axis;
pub mod bounded;
pub mod bundle;
mod bytes;
mod checksum;
pub mod chunk;
pub mod cursor;
pub mod date;
mod decode;
pub mod describe;
mod encode;
mod error;
pub mod features;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod header;
pub mod index;
pub mod input;
pub mod kind;
pub mod layout;
pub mod output;
pub mod overview;
mod owned;
pub mod progress;
mod reader;
mod record;
pub mod scratch;
pub mod timing;
mod verify;
mod writer;

/// Major version this crate writes and reads.
pub const VERSION_MAJOR: u16 = 1;
/// Newest minor version this crate writes (it reads any minor of its major). A writer stamps
/// the oldest version its file needs: 1.0 unless the file uses a 1.1 or 1.2 feature.
pub const VERSION_MINOR: u16 = 2;

pub use decode::{RecordError, decode, record_size};
pub use encode::encode;
pub use error::{DecodeError, FileError, Location, ReadError, Reason, WriteError};
pub use header::FileHeader;
pub use owned::RecordBuf;
pub use reader::{ChunkInfo, ChunkStats, Source, TraceReader};
pub use record::*;
pub use verify::{Damage, MAX_TRACKED_VCPUS, Stats, VerifyReport, stats, verify};
pub use writer::{
    MemorySink, NullSink, SharedTrace, SyncMode, TraceSink, TraceStream, TraceWriter, WriterOptions,
    WriterSummary, random_id,
};

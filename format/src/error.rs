//! Typed errors: every decode failure names where it happened and why.

use std::fmt;

/// Where in a trace a problem was found.
///
/// `offset` is always a byte offset in the file. For bytes inside a chunk's payload,
/// `chunk` holds the chunk's file offset and `offset` the position of the record within
/// the chunk's decompressed payload is given by `in_chunk`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Location {
    /// Byte offset in the file (for a record: the offset of the chunk holding it).
    pub offset: u64,
    /// Byte offset of the record inside its chunk's decompressed payload, if inside one.
    pub in_chunk: Option<u64>,
    /// Sequence number of the record concerned, where known.
    pub seq: Option<u64>,
}

impl Location {
    /// A location at a file offset.
    pub fn file(offset: u64) -> Self {
        Location { offset, in_chunk: None, seq: None }
    }

    /// A location inside the payload of the chunk at `chunk_offset`.
    pub fn in_chunk(chunk_offset: u64, in_chunk: u64, seq: Option<u64>) -> Self {
        Location { offset: chunk_offset, in_chunk: Some(in_chunk), seq }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.in_chunk {
            Some(inner) => write!(f, "offset {:#x} (chunk) + {:#x} (payload)", self.offset, inner)?,
            None => write!(f, "offset {:#x}", self.offset)?,
        }
        if let Some(seq) = self.seq {
            write!(f, ", record seq {seq}")?;
        }
        Ok(())
    }
}

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    /// A magic number did not match.
    #[error("bad {what} magic: found {found}")]
    BadMagic {
        /// Which structure.
        what: &'static str,
        /// The bytes found, in hex.
        found: String,
    },
    /// The byte-order mark reads as big-endian (or garbage).
    #[error("byte-order mark {found:#010x} is not 0x0a0b0c0d: not a little-endian vmrr trace")]
    ByteOrder {
        /// The value read.
        found: u32,
    },
    /// Fewer bytes were available than the structure needs.
    #[error("truncated {what}: needs {need} bytes, {have} available")]
    Truncated {
        /// Which structure.
        what: &'static str,
        /// Bytes needed.
        need: u64,
        /// Bytes available.
        have: u64,
    },
    /// A size field exceeds the format's fixed maximum.
    #[error("{what} of {size} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Which size field.
        what: &'static str,
        /// The value claimed.
        size: u64,
        /// The format's maximum.
        max: u64,
    },
    /// A size field is below the structure's minimum.
    #[error("{what} of {size} bytes is below the minimum of {min}")]
    TooSmall {
        /// Which size field.
        what: &'static str,
        /// The value claimed.
        size: u64,
        /// The minimum.
        min: u64,
    },
    /// A size or offset is not a multiple of 8.
    #[error("{what} {value:#x} is not a multiple of 8")]
    Misaligned {
        /// Which field.
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// Explicit padding or a reserved field holds a non-zero value.
    #[error("non-zero {what}")]
    NonZeroPadding {
        /// Which padding or reserved field.
        what: &'static str,
    },
    /// A CRC32C did not match.
    #[error("{what} checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// Which checksum.
        what: &'static str,
        /// Checksum stored in the file.
        stored: u32,
        /// Checksum computed over the bytes read.
        computed: u32,
    },
    /// The file's major version is newer than this reader.
    #[error(
        "format version {major}.{minor} is not readable: this reader supports major version {supported_major} (up to {supported_major}.{supported_minor}); upgrade vmrr"
    )]
    FutureMajor {
        /// Major version in the file.
        major: u16,
        /// Minor version in the file.
        minor: u16,
        /// Major version this reader supports.
        supported_major: u16,
        /// Newest minor version this reader knows.
        supported_minor: u16,
    },
    /// The file requires a feature this reader does not implement.
    #[error("{}", describe_unknown_feature(*bit, named.as_ref(), *reader))]
    UnknownRequiredFeature {
        /// Feature bit in `incompat_features`.
        bit: u8,
        /// The feature's name and the format version that introduced it, when the file's
        /// feature table has a descriptor for the bit.
        named: Option<(String, (u16, u16))>,
        /// The format version the refusing reader implements.
        reader: (u16, u16),
    },
    /// A chunk uses a compression codec this reader does not know.
    #[error("unknown chunk codec {codec}")]
    UnknownCodec {
        /// The codec number.
        codec: u8,
    },
    /// Decompression failed or produced the wrong number of bytes.
    #[error("decompression failed: {detail}")]
    Decompress {
        /// What the decompressor reported.
        detail: String,
    },
    /// A count (`ndata`-style) claims more data than the record holds.
    #[error("{what} count {count} needs {needed} bytes but only {available} remain in the record")]
    CountExceedsRecord {
        /// Which count.
        what: &'static str,
        /// The count claimed.
        count: u64,
        /// Bytes the count implies.
        needed: u64,
        /// Bytes left in the record.
        available: u64,
    },
    /// A count of fixed-size entries does not fill the bytes its structure holds for them.
    #[error("{what} {count} x {unit} bytes fills {} bytes, but {available} bytes of entries are there", count.saturating_mul(u64::from(*unit)))]
    CountMismatch {
        /// Which count.
        what: &'static str,
        /// The count claimed.
        count: u64,
        /// Bytes per entry.
        unit: u32,
        /// Bytes the structure holds for the entries.
        available: u32,
    },
    /// A field holds a value outside its domain.
    #[error("invalid {field}: {value:#x}")]
    InvalidValue {
        /// Which field.
        field: &'static str,
        /// The value found.
        value: u64,
    },
    /// Text that must be UTF-8 is not.
    #[error("{field} is not valid UTF-8")]
    InvalidUtf8 {
        /// Which field.
        field: &'static str,
    },
    /// Sequence numbers went backwards or repeated.
    #[error("sequence number {found} does not follow {previous}")]
    SequenceOrder {
        /// The previous sequence number.
        previous: u64,
        /// The one found.
        found: u64,
    },
    /// A chunk header disagrees with the records in its payload.
    #[error("chunk header says {what} is {expected}, payload has {found}")]
    ChunkMismatch {
        /// Which property.
        what: &'static str,
        /// Value in the chunk header.
        expected: u64,
        /// Value found in the payload.
        found: u64,
    },
}

/// The refusal FORMAT.md §3 words: by name when a descriptor names the bit, by number
/// otherwise.
fn describe_unknown_feature(bit: u8, named: Option<&(String, (u16, u16))>, (maj, min): (u16, u16)) -> String {
    let feature = match named {
        Some((n, (a, b))) => format!("feature '{n}' (required bit {bit}, introduced in format {a}.{b})"),
        None => format!("unknown feature (required bit {bit})"),
    };
    format!("trace requires {feature}; this reader implements format {maj}.{min}: upgrade vmrr")
}

/// A decode failure: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at {location}: {reason}")]
pub struct DecodeError {
    /// Where in the file (and chunk) the fault lies.
    pub location: Location,
    /// What is wrong there.
    pub reason: Reason,
}

impl DecodeError {
    /// Builds an error at a file offset.
    pub fn at(offset: u64, reason: Reason) -> Self {
        DecodeError { location: Location::file(offset), reason }
    }

    /// True for damage a crash or a full disk can leave at the end of a trace: a truncated
    /// structure, a checksum over bytes that never fully reached the disk, or zeros where
    /// a chunk should start. Anything else inside checksummed bytes (an impossible size, a
    /// count beyond its record, non-zero padding) was written that way: corruption or a
    /// hostile file, never a torn write.
    pub fn could_be_torn_write(&self) -> bool {
        matches!(self.reason, Reason::Truncated { .. } | Reason::Checksum { .. } | Reason::BadMagic { .. })
    }
}

/// An error reading a trace file.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The operating system failed a read.
    #[error("cannot read {path} at offset {offset:#x}")]
    Io {
        /// The file.
        path: String,
        /// Where the read started.
        offset: u64,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a valid trace.
    #[error("{path}: {error}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong, and where.
        error: DecodeError,
    },
    /// The file is a FIFO, a device or a pseudo file (see `crate::input`): not read.
    #[error(
        "{path}: offset 0x0: {kind}, not a regular file: vmrr reads only regular files (copy it into one first)"
    )]
    NotRegular {
        /// The file.
        path: String,
        /// What it is.
        kind: &'static str,
    },
}

impl ReadError {
    /// The decode error, when the failure is invalid content rather than I/O.
    pub fn decode_error(&self) -> Option<&DecodeError> {
        match self {
            ReadError::Invalid { error, .. } => Some(error),
            ReadError::Io { .. } | ReadError::NotRegular { .. } => None,
        }
    }

    /// True when the file is damaged, invalid, or not a regular file (bad input), as
    /// opposed to the operating system failing a read.
    pub fn is_invalid_input(&self) -> bool {
        matches!(self, ReadError::Invalid { .. } | ReadError::NotRegular { .. })
    }
}

/// An error writing a trace file.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The operating system failed a write, flush or sync (a full disk shows up here).
    #[error("cannot write trace {path}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A record is larger than the format allows.
    #[error("record of {size} bytes exceeds the maximum of {max}")]
    RecordTooLarge {
        /// Encoded size.
        size: u64,
        /// [`crate::MAX_RECORD_SIZE`].
        max: u64,
    },
    /// A record field is outside what the format can express.
    #[error("cannot encode {field}: {detail}")]
    Unencodable {
        /// The field.
        field: &'static str,
        /// What about it cannot be encoded.
        detail: String,
    },
    /// Compression failed.
    #[error("zstd compression failed")]
    Compress(#[source] std::io::Error),
    /// The writer's background thread stopped (after an earlier error or a panic).
    #[error("trace writer thread for {path} stopped")]
    WriterGone {
        /// The file.
        path: String,
    },
}

impl WriteError {
    /// True when the cause is a full disk or exhausted quota.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, WriteError::Io { source, .. }
            if matches!(source.raw_os_error(), Some(28 /* ENOSPC */) | Some(122 /* EDQUOT */)))
    }
}

/// An OS call on a file failed: what was being done, the file, and the OS error. Every
/// crate's errors carry this for file-system failures, so a message always names the file.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}", path.display())]
pub struct FileError {
    /// What was being done ("opening", "writing", ...).
    pub what: &'static str,
    /// The file.
    pub path: std::path::PathBuf,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

impl FileError {
    /// A closure that wraps an OS error from `what` on `path`, for `map_err`.
    pub fn on(what: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> FileError {
        let path = path.to_path_buf();
        move |source| FileError { what, path, source }
    }
}

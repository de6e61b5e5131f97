//! The snapshot state file, and the one place bincode is used (so it can be swapped).
//!
//! | off | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `"VMRRSNAP"` |
//! | 8 | 2 | `major` (1) |
//! | 10 | 2 | `minor` (0 or 1) |
//! | 12 | 4 | reserved, zero |
//! | 16 | 8 | `payload_len` (at most [`MAX_STATE`]) |
//! | 24 | `payload_len` | bincode 1.3 (fixed-width integers, little-endian) of the state |
//! | end | 8 | CRC-64/XZ of everything before it |
//!
//! bincode is not self-describing, so any change to the state's types is a new major
//! version, and a reader refuses every major but its own with a message naming both.
//! (The trace has its own extensible format for exactly this reason.)
//!
//! Minor 1 appends: the payload is the minor-0 value followed by a second bincode value
//! (an extension the minor-0 reader does not know, such as KVM's in-kernel irqchip). A
//! writer writes minor 0, byte for byte as before, whenever it has no extension; a
//! minor-0 reader refuses a minor-1 file ("N bytes after the state"), never misreads it.

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use bincode::Options;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The first 8 bytes of every state file.
pub const MAGIC: [u8; 8] = *b"VMRRSNAP";
/// Major version written and read.
pub const MAJOR: u16 = 1;
/// Minor version written when there is no extension.
pub const MINOR: u16 = 0;
/// Newest minor version read (1: an extension follows the state).
pub const MINOR_MAX: u16 = 1;
/// Largest payload accepted (checked before anything is allocated or decoded).
pub const MAX_STATE: u64 = 64 << 20;
const HEADER: usize = 24;
/// State files up to this size are read whole (see [`read`]).
const SMALL: u64 = 1 << 20;
/// Slice-by-16 tables: a state's page bitmaps (256 KiB per 8 GiB slot) are checked on every
/// restore, several times faster than the byte-wise table.
const CRC64: crc::Crc<u64, crc::Table<16>> = crc::Crc::<u64, crc::Table<16>>::new(&crc::CRC_64_XZ);

/// Why a state file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The OS failed a read or write.
    #[error(transparent)]
    File(#[from] vmrr_format::FileError),
    /// Not a vmrr snapshot state file.
    #[error("{path}: offset 0x0: bad magic (not a vmrr snapshot state file)")]
    Magic {
        /// The state file.
        path: String,
    },
    /// A newer minor version than this reader knows.
    #[error(
        "{path}: offset 0xa: snapshot state version {major}.{minor} is newer than this vmrr reads ({MAJOR}.0 to {MAJOR}.{MINOR_MAX}): it may hold state this vmrr cannot restore; use a newer vmrr"
    )]
    Minor {
        /// The state file.
        path: String,
        /// The major version the file has.
        major: u16,
        /// The minor version the file has.
        minor: u16,
    },
    /// A different major version.
    #[error(
        "{path}: offset 0x8: snapshot state version {major}.{minor} is not readable by this vmrr (reads {MAJOR}.x): re-take the snapshot with this version, or use the vmrr that wrote it"
    )]
    Version {
        /// The state file.
        path: String,
        /// The major version the file has.
        major: u16,
        /// The minor version the file has.
        minor: u16,
    },
    /// A field of the framing is invalid.
    #[error("{path}: offset {offset:#x}: {reason}")]
    Framing {
        /// The state file.
        path: String,
        /// Offset of the faulty field.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The checksum does not match.
    #[error("{path}: offset {offset:#x}: CRC-64 mismatch: stored {stored:#018x}, computed {computed:#018x}")]
    Checksum {
        /// The state file.
        path: String,
        /// Offset of the stored CRC.
        offset: u64,
        /// The CRC the file stores.
        stored: u64,
        /// The CRC of the bytes read.
        computed: u64,
    },
    /// The payload does not decode as this version's state.
    #[error("{path}: offset {offset:#x}: state does not decode here")]
    Decode {
        /// The file.
        path: String,
        /// Where decoding stopped: the first byte after the last field read.
        offset: u64,
        /// bincode's error.
        #[source]
        source: bincode::Error,
    },
    /// The file is not a regular file.
    #[error(transparent)]
    Input(#[from] vmrr_format::input::InputError),
    /// Encoding failed (a bug).
    #[error("cannot encode snapshot state")]
    Encode(#[source] bincode::Error),
}

fn options() -> impl Options {
    options_within(MAX_STATE)
}

/// The state encoding, reading at most `limit` bytes: every length prefix is checked
/// against the bytes that remain before anything is allocated for it.
fn options_within(limit: u64) -> impl Options {
    bincode::DefaultOptions::new().with_fixint_encoding().with_little_endian().with_limit(limit)
}

/// Serialises `v` (bincode, the state encoding).
///
/// # Errors
/// [`CodecError::Encode`].
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, CodecError> {
    options().serialize(v).map_err(CodecError::Encode)
}

/// Bytes `v` takes in the state encoding (to locate fields for error messages).
pub fn encoded_len<T: Serialize>(v: &T) -> u64 {
    options().serialized_size(v).unwrap_or(0)
}

/// Offset of the payload in a state file.
pub const PAYLOAD_OFFSET: u64 = HEADER as u64;

/// Frames `payload` as minor 0 (header, payload, CRC).
pub fn frame(payload: &[u8]) -> Vec<u8> {
    frame_minor(payload, MINOR)
}

/// Frames `payload` with minor version `minor`.
pub fn frame_minor(payload: &[u8], minor: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len() + 8);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&MAJOR.to_le_bytes());
    out.extend_from_slice(&minor.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    let crc = CRC64.checksum(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Reads and checks a state file: a regular file, size cap, magic, version, reserved
/// field, CRC (read in blocks), then decodes it straight from the file. Nothing is decoded
/// before every check passed. A file of more than 1 MiB is never held in memory beside
/// the decoded state (loading costs about the state's own size); a smaller one is read
/// whole, once.
///
/// # Errors
/// A [`CodecError`] naming the file, offset and reason.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<T, CodecError> {
    let (v, ext) = read_parts::<T, ()>(path)?;
    match ext {
        None => Ok(v),
        Some(()) => Err(CodecError::Minor { path: path.display().to_string(), major: MAJOR, minor: 1 }),
    }
}

/// As [`read`], for a state that may carry an extension: a minor-0 file gives `(T, None)`,
/// a minor-1 file `(T, Some(E))` (the extension decoded after the state, every payload
/// byte used).
///
/// # Errors
/// As for [`read`]; a minor above [`MINOR_MAX`] is [`CodecError::Minor`].
pub fn read_parts<T: DeserializeOwned, E: DeserializeOwned>(
    path: &Path,
) -> Result<(T, Option<E>), CodecError> {
    let name = path.display().to_string();
    let io = |what| vmrr_format::FileError::on(what, path);
    let (f, md) = vmrr_format::input::open_regular(path)?;
    let len = md.len();
    let framing = |offset: u64, reason: String| CodecError::Framing { path: name.clone(), offset, reason };
    if len > MAX_STATE + (HEADER as u64) + 8 {
        return Err(framing(0, format!("file of {len} bytes exceeds the state limit of {MAX_STATE}")));
    }
    if len < (HEADER as u64) + 8 {
        return Err(framing(0, format!("truncated: {len} bytes, the framing alone needs {}", HEADER + 8)));
    }
    if len <= SMALL {
        // One read, checked and decoded in memory: a state of up to SMALL bytes (every
        // state up to 8 GiB of guest memory per incremental slot bitmap) costs no more
        // than twice its size while loading, and no reads in small pieces.
        let mut bytes = vec![0u8; usize::try_from(len).unwrap_or(0)];
        f.read_exact_at(&mut bytes, 0).map_err(io("reading"))?;
        let mut h = [0u8; HEADER];
        h.copy_from_slice(&bytes[..HEADER]);
        let (plen, minor) = check_header(&h, len, &name)?;
        let crc_at = bytes.len() - 8;
        let stored = u64::from_le_bytes(bytes[crc_at..].try_into().unwrap_or_default());
        let computed = CRC64.checksum(&bytes[..crc_at]);
        if stored != computed {
            return Err(CodecError::Checksum { path: name, offset: crc_at as u64, stored, computed });
        }
        let payload = bytes.get(HEADER..crc_at).unwrap_or_default();
        // Decoded from the slice (a page bitmap's words at memory speed); only a payload
        // that fails is decoded again through the counting reader, to name the offset.
        if minor == 0 {
            if let Ok(v) = options_within(plen).reject_trailing_bytes().deserialize(payload) {
                return Ok((v, None));
            }
        }
        return decode_payload(payload, plen, minor, &name);
    }
    let mut h = [0u8; HEADER];
    f.read_exact_at(&mut h, 0).map_err(io("reading"))?;
    let (plen, minor) = check_header(&h, len, &name)?;
    // The CRC over everything before it, in blocks.
    let crc_at = len - 8;
    let mut digest = CRC64.digest();
    let mut buf = vec![0u8; usize::try_from(crc_at.min(1 << 20)).unwrap_or(1 << 20)];
    let mut p = 0u64;
    while p < crc_at {
        let n = usize::try_from((crc_at - p).min(buf.len() as u64)).unwrap_or(0);
        f.read_exact_at(&mut buf[..n], p).map_err(io("reading"))?;
        digest.update(&buf[..n]);
        p += n as u64;
    }
    drop(buf);
    let mut tail = [0u8; 8];
    f.read_exact_at(&mut tail, crc_at).map_err(io("reading"))?;
    let stored = u64::from_le_bytes(tail);
    let computed = digest.finalize();
    if stored != computed {
        return Err(CodecError::Checksum { path: name, offset: crc_at, stored, computed });
    }
    let payload = std::io::BufReader::with_capacity(64 << 10, Positioned { file: &f, pos: HEADER as u64 });
    decode_payload(payload.take(plen), plen, minor, &name)
}

/// Reads a file from a position on, positionally.
struct Positioned<'a> {
    file: &'a std::fs::File,
    pos: u64,
}

impl Read for Positioned<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Counts the bytes read through it (where a decode error happened).
struct Counting<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

/// Decodes a payload of `plen` bytes from `r`: the state, then (minor 1) its extension;
/// every byte must be used.
fn decode_payload<T: DeserializeOwned, E: DeserializeOwned>(
    r: impl Read,
    plen: u64,
    minor: u16,
    name: &str,
) -> Result<(T, Option<E>), CodecError> {
    let mut c = Counting { inner: r, read: 0 };
    // Limited to the payload: a length prefix longer than what remains is refused before
    // a buffer is sized from it (bincode's reader sizes its buffer first, then reads).
    let v = options_within(plen).deserialize_from(&mut c).map_err(|source| CodecError::Decode {
        path: name.to_string(),
        offset: PAYLOAD_OFFSET + c.read,
        source,
    })?;
    let ext = if minor >= 1 {
        let left = plen.saturating_sub(c.read);
        Some(options_within(left).deserialize_from(&mut c).map_err(|source| CodecError::Decode {
            path: name.to_string(),
            offset: PAYLOAD_OFFSET + c.read,
            source,
        })?)
    } else {
        None
    };
    if c.read != plen {
        return Err(CodecError::Framing {
            path: name.to_string(),
            offset: PAYLOAD_OFFSET + c.read,
            reason: format!("{} bytes after the state (payload_len {plen})", plen - c.read),
        });
    }
    Ok((v, ext))
}

/// Checks the header of a file of `len` bytes; returns `payload_len` and the minor version.
fn check_header(b: &[u8; HEADER], len: u64, name: &str) -> Result<(u64, u16), CodecError> {
    if b[..8] != MAGIC {
        return Err(CodecError::Magic { path: name.to_string() });
    }
    let major = u16::from_le_bytes([b[8], b[9]]);
    let minor = u16::from_le_bytes([b[10], b[11]]);
    if major != MAJOR {
        return Err(CodecError::Version { path: name.to_string(), major, minor });
    }
    if minor > MINOR_MAX {
        return Err(CodecError::Minor { path: name.to_string(), major, minor });
    }
    let framing =
        |offset: u64, reason: String| CodecError::Framing { path: name.to_string(), offset, reason };
    if b[12..16] != [0; 4] {
        return Err(framing(12, "non-zero reserved field".into()));
    }
    let plen = u64::from_le_bytes([b[16], b[17], b[18], b[19], b[20], b[21], b[22], b[23]]);
    let expect = (HEADER as u64).checked_add(plen).and_then(|v| v.checked_add(8));
    if plen > MAX_STATE || expect != Some(len) {
        return Err(framing(16, format!("payload_len {plen} disagrees with the file size {len}")));
    }
    Ok((plen, minor))
}

/// Recomputes the CRC-64 at the end of state-file bytes (for fuzzing and crafted test
/// files). False when `b` is too short to hold one.
pub fn fix_checksum(b: &mut [u8]) -> bool {
    let Some(at) = b.len().checked_sub(8).filter(|at| *at >= HEADER) else { return false };
    let crc = CRC64.checksum(&b[..at]);
    b[at..].copy_from_slice(&crc.to_le_bytes());
    true
}

/// Checks and decodes the bytes of a state file named `name` (for messages): framing,
/// version, reserved field, size, CRC, then the payload.
///
/// # Errors
/// A [`CodecError`] naming the file, offset and reason.
pub fn decode<T: DeserializeOwned>(b: &[u8], name: &str) -> Result<T, CodecError> {
    match decode_parts::<T, ()>(b, name)? {
        (v, None) => Ok(v),
        (_, Some(())) => Err(CodecError::Minor { path: name.to_string(), major: MAJOR, minor: 1 }),
    }
}

/// As [`decode`], for a state that may carry an extension (see [`read_parts`]).
///
/// # Errors
/// A [`CodecError`] naming the file, offset and reason.
pub fn decode_parts<T: DeserializeOwned, E: DeserializeOwned>(
    b: &[u8],
    name: &str,
) -> Result<(T, Option<E>), CodecError> {
    let len = b.len() as u64;
    let Some(h) = b.first_chunk::<HEADER>().filter(|_| b.len() >= HEADER + 8) else {
        return Err(CodecError::Framing {
            path: name.to_string(),
            offset: 0,
            reason: format!("truncated: {} bytes, the framing alone needs {}", b.len(), HEADER + 8),
        });
    };
    let (plen, minor) = check_header(h, len, name)?;
    let crc_at = b.len() - 8;
    let stored = u64::from_le_bytes(b[crc_at..].try_into().unwrap_or([0; 8]));
    let computed = CRC64.checksum(&b[..crc_at]);
    if stored != computed {
        return Err(CodecError::Checksum { path: name.to_string(), offset: crc_at as u64, stored, computed });
    }
    decode_payload(&b[HEADER..crc_at], plen, minor, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip_and_refusals() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s");
        let v: Vec<u64> = vec![1, 2, 3];
        std::fs::write(&p, frame(&encode(&v).unwrap())).unwrap();
        assert_eq!(read::<Vec<u64>>(&p).unwrap(), v);
        let good = std::fs::read(&p).unwrap();
        // CRC
        let mut b = good.clone();
        b[30] ^= 1;
        std::fs::write(&p, &b).unwrap();
        assert!(matches!(read::<Vec<u64>>(&p), Err(CodecError::Checksum { .. })));
        // future major
        let mut b = good.clone();
        b[8] = 2;
        std::fs::write(&p, &b).unwrap();
        let e = read::<Vec<u64>>(&p).unwrap_err();
        assert!(e.to_string().contains("2.0") && e.to_string().contains("not readable"), "{e}");
        // a payload length that lies
        let mut b = good;
        b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&p, &b).unwrap();
        assert!(matches!(read::<Vec<u64>>(&p), Err(CodecError::Framing { offset: 16, .. })));
        // a valid CRC over a vector whose length prefix claims 2^60 elements
        let mut payload = encode(&v).unwrap();
        payload[..8].copy_from_slice(&(1u64 << 60).to_le_bytes());
        std::fs::write(&p, frame(&payload)).unwrap();
        assert!(matches!(read::<Vec<u64>>(&p), Err(CodecError::Decode { .. })));
    }
}

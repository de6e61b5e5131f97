//! The snapshot state file, and the one place bincode is used (so it can be swapped).
//!
//! | off | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `"VMRRSNAP"` |
//! | 8 | 2 | `major` (1) |
//! | 10 | 2 | `minor` (0) |
//! | 12 | 4 | reserved, zero |
//! | 16 | 8 | `payload_len` (at most [`MAX_STATE`]) |
//! | 24 | `payload_len` | bincode 1.3 (fixed-width integers, little-endian) of the state |
//! | end | 8 | CRC-64/XZ of everything before it |
//!
//! bincode is not self-describing, so any change to the state's types is a new major
//! version, and a reader refuses every major but its own with a message naming both.
//! (The trace has its own extensible format for exactly this reason.)

use std::io::Read;
use std::path::Path;

use bincode::Options;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The first 8 bytes of every state file.
pub const MAGIC: [u8; 8] = *b"VMRRSNAP";
/// Major version written and read.
pub const MAJOR: u16 = 1;
/// Minor version written.
pub const MINOR: u16 = 0;
/// Largest payload accepted (checked before anything is allocated or decoded).
pub const MAX_STATE: u64 = 64 << 20;
const HEADER: usize = 24;
const CRC64: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_XZ);

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
    #[error("{path}: offset 0x18: state does not decode")]
    Decode {
        /// The file.
        path: String,
        /// bincode's error.
        #[source]
        source: bincode::Error,
    },
    /// Encoding failed (a bug).
    #[error("cannot encode snapshot state")]
    Encode(#[source] bincode::Error),
}

fn options() -> impl Options {
    bincode::DefaultOptions::new().with_fixint_encoding().with_little_endian().with_limit(MAX_STATE)
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

/// Frames `payload` (header, payload, CRC).
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len() + 8);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&MAJOR.to_le_bytes());
    out.extend_from_slice(&MINOR.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    let crc = CRC64.checksum(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Reads and checks a state file: size cap, magic, version, reserved field, CRC, then
/// decodes. Nothing is decoded before every check passed.
///
/// # Errors
/// A [`CodecError`] naming the file, offset and reason.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<T, CodecError> {
    let name = path.display().to_string();
    let io = |what| vmrr_format::FileError::on(what, path);
    let mut f = std::fs::File::open(path).map_err(io("opening"))?;
    let len = f.metadata().map_err(io("reading"))?.len();
    let framing = |offset: u64, reason: String| CodecError::Framing { path: name.clone(), offset, reason };
    if len > MAX_STATE + (HEADER as u64) + 8 {
        return Err(framing(0, format!("file of {len} bytes exceeds the state limit of {MAX_STATE}")));
    }
    let mut b = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    // `take`: the file may grow while it is read; never read past the cap.
    (&mut f).take(MAX_STATE + (HEADER as u64) + 8).read_to_end(&mut b).map_err(io("reading"))?;
    decode(&b, &name)
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
    let name = name.to_string();
    let framing = |offset: u64, reason: String| CodecError::Framing { path: name.clone(), offset, reason };
    if b.len() < HEADER + 8 {
        return Err(framing(
            0,
            format!("truncated: {} bytes, the framing alone needs {}", b.len(), HEADER + 8),
        ));
    }
    if b[..8] != MAGIC {
        return Err(CodecError::Magic { path: name });
    }
    let major = u16::from_le_bytes([b[8], b[9]]);
    let minor = u16::from_le_bytes([b[10], b[11]]);
    if major != MAJOR {
        return Err(CodecError::Version { path: name, major, minor });
    }
    if b[12..16] != [0; 4] {
        return Err(framing(12, "non-zero reserved field".into()));
    }
    let plen = u64::from_le_bytes(b[16..24].try_into().unwrap_or([0; 8]));
    let expect = (HEADER as u64).checked_add(plen).and_then(|v| v.checked_add(8));
    if plen > MAX_STATE || expect != Some(b.len() as u64) {
        return Err(framing(16, format!("payload_len {plen} disagrees with the file size {}", b.len())));
    }
    let crc_at = b.len() - 8;
    let stored = u64::from_le_bytes(b[crc_at..].try_into().unwrap_or([0; 8]));
    let computed = CRC64.checksum(&b[..crc_at]);
    if stored != computed {
        return Err(CodecError::Checksum { path: name, offset: crc_at as u64, stored, computed });
    }
    options().deserialize(&b[HEADER..crc_at]).map_err(|source| CodecError::Decode { path: name, source })
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

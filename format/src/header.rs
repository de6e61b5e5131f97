//! The file header: magic, byte order, version, feature bitmaps, creation metadata.
//!
//! Layout (all little-endian; see `docs/FORMAT.md` §3):
//!
//! | off | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `"VMRRTRC\0"` |
//! | 8 | 4 | byte-order mark `0x0a0b0c0d` |
//! | 12 | 4 | `header_size` (multiple of 8, 80..=4096) |
//! | 16 | 2 | `version_major` |
//! | 18 | 2 | `version_minor` |
//! | 20 | 4 | reserved, zero |
//! | 24 | 8 | `compat_features` |
//! | 32 | 8 | `incompat_features` |
//! | 40 | 8 | `created_unix_ns` |
//! | 48 | 16 | `trace_id` |
//! | 64 | 4 | `feature_table_offset` (72 in 1.0, 80 from 1.1) |
//! | 68 | 4 | `feature_count` |
//! | 72 | 8 | `replay_required_features` (1.1; present when the table starts at 80 or later; 1.2 adds no field) |
//! | ... | 24 each | feature descriptors |
//! | `header_size-8` | 4 | reserved, zero |
//! | `header_size-4` | 4 | CRC32C of bytes `[0, header_size-4)` |
//!
//! A writer stamps the oldest version that can read the file: a trace that uses no 1.1
//! feature is written with the 1.0 layout, byte for byte as a 1.0 writer wrote it.

use crate::bytes::{PutLe, all_zero, u64_from, usize_from};
use crate::checksum;
use crate::cursor::{u16_at, u32_at, u64_at};
use crate::error::{DecodeError, Reason};
use crate::features::{self, Feature, FeatureClass};
use crate::{VERSION_MAJOR, VERSION_MINOR};

/// File magic.
pub const MAGIC: [u8; 8] = *b"VMRRTRC\0";
/// Byte-order mark as written (little-endian bytes `0d 0c 0b 0a`).
pub const BYTE_ORDER_MARK: u32 = 0x0a0b_0c0d;
/// Size of the fixed part of the header in this version (1.1): the feature table starts here.
pub const FIXED_SIZE: usize = 80;
/// Size of the fixed part of a 1.0 header.
pub const FIXED_SIZE_1_0: usize = 72;
/// Offset of `replay_required_features` (format 1.1).
pub const REPLAY_REQUIRED_OFFSET: usize = 72;
/// Size of one feature descriptor.
pub const FEATURE_DESC_SIZE: usize = 24;
/// Largest header a reader accepts.
pub const MAX_HEADER_SIZE: u32 = 4096;
/// Smallest valid header: fixed part plus the reserved word and CRC.
pub const MIN_HEADER_SIZE: u32 = 80;
/// Bytes every major version keeps as they are here (magic, byte order, `header_size`,
/// version): what a reader needs to refuse a file of another major.
pub const PREFIX_SIZE: usize = 20;

/// A feature descriptor as found in a file's feature table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureDesc {
    /// Bit number.
    pub bit: u8,
    /// Which bitmap the bit belongs to.
    pub class: FeatureClass,
    /// Version that introduced it.
    pub introduced: (u16, u16),
    /// Name, as written.
    pub name: String,
}

/// The decoded file header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHeader {
    /// Size of the header in bytes; chunks start here.
    pub header_size: u32,
    /// Major version: a reader refuses a newer major.
    pub version_major: u16,
    /// Minor version: a newer minor is readable.
    pub version_minor: u16,
    /// Optional features in use.
    pub compat_features: u64,
    /// Required features in use.
    pub incompat_features: u64,
    /// Replay-required features in use (format 1.1; zero in a 1.0 header).
    pub replay_required_features: u64,
    /// Creation time, nanoseconds since the Unix epoch.
    pub created_unix_ns: u64,
    /// Random identifier; snapshots name the trace they belong to by it.
    pub trace_id: [u8; 16],
    /// The feature table.
    pub features: Vec<FeatureDesc>,
}

impl FileHeader {
    /// A header for a new file using `features`, stamped with the oldest version that
    /// defines them all (1.0 unless a 1.1 feature is among them), in that version's layout.
    pub fn new(created_unix_ns: u64, trace_id: [u8; 16], features: &[Feature]) -> Self {
        // The replay-required word exists from 1.1 on, whatever its feature claims.
        let floor = if features.iter().any(|f| f.class == FeatureClass::ReplayRequired) {
            (VERSION_MAJOR, 1)
        } else {
            (VERSION_MAJOR, 0)
        };
        let (version_major, version_minor) = features.iter().map(|f| f.introduced).fold(floor, std::cmp::max);
        let mut h = FileHeader {
            header_size: 0,
            version_major,
            version_minor,
            compat_features: 0,
            incompat_features: 0,
            replay_required_features: 0,
            created_unix_ns,
            trace_id,
            features: Vec::new(),
        };
        for f in features {
            match f.class {
                FeatureClass::Optional => h.compat_features |= f.mask(),
                FeatureClass::Required => h.incompat_features |= f.mask(),
                FeatureClass::ReplayRequired => h.replay_required_features |= f.mask(),
            }
            h.features.push(FeatureDesc {
                bit: f.bit,
                class: f.class,
                introduced: f.introduced,
                name: f.name.to_string(),
            });
        }
        h.header_size = u32::try_from(h.fixed_size() + FEATURE_DESC_SIZE * h.features.len() + 8)
            .unwrap_or(MAX_HEADER_SIZE);
        h
    }

    /// The fixed part this header's version writes: 72 bytes in 1.0, 80 from 1.1.
    pub fn fixed_size(&self) -> usize {
        if (self.version_major, self.version_minor) <= (1, 0) { FIXED_SIZE_1_0 } else { FIXED_SIZE }
    }

    /// The trace id as 32 hex digits.
    pub fn trace_id_hex(&self) -> String {
        crate::describe::hex(&self.trace_id)
    }

    /// Serialises the header in its version's layout (1.0: table at 72; 1.1: the
    /// replay-required word at 72, table at 80).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(usize_from(self.header_size));
        out.extend_from_slice(&MAGIC);
        out.put_u32(BYTE_ORDER_MARK);
        let fixed = self.fixed_size();
        let size = fixed + FEATURE_DESC_SIZE * self.features.len() + 8;
        out.put_u32(u32::try_from(size).unwrap_or(u32::MAX));
        out.put_u16(self.version_major);
        out.put_u16(self.version_minor);
        out.put_u32(0);
        out.put_u64(self.compat_features);
        out.put_u64(self.incompat_features);
        out.put_u64(self.created_unix_ns);
        out.extend_from_slice(&self.trace_id);
        out.put_u32(u32::try_from(fixed).unwrap_or(0));
        out.put_u32(u32::try_from(self.features.len()).unwrap_or(0));
        if fixed > FIXED_SIZE_1_0 {
            out.put_u64(self.replay_required_features);
        }
        for f in &self.features {
            out.put_u8(f.bit);
            out.put_u8(f.class.code());
            out.put_u16(f.introduced.0);
            out.put_u16(f.introduced.1);
            out.put_u16(0);
            let mut name = [0u8; 16];
            let n = f.name.len().min(16);
            name[..n].copy_from_slice(&f.name.as_bytes()[..n]);
            out.extend_from_slice(&name);
        }
        out.put_u32(0);
        checksum::seal(&mut out, 0);
        out
    }

    /// Reads the `header_size` field from the first [`PREFIX_SIZE`] bytes, validating magic,
    /// byte order and major version, so the caller knows how many bytes to read (bounded by
    /// [`MAX_HEADER_SIZE`]).
    ///
    /// # Errors
    /// Bad magic, wrong byte order, another major version (whatever its header size), or a
    /// size outside `80..=4096` / not a multiple of 8.
    pub fn peek_size(prefix: &[u8]) -> Result<u32, DecodeError> {
        Self::peek_size_as(prefix, (VERSION_MAJOR, VERSION_MINOR))
    }

    /// [`Self::peek_size`] for a reader implementing format `reader`.
    ///
    /// The first [`PREFIX_SIZE`] bytes (magic, byte order, header size, version) are the
    /// same in every major version, so the version is checked before anything whose layout
    /// a newer major may change: the header size's limits and the checksum. A 2.0 file is
    /// therefore refused as a newer version, never as a corrupt 1.x file.
    ///
    /// # Errors
    /// As for [`Self::peek_size`].
    pub fn peek_size_as(prefix: &[u8], reader: (u16, u16)) -> Result<u32, DecodeError> {
        if prefix.len() < PREFIX_SIZE {
            return Err(DecodeError::at(
                0,
                Reason::Truncated {
                    what: "file header",
                    need: u64_from(PREFIX_SIZE),
                    have: u64_from(prefix.len()),
                },
            ));
        }
        if prefix[..8] != MAGIC {
            return Err(DecodeError::at(
                0,
                Reason::BadMagic { what: "file", found: crate::describe::hex(&prefix[..8]) },
            ));
        }
        let bom = u32_at(prefix, 8).unwrap_or(0);
        if bom != BYTE_ORDER_MARK {
            return Err(DecodeError::at(8, Reason::ByteOrder { found: bom }));
        }
        let major = u16_at(prefix, 16).unwrap_or(0);
        if major != reader.0 {
            let minor = u16_at(prefix, 18).unwrap_or(0);
            return Err(DecodeError::at(
                16,
                Reason::FutureMajor { major, minor, supported_major: reader.0, supported_minor: reader.1 },
            ));
        }
        let size = u32_at(prefix, 12).unwrap_or(0);
        let limit = |reason| Err(DecodeError::at(12, reason));
        if size > MAX_HEADER_SIZE {
            return limit(Reason::TooLarge {
                what: "header_size",
                size: u64::from(size),
                max: u64::from(MAX_HEADER_SIZE),
            });
        }
        if size < MIN_HEADER_SIZE {
            return limit(Reason::TooSmall {
                what: "header_size",
                size: u64::from(size),
                min: u64::from(MIN_HEADER_SIZE),
            });
        }
        if size % 8 != 0 {
            return limit(Reason::Misaligned { what: "header_size", value: u64::from(size) });
        }
        Ok(size)
    }

    /// Decodes and validates a complete header of `peek_size` bytes.
    ///
    /// Checks, in order: magic, byte order and major version, header size, CRC, reserved
    /// fields, feature table, and finally that every required feature is implemented by
    /// this reader. Replay-required features are read, not checked: a replayer checks them
    /// with [`Self::unknown_replay_required`].
    ///
    /// # Errors
    /// A [`DecodeError`] naming the offending field's offset.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::decode_as(bytes, (VERSION_MAJOR, VERSION_MINOR))
    }

    /// Decodes as a reader implementing format `reader` (`(1, 0)` or `(1, 1)`) would: it
    /// knows only the features introduced up to that version, and a 1.0 reader knows
    /// neither the replay-required word nor descriptor class 2. This is how the tests show
    /// what a vmrr 1.0 says of a 1.1 file; readers call [`Self::decode`].
    ///
    /// # Errors
    /// As for [`Self::decode`].
    pub fn decode_as(bytes: &[u8], reader: (u16, u16)) -> Result<Self, DecodeError> {
        let size = Self::peek_size_as(bytes, reader)?;
        let hdr = bytes.get(..usize_from(size)).ok_or_else(|| {
            DecodeError::at(
                0,
                Reason::Truncated { what: "file header", need: u64::from(size), have: u64_from(bytes.len()) },
            )
        })?;
        let crc_off = hdr.len() - 4;
        checksum::check(hdr, crc_off, "file header", 0)?;
        check_reserved(hdr)?;
        let features = feature_table(hdr, reader)?;
        let table_off = usize_from(u32_at(hdr, 64).unwrap_or(0));
        // The replay-required word exists when the writer left room for it before the table
        // (1.1 and later); a 1.0 reader ignores those bytes.
        let replay_required = if reader >= (1, 1) && table_off >= REPLAY_REQUIRED_OFFSET + 8 {
            u64_at(hdr, REPLAY_REQUIRED_OFFSET).unwrap_or(0)
        } else {
            0
        };
        let incompat_features = u64_at(hdr, 32).unwrap_or(0);
        refuse_unknown_required(incompat_features, &features, reader)?;
        let mut trace_id = [0u8; 16];
        trace_id.copy_from_slice(&hdr[48..64]);
        Ok(FileHeader {
            header_size: size,
            version_major: u16_at(hdr, 16).unwrap_or(0),
            version_minor: u16_at(hdr, 18).unwrap_or(0),
            compat_features: u64_at(hdr, 24).unwrap_or(0),
            incompat_features,
            replay_required_features: replay_required,
            created_unix_ns: u64_at(hdr, 40).unwrap_or(0),
            trace_id,
            features,
        })
    }

    /// True when the writer announced the chunk index (an optional feature).
    pub fn has_index(&self) -> bool {
        self.compat_features & features::CHUNK_INDEX.mask() != 0
    }

    /// True when the writer announced per-exit timing payloads (an optional feature).
    pub fn has_timing(&self) -> bool {
        self.compat_features & features::TIMING.mask() != 0
    }

    /// True when the trace may hold `GUEST_WRITE` records (the required `guest-write`
    /// feature, format 1.1).
    pub fn has_guest_writes(&self) -> bool {
        self.incompat_features & features::GUEST_WRITE.mask() != 0
    }

    /// True when the trace may hold `IRQ_LINE` records (the replay-required `irq-line`
    /// feature, format 1.2).
    pub fn has_irq_lines(&self) -> bool {
        self.replay_required_features & features::IRQ_LINE.mask() != 0
    }

    /// True when several threads appended the trace's records (the replay-required
    /// `threads` feature, format 1.2): their order is the order of appending.
    pub fn has_threads(&self) -> bool {
        self.replay_required_features & features::THREADS.mask() != 0
    }

    /// The replay-required features this replayer does not implement, as `(bit, name,
    /// introduced)` from the feature table (`None` where the table does not name the bit),
    /// lowest bit first. A replayer refuses the trace when this is not empty; other readers
    /// read it.
    pub fn unknown_replay_required(&self) -> Vec<(u8, Option<&FeatureDesc>)> {
        self.unknown_replay_required_as((VERSION_MAJOR, VERSION_MINOR))
    }

    /// [`Self::unknown_replay_required`] as a replayer implementing format `reader` would
    /// find them: a 1.1 replayer knows no replay-required feature, so it names `irq-line`
    /// and `threads` of a 1.2 file. This is how the tests show what a vmrr 1.1 says of a
    /// 1.2 file.
    pub fn unknown_replay_required_as(&self, reader: (u16, u16)) -> Vec<(u8, Option<&FeatureDesc>)> {
        let unknown = self.replay_required_features & !features::known_replay_required_mask_as(reader);
        (0u8..64)
            .filter(|b| unknown & (1u64 << b) != 0)
            .map(|bit| {
                (bit, self.features.iter().find(|f| f.class == FeatureClass::ReplayRequired && f.bit == bit))
            })
            .collect()
    }
}

/// The two reserved words: after the version, and before the CRC.
fn check_reserved(hdr: &[u8]) -> Result<(), DecodeError> {
    if !all_zero(&hdr[20..24]) {
        return Err(DecodeError::at(20, Reason::NonZeroPadding { what: "header reserved word" }));
    }
    let before_crc = hdr.len() - 8;
    if !all_zero(&hdr[before_crc..before_crc + 4]) {
        return Err(DecodeError::at(
            u64_from(before_crc),
            Reason::NonZeroPadding { what: "header reserved word before the CRC" },
        ));
    }
    Ok(())
}

/// The feature table: where it lies (at or after 72, 8-aligned, ending at or before the
/// reserved word) and each descriptor.
fn feature_table(hdr: &[u8], reader: (u16, u16)) -> Result<Vec<FeatureDesc>, DecodeError> {
    let table_off = usize_from(u32_at(hdr, 64).unwrap_or(0));
    let count = usize_from(u32_at(hdr, 68).unwrap_or(0));
    if table_off < FIXED_SIZE_1_0 || table_off % 8 != 0 {
        return Err(DecodeError::at(
            64,
            Reason::InvalidValue { field: "feature_table_offset", value: u64_from(table_off) },
        ));
    }
    let room_end = hdr.len() - 8;
    let table_end = count
        .checked_mul(FEATURE_DESC_SIZE)
        .and_then(|n| n.checked_add(table_off))
        .filter(|&end| end <= room_end)
        .ok_or_else(|| {
            DecodeError::at(
                68,
                Reason::CountExceedsRecord {
                    what: "feature_count",
                    count: u64_from(count),
                    needed: u64_from(count.saturating_mul(FEATURE_DESC_SIZE)),
                    available: u64_from(room_end.saturating_sub(table_off)),
                },
            )
        })?;
    hdr[table_off..table_end]
        .chunks_exact(FEATURE_DESC_SIZE)
        .enumerate()
        .map(|(i, d)| feature_desc(d, u64_from(table_off + i * FEATURE_DESC_SIZE), reader))
        .collect()
}

/// One 24-byte descriptor found at header offset `off`.
fn feature_desc(d: &[u8], off: u64, reader: (u16, u16)) -> Result<FeatureDesc, DecodeError> {
    let bit = d[0];
    if bit >= 64 {
        return Err(DecodeError::at(
            off,
            Reason::InvalidValue { field: "feature bit", value: u64::from(bit) },
        ));
    }
    // Class 2 (replay-required) exists from 1.1 on; a 1.0 reader refuses it.
    let class = FeatureClass::from_code(d[1])
        .filter(|c| *c != FeatureClass::ReplayRequired || reader >= (1, 1))
        .ok_or_else(|| {
            DecodeError::at(off + 1, Reason::InvalidValue { field: "feature class", value: u64::from(d[1]) })
        })?;
    if !all_zero(&d[6..8]) {
        return Err(DecodeError::at(
            off + 6,
            Reason::NonZeroPadding { what: "feature descriptor reserved field" },
        ));
    }
    let raw_name = &d[8..24];
    let end = raw_name.iter().position(|&b| b == 0).unwrap_or(16);
    if !all_zero(&raw_name[end..]) {
        return Err(DecodeError::at(off + 8, Reason::NonZeroPadding { what: "feature name padding" }));
    }
    let name = std::str::from_utf8(&raw_name[..end])
        .map_err(|_| DecodeError::at(off + 8, Reason::InvalidUtf8 { field: "feature name" }))?
        .to_string();
    Ok(FeatureDesc { bit, class, introduced: (u16_at(d, 2).unwrap_or(0), u16_at(d, 4).unwrap_or(0)), name })
}

/// Refuses a required bit this reader does not implement (the lowest one), named by its
/// descriptor when the table has one, by number otherwise.
fn refuse_unknown_required(
    incompat: u64,
    features: &[FeatureDesc],
    reader: (u16, u16),
) -> Result<(), DecodeError> {
    let known = features::KNOWN
        .iter()
        .filter(|f| f.required() && f.introduced <= reader)
        .fold(0, |m, f| m | f.mask());
    let unknown = incompat & !known;
    if unknown == 0 {
        return Ok(());
    }
    let bit = u8::try_from(unknown.trailing_zeros()).unwrap_or(63);
    let desc = features.iter().find(|f| f.class == FeatureClass::Required && f.bit == bit);
    Err(DecodeError::at(
        32,
        Reason::UnknownRequiredFeature { bit, named: desc.map(|d| (d.name.clone(), d.introduced)), reader },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> FileHeader {
        FileHeader::new(123, [7; 16], &[features::CHUNK_INDEX, features::ZSTD])
    }

    #[test]
    fn round_trip() {
        let h = sample();
        let bytes = h.encode();
        assert_eq!(bytes.len(), usize_from(h.header_size));
        assert_eq!(FileHeader::decode(&bytes).expect("decodes"), h);
    }

    #[test]
    fn future_major_refused_with_versions() {
        let mut bytes = sample().encode();
        bytes[16..18].copy_from_slice(&2u16.to_le_bytes());
        let crc_off = bytes.len() - 4;
        let crc = crc32c::crc32c(&bytes[..crc_off]);
        bytes[crc_off..].copy_from_slice(&crc.to_le_bytes());
        let err = FileHeader::decode(&bytes).expect_err("refused");
        assert!(matches!(err.reason, Reason::FutureMajor { major: 2, .. }));
        assert!(err.to_string().contains("2.0"), "{err}");
    }

    #[test]
    fn another_major_is_refused_as_such_before_its_size_and_checksum() {
        // A 2.0 file may lay its header out anew: a larger header, a checksum elsewhere.
        // Only the first 20 bytes are shared by every major, and they are enough.
        let mut bytes = sample().encode();
        bytes[12..16].copy_from_slice(&8192u32.to_le_bytes());
        bytes[16..20].copy_from_slice(&[2, 0, 3, 0]);
        let crc_off = bytes.len() - 4;
        bytes[crc_off] ^= 0xff;
        let err = FileHeader::decode(&bytes).expect_err("refused");
        assert_eq!(err.location.offset, 16);
        assert_eq!(
            err.reason.to_string(),
            "format version 2.3 is not readable: this reader supports major version 1 (up to 1.2); upgrade vmrr"
        );
        assert!(matches!(
            FileHeader::peek_size(&bytes[..20]),
            Err(DecodeError { reason: Reason::FutureMajor { .. }, .. })
        ));
        // The same bytes as a 1.x file are what they are: a bad size.
        bytes[16..18].copy_from_slice(&1u16.to_le_bytes());
        assert!(matches!(FileHeader::decode(&bytes).expect_err("size").reason, Reason::TooLarge { .. }));
    }

    #[test]
    fn an_unknown_required_bit_is_named_by_its_descriptor_or_its_number() {
        let future = Feature { bit: 6, class: FeatureClass::Required, name: "warp", introduced: (1, 7) };
        let named = FileHeader::new(5, [1; 16], &[features::CHUNK_INDEX, future]).encode();
        assert_eq!(
            FileHeader::decode(&named).expect_err("refused").reason.to_string(),
            "trace requires feature 'warp' (required bit 6, introduced in format 1.7); this reader implements format 1.2: upgrade vmrr"
        );
        let mut h = FileHeader::new(5, [1; 16], &[features::CHUNK_INDEX]);
        h.incompat_features |= 1 << 6;
        assert_eq!(
            FileHeader::decode(&h.encode()).expect_err("refused").reason.to_string(),
            "trace requires unknown feature (required bit 6); this reader implements format 1.2: upgrade vmrr"
        );
    }

    #[test]
    fn newer_minor_is_read() {
        let mut bytes = sample().encode();
        bytes[18..20].copy_from_slice(&9u16.to_le_bytes());
        let crc_off = bytes.len() - 4;
        let crc = crc32c::crc32c(&bytes[..crc_off]);
        bytes[crc_off..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(FileHeader::decode(&bytes).expect("reads").version_minor, 9);
    }

    #[test]
    fn a_trace_without_1_1_features_keeps_the_1_0_layout() {
        let h = sample();
        assert_eq!((h.version_major, h.version_minor), (1, 0));
        let bytes = h.encode();
        assert_eq!(u32_at(&bytes, 64), Some(72), "1.0 feature table offset");
        assert_eq!(bytes.len(), 72 + 2 * 24 + 8);
    }

    #[test]
    fn guest_writes_make_a_1_1_header_a_1_0_reader_refuses_by_name() {
        let h = FileHeader::new(5, [1; 16], &[features::CHUNK_INDEX, features::GUEST_WRITE]);
        assert_eq!((h.version_major, h.version_minor), (1, 1));
        let bytes = h.encode();
        assert_eq!(u32_at(&bytes, 64), Some(80), "1.1 feature table offset");
        assert_eq!(u64_at(&bytes, 72), Some(0), "replay_required_features");
        let back = FileHeader::decode(&bytes).expect("a 1.1 reader reads it");
        assert_eq!(back, h);
        assert!(back.has_guest_writes());
        let err = FileHeader::decode_as(&bytes, (1, 0)).expect_err("a 1.0 reader refuses it");
        let msg = err.to_string();
        assert!(msg.contains("'guest-write'") && msg.contains("introduced in format 1.1"), "{msg}");
        assert!(msg.contains("implements format 1.0"), "{msg}");
    }

    #[test]
    fn replay_required_bits_are_read_and_reported_not_refused() {
        let future =
            Feature { bit: 3, class: FeatureClass::ReplayRequired, name: "vapour", introduced: (1, 4) };
        let h = FileHeader::new(5, [1; 16], &[features::CHUNK_INDEX, future]);
        let bytes = h.encode();
        assert_eq!(u64_at(&bytes, 72), Some(1 << 3));
        let back = FileHeader::decode(&bytes).expect("readers read it");
        assert_eq!(back.replay_required_features, 1 << 3);
        let unknown = back.unknown_replay_required();
        assert_eq!(unknown.len(), 1);
        assert_eq!(unknown[0].0, 3);
        assert_eq!(unknown[0].1.map(|d| d.name.as_str()), Some("vapour"));
        // A 1.0 reader does not know class 2: the descriptor makes the header invalid.
        let err = FileHeader::decode_as(&bytes, (1, 0)).expect_err("1.0 refuses class 2");
        assert!(matches!(err.reason, Reason::InvalidValue { field: "feature class", value: 2 }));
    }

    #[test]
    fn big_endian_mark_refused() {
        let mut bytes = sample().encode();
        bytes[8..12].copy_from_slice(&BYTE_ORDER_MARK.to_be_bytes());
        let err = FileHeader::decode(&bytes).expect_err("refused");
        assert!(matches!(err.reason, Reason::ByteOrder { .. }));
    }
}

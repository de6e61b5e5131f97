//! Feature bits: what an old reader may ignore and what it must refuse.
//!
//! The file header carries two 64-bit bitmaps, like ext4's compat/incompat sets:
//! - `compat_features`: optional extensions. A reader that does not know a bit ignores it
//!   and still reads the file correctly (it only misses an optimisation or extra data).
//! - `incompat_features`: required extensions. A reader that does not know a bit must
//!   refuse the file, because it would misread it.
//!
//! The header also carries a feature table naming every bit the writer set and the format
//! version that introduced it, so an old reader can say *which* feature it lacks.

/// A feature this version of the format defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feature {
    /// Bit number in the bitmap.
    pub bit: u8,
    /// True for `incompat_features` (required), false for `compat_features` (optional).
    pub required: bool,
    /// Name written to the feature table (ASCII, at most 16 bytes).
    pub name: &'static str,
    /// Format version that introduced the feature.
    pub introduced: (u16, u16),
}

impl Feature {
    /// The bit as a mask.
    pub const fn mask(&self) -> u64 {
        1u64 << self.bit
    }
}

/// Optional: the file ends with a chunk index and trailer. A reader without it scans chunks.
pub const CHUNK_INDEX: Feature = Feature { bit: 0, required: false, name: "chunk-index", introduced: (1, 0) };

/// Optional: exit records may carry the timing payload (`FLAG_TIMING`, see
/// [`crate::timing`]). Set by a writer created to record timing, so tools can tell without
/// scanning; a reader that does not know it reads the file the same and skips the payloads.
pub const TIMING: Feature = Feature { bit: 1, required: false, name: "timing", introduced: (1, 0) };

/// Required: chunk payloads may be zstd-compressed (codec 1).
pub const ZSTD: Feature = Feature { bit: 0, required: true, name: "zstd", introduced: (1, 0) };

/// Required: chunks flagged `SEQ_DELTA` store each record's `seq` as its difference from
/// `first_seq + i` (zero for contiguous records), so the compressor sees no counter.
pub const SEQ_DELTA: Feature = Feature { bit: 1, required: true, name: "seq-delta", introduced: (1, 0) };

/// Every feature this reader implements.
pub const KNOWN: &[Feature] = &[CHUNK_INDEX, TIMING, ZSTD, SEQ_DELTA];

/// Mask of the optional features this reader knows.
pub fn known_compat_mask() -> u64 {
    KNOWN.iter().filter(|f| !f.required).fold(0, |m, f| m | f.mask())
}

/// Mask of the required features this reader implements.
pub fn known_incompat_mask() -> u64 {
    KNOWN.iter().filter(|f| f.required).fold(0, |m, f| m | f.mask())
}

//! Feature bits: what an old reader may ignore, what only a replayer must refuse, and what
//! every reader must refuse.
//!
//! The file header carries three 64-bit bitmaps, ext4's compat / ro_compat / incompat sets
//! under names that say what a reader does with an unknown bit:
//! - `compat_features` ([`FeatureClass::Optional`]): optional extensions. A reader that does
//!   not know a bit ignores it and still reads the file correctly (it only misses an
//!   optimisation or extra data).
//! - `replay_required_features` ([`FeatureClass::ReplayRequired`], from format 1.1): the
//!   file reads correctly without the feature (inspect, stats, verify, profile may proceed),
//!   but a replay that ignored it would not be the recorded run. A replayer refuses an
//!   unknown bit.
//! - `incompat_features` ([`FeatureClass::Required`]): required extensions. A reader that
//!   does not know a bit must refuse the file, because it would misread it.
//!
//! The header also carries a feature table naming every bit the writer set and the format
//! version that introduced it, so an old reader can say *which* feature it lacks.

/// What a reader that does not know a feature does with a file that uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureClass {
    /// Ignore it (`compat_features`, descriptor class 0).
    Optional,
    /// Read the file; refuse to replay it (`replay_required_features`, descriptor class 2,
    /// from format 1.1).
    ReplayRequired,
    /// Refuse the file (`incompat_features`, descriptor class 1).
    Required,
}

impl FeatureClass {
    /// The descriptor's `class` byte.
    pub const fn code(self) -> u8 {
        match self {
            FeatureClass::Optional => 0,
            FeatureClass::Required => 1,
            FeatureClass::ReplayRequired => 2,
        }
    }

    /// The class of a descriptor's `class` byte, `None` for a value no version defines.
    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(FeatureClass::Optional),
            1 => Some(FeatureClass::Required),
            2 => Some(FeatureClass::ReplayRequired),
            _ => None,
        }
    }

    /// Lower-case name, as reports print it.
    pub const fn name(self) -> &'static str {
        match self {
            FeatureClass::Optional => "optional",
            FeatureClass::ReplayRequired => "replay-required",
            FeatureClass::Required => "required",
        }
    }
}

/// A feature this version of the format defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feature {
    /// Bit number in its class's bitmap.
    pub bit: u8,
    /// Which bitmap, and what a reader that does not know it does.
    pub class: FeatureClass,
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

    /// True for a required (`incompat_features`) feature.
    pub const fn required(&self) -> bool {
        matches!(self.class, FeatureClass::Required)
    }
}

/// Optional: the file ends with a chunk index and trailer. A reader without it scans chunks.
pub const CHUNK_INDEX: Feature =
    Feature { bit: 0, class: FeatureClass::Optional, name: "chunk-index", introduced: (1, 0) };

/// Optional: exit records may carry the timing payload (`FLAG_TIMING`, see
/// [`crate::timing`]). Set by a writer created to record timing, so tools can tell without
/// scanning; a reader that does not know it reads the file the same and skips the payloads.
pub const TIMING: Feature =
    Feature { bit: 1, class: FeatureClass::Optional, name: "timing", introduced: (1, 0) };

/// Required: chunk payloads may be zstd-compressed (codec 1).
pub const ZSTD: Feature = Feature { bit: 0, class: FeatureClass::Required, name: "zstd", introduced: (1, 0) };

/// Required: chunks flagged `SEQ_DELTA` store each record's `seq` as its difference from
/// `first_seq + i` (zero for contiguous records), so the compressor sees no counter.
pub const SEQ_DELTA: Feature =
    Feature { bit: 1, class: FeatureClass::Required, name: "seq-delta", introduced: (1, 0) };

/// Required (format 1.1): the trace holds `GUEST_WRITE` records, what the recording VMM's
/// devices wrote into guest memory (DMA). A reader that skipped them would replay a run
/// whose guest never received its disk or network data, so the bit is required rather
/// than replay-required: 1.0 readers predate the replay-required class and would
/// otherwise replay such a trace as if it were complete.
pub const GUEST_WRITE: Feature =
    Feature { bit: 2, class: FeatureClass::Required, name: "guest-write", introduced: (1, 1) };

/// Replay-required (format 1.2): the trace may hold `IRQ_LINE` records, interrupt lines
/// of KVM's in-kernel irqchip the VMM changed. A reader that skips them reads the rest
/// correctly; a replay that skipped them would not deliver the guest's interrupts.
pub const IRQ_LINE: Feature =
    Feature { bit: 0, class: FeatureClass::ReplayRequired, name: "irq-line", introduced: (1, 2) };

/// Replay-required (format 1.2): records were appended by more than one thread (several
/// vCPUs and/or device threads, the record header's `vcpu` field naming each). Their
/// global order is the order they were appended in, not an instruction-level
/// interleaving; a replayer that does not know this would take it for one.
pub const THREADS: Feature =
    Feature { bit: 1, class: FeatureClass::ReplayRequired, name: "threads", introduced: (1, 2) };

/// Every feature this reader implements.
pub const KNOWN: &[Feature] = &[CHUNK_INDEX, TIMING, ZSTD, SEQ_DELTA, GUEST_WRITE, IRQ_LINE, THREADS];

/// Mask of the features of `class` this reader knows.
pub fn known_mask(class: FeatureClass) -> u64 {
    KNOWN.iter().filter(|f| f.class == class).fold(0, |m, f| m | f.mask())
}

/// Mask of the optional features this reader knows.
pub fn known_compat_mask() -> u64 {
    known_mask(FeatureClass::Optional)
}

/// Mask of the required features this reader implements.
pub fn known_incompat_mask() -> u64 {
    known_mask(FeatureClass::Required)
}

/// Mask of the replay-required features this version knows (`irq-line` and `threads`,
/// format 1.2).
pub fn known_replay_required_mask() -> u64 {
    known_replay_required_mask_as((crate::VERSION_MAJOR, crate::VERSION_MINOR))
}

/// Mask of the replay-required features a vmrr implementing format `reader` knew: those
/// introduced up to that version (none up to 1.1).
pub fn known_replay_required_mask_as(reader: (u16, u16)) -> u64 {
    KNOWN
        .iter()
        .filter(|f| f.class == FeatureClass::ReplayRequired && f.introduced <= reader)
        .fold(0, |m, f| m | f.mask())
}

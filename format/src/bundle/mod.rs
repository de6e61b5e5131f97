//! Repro bundles: one self-contained, checksummed, compressed file holding a trace, the
//! snapshots it references, and what the recording host was (CPUID, kernel, KVM
//! capabilities, the original command line: all in the trace's annotations, repeated in
//! the manifest for tools). A bundle is a file format with no KVM in it: the engine's
//! flight recorder writes bundles and `vmrr pack` writes them, both through [`pack`];
//! replay reads them through [`unpack`].
//!
//! Layout (little-endian):
//!
//! | off | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `"VMRRBNDL"` |
//! | 8 | 2 | major (1) |
//! | 10 | 2 | minor (1; 2 when the bundle carries a kernel) |
//! | 12 | 4 | reserved, zero |
//! | 16 | 8 | `manifest_len` (at most 16 MiB) |
//! | 24 | 4 | CRC32C of the manifest |
//! | 28 | 4 | CRC32C of bytes 0..28 |
//! | 32 | `manifest_len` | manifest (JSON) |
//! | ... | | entry payloads, at the offsets the manifest gives |
//!
//! Each entry is a file of the unpacked layout (`trace.vmrr`,
//! `snapshots/snap-NNNNNN/state.bin`, `snapshots/snap-NNNNNN/mem-N.raw`, and the guest's
//! `image.bin` or `firmware.bin` when the trace runs a flat image or firmware: since
//! format 1.1; `kernel.bin` and `initrd.bin` when it boots a Linux kernel: since 1.2)
//! stored as one zstd frame, except memory files, stored sparse: the non-zero
//! 4 KiB pages as `(offset, length)` extents plus one zstd frame of their bytes. Every
//! payload has a CRC32C.
//!
//! A bundle is self-contained: the guest image or firmware a replay rebuilds the guest from
//! travels inside it (read by `vmrr pack` on the recording host), so replaying a bundle
//! never opens a host path the trace or the manifest names.
//!
//! A bundle is untrusted input. Before anything is written: the header CRC, version,
//! manifest size and CRC, every entry name against the layout's exact grammar (no `..`,
//! no absolute paths, no other characters: nothing can land outside the target
//! directory), every snapshot entry belonging to a snapshot the manifest lists, sizes
//! against caps and [`Budgets`] (guest memory per snapshot, and the total bytes extraction
//! writes, memory pages included), offsets inside the file, and the free space of the
//! target's file system. While extracting: each payload's CRC before decompressing it,
//! decompressed sizes against the manifest, no existing file overwritten (no symlink
//! followed).

mod pack;
mod payload;
mod sparse;
mod unpack;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use pack::{PackOptions, SnapshotCheck, pack};
pub use unpack::{arrange, read_manifest, unpack, unpack_trace};

/// Bundle magic.
pub const MAGIC: [u8; 8] = *b"VMRRBNDL";
/// Major version.
pub const MAJOR: u16 = 1;
/// Minor version of a bundle without a kernel (1: the guest's image or firmware may
/// travel as an entry).
pub const MINOR: u16 = 1;
/// Minor version of a bundle that carries a kernel (and initramfs): 1.2. A 1.1 reader
/// refuses it, naming the entry it does not know.
pub const MINOR_KERNEL: u16 = 2;
const HEADER: u64 = 32;
/// Largest manifest accepted.
pub const MAX_MANIFEST: u64 = 16 << 20;
/// Most entries accepted.
pub const MAX_ENTRIES: usize = 100_000;
/// Largest trace accepted.
pub const MAX_TRACE: u64 = 1 << 40;
/// Largest snapshot state file accepted: the engine's state cap (64 MiB of payload) plus
/// its framing, with room to spare.
pub const MAX_STATE: u64 = (64 << 20) + 64;
/// Largest firmware entry accepted (the engine's ROM limit).
pub const MAX_FIRMWARE: u64 = 16 << 20;
/// Largest kernel entry accepted (the engine's kernel-file limit).
pub const MAX_KERNEL: u64 = 256 << 20;
/// The page of memory files: holes and extents are whole pages of this size.
const PAGE_BYTES: usize = 4096;
/// [`PAGE_BYTES`] as a file offset.
const PAGE: u64 = PAGE_BYTES as u64;

use crate::overview::{MAX_ANNOTATION_BYTES, MAX_ANNOTATIONS};

/// The trace's name inside a bundle.
pub const TRACE_ENTRY: &str = "trace.vmrr";
/// The guest image's name inside a bundle (a trace recorded with `--image`).
pub const IMAGE_ENTRY: &str = "image.bin";
/// The firmware's name inside a bundle (a trace recorded with `--firmware`).
pub const FIRMWARE_ENTRY: &str = "firmware.bin";
/// The kernel's name inside a bundle (a trace recorded with `--kernel`).
pub const KERNEL_ENTRY: &str = "kernel.bin";
/// The initramfs's name inside a bundle (a trace recorded with `--initrd`).
pub const INITRD_ENTRY: &str = "initrd.bin";
/// The snapshots directory's name inside a bundle.
const SNAPSHOTS_ENTRY: &str = "snapshots";

/// Default of [`Budgets::max_mem`]: 16 GiB (`--max-mem-mib 16384`).
pub const DEFAULT_MAX_MEM: u64 = 16 << 30;
/// Default of [`Budgets::max_extract`]: 32 GiB (`--max-extract-mib 32768`).
pub const DEFAULT_MAX_EXTRACT: u64 = 32 << 30;

/// What a snapshot's state file references: its parent, and its memory files as
/// `(file name, size in bytes)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateRefs {
    /// The snapshot it is incremental on.
    pub parent: Option<u64>,
    /// Its memory files.
    pub files: Vec<(String, u64)>,
}

/// Reads a state file's [`StateRefs`]: how [`unpack`] learns which snapshots and memory
/// entries are used (the state's encoding is the engine's, which this crate does not read).
pub type StateFiles<'a> =
    &'a dyn Fn(&std::path::Path) -> Result<StateRefs, Box<dyn std::error::Error + Send + Sync>>;

/// What unpacking a bundle may cost, whatever the bundle says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budgets {
    /// Guest memory a snapshot may describe: the total size of its memory files
    /// (`--max-mem-mib`). A flat image entry may not exceed it either.
    pub max_mem: u64,
    /// Bytes extraction may write, all entries together: trace, states, image or
    /// firmware, and the memory pages the sparse files hold (`--max-extract-mib`).
    pub max_extract: u64,
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets { max_mem: DEFAULT_MAX_MEM, max_extract: DEFAULT_MAX_EXTRACT }
    }
}

impl Budgets {
    /// Budgets with the same memory cap and no limit on extraction (tools reading a
    /// manifest only).
    pub fn memory_only(max_mem: u64) -> Self {
        Budgets { max_mem, max_extract: u64::MAX }
    }
}

/// A bundle problem.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// An OS call failed.
    #[error(transparent)]
    File(#[from] crate::FileError),
    /// An input (the bundle, or packing: the trace, a snapshot file, the guest image) is
    /// not a regular file.
    #[error(transparent)]
    Input(#[from] crate::input::InputError),
    /// The output may not be written (it is an input, or exists).
    #[error(transparent)]
    Output(#[from] crate::output::OutputError),
    /// Extracting would exceed a budget: the message names it and its flag.
    #[error("{path}: offset {offset:#x}: {reason}")]
    Budget {
        /// The bundle.
        path: String,
        /// Where the entry that crosses the budget is described.
        offset: u64,
        /// Which budget, by how much, and the flag that sets it.
        reason: String,
    },
    /// The target's file system lacks the space extraction needs.
    #[error(
        "{}: extracting needs {need_mib} MiB but only {free_mib} MiB are free there (set TMPDIR to a larger file system)",
        dir.display()
    )]
    NoSpace {
        /// The directory extraction writes into.
        dir: PathBuf,
        /// MiB needed.
        need_mib: u64,
        /// MiB free.
        free_mib: u64,
    },
    /// Packing: the trace runs a flat image or firmware, and the file cannot be packed.
    #[error("the trace's guest {what} {} cannot be packed (pass {flag} FILE: the {what} it was recorded with)", path.display())]
    GuestFile {
        /// `image` or `firmware`.
        what: &'static str,
        /// The flag naming it.
        flag: &'static str,
        /// The path.
        path: PathBuf,
        /// Why it cannot be packed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Packing: the bundle would exceed a cap a reader enforces.
    #[error("{path}: {reason}")]
    TooLarge {
        /// The trace.
        path: String,
        /// Which cap.
        reason: String,
    },
    /// The bundle is damaged or hostile.
    #[error("{path}: offset {offset:#x}: {reason}")]
    Invalid {
        /// The bundle.
        path: String,
        /// Where in the bundle the fault lies.
        offset: u64,
        /// What is wrong there.
        reason: String,
    },
    /// A newer bundle version.
    #[error(
        "{path}: offset 0x8: bundle version {major}.{minor} is not readable by this vmrr (reads {MAJOR}.x): use the vmrr that packed it, or a newer one"
    )]
    Version {
        /// The bundle.
        path: String,
        /// Its major version.
        major: u16,
        /// Its minor version.
        minor: u16,
    },
    /// Packing: the trace cannot be packed as a whole.
    #[error(transparent)]
    Trace(Box<crate::overview::OverviewError>),
    /// Packing: a snapshot the trace references is missing or does not validate.
    #[error("snapshot {dir} cannot be packed")]
    Snapshot {
        /// The snapshot directory.
        dir: PathBuf,
        /// What the snapshot check found.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl From<crate::overview::OverviewError> for BundleError {
    fn from(e: crate::overview::OverviewError) -> Self {
        BundleError::Trace(Box::new(e))
    }
}

impl BundleError {
    /// True when the bundle (or, packing, the trace or a snapshot) is damaged or invalid
    /// input, as opposed to the host failing.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            BundleError::File(_) | BundleError::Output(_) | BundleError::NoSpace { .. } => false,
            BundleError::Input(e) => !matches!(e, crate::input::InputError::Io { .. }),
            BundleError::GuestFile { .. } => false,
            BundleError::Trace(t) => match t.as_ref() {
                crate::overview::OverviewError::Read(e) => e.is_invalid_input(),
                _ => true,
            },
            _ => true,
        }
    }
}

/// How an entry is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// One zstd frame of the whole file.
    Zstd,
    /// Extents of non-zero pages, then one zstd frame of their bytes.
    Sparse,
}

/// One file in the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Path in the unpacked layout.
    pub name: String,
    /// Unpacked size.
    pub size: u64,
    /// How the payload is encoded.
    pub storage: Storage,
    /// Offset of the payload in the bundle.
    pub offset: u64,
    /// Payload length in the bundle.
    pub stored: u64,
    /// CRC32C of the payload.
    pub crc32c: u32,
}

/// The manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The trace's id (hex).
    pub trace_id: String,
    /// The recording's annotations (host, CPU, KVM capabilities, command line, guest);
    /// as many as a trace may keep ([`crate::overview::MAX_ANNOTATIONS`] and
    /// [`crate::overview::MAX_ANNOTATION_BYTES`]), checked while decoding.
    #[serde(deserialize_with = "crate::bounded::pairs::<_, MAX_ANNOTATIONS, MAX_ANNOTATION_BYTES>")]
    pub annotations: Vec<(String, String)>,
    /// Snapshot ids included (at most [`MAX_ENTRIES`], checked while decoding).
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, MAX_ENTRIES>")]
    pub snapshots: Vec<u64>,
    /// The files (at most [`MAX_ENTRIES`], checked while decoding).
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, MAX_ENTRIES>")]
    pub entries: Vec<Entry>,
    /// Exit records in the trace (written since bundle 1.1 by this vmrr; absent in older
    /// bundles): what a corpus run balances its shards by without unpacking the trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exits: Option<u64>,
}

/// What [`unpack`] produced.
#[derive(Debug)]
pub struct Unpacked {
    /// The trace.
    pub trace: PathBuf,
    /// The guest image, when the bundle carries one.
    pub image: Option<PathBuf>,
    /// The firmware, when the bundle carries one.
    pub firmware: Option<PathBuf>,
    /// The kernel, when the bundle carries one.
    pub kernel: Option<PathBuf>,
    /// The initramfs, when the bundle carries one.
    pub initrd: Option<PathBuf>,
    /// The manifest.
    pub manifest: Manifest,
    /// Bytes written.
    pub written: u64,
}

/// What an entry of the unpacked layout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryKind {
    Trace,
    Image,
    Firmware,
    Kernel,
    Initrd,
    State(u64),
    Memory(u64),
}

impl EntryKind {
    /// The size cap of this kind of entry.
    fn cap(self, budgets: &Budgets) -> u64 {
        match self {
            EntryKind::Trace => MAX_TRACE,
            EntryKind::Image | EntryKind::Initrd | EntryKind::Memory(_) => budgets.max_mem,
            EntryKind::Firmware => MAX_FIRMWARE,
            EntryKind::Kernel => MAX_KERNEL,
            EntryKind::State(_) => MAX_STATE,
        }
    }
}

/// What an entry named `name` is, if it is a name of the unpacked layout.
fn allowed(name: &str) -> Option<EntryKind> {
    match name {
        TRACE_ENTRY => return Some(EntryKind::Trace),
        IMAGE_ENTRY => return Some(EntryKind::Image),
        FIRMWARE_ENTRY => return Some(EntryKind::Firmware),
        KERNEL_ENTRY => return Some(EntryKind::Kernel),
        INITRD_ENTRY => return Some(EntryKind::Initrd),
        _ => {}
    }
    let rest = name.strip_prefix(SNAPSHOTS_ENTRY)?.strip_prefix("/snap-")?;
    let (id, file) = rest.split_once('/')?;
    if !(6..=20).contains(&id.len()) || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let id: u64 = id.parse().ok()?;
    if file == crate::layout::STATE_FILE {
        return Some(EntryKind::State(id));
    }
    crate::layout::memory_file_slot(file).map(|_| EntryKind::Memory(id))
}

fn invalid(path: &std::path::Path, offset: u64, reason: impl Into<String>) -> BundleError {
    BundleError::Invalid { path: path.display().to_string(), offset, reason: reason.into() }
}

fn over_budget(path: &std::path::Path, offset: u64, reason: String) -> BundleError {
    BundleError::Budget { path: path.display().to_string(), offset, reason }
}

fn file_err(what: &'static str, p: &std::path::Path) -> impl FnOnce(std::io::Error) -> BundleError {
    let wrap = crate::FileError::on(what, p);
    move |source| BundleError::File(wrap(source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_follow_the_layout_only() {
        for ok in [
            "trace.vmrr",
            "image.bin",
            "firmware.bin",
            "snapshots/snap-000000/state.bin",
            "snapshots/snap-000012/mem-0.raw",
            "snapshots/snap-999999/mem-31.raw",
        ] {
            assert!(allowed(ok).is_some(), "{ok}");
        }
        assert_eq!(allowed("snapshots/snap-000012/mem-0.raw"), Some(EntryKind::Memory(12)));
        for bad in [
            "../trace.vmrr",
            "/etc/passwd",
            "snapshots/../../x",
            "snapshots/snap-000000/../../state.bin",
            "snapshots/snap-00000/state.bin",
            "snapshots/snap-000000/mem-.raw",
            "snapshots/snap-000000/mem-0.raw/x",
            "snapshots/snap-000000/evil",
            "trace.vmrr/",
            "",
            "snapshots/snap-0000a0/state.bin",
            "snapshots/snap-99999999999999999999/state.bin",
            "./image.bin",
            "image.bin/",
        ] {
            assert!(allowed(bad).is_none(), "{bad}");
        }
    }
}

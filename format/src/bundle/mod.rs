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
//! | 10 | 2 | minor (0) |
//! | 12 | 4 | reserved, zero |
//! | 16 | 8 | `manifest_len` (at most 16 MiB) |
//! | 24 | 4 | CRC32C of the manifest |
//! | 28 | 4 | CRC32C of bytes 0..28 |
//! | 32 | `manifest_len` | manifest (JSON) |
//! | ... | | entry payloads, at the offsets the manifest gives |
//!
//! Each entry is a file of the unpacked layout (`trace.vmrr`,
//! `snapshots/snap-NNNNNN/state.bin`, `snapshots/snap-NNNNNN/mem-N.raw`) stored as one
//! zstd frame, except memory files, stored sparse: the non-zero 4 KiB pages as
//! `(offset, length)` extents plus one zstd frame of their bytes. Every payload has a
//! CRC32C.
//!
//! A bundle is untrusted input. Before anything is written: the header CRC, version,
//! manifest size and CRC, every entry name against the layout's exact grammar (no `..`,
//! no absolute paths, no other characters: nothing can land outside the target
//! directory), sizes against caps (`--max-mem-mib` for memory files), offsets inside the
//! file. While extracting: each payload's CRC before decompressing it, decompressed sizes
//! against the manifest, no existing file overwritten (no symlink followed).

mod pack;
mod payload;
mod sparse;
mod unpack;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use pack::pack;
pub use unpack::{arrange, read_manifest, unpack};

/// Bundle magic.
pub const MAGIC: [u8; 8] = *b"VMRRBNDL";
/// Major version.
pub const MAJOR: u16 = 1;
/// Minor version.
pub const MINOR: u16 = 0;
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
const PAGE: u64 = 4096;

/// The trace's name inside a bundle.
pub const TRACE_ENTRY: &str = "trace.vmrr";
/// The snapshots directory's name inside a bundle.
const SNAPSHOTS_ENTRY: &str = "snapshots";

/// A bundle problem.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// An OS call failed.
    #[error(transparent)]
    File(#[from] crate::FileError),
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
            BundleError::File(_) => false,
            BundleError::Trace(t) => match t.as_ref() {
                crate::overview::OverviewError::Read(e) => e.decode_error().is_some(),
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
    /// The recording's annotations (host, CPU, KVM capabilities, command line, guest).
    pub annotations: Vec<(String, String)>,
    /// Snapshot ids included.
    pub snapshots: Vec<u64>,
    /// The files.
    pub entries: Vec<Entry>,
}

/// What [`unpack`] produced.
#[derive(Debug)]
pub struct Unpacked {
    /// The trace.
    pub trace: PathBuf,
    /// The manifest.
    pub manifest: Manifest,
}

/// The size cap of an entry named `name` if it is a name of the unpacked layout.
fn allowed(name: &str, max_mem: u64) -> Option<u64> {
    if name == TRACE_ENTRY {
        return Some(MAX_TRACE);
    }
    let rest = name.strip_prefix(SNAPSHOTS_ENTRY)?.strip_prefix("/snap-")?;
    let (id, file) = rest.split_once('/')?;
    if !(6..=20).contains(&id.len()) || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if file == crate::layout::STATE_FILE {
        return Some(MAX_STATE);
    }
    crate::layout::memory_file_slot(file).map(|_| max_mem)
}

fn invalid(path: &std::path::Path, offset: u64, reason: impl Into<String>) -> BundleError {
    BundleError::Invalid { path: path.display().to_string(), offset, reason: reason.into() }
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
        let cap = 1 << 30;
        for ok in [
            "trace.vmrr",
            "snapshots/snap-000000/state.bin",
            "snapshots/snap-000012/mem-0.raw",
            "snapshots/snap-999999/mem-31.raw",
        ] {
            assert!(allowed(ok, cap).is_some(), "{ok}");
        }
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
        ] {
            assert!(allowed(bad, cap).is_none(), "{bad}");
        }
    }
}

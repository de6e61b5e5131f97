//! Where a trace's snapshots live on disk: the one definition of the directory layout that
//! the engine writes, replay reads and bundles carry.
//!
//! ```text
//! run.vmrr                                  the trace
//! run.vmrr.snapshots/snap-000000/state.bin  snapshot 0: its state
//! run.vmrr.snapshots/snap-000000/mem-0.raw  snapshot 0: memory slot 0, sparse
//! ```
//!
//! The directory is named after the trace's whole file name, so two outputs never share
//! one (`bios.log` and `bios.vmrr` have `bios.log.snapshots` and `bios.vmrr.snapshots`).
//! Traces recorded before kept theirs at `run.snapshots` (the extension replaced): readers
//! find that name too ([`find_snapshots`]); nothing writes it.

use std::path::{Path, PathBuf};

/// The state file in a snapshot directory.
pub const STATE_FILE: &str = "state.bin";

/// The snapshot directory a trace is recorded with: its whole file name and `.snapshots`
/// (`run.vmrr` -> `run.vmrr.snapshots`).
pub fn snapshots_of(trace: &Path) -> PathBuf {
    let mut s = trace.as_os_str().to_owned();
    s.push(".snapshots");
    PathBuf::from(s)
}

/// The snapshot directory of a trace recorded before snapshot directories were named
/// after the whole file name: `run.vmrr` -> `run.snapshots`. Read, never written.
pub fn legacy_snapshots_of(trace: &Path) -> PathBuf {
    trace.with_extension("snapshots")
}

/// Where a trace's snapshots are: [`snapshots_of`] when it is a directory, else
/// [`legacy_snapshots_of`] when that is one (a trace recorded before; the snapshots'
/// identity check still refuses another trace's), else `None`.
pub fn find_snapshots(trace: &Path) -> Option<PathBuf> {
    [snapshots_of(trace), legacy_snapshots_of(trace)].into_iter().find(|d| d.is_dir())
}

/// Whether `name` is a snapshot directory's name: `snap-` and at least six digits.
pub fn is_snapshot_dir_name(name: &str) -> bool {
    name.strip_prefix("snap-").is_some_and(|n| n.len() >= 6 && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The directory of snapshot `id` under a snapshots directory: `snap-<id>` (six digits at
/// least).
pub fn snapshot_dir(root: &Path, id: u64) -> PathBuf {
    root.join(snapshot_dir_name(id))
}

/// `snap-<id>`.
pub fn snapshot_dir_name(id: u64) -> String {
    format!("snap-{id:06}")
}

/// The memory file of slot `slot` in a snapshot directory: `mem-<slot>.raw`.
pub fn memory_file_name(slot: u32) -> String {
    format!("mem-{slot}.raw")
}

/// The slot number of a memory file name (`mem-3.raw` -> 3): digits only, at most three.
pub fn memory_file_slot(name: &str) -> Option<u32> {
    let n = name.strip_prefix("mem-")?.strip_suffix(".raw")?;
    if n.is_empty() || n.len() > 3 || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// The populated `(offset, len)` ranges of `file` within `[0, len)` (`SEEK_DATA` /
/// `SEEK_HOLE`): what a sparse memory file holds, found without reading its holes.
///
/// # Errors
/// `lseek` failures other than "no more data".
pub fn populated_ranges(file: &std::fs::File, len: u64) -> std::io::Result<Vec<(u64, u64)>> {
    use rustix::fs::{SeekFrom, seek};
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < len {
        let data = match seek(file, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        if data >= len {
            break;
        }
        let hole = seek(file, SeekFrom::Hole(data)).map_err(std::io::Error::from)?.min(len);
        out.push((data, hole - data));
        pos = hole;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(snapshot_dir(Path::new("r"), 3), Path::new("r/snap-000003"));
        assert_eq!(snapshots_of(Path::new("a/run.vmrr")), Path::new("a/run.vmrr.snapshots"));
        assert_eq!(snapshots_of(Path::new("bios.log")), Path::new("bios.log.snapshots"));
        assert_eq!(legacy_snapshots_of(Path::new("a/run.vmrr")), Path::new("a/run.snapshots"));
        assert!(is_snapshot_dir_name("snap-000012") && !is_snapshot_dir_name("snap-12"));
        assert_eq!(memory_file_slot(&memory_file_name(31)), Some(31));
        for bad in ["mem-.raw", "mem-1234.raw", "mem-1.raw.x", "mem-a.raw", "x-1.raw"] {
            assert_eq!(memory_file_slot(bad), None, "{bad}");
        }
    }
}

//! Where a trace's snapshots live on disk: the one definition of the directory layout that
//! the engine writes, replay reads and bundles carry.
//!
//! ```text
//! run.vmrr                             the trace
//! run.snapshots/snap-000000/state.bin  snapshot 0: its state
//! run.snapshots/snap-000000/mem-0.raw  snapshot 0: memory slot 0, sparse
//! ```

use std::path::{Path, PathBuf};

/// The state file in a snapshot directory.
pub const STATE_FILE: &str = "state.bin";

/// The snapshot directory of a trace: `run.vmrr` -> `run.snapshots`.
pub fn snapshots_of(trace: &Path) -> PathBuf {
    trace.with_extension("snapshots")
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
        assert_eq!(snapshots_of(Path::new("a/run.vmrr")), Path::new("a/run.snapshots"));
        assert_eq!(memory_file_slot(&memory_file_name(31)), Some(31));
        for bad in ["mem-.raw", "mem-1234.raw", "mem-1.raw.x", "mem-a.raw", "x-1.raw"] {
            assert_eq!(memory_file_slot(bad), None, "{bad}");
        }
    }
}

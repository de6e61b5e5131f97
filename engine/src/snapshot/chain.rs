//! Reading snapshots: one state file, validated; and a snapshot with its parents, checked
//! as a chain (same trace, same layout, no loop, every memory file present and as large
//! as its slot) before anything is mapped or reaches KVM.

use std::path::{Path, PathBuf};

use super::state::{InvalidState, SnapshotState};
use super::{SnapshotError, StoredSnapshot, codec};
use vmrr_format::layout::{STATE_FILE, snapshot_dir};

/// Longest parent chain followed.
pub const MAX_CHAIN: usize = 4096;

fn invalid(path: PathBuf, offset: u64, reason: String) -> SnapshotError {
    SnapshotError::Invalid { path, error: InvalidState { offset, reason } }
}

/// Reads and validates the snapshot in `dir`; `max_mem` caps the memory it may ask for.
///
/// # Errors
/// Damaged, hostile or unreadable state.
pub fn load(dir: &Path, max_mem: u64) -> Result<StoredSnapshot, SnapshotError> {
    let path = dir.join(STATE_FILE);
    let state: SnapshotState = codec::read(&path)?;
    state.validate(max_mem).map_err(|error| SnapshotError::Invalid { path, error })?;
    Ok(StoredSnapshot { dir: dir.to_path_buf(), state })
}

/// Loads `dir` and its parents (siblings `snap-<parent>`), oldest (full) first. Checks the
/// chain: same trace, same slot layout, no cycles, and every memory file present and at
/// least as large as its slot.
///
/// # Errors
/// As for [`load`], and chain or file problems.
pub fn load_chain(dir: &Path, max_mem: u64) -> Result<Vec<StoredSnapshot>, SnapshotError> {
    let root = dir.parent().unwrap_or(Path::new("."));
    let mut chain = vec![load(dir, max_mem)?];
    while let Some(child) = chain.last().filter(|l| l.state.parent.is_some()) {
        let parent = child.state.parent.unwrap_or_default();
        let child_file = child.dir.join(STATE_FILE);
        let parent_at = child.state.parent_offset();
        if chain.len() >= MAX_CHAIN || chain.iter().any(|l| l.state.id == parent) {
            return Err(invalid(child_file, parent_at, format!("parent chain loops or exceeds {MAX_CHAIN}")));
        }
        let p = load(&snapshot_dir(root, parent), max_mem)?;
        if child.state.trace_id != p.state.trace_id {
            // trace_id follows id (u64) and parent (Option<u64>).
            return Err(invalid(
                child_file,
                parent_at + 9,
                format!("parent {parent} belongs to another trace"),
            ));
        }
        let layout =
            |s: &SnapshotState| s.slots.iter().map(|x| (x.id, x.gpa, x.size, x.kind)).collect::<Vec<_>>();
        if layout(&child.state) != layout(&p.state) {
            let at = child.state.slots_offset();
            return Err(invalid(child_file, at, format!("slot layout differs from parent {parent}")));
        }
        chain.push(p);
    }
    chain.reverse();
    for l in &chain {
        for s in &l.state.slots {
            let path = l.dir.join(&s.file);
            let md =
                std::fs::symlink_metadata(&path).map_err(vmrr_format::FileError::on("opening", &path))?;
            if !md.file_type().is_file() {
                return Err(invalid(path, 0, "memory file is not a regular file".into()));
            }
            if md.len() < s.size {
                return Err(SnapshotError::ShortFile { path, len: md.len(), need: s.size });
            }
        }
    }
    Ok(chain)
}

/// Checks that the snapshot in `dir` and its parent chain load and validate, with no cap
/// on guest memory: what a bundle writer runs on each snapshot before packing it
/// (`vmrr_format::bundle::pack` takes this function).
///
/// # Errors
/// The chain's first problem.
pub fn check_chain(dir: &Path) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    load_chain(dir, u64::MAX).map(|_| ()).map_err(Into::into)
}

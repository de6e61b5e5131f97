//! Reading snapshots: one state file, validated; and a snapshot with its parents, checked
//! as a chain (same trace, same layout, parents that are who they say, no loop, every
//! memory file a regular file at least as large as its slot) before anything is mapped or
//! reaches KVM.
//!
//! Cost: a chain is walked once, each state read and validated once, in time linear in
//! its length; a parent keeps only what a restore needs of it (its slots and their page
//! bitmaps: one bit per guest page), its vCPU, device and annotation state is validated
//! and dropped, so a chain of N maximal states costs about one state plus N bitmaps, not
//! N states. [`ChainCheck`] remembers what it validated, so checking every snapshot of a
//! trace (`vmrr pack`, `vmrr snapshot info` of a snapshots directory) is linear too.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::state::{InvalidState, SnapshotState};
use super::{SnapshotError, StoredSnapshot, codec};
use crate::kvm::memory::SlotKind;
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
    let state: SnapshotState = super::state::read_file(&path)?;
    state.validate(max_mem).map_err(|error| SnapshotError::Invalid { path, error })?;
    Ok(StoredSnapshot::new(dir.to_path_buf(), state))
}

/// What a chain check keeps of a validated snapshot: who it is and its memory layout.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Link {
    id: u64,
    parent: Option<u64>,
    trace_id: [u8; 16],
    layout: Vec<(u32, u64, u64, SlotKind)>,
}

impl Link {
    fn of(s: &SnapshotState) -> Self {
        Link {
            id: s.id,
            parent: s.parent,
            trace_id: s.trace_id,
            layout: s.slots.iter().map(|x| (x.id, x.gpa, x.size, x.kind)).collect(),
        }
    }
}

/// Checks that `p`, loaded from `snap-<parent>` beside `child`, is its parent.
fn check_parent(
    child: &Link,
    child_file: &Path,
    child_state: &SnapshotState,
    p: &Link,
    p_dir: &Path,
) -> Result<(), SnapshotError> {
    let parent = child.parent.unwrap_or_default();
    if p.id != parent {
        // id is the payload's first field.
        return Err(invalid(
            p_dir.join(STATE_FILE),
            codec::PAYLOAD_OFFSET,
            format!("holds snapshot {}, not {parent} as its directory name says", p.id),
        ));
    }
    if child.trace_id != p.trace_id {
        // trace_id follows id (u64) and parent (Option<u64>).
        return Err(invalid(
            child_file.to_path_buf(),
            child_state.parent_offset() + 9,
            format!("parent {parent} belongs to another trace"),
        ));
    }
    if child.layout != p.layout {
        return Err(invalid(
            child_file.to_path_buf(),
            child_state.slots_offset(),
            format!("slot layout differs from parent {parent}"),
        ));
    }
    Ok(())
}

/// Checks that every memory file of `l` is a regular file at least as large as its slot
/// (the restore's own `open` checks the descriptor again before mapping it).
fn check_files(l: &StoredSnapshot) -> Result<(), SnapshotError> {
    for s in &l.state.slots {
        let path = l.dir.join(&s.file);
        let md = std::fs::symlink_metadata(&path).map_err(vmrr_format::FileError::on("opening", &path))?;
        if !md.file_type().is_file() {
            return Err(invalid(path, 0, "memory file is not a regular file".into()));
        }
        if md.len() < s.size {
            return Err(SnapshotError::ShortFile { path, len: md.len(), need: s.size });
        }
    }
    Ok(())
}

/// Drops what a restore never uses of a parent (validated already): its vCPUs, devices
/// and annotations.
fn keep_slots_only(s: &mut SnapshotState) {
    s.vcpus = Vec::new();
    s.bus.devices = Vec::new();
    s.annotations = Vec::new();
}

/// Loads `dir` and its parents (siblings `snap-<parent>`), oldest (full) first. Checks the
/// chain: each parent is the snapshot its directory is named for, same trace, same slot
/// layout, no cycles, at most [`MAX_CHAIN`] long, and every memory file a regular file at
/// least as large as its slot. Parents keep only their slots (their vCPU, device and
/// annotation state is validated, then dropped: see the module docs).
///
/// # Errors
/// As for [`load`], and chain or file problems.
pub fn load_chain(dir: &Path, max_mem: u64) -> Result<Vec<StoredSnapshot>, SnapshotError> {
    let root = dir.parent().unwrap_or(Path::new("."));
    let top = load(dir, max_mem)?;
    check_files(&top)?;
    let mut seen = HashSet::from([top.state.id]);
    let mut chain = vec![top];
    while let Some(child) = chain.last().filter(|l| l.state.parent.is_some()) {
        let link = Link::of(&child.state);
        let parent = link.parent.unwrap_or_default();
        let child_file = child.dir.join(STATE_FILE);
        if chain.len() >= MAX_CHAIN || !seen.insert(parent) {
            let at = child.state.parent_offset();
            return Err(invalid(child_file, at, format!("parent chain loops or exceeds {MAX_CHAIN}")));
        }
        let p_dir = snapshot_dir(root, parent);
        let mut p = load(&p_dir, max_mem)?;
        check_parent(&link, &child_file, &child.state, &Link::of(&p.state), &p_dir)?;
        check_files(&p)?;
        keep_slots_only(&mut p.state);
        chain.push(p);
    }
    chain.reverse();
    Ok(chain)
}

/// Validates snapshot chains, each snapshot once however many chains share it: for
/// checking every snapshot of a trace in time linear in their number.
#[derive(Debug)]
pub struct ChainCheck {
    max_mem: u64,
    /// Validated snapshots: their link, the length of their chain, and its base's id.
    valid: RefCell<HashMap<PathBuf, (Link, usize, u64)>>,
}

/// A snapshot validated with its chain (see [`ChainCheck::top`]).
#[derive(Debug)]
pub struct Checked {
    /// The snapshot, whole.
    pub top: StoredSnapshot,
    /// The length of its chain (1 for a full snapshot).
    pub chain_len: usize,
    /// The id of the chain's full snapshot.
    pub base: u64,
}

impl ChainCheck {
    /// A check of chains whose snapshots may ask for `max_mem` bytes of guest memory.
    pub fn new(max_mem: u64) -> Self {
        ChainCheck { max_mem, valid: RefCell::new(HashMap::new()) }
    }

    /// Validates the snapshot in `dir` and its parents (as [`load_chain`] does; what was
    /// validated before is not read again) and returns the top snapshot, whole, with
    /// the length of its chain and the id of its base.
    ///
    /// # Errors
    /// As for [`load_chain`].
    pub fn top(&self, dir: &Path) -> Result<Checked, SnapshotError> {
        let root = dir.parent().unwrap_or(Path::new("."));
        let top = load(dir, self.max_mem)?;
        check_files(&top)?;
        let mut fresh: Vec<(PathBuf, Link)> = vec![(dir.to_path_buf(), Link::of(&top.state))];
        let mut seen = HashSet::from([top.state.id]);
        let mut file = dir.join(STATE_FILE);
        let mut child_state: Option<SnapshotState> = None;
        let (depth_below, base) = loop {
            let Some((_, child)) = fresh.last() else { break (0, top.state.id) };
            let Some(parent) = child.parent else { break (0, child.id) };
            if fresh.len() >= MAX_CHAIN || !seen.insert(parent) {
                let at = child_state.as_ref().unwrap_or(&top.state).parent_offset();
                return Err(invalid(file, at, format!("parent chain loops or exceeds {MAX_CHAIN}")));
            }
            let p_dir = snapshot_dir(root, parent);
            let known = self.valid.borrow().get(&p_dir).cloned();
            let cs = child_state.as_ref().unwrap_or(&top.state);
            if let Some((p, depth, base)) = known {
                check_parent(child, &file, cs, &p, &p_dir)?;
                if fresh.len() + depth > MAX_CHAIN {
                    let at = cs.parent_offset();
                    return Err(invalid(file, at, format!("parent chain loops or exceeds {MAX_CHAIN}")));
                }
                break (depth, base);
            }
            let p = load(&p_dir, self.max_mem)?;
            let link = Link::of(&p.state);
            check_parent(child, &file, cs, &link, &p_dir)?;
            check_files(&p)?;
            file = p_dir.join(STATE_FILE);
            // Kept only for the offsets of its own parent check: no bitmaps.
            let mut p = p;
            keep_slots_only(&mut p.state);
            for s in &mut p.state.slots {
                s.pages = Vec::new();
            }
            child_state = Some(p.state);
            fresh.push((p_dir, link));
        };
        let len = fresh.len() + depth_below;
        let mut valid = self.valid.borrow_mut();
        for (i, (d, l)) in fresh.into_iter().enumerate() {
            valid.insert(d, (l, len - i, base));
        }
        Ok(Checked { top, chain_len: len, base })
    }

    /// The directories of the chain of `dir` (validated by [`Self::top`] before), oldest
    /// first.
    pub fn dirs_of(&self, dir: &Path) -> Vec<PathBuf> {
        let root = dir.parent().unwrap_or(Path::new("."));
        let valid = self.valid.borrow();
        let mut dirs = vec![dir.to_path_buf()];
        let mut at = valid.get(dir).and_then(|(l, _, _)| l.parent);
        while let Some(p) = at.filter(|_| dirs.len() < MAX_CHAIN) {
            let d = snapshot_dir(root, p);
            at = valid.get(&d).and_then(|(l, _, _)| l.parent);
            dirs.push(d);
        }
        dirs.reverse();
        dirs
    }

    /// Whether `state`, read again from `dir`, is still the snapshot validated there.
    pub fn still_valid(&self, dir: &Path, state: &SnapshotState) -> bool {
        self.valid.borrow().get(dir).is_some_and(|(l, _, _)| *l == Link::of(state))
    }

    /// As [`Self::top`], for a bundle writer's snapshot check
    /// (`vmrr_format::bundle::PackOptions::check`).
    ///
    /// # Errors
    /// The chain's first problem.
    pub fn check(&self, dir: &Path) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.top(dir).map(|_| ()).map_err(Into::into)
    }
}

/// Checks that the snapshot in `dir` and its parent chain load and validate, with no cap
/// on guest memory. For many snapshots of one trace use [`ChainCheck`], which reads each
/// once.
///
/// # Errors
/// The chain's first problem.
pub fn check_chain(dir: &Path) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    ChainCheck::new(u64::MAX).check(dir)
}

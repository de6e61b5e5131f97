//! Mapping a snapshot chain into guest memory copy-on-write: each slot's base file (its
//! holes as anonymous zero pages), then each incremental snapshot's changed runs on top.
//! No page is read until the guest touches it; the files are never modified.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use vm_memory::GuestAddress;

use super::pages::{Zeros, copy_pages};
use super::state::SlotState;
use super::{SnapshotError, StoredSnapshot};
use crate::kvm::memory::{GuestMemory, Mapping, Slot, SlotSpec};
use crate::page::PAGE_SIZE;
use vmrr_format::FileError;

/// Most copy-on-write overlays mapped when restoring a chain; beyond it, changed pages are
/// copied instead (the kernel limits mappings per process).
pub const MAX_OVERLAYS: usize = 16_384;

/// Opens a snapshot file for reading: a regular file only (its descriptor's `fstat`
/// decides, so a file swapped for a FIFO or device after the chain check is still refused).
pub(crate) fn open(path: &Path) -> Result<Arc<File>, SnapshotError> {
    Ok(vmrr_format::input::open_regular(path).map(|(f, _)| Arc::new(f))?)
}

/// What mapping a chain over guest memory did.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Overlaid {
    /// File ranges mapped over the slots.
    pub overlays: usize,
    /// Whether some pages were copied instead of mapped (past [`MAX_OVERLAYS`]): their
    /// underlying mapping is not the chain's file.
    pub copied: bool,
}

/// Maps the chain's memory copy-on-write into new guest memory.
pub(crate) fn build_memory(chain: &[StoredSnapshot]) -> Result<(GuestMemory, Overlaid), SnapshotError> {
    let base = chain.first().ok_or(SnapshotError::EmptyChain)?;
    let mut backed = Vec::new();
    for s in &base.state.slots {
        let spec = SlotSpec { gpa: GuestAddress(s.gpa), size: s.size, kind: s.kind };
        backed.push((spec, open(&base.dir.join(&s.file))?, Mapping::Private));
    }
    let mem = GuestMemory::from_backing(backed)?;
    let done = overlay_chain(chain, &mem, false)?;
    Ok((mem, done))
}

/// Maps the chain over `mem`, whose slots are bound to the base snapshot's files: backs the
/// base files' holes with anonymous zero pages (or, with `remap_base`, maps the whole base
/// file when it has too many ranges for that; without it the base file must already be
/// mapped) and maps each incremental's changed runs on top.
pub(crate) fn overlay_chain(
    chain: &[StoredSnapshot],
    mem: &GuestMemory,
    remap_base: bool,
) -> Result<Overlaid, SnapshotError> {
    let mut copied = false;
    let base = chain.first().ok_or(SnapshotError::EmptyChain)?;
    let newer = chain.get(1..).unwrap_or(&[]);
    let mut overlays: usize = newer.iter().flat_map(|l| l.state.slots.iter()).map(|s| s.runs().len()).sum();
    for (s, slot) in base.state.slots.iter().zip(mem.slots()) {
        let path = base.dir.join(&s.file);
        let added = map_holes_anonymous(&path, slot, MAX_OVERLAYS.saturating_sub(overlays))?;
        if added.is_none() && remap_base {
            slot.overlay_file(0, slot.pages(), slot.file())?;
        }
        overlays += added.unwrap_or(0);
    }
    for l in newer {
        for (i, s) in l.state.slots.iter().enumerate() {
            let path = l.dir.join(&s.file);
            let file = open(&path)?;
            let Some(slot) = mem.slots().get(i) else { continue };
            for (first, count) in s.runs() {
                if overlays <= MAX_OVERLAYS {
                    slot.overlay_file(first, count, &file)?;
                } else {
                    copy_run(&file, &path, mem, s, first, count)?;
                    copied = true;
                }
            }
        }
    }
    Ok(Overlaid { overlays: overlays.min(MAX_OVERLAYS), copied })
}

/// Backs the holes of a base snapshot file with anonymous zero pages instead of the file:
/// the slot becomes private anonymous memory with the file's populated ranges mapped over
/// it. Reading a hole then costs nothing (the shared zero page) instead of a page-cache page
/// of zeros, and on a full tmpfs (where a read fault on a hole must allocate a page and
/// fails with SIGBUS, seen as `KVM_RUN` EFAULT) the guest still runs. Returns the mappings
/// added, or `None` (nothing done) when the file has more than `budget` populated ranges.
fn map_holes_anonymous(path: &Path, slot: &Slot, budget: usize) -> Result<Option<usize>, SnapshotError> {
    let ranges = vmrr_format::layout::populated_ranges(slot.file(), slot.spec().size)
        .map_err(FileError::on("scanning", path))?;
    if ranges.len() > budget {
        return Ok(None);
    }
    slot.zero_anonymous()?;
    for &(off, len) in &ranges {
        let first = off / PAGE_SIZE;
        let end = (off + len).div_ceil(PAGE_SIZE).min(slot.pages());
        slot.overlay_file(first, end - first, slot.file())?;
    }
    Ok(Some(ranges.len()))
}

/// Copies pages `[first, first + count)` of a snapshot file into guest memory.
pub(crate) fn copy_run(
    file: &File,
    path: &Path,
    mem: &GuestMemory,
    s: &SlotState,
    first: u64,
    count: u64,
) -> Result<(), SnapshotError> {
    copy_pages(
        first,
        count,
        Zeros::Write,
        |p, buf| Ok(file.read_exact_at(buf, p * PAGE_SIZE).map_err(FileError::on("reading", path))?),
        |p, bytes| {
            let at = GuestAddress(s.gpa + p * PAGE_SIZE);
            mem.write(at, bytes)
                .map_err(|e| SnapshotError::Memory(crate::kvm::memory::MemoryError::Access(e)))
        },
    )
    .map(|_| ())
}

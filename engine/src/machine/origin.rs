//! What a machine's memory is known to hold: the snapshot chain it was last restored to,
//! reset to or captured as, apart from the pages written since (KVM's dirty log and the
//! slots' userspace-written pages hold those). A restore over the machine compares this
//! with its target to remap only the pages that differ.

use std::path::PathBuf;
use std::sync::Arc;

/// One snapshot of the chain a machine's memory came from.
#[derive(Debug, Clone)]
pub struct OriginLink {
    /// Its directory.
    pub dir: PathBuf,
    /// Its id, trace and exit position: with `dir`, what makes two links the same
    /// snapshot.
    pub id: u64,
    /// The trace it belongs to.
    pub trace_id: [u8; 16],
    /// The last trace record before it.
    pub exit_seq: Option<u64>,
    /// Per slot, the runs `(first_page, count)` of pages it changed over its parent
    /// (empty for the chain's full snapshot, which holds every page).
    pub changed: Arc<Vec<Vec<(u64, u64)>>>,
}

impl OriginLink {
    /// Whether `self` and `other` name the same snapshot.
    pub fn same(&self, other: &OriginLink) -> bool {
        self.dir == other.dir
            && self.id == other.id
            && self.trace_id == other.trace_id
            && self.exit_seq == other.exit_seq
    }
}

/// The chain a machine's memory equals (apart from pages written since), and how its
/// slots are mapped.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The chain, oldest (full) first.
    pub links: Vec<OriginLink>,
    /// Whether every page's underlying mapping is that chain's file page (or an anonymous
    /// zero page for a hole), with no private copy except of pages written since: then
    /// discarding a written page's private copy returns it to the chain's newest bytes.
    pub mapped: bool,
    /// File ranges mapped over the slots since their last whole remap: each splits a
    /// mapping, and the kernel caps mappings per process.
    pub overlays: usize,
}

impl Origin {
    /// The newest snapshot of the chain.
    pub fn top(&self) -> Option<&OriginLink> {
        self.links.last()
    }
}

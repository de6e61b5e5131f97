//! Which pages differ between a machine's memory and a snapshot chain, and where each
//! page's bytes in that chain come from.
//!
//! A machine's memory equals its [`Origin`] chain's newest snapshot apart from the pages
//! written since (KVM's dirty log, the slots' userspace-written pages). Two chains of one
//! trace share their oldest snapshots; past the last shared one (the common ancestor),
//! each snapshot records the pages it changed. So the pages that can differ between the
//! memory and a target chain are the union of: the pages changed by either chain past the
//! common ancestor, and the pages written since. Everything else is the same bytes in
//! both, read from the same snapshot file: a restore need not touch it.

use std::sync::Arc;

use super::pages::bitmap_runs;
use super::{SnapshotError, StoredSnapshot, take_dirty_log};
use crate::kvm::memory::SlotKind;
use crate::machine::Machine;
use crate::machine::origin::{Origin, OriginLink};

/// Sorted, disjoint runs `(first_page, count)`.
pub(crate) type Runs = Vec<(u64, u64)>;

/// The union of run lists: sorted, overlapping and touching runs merged.
pub(crate) fn union<'a>(lists: impl IntoIterator<Item = &'a [(u64, u64)]>) -> Runs {
    let mut all: Vec<(u64, u64)> = lists.into_iter().flatten().copied().filter(|r| r.1 > 0).collect();
    all.sort_unstable();
    let mut out: Runs = Vec::with_capacity(all.len());
    for (first, count) in all {
        match out.last_mut() {
            Some((f, n)) if first <= *f + *n => *n = (*n).max(first + count - *f),
            _ => out.push((first, count)),
        }
    }
    out
}

/// `s` as a link of an [`Origin`], with the changed runs computed at its load (none for a
/// full snapshot).
pub(crate) fn link_of(s: &StoredSnapshot) -> OriginLink {
    link_with(s, Arc::clone(&s.changed))
}

fn link_with(s: &StoredSnapshot, changed: Arc<Vec<Runs>>) -> OriginLink {
    OriginLink {
        dir: s.dir.clone(),
        id: s.state.id,
        trace_id: s.state.trace_id,
        exit_seq: s.state.exit_seq,
        changed,
    }
}

/// Whether `link` is the snapshot `s`.
pub(crate) fn is(link: &OriginLink, s: &StoredSnapshot) -> bool {
    link.id == s.state.id
        && link.trace_id == s.state.trace_id
        && link.exit_seq == s.state.exit_seq
        && link.dir == s.dir
}

/// An origin for memory that now equals `chain`'s newest snapshot.
pub(crate) fn origin_of(chain: &[StoredSnapshot], mapped: bool, overlays: usize) -> Origin {
    Origin { links: chain.iter().map(link_of).collect(), mapped, overlays }
}

/// Pages written since the memory last equalled its origin, per slot: KVM's dirty log
/// (read and cleared) and the pages written from userspace (taken). `None` for a slot
/// whose guest writes are not logged.
pub(crate) fn take_written(m: &Machine) -> Result<Vec<Option<Runs>>, SnapshotError> {
    let logged = m.vm().config().dirty_log;
    let mut out = Vec::with_capacity(m.memory().slots().len());
    for slot in m.memory().slots() {
        let mut runs: Vec<Runs> = Vec::new();
        if let Some(b) = slot.take_written() {
            runs.push(bitmap_runs(&b, slot.pages()));
        }
        match (slot.spec().kind, logged) {
            (SlotKind::Ram, true) => runs.push(take_dirty_log(m.vm(), slot)?.runs(slot.pages())),
            (SlotKind::Ram, false) => {
                out.push(None);
                continue;
            }
            // The guest cannot write ROM.
            (SlotKind::Rom, _) => {}
        }
        out.push(Some(union(runs.iter().map(Vec::as_slice))));
    }
    Ok(out)
}

/// The pages that differ between a machine's memory and `target`, per slot, and the
/// target's chain as an origin (reusing the runs of the links it shares).
#[derive(Debug)]
pub(crate) struct Changed {
    /// Per slot, the pages to set to the target's bytes.
    pub runs: Vec<Runs>,
    /// The target as an origin's links; `None` when they are the origin's already.
    pub links: Option<Vec<OriginLink>>,
}

impl Changed {
    /// Runs in all slots.
    pub fn run_count(&self) -> usize {
        self.runs.iter().map(Vec::len).sum()
    }

    /// The target's links, given the origin they were compared with.
    pub fn links_from(self, origin: &Origin) -> Vec<OriginLink> {
        self.links.unwrap_or_else(|| origin.links.clone())
    }
}

/// The pages that differ between memory whose origin is `origin` (with `written`, from
/// [`take_written`], written since) and the newest snapshot of `target`; `None` when
/// that cannot be known: no origin, a different full snapshot, or a slot whose guest
/// writes are not logged.
pub(crate) fn changed(
    origin: Option<&Origin>,
    written: &[Option<Runs>],
    target: &[StoredSnapshot],
) -> Option<Changed> {
    let origin = origin?;
    let written: Vec<&Runs> = written.iter().map(Option::as_ref).collect::<Option<_>>()?;
    let shared = origin.links.iter().zip(target).take_while(|(o, t)| is(o, t)).count();
    if shared == 0 {
        return None;
    }
    if shared == origin.links.len() && shared == target.len() {
        // The same chain: only what was written since differs.
        return Some(Changed { runs: written.into_iter().cloned().collect(), links: None });
    }
    let mut links: Vec<OriginLink> = origin.links[..shared].to_vec();
    links.extend(target[shared..].iter().map(link_of));
    let runs = (0..written.len())
        .map(|i| {
            let ours = origin.links[shared..].iter().filter_map(|l| l.changed.get(i));
            let theirs = links[shared..].iter().filter_map(|l| l.changed.get(i));
            union(ours.chain(theirs).map(Vec::as_slice).chain(written.get(i).map(|w| w.as_slice())))
        })
        .collect();
    Some(Changed { runs, links: Some(links) })
}

/// Splits `runs` of slot `slot` by the snapshot of `chain` that holds each page's bytes
/// (the newest that changed it; the full snapshot for the rest): `(first, count, index
/// into chain)`. Costs one bit test per page and snapshot searched, nothing per page of
/// the slot that is not in `runs`.
///
/// # Errors
/// A page no snapshot holds (a chain whose oldest snapshot is not full).
pub(crate) fn sources(
    chain: &[StoredSnapshot],
    slot: usize,
    runs: &[(u64, u64)],
) -> Result<Vec<(u64, u64, usize)>, SnapshotError> {
    let mut out: Vec<(u64, u64, usize)> = Vec::new();
    for &(first, count) in runs {
        for p in first..first + count {
            let k = chain
                .iter()
                .rposition(|l| l.state.slots.get(slot).is_some_and(|s| s.has_page(p)))
                .ok_or(SnapshotError::PageMissing { slot, page: p })?;
            match out.last_mut() {
                Some((f, n, src)) if *src == k && *f + *n == p => *n += 1,
                _ => out.push((p, 1, k)),
            }
        }
    }
    Ok(out)
}

/// Reads and discards KVM's dirty log and the userspace-written pages of every slot: what
/// a checkpoint's pause does to dirty tracking (KVM write-protects the logged pages again,
/// so the guest's next write to each faults), without a snapshot. The pages written so far
/// are forgotten: the machine's memory origin becomes unknown (a later restore over it
/// remaps whole) and the next snapshot must be full. For measuring what dirty tracking
/// alone costs a guest. Returns the pages that were dirty.
///
/// # Errors
/// `KVM_GET_DIRTY_LOG` failed.
pub fn forget_dirty_pages(m: &mut Machine) -> Result<u64, SnapshotError> {
    let written = take_written(m)?;
    m.set_memory_origin(None);
    Ok(written.iter().flatten().flatten().map(|r| r.1).sum())
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // page indices in tests are small
mod tests {
    use super::*;

    #[test]
    fn union_merges_overlapping_and_touching_runs() {
        let a = [(0u64, 2u64), (10, 5)];
        let b = [(2u64, 1u64), (12, 10), (30, 0), (40, 1)];
        assert_eq!(union([&a[..], &b[..]]), vec![(0, 3), (10, 12), (40, 1)]);
        assert_eq!(union(std::iter::empty()), Vec::<(u64, u64)>::new());
    }

    proptest::proptest! {
        #[test]
        fn union_is_the_set_union(lists in proptest::collection::vec(
            proptest::collection::vec((0u64..300, 0u64..20), 0..6), 0..5)) {
            let slices: Vec<&[(u64, u64)]> = lists.iter().map(Vec::as_slice).collect();
            let got = union(slices.iter().copied());
            let mut want = vec![false; 400];
            for (f, n) in lists.iter().flatten() {
                for p in *f..*f + *n {
                    want[p as usize] = true;
                }
            }
            let mut have = vec![false; 400];
            for (f, n) in &got {
                proptest::prop_assert!(*n > 0);
                for p in *f..*f + *n {
                    have[p as usize] = true;
                }
            }
            proptest::prop_assert_eq!(have, want);
            for w in got.windows(2) {
                proptest::prop_assert!(w[0].0 + w[0].1 < w[1].0, "runs are disjoint and not touching");
            }
        }
    }
}

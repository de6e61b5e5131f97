//! Copy-on-write snapshots of memory slots, vCPU and device state.
//!
//! On disk, a trace `run.vmrr` keeps its snapshots in `run.vmrr.snapshots/` (traces recorded
//! before: `run.snapshots/`, still read), one directory per
//! snapshot, `snap-<id>` (six digits):
//!
//! ```text
//! run.vmrr.snapshots/snap-000000/state.bin     state (see codec): slots, vCPU, devices, chain
//! run.vmrr.snapshots/snap-000000/mem-0.raw     slot 0: its bytes at their offsets, sparse
//! run.vmrr.snapshots/snap-000003/state.bin     an incremental snapshot: parent 2
//! run.vmrr.snapshots/snap-000003/mem-0.raw     only the pages changed since snapshot 2
//! ```
//!
//! - **Capture** ([`take`]) writes the first snapshot in full (only populated, non-zero pages; the
//!   rest stay holes), later ones incrementally: the pages KVM's dirty log reports since
//!   the parent. The guest is paused only for that: O(dirty pages), not O(memory).
//! - **Restore** ([`restore`]) maps each slot's file `MAP_PRIVATE` (and, for an incremental chain, each
//!   run of changed pages from its snapshot's file over it) and registers it with
//!   `KVM_SET_USER_MEMORY_REGION2`: no page is read until the guest touches it, writes go
//!   to private copies, the files are never modified, and any number of VMs can share
//!   them. vmrr's own work does not grow with memory size; KVM's does (creating a memslot
//!   allocates per-page metadata on a shadow-paging host, see docs/PERFORMANCE.md).
//! - **Restore over** a machine of the same layout ([`restore_over`]) keeps the VM and its
//!   registered slots and maps the snapshot's file pages at the same host addresses
//!   (`MAP_FIXED`): no VM or memslot is created, the old translations are dropped by KVM's
//!   MMU notifier, and any snapshot of that layout (not only the machine's own) can be
//!   switched to. Only the pages that may differ are remapped: the machine remembers the
//!   chain its memory equals (its origin, see `changed`), so the pages changed past the
//!   common ancestor of the two chains plus the pages written since (KVM's dirty log and
//!   userspace writes) are all that moves. This is the restore a replay, debugging or
//!   fuzzing worker keeps a machine ready for: its cost follows what changed.
//! - **In-place reset** ([`reset`]) returns a running VM to its snapshot by discarding the
//!   private copies of the pages dirtied since (one `madvise` per run): O(dirty pages). The
//!   general registers and events go through `kvm_run`'s synced registers.
//! - **Background capture** ([`Background`]) pauses only to read the dirty log and the
//!   vCPU/device state and to write-protect the pages to store (userfaultfd); a writer
//!   thread stores them while the guest runs, the old contents of pages the guest writes
//!   first set aside by a fault handler (see `background`).
//! - **Atomicity**: a snapshot is written to `snap-<id>.tmp`, every file synced, then
//!   renamed; a crash leaves no directory that reads as a valid snapshot.
//!
//! Every state is validated (framing, CRC, version, slots, sizes, vCPU count, memory cap)
//! and every memory file checked to be at least as large as its slot before anything is
//! mapped or reaches KVM.

pub mod background;
mod capture;
mod chain;
mod changed;
pub mod codec;
mod compare;
mod error;
mod offline;
mod overlay;
mod pages;
mod restore;
pub mod state;

use std::path::Path;

pub use background::{Background, BackgroundError, InFlight};
pub use capture::{CaptureStats, Identity, take, take_new};
pub(crate) use capture::{Plan, Source, write as capture};
pub use chain::{ChainCheck, Checked, MAX_CHAIN, check_chain, load, load_chain};
pub use changed::forget_dirty_pages;
pub use compare::{CLOCK_MSRS, StateDiff, compare};
pub use error::{RejectedField, SnapshotError};
pub use offline::{flatten, flatten_dir, squash};
pub use overlay::MAX_OVERLAYS;
pub use pages::bitmap_runs;
pub use restore::{
    Remap, ResetStats, RestoreOverStats, reset, restore, restore_into, restore_over, restore_over_with,
};
pub use state::{SlotState, SnapshotState, VmState};
pub use vmrr_format::layout::{STATE_FILE, snapshot_dir, snapshots_of as dir_for_trace};

/// A snapshot read from disk and validated: its directory and its state.
#[derive(Debug, Clone)]
pub struct StoredSnapshot {
    /// Its directory.
    pub dir: std::path::PathBuf,
    /// Its state.
    pub state: SnapshotState,
    /// Per slot, the runs of pages it changed over its parent (none when full), from its
    /// page bitmaps once at load: a restore over a kept machine then costs the pages that
    /// differ, not a scan of every slot's bitmap.
    pub(crate) changed: std::sync::Arc<Vec<changed::Runs>>,
}

impl StoredSnapshot {
    /// A loaded snapshot of `state` in `dir`.
    pub(crate) fn new(dir: std::path::PathBuf, state: SnapshotState) -> Self {
        let changed = state.slots.iter().map(|s| if s.full { Vec::new() } else { s.runs() }).collect();
        StoredSnapshot { dir, state, changed: std::sync::Arc::new(changed) }
    }
}

#[cfg(feature = "testing")]
/// Fuzzing entry point: decodes `data` as a snapshot state file and validates it, exactly
/// as loading a snapshot does before anything reaches KVM. Must return (an error or not)
/// without panicking and in bounded memory for every input.
///
/// The input is tried as given and again with its CRC-64 recomputed, so a fuzzer's
/// mutations reach the decoder and the validation behind the checksum.
pub fn fuzz_state(data: &[u8]) {
    let check = |b: &[u8]| {
        if let Ok(st) = state::decode_file(b, "fuzz") {
            if st.validate(16 << 30).is_ok() {
                // Offsets of everything a message could name.
                let _ = (st.slot_offset(st.slots.len()), st.vcpu_offset(st.vcpus.len()));
            }
        }
    };
    check(data);
    let mut fixed = data.to_vec();
    if codec::fix_checksum(&mut fixed) {
        check(&fixed);
    }
}

/// The pages of `slot` the guest wrote since the last call for it (KVM's dirty ring or
/// bitmap, whichever the VM uses: [`crate::kvm::dirty::DirtyLog`]), read and forgotten.
pub(crate) fn take_dirty_log(
    vm: &crate::kvm::Vm,
    slot: &crate::kvm::memory::Slot,
) -> Result<crate::kvm::dirty::DirtyPages, SnapshotError> {
    Ok(vm.dirty().take(vm.fd(), slot)?)
}

/// `true` when `path` is a snapshot directory (it holds a state file).
pub fn is_snapshot_dir(path: &Path) -> bool {
    path.join(STATE_FILE).exists()
}

/// What the state file `state` references: its parent and its memory files as `(file
/// name, slot size)`: what a bundle's reader may extract for that snapshot
/// (`vmrr_format::bundle::StateFiles`).
///
/// # Errors
/// The state cannot be read or decoded.
pub fn memory_files(
    state: &std::path::Path,
) -> Result<vmrr_format::bundle::StateRefs, Box<dyn std::error::Error + Send + Sync>> {
    let st: SnapshotState = codec::read(state)?;
    Ok(vmrr_format::bundle::StateRefs {
        parent: st.parent,
        files: st.slots.iter().map(|s| (s.file.clone(), s.size)).collect(),
    })
}

//! Copy-on-write snapshots of memory slots, vCPU and device state.
//!
//! On disk, a trace `run.vmrr` keeps its snapshots in `run.snapshots/`, one directory per
//! snapshot, `snap-<id>` (six digits):
//!
//! ```text
//! run.snapshots/snap-000000/state.bin     state (see codec): slots, vCPU, devices, chain
//! run.snapshots/snap-000000/mem-0.raw     slot 0: its bytes at their offsets, sparse
//! run.snapshots/snap-000003/state.bin     an incremental snapshot: parent 2
//! run.snapshots/snap-000003/mem-0.raw     only the pages changed since snapshot 2
//! ```
//!
//! - **Capture** writes the first snapshot in full (only populated, non-zero pages; the
//!   rest stay holes), later ones incrementally: the pages KVM's dirty log reports since
//!   the parent. The guest is paused only for that: O(dirty pages), not O(memory).
//! - **Restore** maps each slot's file `MAP_PRIVATE` (and, for an incremental chain, each
//!   run of changed pages from its snapshot's file over it) and registers it with
//!   `KVM_SET_USER_MEMORY_REGION2`: no page is read until the guest touches it, writes go
//!   to private copies, the files are never modified, and any number of VMs can share
//!   them. vmrr's own work does not grow with memory size; KVM's does (creating a memslot
//!   allocates per-page metadata on a shadow-paging host, see docs/PERFORMANCE.md).
//! - **Restore over** a machine of the same layout ([`restore_over`]) keeps the VM and its
//!   registered slots and maps the snapshot's files at the same host addresses
//!   (`MAP_FIXED`): no VM or memslot is created, the old translations are dropped by KVM's
//!   MMU notifier, and any snapshot of that layout (not only the machine's own) can be
//!   switched to. This is the restore a replay or fuzzing worker keeps a machine ready for.
//! - **In-place reset** returns a running VM to its snapshot by discarding the private
//!   copies of the pages dirtied since (one `madvise` per run): O(dirty pages).
//! - **Atomicity**: a snapshot is written to `snap-<id>.tmp`, every file synced, then
//!   renamed; a crash leaves no directory that reads as a valid snapshot.
//!
//! Every state is validated (framing, CRC, version, slots, sizes, vCPU count, memory cap)
//! and every memory file checked to be at least as large as its slot before anything is
//! mapped or reaches KVM.

pub mod codec;
pub mod state;

mod capture;
mod restore;

pub use capture::{CaptureStats, take};
pub use restore::{
    ResetStats, flatten, load, load_chain, reset, restore, restore_into, restore_over, squash,
};
pub use state::{SlotState, SnapshotState, VmState};

use std::path::{Path, PathBuf};

/// The name of the state file in a snapshot directory.
pub const STATE_FILE: &str = "state.bin";

#[cfg(feature = "testing")]
/// Fuzzing entry point: decodes `data` as a snapshot state file and validates it, exactly
/// as loading a snapshot does before anything reaches KVM. Must return (an error or not)
/// without panicking and in bounded memory for every input.
///
/// The input is tried as given and again with its CRC-64 recomputed, so a fuzzer's
/// mutations reach the decoder and the validation behind the checksum.
pub fn fuzz_state(data: &[u8]) {
    let check = |b: &[u8]| {
        if let Ok(st) = codec::decode::<SnapshotState>(b, "fuzz") {
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

/// The populated `(offset, len)` ranges of `file` within `[0, len)` (`SEEK_DATA` /
/// `SEEK_HOLE`): what a sparse memory file holds, found without reading its holes.
///
/// # Errors
/// `lseek` failures.
pub fn populated_ranges(file: &std::fs::File, len: u64) -> std::io::Result<Vec<(u64, u64)>> {
    crate::sys::mapping::data_ranges(file, len)
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

/// The snapshot directory of a trace: `run.vmrr` -> `run.snapshots`.
pub fn dir_for_trace(trace: &Path) -> PathBuf {
    trace.with_extension("snapshots")
}

/// The directory of snapshot `id` under `root`.
pub fn snapshot_dir(root: &Path, id: u64) -> PathBuf {
    root.join(format!("snap-{id:06}"))
}

/// A snapshot read from disk and validated.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Its directory.
    pub dir: PathBuf,
    /// Its state.
    pub state: SnapshotState,
}

/// Snapshot operations failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The state file is unreadable or damaged.
    #[error(transparent)]
    Codec(#[from] codec::CodecError),
    /// The state is inconsistent or hostile.
    #[error("{path}: {reason}")]
    Invalid {
        /// The snapshot.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A memory file is shorter than its slot (mapping it would fault later).
    #[error("{path}: offset {len:#x}: memory file ends here, but its slot needs {need} bytes")]
    ShortFile {
        /// The file.
        path: String,
        /// Its length.
        len: u64,
        /// The slot size.
        need: u64,
    },
    /// An OS call on a snapshot file failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Creating the VM failed.
    #[error(transparent)]
    Vm(#[from] crate::error::CreateVmError),
    /// vCPU state could not be saved or restored.
    #[error(transparent)]
    Vcpu(#[from] crate::kvm::vcpu_state::VcpuStateError),
    /// Device state could not be restored.
    #[error(transparent)]
    Device(#[from] crate::persist::DeviceRestoreError),
    /// A KVM ioctl failed.
    #[error("{what} failed")]
    Kvm {
        /// The ioctl.
        what: &'static str,
        /// Its error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The machine cannot do what was asked.
    #[error("{0}")]
    Unsupported(String),
}

impl SnapshotError {
    /// True when the cause is damaged or invalid input (CLI exit 3), as opposed to the host.
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            SnapshotError::Codec(_)
                | SnapshotError::Invalid { .. }
                | SnapshotError::ShortFile { .. }
                | SnapshotError::Device(_)
                | SnapshotError::Vcpu(crate::kvm::vcpu_state::VcpuStateError::Layout { .. })
                | SnapshotError::Vcpu(crate::kvm::vcpu_state::VcpuStateError::TooMany { .. })
        )
    }
}

/// Reads and clears KVM's dirty log of `slot`: a bitmap of the pages written since the last
/// read, one bit per page.
pub(crate) fn take_dirty_log(
    vm: &kvm_ioctls::VmFd,
    slot: &crate::kvm::memory::Slot,
) -> Result<Vec<u64>, SnapshotError> {
    vm.get_dirty_log(slot.id, usize::try_from(slot.spec.size).unwrap_or(0))
        .map_err(|source| SnapshotError::Kvm { what: "KVM_GET_DIRTY_LOG", source })
}

pub(crate) fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let path = path.display().to_string();
    move |source| SnapshotError::Io { what, path, source }
}

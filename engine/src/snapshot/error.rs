//! Why a snapshot operation failed.

use std::path::PathBuf;

use super::codec::CodecError;
use super::state::InvalidState;
use crate::kvm::memory::MemoryError;
use crate::kvm::system::KvmError;
use crate::kvm::vcpu_state::VcpuStateError;
use crate::kvm::vm::CreateVmError;
use crate::machine::BootMachineError;
use crate::persist::DeviceRestoreError;

/// Snapshot operations failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The state file is unreadable or damaged.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The state is inconsistent or hostile.
    #[error("{}: {error}", path.display())]
    Invalid {
        /// The file at fault.
        path: PathBuf,
        /// Where in it, and what is wrong.
        error: InvalidState,
    },
    /// A memory file is shorter than its slot (mapping it would fault later).
    #[error("{}: offset {len:#x}: memory file ends here, but its slot needs {need} bytes", path.display())]
    ShortFile {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// The slot size.
        need: u64,
    },
    /// An OS call on a snapshot file failed.
    #[error(transparent)]
    File(#[from] vmrr_format::FileError),
    /// The output may not be written (an input, or existing).
    #[error(transparent)]
    Output(#[from] vmrr_format::output::OutputError),
    /// A snapshot file is not a regular file.
    #[error(transparent)]
    Input(#[from] vmrr_format::input::InputError),
    /// KVM refused a vCPU field of the state as invalid (`EINVAL`): the state describes a
    /// vCPU that cannot exist, although it passed every check vmrr can make itself.
    #[error(transparent)]
    Rejected(Box<RejectedField>),
    /// Creating the VM failed.
    #[error(transparent)]
    Vm(#[from] CreateVmError),
    /// Building the machine failed.
    #[error(transparent)]
    Machine(#[from] BootMachineError),
    /// vCPU state could not be saved or restored.
    #[error(transparent)]
    Vcpu(#[from] VcpuStateError),
    /// An AP's thread panicked while holding it.
    #[error(transparent)]
    VcpuLock(#[from] crate::kvm::vm::VcpuLockError),
    /// Device state could not be restored.
    #[error(transparent)]
    Device(#[from] DeviceRestoreError),
    /// A KVM ioctl failed.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// Guest memory could not be read, written or remapped.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The saved state of KVM's in-kernel irqchip is unusable (sizes) or refused.
    #[error("{}: KVM's in-kernel irqchip state", path.display())]
    Irqchip {
        /// The state file.
        path: PathBuf,
        /// What KVM or the size check said.
        #[source]
        source: crate::kvm::irqchip::IrqchipStateError,
    },
    /// An operation was given no snapshot.
    #[error("a snapshot chain needs at least one snapshot")]
    EmptyChain,
    /// An operation needs the dirty log, and the machine was built without it.
    #[error("{what} needs dirty logging (a machine built for checkpoints)")]
    NoDirtyLog {
        /// The operation.
        what: &'static str,
    },
    /// A restore over a kept machine was given a snapshot of another layout.
    #[error(
        "snapshot {} has a different memory layout than the machine ({snapshot} slots vs {machine}); restore it into a new VM",
        dir.display()
    )]
    Layout {
        /// The snapshot.
        dir: PathBuf,
        /// Its slot count.
        snapshot: usize,
        /// The machine's.
        machine: usize,
    },
    /// A restore over a kept machine was given a snapshot of another CPUID.
    #[error(
        "snapshot {} has another CPUID than the machine's vCPU, which KVM does not let change after a run; restore it into a new VM",
        dir.display()
    )]
    Cpuid {
        /// The snapshot.
        dir: PathBuf,
        /// KVM's refusal.
        #[source]
        source: VcpuStateError,
    },
    /// A squash was given snapshots that are not a full parent and its direct child.
    #[error("snapshot {older} is not the full parent of {newer}")]
    NotParent {
        /// The older snapshot's id.
        older: u64,
        /// The newer snapshot's id.
        newer: u64,
    },
    /// Background capture failed to set up or lost its capture.
    #[error(transparent)]
    Background(#[from] super::background::BackgroundError),
    /// A page to revert is held by no snapshot of the chain.
    #[error("page {page} of slot {slot} is in no snapshot of the chain")]
    PageMissing {
        /// The slot's index.
        slot: usize,
        /// The page.
        page: u64,
    },
}

/// A vCPU field KVM refused (see [`SnapshotError::Rejected`]).
#[derive(Debug, thiserror::Error)]
#[error("{}: offset {offset:#x}: vCPU {vcpu} field {field}: KVM refuses it ({ioctl}): an impossible vCPU state", path.display())]
pub struct RejectedField {
    /// The state file.
    pub path: PathBuf,
    /// Offset of the field in it.
    pub offset: u64,
    /// The vCPU.
    pub vcpu: usize,
    /// The field (`sregs`, `msrs[3]`, ...).
    pub field: String,
    /// The ioctl that refused it.
    pub ioctl: &'static str,
    /// KVM's refusal.
    #[source]
    pub source: VcpuStateError,
}

impl SnapshotError {
    /// True when the cause is damaged or invalid input (CLI exit 3), as opposed to the host.
    pub fn is_invalid_input(&self) -> bool {
        if let SnapshotError::Input(e) | SnapshotError::Codec(super::codec::CodecError::Input(e)) = self {
            return !matches!(e, vmrr_format::input::InputError::Io { .. });
        }
        matches!(
            self,
            SnapshotError::Codec(_)
                | SnapshotError::Invalid { .. }
                | SnapshotError::Rejected(_)
                | SnapshotError::ShortFile { .. }
                | SnapshotError::Device(_)
                | SnapshotError::Irqchip { .. }
                | SnapshotError::Vcpu(VcpuStateError::Layout { .. })
                | SnapshotError::Vcpu(VcpuStateError::TooMany { .. })
        )
    }
}

//! Why a debugging session could not do what it was asked.

use crate::error::ReplayError;

/// Debugging failures (a divergence or the end of the trace is a stop, not an error).
#[derive(Debug, thiserror::Error)]
pub enum DebugError {
    /// Replaying failed (the trace, a snapshot, KVM).
    #[error(transparent)]
    Replay(#[from] ReplayError),
    /// A session checkpoint could not be taken or restored.
    #[error("session checkpoint: {0}")]
    Checkpoint(#[source] vmrr_engine::snapshot::SnapshotError),
    /// Running the guest live (after a write from the debugger) failed.
    #[error(transparent)]
    Run(#[from] vmrr_engine::machine::RunError),
    /// A KVM call failed.
    #[error(transparent)]
    Kvm(#[from] vmrr_engine::kvm::KvmError),
    /// Switching to another vCPU failed (its thread panicked, or there is no such vCPU).
    #[error("switching vCPUs")]
    Vcpu(#[from] vmrr_engine::kvm::vm::VcpuLockError),
    /// The session's temporary directory could not be created.
    #[error("cannot create the session's checkpoint directory")]
    TempDir(#[source] std::io::Error),
    /// Replaying to a point the session reached before did not reach it again: the replay
    /// is not deterministic on this host (a bug, or an input vmrr does not record).
    #[error("replaying to {0} did not reach it again (the replay is not deterministic here)")]
    Lost(String),
}

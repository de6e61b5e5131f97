//! Why a replay could not run (as opposed to a replay that ran and diverged).

/// Replay failures.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The trace is damaged or invalid.
    #[error(transparent)]
    Trace(#[from] vmrr_format::ReadError),
    /// The trace cannot be replayed as a whole (damaged in the middle, records missing).
    #[error(transparent)]
    Overview(#[from] vmrr_format::overview::OverviewError),
    /// A snapshot is damaged, invalid, or cannot be restored.
    #[error(transparent)]
    Snapshot(#[from] vmrr_engine::snapshot::SnapshotError),
    /// The bundle is damaged or hostile.
    #[error(transparent)]
    Bundle(#[from] vmrr_format::bundle::BundleError),
    /// The trace does not say how to rebuild its machine, or asks for something invalid.
    #[error("{0}")]
    Unreplayable(String),
    /// The CPUID set the trace records cannot be given to a vCPU.
    #[error("the trace's CPUID record cannot be given to a vCPU")]
    Cpuid(#[from] vmrr_engine::kvm::cpuid::SetCpuidError),
    /// Building the machine failed.
    #[error(transparent)]
    Session(#[from] vmrr_engine::session::SessionError),
    /// Running the guest failed.
    #[error(transparent)]
    Run(#[from] vmrr_engine::machine::RunError),
    /// A KVM call outside the run failed (completing an exit, reading registers).
    #[error(transparent)]
    Kvm(#[from] vmrr_engine::kvm::KvmError),
    /// A record read from the trace could not be kept (a bug: what reads writes back).
    #[error("cannot keep a record read from the trace")]
    Copy(#[source] vmrr_format::WriteError),
    /// The replay host lacks a CPU feature the recorded guest saw (with `--strict-cpu`).
    #[error("the replay host lacks CPU features the recorded guest saw: {0}")]
    CpuMismatch(String),
    /// A file could not be read or written.
    #[error(transparent)]
    File(#[from] vmrr_format::FileError),
    /// An OS call failed.
    #[error("{what} failed")]
    Os {
        /// The call that failed.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl ReplayError {
    /// True when the cause is damaged or invalid input (CLI exit 3).
    pub fn is_invalid_input(&self) -> bool {
        use vmrr_format::overview::OverviewError;
        match self {
            ReplayError::Trace(e) => e.decode_error().is_some(),
            ReplayError::Overview(OverviewError::Read(e)) => e.decode_error().is_some(),
            ReplayError::Overview(_) | ReplayError::Unreplayable(_) | ReplayError::Cpuid(_) => true,
            ReplayError::Snapshot(e) => e.is_invalid_input(),
            ReplayError::Bundle(e) => e.is_invalid_input(),
            ReplayError::Session(vmrr_engine::session::SessionError::Config(_)) => true,
            _ => false,
        }
    }
}

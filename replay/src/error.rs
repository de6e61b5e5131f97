//! Why a replay could not run (as opposed to a replay that ran and diverged).

/// Replay failures.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The trace is damaged or invalid.
    #[error(transparent)]
    Trace(#[from] vmrr_format::ReadError),
    /// A snapshot is damaged, invalid, or cannot be restored.
    #[error(transparent)]
    Snapshot(#[from] vmrr_engine::snapshot::SnapshotError),
    /// The bundle is damaged or hostile.
    #[error(transparent)]
    Bundle(#[from] vmrr_format::bundle::BundleError),
    /// The trace cannot be replayed as a whole (damaged in the middle, records missing).
    #[error(transparent)]
    Overview(#[from] vmrr_format::overview::OverviewError),
    /// The trace does not say how to rebuild its machine, or asks for something invalid.
    #[error("{0}")]
    Unreplayable(String),
    /// Building the machine failed.
    #[error(transparent)]
    Session(#[from] vmrr_engine::session::SessionError),
    /// Running the guest failed.
    #[error(transparent)]
    Run(#[from] vmrr_engine::error::RunError),
    /// The replay host lacks a CPU feature the recorded guest saw (with `--strict-cpu`).
    #[error("the replay host lacks CPU features the recorded guest saw: {0}")]
    CpuMismatch(String),
    /// A file could not be written (a snapshot requested with `--snapshot-at`).
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// File.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

impl ReplayError {
    /// True when the cause is damaged or invalid input (CLI exit 3).
    pub fn is_invalid_input(&self) -> bool {
        match self {
            ReplayError::Trace(e) => e.decode_error().is_some(),
            ReplayError::Snapshot(e) => e.is_invalid_input(),
            ReplayError::Bundle(e) => e.is_invalid_input(),
            ReplayError::Overview(vmrr_format::overview::OverviewError::Read(e)) => {
                e.decode_error().is_some()
            }
            ReplayError::Overview(_) | ReplayError::Unreplayable(_) => true,
            ReplayError::Session(vmrr_engine::session::SessionError::Config(_)) => true,
            _ => false,
        }
    }
}

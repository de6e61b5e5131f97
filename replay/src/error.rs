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
    /// A record holds a value this replayer cannot apply (an NMI, an interrupt source a
    /// newer writer defined, a vector above 255): applying something else in its place
    /// would replay a different run.
    #[error("{trace}: record seq {seq}: {field} {value}: {why}")]
    UndefinedValue {
        /// The trace.
        trace: String,
        /// The record.
        seq: u64,
        /// The field, as the format's specification names it.
        field: &'static str,
        /// The value found.
        value: u64,
        /// Why it cannot be applied.
        why: &'static str,
    },
    /// The CPUID set the trace records cannot be given to a vCPU.
    #[error("{trace}: record seq {seq} (CPUID): KVM refuses the CPUID set this record holds")]
    Cpuid {
        /// The trace.
        trace: String,
        /// The CPUID record.
        seq: u64,
        /// KVM's refusal.
        #[source]
        source: vmrr_engine::kvm::cpuid::SetCpuidError,
    },
    /// The trace's description of its guest cannot be rebuilt (a file to pass, a budget).
    #[error("{trace}: {error}")]
    Rebuild {
        /// The trace.
        trace: String,
        /// What is missing or over the budget.
        error: vmrr_engine::session::RebuildError,
    },
    /// An input is not a regular file.
    #[error(transparent)]
    Input(#[from] vmrr_format::input::InputError),
    /// The output may not be written.
    #[error(transparent)]
    Output(#[from] vmrr_format::output::OutputError),
    /// An error about a bundle's extracted files, with its paths named as the bundle's
    /// entries (see `Source::explain`).
    #[error("{message}")]
    InBundle {
        /// The error and its causes, paths named as entries.
        message: String,
        /// The error itself.
        inner: Box<ReplayError>,
    },
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
            ReplayError::Trace(e) => e.is_invalid_input(),
            ReplayError::Overview(OverviewError::Read(e)) => e.is_invalid_input(),
            ReplayError::Overview(_)
            | ReplayError::Unreplayable(_)
            | ReplayError::UndefinedValue { .. }
            | ReplayError::Cpuid { .. } => true,
            ReplayError::Rebuild { error, .. } => !error.is_usage(),
            ReplayError::Input(e) => !matches!(e, vmrr_format::input::InputError::Io { .. }),
            ReplayError::InBundle { inner, .. } => inner.is_invalid_input(),
            ReplayError::Snapshot(e) => e.is_invalid_input(),
            ReplayError::Bundle(e) => e.is_invalid_input(),
            ReplayError::Session(vmrr_engine::session::SessionError::Config(_)) => true,
            _ => false,
        }
    }
}

/// `e` and its causes, joined with ": ".
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}

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
    /// The trace ran several vCPUs or device threads: its path cannot be replayed
    /// (REPLAY.md), and either
    /// the path was asked for (`path_asked`: CLI exit 2) or the trace holds no failure to
    /// reproduce from its failure point (CLI exit 3: nothing this vmrr can check).
    #[error(
        "{trace}: recorded on {threads}: {}",
        if *path_asked {
            "its path cannot be replayed (what the threads did between exits is not recorded); only a failure point reproduces"
        } else {
            "its path cannot be replayed (what the threads did between exits is not recorded), and it ended without a failure: no failure point to reproduce"
        }
    )]
    SeveralVcpus {
        /// The trace.
        trace: String,
        /// Its threads ("4 vCPUs", "1 device thread(s) beside its vCPU").
        threads: String,
        /// `--path`, `--rebuild` or `--from-checkpoint` asked for the path.
        path_asked: bool,
    },
    /// A directory given as the source holds no trace, or several (a usage error, CLI exit
    /// 2: the message lists them).
    #[error("{0}")]
    Source(String),
    /// Segments asked for that this trace cannot be cut into (a usage error, CLI exit 2).
    #[error("{0}")]
    Segments(String),
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
    /// The trace uses a replay-required feature this replayer does not implement
    /// (`docs/FORMAT.md` §3): it reads, but replaying it without the feature would not be
    /// the recorded run. CLI exit 3, like any input this vmrr cannot take.
    #[error("{trace}: {}", describe_replay_feature(*bit, name.as_deref(), *introduced, (vmrr_format::VERSION_MAJOR, vmrr_format::VERSION_MINOR)))]
    UnknownReplayFeature {
        /// The trace.
        trace: String,
        /// The bit in `replay_required_features`.
        bit: u8,
        /// Its name, when the trace's feature table names it.
        name: Option<String>,
        /// The version that introduced it, when the table says.
        introduced: Option<(u16, u16)>,
    },
    /// A recorded guest-memory write falls outside the replayed machine's memory.
    #[error("{trace}: record seq {seq} (guest_write): {len} bytes at {gpa:#x} are not guest memory")]
    GuestWrite {
        /// The trace.
        trace: String,
        /// The record.
        seq: u64,
        /// Its address.
        gpa: u64,
        /// Its length.
        len: usize,
        /// Why the write failed.
        #[source]
        source: vmrr_engine::machine::AccessError,
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
    /// `--goto` or `--snapshot-at` names a record the trace does not reach.
    #[error("{trace}: there is no record {seq} to stop at: the trace ends at record {last}")]
    PastEnd {
        /// The trace.
        trace: String,
        /// The record asked for.
        seq: u64,
        /// The trace's last record.
        last: u64,
    },
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
            | ReplayError::UnknownReplayFeature { .. }
            | ReplayError::GuestWrite { .. }
            | ReplayError::Cpuid { .. } => true,
            ReplayError::SeveralVcpus { path_asked, .. } => !path_asked,
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

fn describe_replay_feature(
    bit: u8,
    name: Option<&str>,
    introduced: Option<(u16, u16)>,
    (maj, min): (u16, u16),
) -> String {
    let feature = match name {
        Some(n) => format!("feature '{n}' (replay-required bit {bit}"),
        None => format!("unknown feature (replay-required bit {bit}"),
    };
    let since = introduced.map_or_else(String::new, |(a, b)| format!(", introduced in format {a}.{b}"));
    format!("replay requires {feature}{since}); this replayer implements format {maj}.{min}: upgrade vmrr")
}

/// What a replayer implementing format `implements` says of `header`: the refusal of its
/// first replay-required feature that version does not know, `None` when it knows them
/// all. With this version it is `check_replay_features`' message; with `(1, 1)` it is
/// what vmrr 1.1 says of a 1.2 file (`docs/FORMAT.md` §11).
pub fn replay_feature_refusal(header: &vmrr_format::FileHeader, implements: (u16, u16)) -> Option<String> {
    header.unknown_replay_required_as(implements).first().map(|(bit, desc)| {
        describe_replay_feature(*bit, desc.map(|d| d.name.as_str()), desc.map(|d| d.introduced), implements)
    })
}

/// Refuses a trace whose header sets a replay-required feature this replayer lacks.
///
/// # Errors
/// [`ReplayError::UnknownReplayFeature`] naming the first such feature.
pub fn check_replay_features(reader: &vmrr_format::TraceReader) -> Result<(), ReplayError> {
    match reader.header().unknown_replay_required().first() {
        None => Ok(()),
        Some((bit, desc)) => Err(ReplayError::UnknownReplayFeature {
            trace: reader.name().to_string(),
            bit: *bit,
            name: desc.map(|d| d.name.clone()),
            introduced: desc.map(|d| d.introduced),
        }),
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

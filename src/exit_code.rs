//! Exit codes and the CLI's error type.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success; replay `completed`, or `reproduced` (the recorded failure happened again, on the path or from the failure point) |
//! | 1 | replay `diverged` (and a recorded failure did not happen again) |
//! | 2 | usage error (bad arguments, missing input file, an output that is an input, exists without `--force` or is a directory, a directory where one trace is asked for), before KVM is touched |
//! | 3 | damaged or invalid input (trace, snapshot, bundle), or a trace this vmrr cannot take: a required feature it lacks (any command), a replay-required feature it lacks (`replay`) |
//! | 4 | KVM or a capability vmrr needs is missing |
//! | 5 | the recorded guest ended in a fatal exit (emulation failure, internal error, triple fault) |
//! | 6 | output could not be written (disk full, permission) |
//! | 7 | internal error (a bug in vmrr) |

use std::process::ExitCode;

/// Success; replay `completed` or `reproduced`.
#[allow(dead_code)] // documents the table; success is `Ok(())`
pub const OK: u8 = 0;
/// Replay diverged.
pub const DIVERGED: u8 = 1;
/// Usage error.
pub const USAGE: u8 = 2;
/// Damaged or invalid input.
pub const INVALID_INPUT: u8 = 3;
/// KVM unavailable.
pub const KVM_MISSING: u8 = 4;
/// Guest fatal exit while recording.
pub const GUEST_FATAL: u8 = 5;
/// Output not writable.
pub const OUTPUT: u8 = 6;
/// Internal error.
pub const INTERNAL: u8 = 7;

/// A failure of a CLI command; each variant has one exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// A trace could not be read.
    #[error(transparent)]
    Trace(#[from] vmrr_format::ReadError),
    /// Output could not be written.
    #[error("{context}")]
    Output {
        /// What was being written.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A trace could not be written.
    #[error(transparent)]
    TraceWrite(#[from] vmrr_format::WriteError),
    /// Setting up the guest failed (configuration, KVM, memory).
    #[error(transparent)]
    Session(#[from] vmrr_engine::session::SessionError),
    /// Running the guest failed.
    #[error(transparent)]
    Run(#[from] vmrr_engine::machine::RunError),
    /// The recorder could not attach.
    #[error(transparent)]
    Recorder(#[from] vmrr_engine::RecorderError),
    /// Damaged or invalid input (the message names file, offset and reason).
    #[error("{0}")]
    Invalid(String),
    /// A snapshot operation failed for a reason other than bad input.
    #[error(transparent)]
    Snapshot(vmrr_engine::snapshot::SnapshotError),
    /// KVM or a capability this host lacks.
    #[error("{0}")]
    Capability(String),
    /// Replay could not run.
    #[error("{0}")]
    Replay(String),
    /// A message whose exit code was decided where it was made (an error rewritten to name
    /// a bundle's entries).
    #[error("{message}")]
    Coded {
        /// Exit code.
        code: u8,
        /// The message, causes included.
        message: String,
    },
    /// The command already reported its outcome and only needs to exit with `code`.
    #[error("exit {code}")]
    Reported {
        /// Exit code.
        code: u8,
    },
}

impl CliError {
    /// The exit code for this failure.
    pub fn code(&self) -> u8 {
        match self {
            CliError::Usage(_) => USAGE,
            CliError::Trace(vmrr_format::ReadError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                USAGE
            }
            CliError::Trace(_) => INVALID_INPUT,
            CliError::Coded { code, .. } => *code,
            CliError::Output { .. } | CliError::TraceWrite(_) => OUTPUT,
            CliError::Session(e) => session_code(e),
            CliError::Run(e) => run_code(e),
            CliError::Recorder(_) => KVM_MISSING,
            CliError::Invalid(_) => INVALID_INPUT,
            CliError::Capability(_) => KVM_MISSING,
            CliError::Replay(_) => INTERNAL,
            CliError::Snapshot(
                vmrr_engine::snapshot::SnapshotError::Vm(_) | vmrr_engine::snapshot::SnapshotError::Kvm(_),
            ) => KVM_MISSING,
            CliError::Snapshot(vmrr_engine::snapshot::SnapshotError::File(_)) => OUTPUT,
            CliError::Snapshot(vmrr_engine::snapshot::SnapshotError::Output(_)) => USAGE,
            CliError::Snapshot(_) => INTERNAL,
            CliError::Reported { code } => *code,
        }
    }

    /// Prints the error and its causes to stderr and returns the exit code.
    pub fn report(&self) -> ExitCode {
        if !matches!(self, CliError::Reported { .. }) {
            let mut msg = format!("vmrr: error: {self}");
            let mut src = std::error::Error::source(self);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("{msg}");
        }
        ExitCode::from(self.code())
    }
}

fn session_code(e: &vmrr_engine::session::SessionError) -> u8 {
    use vmrr_engine::guests::linux::KernelError;
    use vmrr_engine::kvm::CreateVmError;
    use vmrr_engine::machine::queue_device::QueueDeviceError;
    use vmrr_engine::session::SessionError;
    match e {
        // An image or firmware that is a FIFO, a device or a file of /proc: bad input.
        SessionError::Config(vmrr_engine::session::ConfigError::Load(
            vmrr_engine::guests::LoadError::Input(vmrr_format::input::InputError::NotRegular { .. }),
        )) => INVALID_INPUT,
        // A kernel file that is not a kernel, or is damaged: bad input. One that does not
        // fit, a command line too long, a protocol it cannot take: usage.
        SessionError::Config(vmrr_engine::session::ConfigError::Kernel(
            KernelError::Image { .. } | KernelError::Elf { .. },
        )) => INVALID_INPUT,
        SessionError::Config(vmrr_engine::session::ConfigError::Kernel(KernelError::Read(
            vmrr_engine::guests::LoadError::Input(vmrr_format::input::InputError::NotRegular { .. }),
        ))) => INVALID_INPUT,
        SessionError::Config(_) => USAGE,
        SessionError::Vm(
            CreateVmError::OpenKvm(_)
            | CreateVmError::MissingCapability { .. }
            | CreateVmError::Kvm(_)
            | CreateVmError::Vcpus(_),
        ) => KVM_MISSING,
        SessionError::Vm(CreateVmError::Memory(_) | CreateVmError::Irqchip { .. })
        | SessionError::Boot(_) => INTERNAL,
        SessionError::Device(QueueDeviceError::Kvm(_)) => KVM_MISSING,
        SessionError::Device(_) => INTERNAL,
    }
}

fn run_code(e: &vmrr_engine::machine::RunError) -> u8 {
    use vmrr_engine::machine::RunError;
    use vmrr_engine::machine::queue_device::QueueDeviceError;
    match e {
        RunError::Trace(_) | RunError::Output(_) | RunError::Hook { .. } => OUTPUT,
        RunError::Kvm(_) => KVM_MISSING,
        RunError::Device(QueueDeviceError::Events(_)) => OUTPUT,
        RunError::Os { .. } | RunError::Answer(_) | RunError::Device(_) => INTERNAL,
    }
}

/// `e` and its causes, joined with ": " (for messages that travel as text).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}

/// Whether `e` or one of its causes is a full disk (`ENOSPC`) or an exhausted quota.
pub fn is_disk_full(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if matches!(io.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded) {
                return true;
            }
        }
        cur = c.source();
    }
    false
}

/// Result of a CLI command.
pub type CliResult = Result<(), CliError>;

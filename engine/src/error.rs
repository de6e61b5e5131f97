//! Error types, one per operation.

use std::path::PathBuf;

/// Creating or configuring a VM failed.
#[derive(Debug, thiserror::Error)]
pub enum CreateVmError {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// The host's KVM lacks something vmrr needs.
    #[error("the host's KVM lacks {what}")]
    MissingCapability {
        /// The capability.
        what: &'static str,
    },
    /// A KVM ioctl failed.
    #[error("{what} failed")]
    Kvm {
        /// The ioctl or step.
        what: &'static str,
        /// Its error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be created or mapped.
    #[error("cannot set up guest memory: {what}")]
    Memory {
        /// The step.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A requested configuration is invalid (checked before KVM is touched).
    #[error("{0}")]
    Config(String),
}

/// Loading a guest image failed (checked before KVM runs anything).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The image file could not be read.
    #[error("cannot read image {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The image or its placement does not fit guest memory.
    #[error("{0}")]
    Placement(String),
    /// A built-in guest could not be assembled (a bug).
    #[error("cannot assemble guest {name}: {detail}")]
    Assemble {
        /// Guest name.
        name: &'static str,
        /// Assembler error.
        detail: String,
    },
    /// Writing into guest memory failed.
    #[error("cannot write guest memory at {gpa:#x}")]
    GuestMemory {
        /// Address.
        gpa: u64,
    },
}

/// Running the guest failed (as opposed to the guest failing, which is an outcome).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A KVM ioctl failed.
    #[error("{what} failed")]
    Kvm {
        /// The ioctl.
        what: &'static str,
        /// Its error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// An OS call failed.
    #[error("{what} failed")]
    Os {
        /// The call.
        what: &'static str,
        /// Its error.
        #[source]
        source: std::io::Error,
    },
    /// The trace could not be written (a full disk shows up here).
    #[error("cannot record")]
    Trace(#[source] vmrr_format::WriteError),
    /// A checkpoint could not be taken.
    #[error("cannot take a checkpoint")]
    Snapshot(#[source] Box<crate::snapshot::SnapshotError>),
    /// A device's output (the serial console file) could not be written.
    #[error("cannot write device output")]
    Output(#[source] std::io::Error),
}

impl From<vmrr_format::WriteError> for RunError {
    fn from(e: vmrr_format::WriteError) -> Self {
        RunError::Trace(e)
    }
}

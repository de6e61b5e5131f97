//! Running the guest failed ([`RunError`]), as opposed to the guest failing (an outcome):
//! what the bootstrap processor's loop and the APs' threads return alike.

use crate::exit::answer::AnswerError;
use crate::kvm::system::KvmError;
use crate::machine::vcpu::InjectError;

/// Running the guest failed (as opposed to the guest failing, which is an outcome).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A KVM ioctl failed.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// An OS call failed.
    #[error("{what} failed")]
    Os {
        /// The call that failed.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The trace could not be written (a full disk shows up here).
    #[error("cannot record")]
    Trace(#[source] vmrr_format::WriteError),
    /// A hook run after an exit failed (a checkpoint could not be written, say).
    #[error("the {hook} after exit {exit} failed")]
    Hook {
        /// What the hook does.
        hook: &'static str,
        /// The exit it ran after.
        exit: u64,
        /// What the hook reported.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A device's output (the serial console file) could not be written.
    #[error("cannot write device output")]
    Output(#[source] std::io::Error),
    /// An answer could not be written into `kvm_run`.
    #[error("cannot answer the exit")]
    Answer(#[from] AnswerError),
    /// The queue device's thread could not start, or failed.
    #[error(transparent)]
    Device(#[from] crate::machine::queue_device::QueueDeviceError),
}

impl From<vmrr_format::WriteError> for RunError {
    fn from(e: vmrr_format::WriteError) -> Self {
        RunError::Trace(e)
    }
}

impl From<InjectError> for RunError {
    fn from(e: InjectError) -> Self {
        match e {
            InjectError::Kvm(source) => RunError::Os { what: "KVM_INTERRUPT", source },
            InjectError::Trace(e) => RunError::Trace(e),
        }
    }
}

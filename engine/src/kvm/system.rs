//! `/dev/kvm`, and the error of any KVM call.

use kvm_ioctls::Kvm;

/// A KVM ioctl failed: which one, and KVM's error.
#[derive(Debug, thiserror::Error)]
#[error("{what} failed")]
pub struct KvmError {
    /// The ioctl or step.
    pub what: &'static str,
    /// KVM's error.
    #[source]
    pub source: kvm_ioctls::Error,
}

impl KvmError {
    /// A closure that wraps KVM's error from `what`, for `map_err`.
    pub fn on(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmError {
        move |source| KvmError { what, source }
    }

    /// The OS error number.
    pub fn errno(&self) -> i32 {
        self.source.errno()
    }
}

/// Opens `/dev/kvm`; every path into KVM goes through here.
///
/// Built with the `testing` feature (as the test suite builds vmrr), `VMRR_DENY_KVM` in the
/// environment makes it fail with `EACCES` instead: the hostile-input tests run that way
/// to prove a bad trace, snapshot or bundle is refused before KVM is ever touched.
///
/// # Errors
/// The `open` error.
pub fn open_kvm() -> Result<Kvm, kvm_ioctls::Error> {
    #[cfg(feature = "testing")]
    if std::env::var_os("VMRR_DENY_KVM").is_some() {
        return Err(kvm_ioctls::Error::new(libc::EACCES));
    }
    Kvm::new()
}

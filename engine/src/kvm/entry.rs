//! Entering the guest: `KVM_RUN` and what an entry that ends without an exit means, in one
//! place for the run loop, replay, state capture and the embedding API.

use kvm_ioctls::VcpuFd;

use crate::kvm::system::KvmError;

/// How one entry ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// The guest exited: the exit is in the vCPU's `kvm_run` page.
    Exit,
    /// `KVM_RUN` returned `EINTR` before any exit (a watchdog's kick, or `immediate_exit`),
    /// or `EAGAIN` (an AP's MP state changed on INIT or SIPI): nothing happened that a
    /// trace records.
    Interrupted,
}

fn kvm_error(what: &'static str, e: &std::io::Error) -> KvmError {
    KvmError { what, source: kvm_ioctls::Error::new(e.raw_os_error().unwrap_or(libc::EIO)) }
}

/// Enters `vcpu` until its next exit. An interrupted entry withdraws any `immediate_exit`
/// request, so the next one runs the guest.
///
/// # Errors
/// `KVM_RUN` failed with something other than `EINTR`.
pub fn enter(vcpu: &mut VcpuFd) -> Result<Entry, KvmError> {
    match crate::sys::vcpu_ioctl::run(vcpu) {
        Ok(()) => Ok(Entry::Exit),
        // EAGAIN: an AP waiting for INIT/SIPI changed MP state (KVM wants the call again).
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN)) => {
            vcpu.set_kvm_immediate_exit(0);
            Ok(Entry::Interrupted)
        }
        Err(e) => Err(kvm_error("KVM_RUN", &e)),
    }
}

/// Lets KVM finish the instruction `vcpu` last exited for (an IN's RAX, an MMIO read's
/// destination, RIP past an OUT) and refresh the `kvm_run` page's view of the vCPU (the
/// interrupt flag, readiness for an injection) without entering the guest: `KVM_RUN` with
/// `immediate_exit` set, which returns `EINTR` once that is done. Needed before reading
/// vCPU state at an exit.
///
/// # Errors
/// `KVM_RUN` failed with something other than `EINTR`.
pub fn complete_pending(vcpu: &mut VcpuFd) -> Result<(), KvmError> {
    vcpu.set_kvm_immediate_exit(1);
    let r = crate::sys::vcpu_ioctl::run(vcpu);
    vcpu.set_kvm_immediate_exit(0);
    match r {
        Err(e) if e.raw_os_error() != Some(libc::EINTR) => Err(kvm_error("completing pending I/O", &e)),
        _ => Ok(()),
    }
}

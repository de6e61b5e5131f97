//! A second handle on a VM's file descriptor, for threads that raise interrupt lines
//! (`KVM_IRQ_LINE`, irqfd set-up) while the machine keeps its own: the VM's lifetime is
//! the kernel object's, so the duplicate stays valid however the handles are dropped.

use std::io;
use std::os::fd::AsRawFd;

use kvm_ioctls::{Kvm, VmFd};

/// A new `VmFd` on the same VM as `fd` (`F_DUPFD_CLOEXEC`).
///
/// # Errors
/// `fcntl` or `KVM_GET_VCPU_MMAP_SIZE` failed.
pub fn duplicate(kvm: &Kvm, fd: &VmFd) -> io::Result<VmFd> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a descriptor `fd` owns and keeps open for the call
    // reads no memory; it returns a new descriptor or -1.
    let dup = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `dup` is a descriptor this function just created and nothing else owns; the
    // returned VmFd takes ownership and closes it on drop. It refers to a KVM VM (a dup of
    // one), which is what create_vmfd_from_rawfd requires.
    unsafe { kvm.create_vmfd_from_rawfd(dup) }.map_err(|e| io::Error::from_raw_os_error(e.errno()))
}

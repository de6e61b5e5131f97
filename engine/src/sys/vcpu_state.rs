//! vCPU state ioctls kvm-ioctls marks `unsafe`.

use kvm_bindings::kvm_xsave;
use kvm_ioctls::VcpuFd;

/// `KVM_SET_XSAVE` with a legacy 4 KiB `kvm_xsave`.
///
/// # Errors
/// The ioctl's error.
pub fn set_xsave(vcpu: &VcpuFd, xsave: &kvm_xsave) -> Result<(), kvm_ioctls::Error> {
    // SAFETY: `xsave` is a whole `kvm_xsave` (4 KiB region, no trailing flexible data): the
    // size KVM_SET_XSAVE reads when KVM_CAP_XSAVE2 has not been enabled on this VM, which
    // vmrr never enables.
    unsafe { vcpu.set_xsave(xsave) }
}

//! vCPU ioctls that kvm-ioctls does not wrap on x86.

use std::io;

use kvm_bindings::{KVMIO, kvm_interrupt};
use kvm_ioctls::VcpuFd;
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::ioctl_iow_nr;

ioctl_iow_nr!(KVM_INTERRUPT, KVMIO, 0x86, kvm_interrupt);

/// Queues external interrupt `vector` for delivery at the next entry (`KVM_INTERRUPT`;
/// only valid without an in-kernel irqchip, when `ready_for_interrupt_injection` is set).
///
/// # Errors
/// The ioctl's error (EEXIST when an interrupt is already queued, ENXIO with an in-kernel
/// irqchip).
pub fn interrupt(vcpu: &VcpuFd, vector: u8) -> io::Result<()> {
    let irq = kvm_interrupt { irq: u32::from(vector) };
    // SAFETY: KVM_INTERRUPT reads one `kvm_interrupt` through the pointer; `irq` lives for
    // the duration of the call and `vcpu` is an open vCPU file descriptor.
    let ret = unsafe { ioctl_with_ref(vcpu, KVM_INTERRUPT(), &irq) };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

//! vCPU ioctls that kvm-ioctls does not wrap on x86 (`KVM_INTERRUPT`), or wraps with more
//! than vmrr wants (`KVM_RUN`, whose exit kvm-ioctls decodes: vmrr decodes it once, from
//! the `kvm_run` bytes, see `crate::exit`).

use std::io;

use kvm_bindings::{KVMIO, kvm_interrupt};
use kvm_ioctls::VcpuFd;
use vmm_sys_util::ioctl::{ioctl, ioctl_with_ref};
use vmm_sys_util::{ioctl_io_nr, ioctl_iow_nr};

ioctl_iow_nr!(KVM_INTERRUPT, KVMIO, 0x86, kvm_interrupt);
ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);

/// Enters the guest (`KVM_RUN`) until its next exit, which KVM leaves in the vCPU's
/// `kvm_run` page; nothing of it is decoded here.
///
/// # Errors
/// The ioctl's error (`EINTR` when a signal, or `immediate_exit`, ended it before an exit).
pub fn run(vcpu: &mut VcpuFd) -> io::Result<()> {
    // SAFETY: KVM_RUN takes no argument. It reads and writes only the vCPU's `kvm_run`
    // region, which kvm-ioctls keeps mapped for the life of `vcpu`; the `&mut` borrow means
    // no `VcpuExit` slice into that region is alive across the call, and vmrr's own view
    // of it (`RunPage`) is read only between runs, on this thread.
    let ret = unsafe { ioctl(vcpu, KVM_RUN()) };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

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

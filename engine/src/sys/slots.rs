//! Registering host memory with KVM as a guest memory slot.

use kvm_bindings::{kvm_userspace_memory_region, kvm_userspace_memory_region2};
use kvm_ioctls::VmFd;

/// One slot registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotRegion {
    /// Slot number.
    pub slot: u32,
    /// `KVM_MEM_*` flags.
    pub flags: u32,
    /// Guest physical address.
    pub guest_phys_addr: u64,
    /// Size in bytes (0 deletes the slot).
    pub memory_size: u64,
    /// Host virtual address of the backing mapping.
    pub userspace_addr: u64,
}

/// Registers (or updates, or with `memory_size == 0` deletes) a slot, with
/// `KVM_SET_USER_MEMORY_REGION2` when `use_region2`, else with the v1 ioctl.
///
/// # Safety
/// `userspace_addr..userspace_addr + memory_size` must be a mapping owned by the caller
/// that stays mapped (readable, and writable unless the slot is `KVM_MEM_READONLY`) until
/// the slot is deleted or the VM is destroyed: KVM accesses it on the guest's behalf, and
/// unmapping it earlier lets the guest corrupt whatever is mapped there next.
///
/// # Errors
/// The ioctl's error.
pub unsafe fn set_slot(vm: &VmFd, r: SlotRegion, use_region2: bool) -> Result<(), kvm_ioctls::Error> {
    if use_region2 {
        let region = kvm_userspace_memory_region2 {
            slot: r.slot,
            flags: r.flags,
            guest_phys_addr: r.guest_phys_addr,
            memory_size: r.memory_size,
            userspace_addr: r.userspace_addr,
            guest_memfd_offset: 0,
            guest_memfd: 0,
            pad1: 0,
            pad2: [0; 14],
        };
        // SAFETY: the caller guarantees the host range outlives the registration; the
        // struct is fully initialised with zero padding as the ABI requires.
        unsafe { vm.set_user_memory_region2(region) }
    } else {
        let region = kvm_userspace_memory_region {
            slot: r.slot,
            flags: r.flags,
            guest_phys_addr: r.guest_phys_addr,
            memory_size: r.memory_size,
            userspace_addr: r.userspace_addr,
        };
        // SAFETY: as above.
        unsafe { vm.set_user_memory_region(region) }
    }
}

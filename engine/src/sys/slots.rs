//! Guest memory slots, registered safely: the VM's file descriptor and every host mapping
//! registered with it live in one value, which drops the descriptor before the mappings,
//! so KVM never holds a slot whose host memory is gone.

use std::collections::BTreeMap;
use std::sync::Arc;

use kvm_bindings::{kvm_userspace_memory_region, kvm_userspace_memory_region2};
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, MmapRegion};

/// A VM's file descriptor and the host mappings registered as its memory slots.
pub struct VmSlots {
    /// Declared first: dropped (closing the VM) before the mappings below are unmapped.
    fd: VmFd,
    mappings: BTreeMap<u32, Arc<MmapRegion>>,
}

impl std::fmt::Debug for VmSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmSlots").field("slots", &self.mappings.keys().collect::<Vec<_>>()).finish()
    }
}

impl VmSlots {
    /// Takes ownership of a VM's file descriptor; no slot is registered yet.
    pub fn new(fd: VmFd) -> Self {
        VmSlots { fd, mappings: BTreeMap::new() }
    }

    /// The VM, for ioctls that do not register memory.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Registers (or updates the flags of) slot `slot` at `gpa`, backed by all of
    /// `mapping`, with `KVM_SET_USER_MEMORY_REGION2` when `region2`, else with the v1
    /// ioctl. The mapping is kept alive for as long as the VM.
    ///
    /// # Errors
    /// The ioctl's error (nothing is kept then).
    pub fn register(
        &mut self,
        slot: u32,
        flags: u32,
        gpa: GuestAddress,
        mapping: &Arc<MmapRegion>,
        region2: bool,
    ) -> Result<(), kvm_ioctls::Error> {
        let userspace_addr = mapping.as_ptr() as u64;
        let memory_size = mapping.size() as u64;
        if region2 {
            let region = kvm_userspace_memory_region2 {
                slot,
                flags,
                guest_phys_addr: gpa.0,
                memory_size,
                userspace_addr,
                guest_memfd_offset: 0,
                guest_memfd: 0,
                pad1: 0,
                pad2: [0; 14],
            };
            // SAFETY: the host range is exactly `mapping`, a live mmap of `memory_size`
            // bytes; a clone of its Arc is stored below in this value, which drops the VM
            // descriptor before any mapping, so the range stays mapped (readable and
            // writable as mapped) for as long as KVM can access it. The struct is fully
            // initialised, padding zero, as the ABI requires.
            unsafe { self.fd.set_user_memory_region2(region) }?;
        } else {
            let region = kvm_userspace_memory_region {
                slot,
                flags,
                guest_phys_addr: gpa.0,
                memory_size,
                userspace_addr,
            };
            // SAFETY: as above.
            unsafe { self.fd.set_user_memory_region(region) }?;
        }
        self.mappings.insert(slot, Arc::clone(mapping));
        Ok(())
    }
}

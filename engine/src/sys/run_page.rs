//! A read-only mapping of a vCPU's `kvm_run` region.
//!
//! kvm-ioctls already maps `kvm_run` for `KVM_RUN`; this second, read-only mapping of the
//! same pages gives the recorder a plain byte view with full bounds: exits are decoded by
//! offset (the layout is ABI), the port-I/O data page included, without union reads or
//! pointer arithmetic. The kernel writes these pages only during `KVM_RUN`, and every read
//! here happens on the vCPU's thread between runs.

use std::io;
use std::os::fd::AsRawFd;

use kvm_ioctls::VcpuFd;

/// Offsets in `struct kvm_run` (`include/uapi/linux/kvm.h`, x86-64).
pub mod off {
    /// `__u32 exit_reason`.
    pub const EXIT_REASON: usize = 8;
    /// `__u8 ready_for_interrupt_injection`.
    pub const READY_FOR_INTERRUPT_INJECTION: usize = 12;
    /// `__u8 if_flag`.
    pub const IF_FLAG: usize = 13;
    /// The exit union (256 bytes).
    pub const EXIT: usize = 32;
    /// Size of the exit union.
    pub const EXIT_LEN: usize = 256;
    /// `__u64 kvm_valid_regs`.
    pub const VALID_REGS: usize = 288;
    /// `union kvm_sync_regs s` (its first member is `struct kvm_regs`).
    pub const SYNC_REGS: usize = 304;
}

/// Read-only view of one vCPU's `kvm_run` region.
pub struct RunPage {
    map: memmap2::Mmap,
}

impl std::fmt::Debug for RunPage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunPage").field("len", &self.map.len()).finish()
    }
}

impl RunPage {
    /// Maps `mmap_size` bytes (from `KVM_GET_VCPU_MMAP_SIZE`) of `vcpu`'s region read-only.
    ///
    /// # Errors
    /// The `mmap` error.
    pub fn new(vcpu: &VcpuFd, mmap_size: usize) -> io::Result<Self> {
        // SAFETY: a shared read-only mapping of the vCPU fd at offset 0 for the size KVM
        // reports: KVM serves the `kvm_run` page and the PIO data page behind it for the
        // life of the mapping (the mapping keeps the vCPU file alive). The pages change
        // only inside KVM_RUN, which never overlaps a read through this map (the owner
        // reads between runs on the vCPU's thread).
        let map = unsafe { memmap2::MmapOptions::new().len(mmap_size).map(vcpu.as_raw_fd())? };
        Ok(RunPage { map })
    }

    /// The whole region.
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }
}

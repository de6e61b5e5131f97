//! A vCPU's `kvm_run` page, mapped as bytes.
//!
//! kvm-ioctls already maps `kvm_run` for `KVM_RUN`; this second mapping of the same pages
//! gives the engine a plain byte view with full bounds: exits are decoded by offset (the
//! layout is ABI, and [`off`] derives every offset from kvm-bindings' own `kvm_run`), the
//! port-I/O data page included, without union reads or pointer arithmetic; and answers
//! (an IN's data, an MMIO read's bytes, an MSR value) are written the same way. The kernel
//! touches these pages only during `KVM_RUN`, and every access here happens on the vCPU's
//! thread between runs.

use std::io;
use std::mem::offset_of;
use std::os::fd::AsRawFd;

use kvm_bindings::{
    kvm_debug_exit_arch, kvm_regs, kvm_run, kvm_run__bindgen_ty_1__bindgen_ty_2 as FailEntry,
    kvm_run__bindgen_ty_1__bindgen_ty_4 as Io, kvm_run__bindgen_ty_1__bindgen_ty_6 as Mmio,
    kvm_run__bindgen_ty_1__bindgen_ty_8 as Hypercall, kvm_run__bindgen_ty_1__bindgen_ty_13 as Internal,
    kvm_run__bindgen_ty_1__bindgen_ty_19 as SystemEvent, kvm_run__bindgen_ty_1__bindgen_ty_23 as Msr,
};
use kvm_ioctls::VcpuFd;

/// Offsets in `struct kvm_run` (x86-64), derived from kvm-bindings' definition. Offsets in
/// the exit union are relative to [`off::EXIT`].
pub mod off {
    use super::*;

    /// `__u8 request_interrupt_window`.
    pub const REQUEST_INTERRUPT_WINDOW: usize = offset_of!(kvm_run, request_interrupt_window);
    /// `__u32 exit_reason`.
    pub const EXIT_REASON: usize = offset_of!(kvm_run, exit_reason);
    /// `__u8 ready_for_interrupt_injection`.
    pub const READY_FOR_INTERRUPT_INJECTION: usize = offset_of!(kvm_run, ready_for_interrupt_injection);
    /// `__u8 if_flag`.
    pub const IF_FLAG: usize = offset_of!(kvm_run, if_flag);
    /// The exit union.
    pub const EXIT: usize = offset_of!(kvm_run, __bindgen_anon_1);
    /// Size of the exit union.
    pub const EXIT_LEN: usize = offset_of!(kvm_run, kvm_valid_regs) - EXIT;
    /// `__u64 kvm_valid_regs`.
    pub const VALID_REGS: usize = offset_of!(kvm_run, kvm_valid_regs);
    /// `__u64 kvm_dirty_regs`.
    pub const DIRTY_REGS: usize = offset_of!(kvm_run, kvm_dirty_regs);
    /// `union kvm_sync_regs s` (its first member is `struct kvm_regs`).
    pub const SYNC_REGS: usize = offset_of!(kvm_run, s);
    /// `s.regs.sregs`.
    pub const SYNC_SREGS: usize = SYNC_REGS + offset_of!(kvm_bindings::kvm_sync_regs, sregs);
    /// `s.regs.events`.
    pub const SYNC_EVENTS: usize = SYNC_REGS + offset_of!(kvm_bindings::kvm_sync_regs, events);
    /// Bytes of `struct kvm_run` itself (the port-I/O data page may follow).
    pub const SIZE: usize = size_of::<kvm_run>();

    /// `exit.io`.
    pub mod io {
        use super::*;
        /// `direction`.
        pub const DIRECTION: usize = offset_of!(Io, direction);
        /// `size`.
        pub const SIZE: usize = offset_of!(Io, size);
        /// `port`.
        pub const PORT: usize = offset_of!(Io, port);
        /// `count`.
        pub const COUNT: usize = offset_of!(Io, count);
        /// `data_offset` (from the start of `kvm_run`).
        pub const DATA_OFFSET: usize = offset_of!(Io, data_offset);
    }
    /// `exit.mmio`.
    pub mod mmio {
        use super::*;
        /// `phys_addr`.
        pub const PHYS_ADDR: usize = offset_of!(Mmio, phys_addr);
        /// `data[8]`.
        pub const DATA: usize = offset_of!(Mmio, data);
        /// `len`.
        pub const LEN: usize = offset_of!(Mmio, len);
        /// `is_write`.
        pub const IS_WRITE: usize = offset_of!(Mmio, is_write);
    }
    /// `exit.fail_entry`.
    pub mod fail_entry {
        use super::*;
        /// `hardware_entry_failure_reason`.
        pub const REASON: usize = offset_of!(FailEntry, hardware_entry_failure_reason);
        /// `cpu`.
        pub const CPU: usize = offset_of!(FailEntry, cpu);
    }
    /// `exit.internal` (and `exit.emulation_failure`, which shares its start).
    pub mod internal {
        use super::*;
        /// `suberror`.
        pub const SUBERROR: usize = offset_of!(Internal, suberror);
        /// `ndata`.
        pub const NDATA: usize = offset_of!(Internal, ndata);
        /// `data[16]`.
        pub const DATA: usize = offset_of!(Internal, data);
        /// Words in `data`.
        pub const MAX_DATA: usize = 16;
    }
    /// `exit.system_event`.
    pub mod system_event {
        use super::*;
        /// `type`.
        pub const TYPE: usize = offset_of!(SystemEvent, type_);
        /// `ndata`.
        pub const NDATA: usize = offset_of!(SystemEvent, ndata);
        /// `data[16]`.
        pub const DATA: usize = offset_of!(SystemEvent, __bindgen_anon_1);
    }
    /// `exit.msr`.
    pub mod msr {
        use super::*;
        /// `error`.
        pub const ERROR: usize = offset_of!(Msr, error);
        /// `reason`.
        pub const REASON: usize = offset_of!(Msr, reason);
        /// `index`.
        pub const INDEX: usize = offset_of!(Msr, index);
        /// `data`.
        pub const DATA: usize = offset_of!(Msr, data);
    }
    /// `exit.hypercall`.
    pub mod hypercall {
        use super::*;
        /// `nr`.
        pub const NR: usize = offset_of!(Hypercall, nr);
        /// `args[6]`.
        pub const ARGS: usize = offset_of!(Hypercall, args);
        /// `ret`.
        pub const RET: usize = offset_of!(Hypercall, ret);
        /// `flags` (a union with `longmode`).
        pub const FLAGS: usize = offset_of!(Hypercall, __bindgen_anon_1);
    }
    /// `exit.debug.arch`.
    pub mod debug {
        use super::*;
        /// `exception`.
        pub const EXCEPTION: usize = offset_of!(kvm_debug_exit_arch, exception);
        /// `pc`.
        pub const PC: usize = offset_of!(kvm_debug_exit_arch, pc);
        /// `dr6`.
        pub const DR6: usize = offset_of!(kvm_debug_exit_arch, dr6);
        /// `dr7`.
        pub const DR7: usize = offset_of!(kvm_debug_exit_arch, dr7);
    }
    /// `struct kvm_regs` in the synced registers.
    pub mod regs {
        use super::*;
        /// `rsp`.
        pub const RSP: usize = offset_of!(kvm_regs, rsp);
        /// `rip`.
        pub const RIP: usize = offset_of!(kvm_regs, rip);
        /// `rflags`.
        pub const RFLAGS: usize = offset_of!(kvm_regs, rflags);
    }
}

enum Map {
    ReadOnly(memmap2::Mmap),
    ReadWrite(memmap2::MmapMut),
}

/// One vCPU's `kvm_run` page (and the port-I/O data page behind it), as bytes.
pub struct RunPage {
    map: Map,
}

impl std::fmt::Debug for RunPage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunPage").field("len", &self.bytes().len()).finish()
    }
}

impl RunPage {
    /// Maps `mmap_size` bytes (from `KVM_GET_VCPU_MMAP_SIZE`) of `vcpu`'s region; `writable`
    /// for a VMM that answers exits through it, read-only for a recorder that only looks.
    ///
    /// # Errors
    /// The `mmap` error, or a size smaller than `struct kvm_run`.
    pub fn map(vcpu: &VcpuFd, mmap_size: usize, writable: bool) -> io::Result<Self> {
        if mmap_size < off::SIZE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "kvm_run mapping of {mmap_size} bytes is smaller than struct kvm_run ({})",
                    off::SIZE
                ),
            ));
        }
        let opts = {
            let mut o = memmap2::MmapOptions::new();
            o.len(mmap_size);
            o
        };
        let fd = vcpu.as_raw_fd();
        let map = if writable {
            // SAFETY: a shared mapping of the vCPU fd at offset 0 for the size KVM reports:
            // KVM serves the `kvm_run` page and the PIO data page behind it for the life of
            // the mapping (the mapping keeps the vCPU file alive). The pages change only
            // inside KVM_RUN, which never overlaps an access through this map (the owner
            // reads and writes between runs, on the vCPU's thread).
            Map::ReadWrite(unsafe { opts.map_mut(fd)? })
        } else {
            // SAFETY: as above, read-only.
            Map::ReadOnly(unsafe { opts.map(fd)? })
        };
        Ok(RunPage { map })
    }

    /// The whole region.
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        match &self.map {
            Map::ReadOnly(m) => m,
            Map::ReadWrite(m) => m,
        }
    }

    /// The whole region, writable (`None` when mapped read-only).
    #[inline]
    pub fn bytes_mut(&mut self) -> Option<&mut [u8]> {
        match &mut self.map {
            Map::ReadOnly(_) => None,
            Map::ReadWrite(m) => Some(m),
        }
    }
}

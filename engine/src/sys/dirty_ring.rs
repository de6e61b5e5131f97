//! KVM's dirty ring (`KVM_CAP_DIRTY_LOG_RING[_ACQ_REL]`): enabling it on a VM, mapping a
//! vCPU's ring, harvesting its entries and giving them back (`KVM_RESET_DIRTY_RINGS`).
//!
//! Each vCPU has a ring of `struct kvm_dirty_gfn { u32 flags; u32 slot; u64 offset; }`
//! shared with KVM through a mapping of the vCPU's file at `KVM_DIRTY_LOG_PAGE_OFFSET`
//! pages. KVM pushes an entry (page `offset` of memory slot `slot`) for each page the vCPU
//! dirties in a slot with `KVM_MEM_LOG_DIRTY_PAGES`, then publishes it by setting
//! `KVM_DIRTY_GFN_F_DIRTY` in `flags` (a release store with the `_ACQ_REL` capability). The
//! VMM reads entries in order from its own fetch index while that bit is set (an acquire
//! load, so `slot` and `offset` are read after it), marks each one collected by storing
//! `KVM_DIRTY_GFN_F_RESET` (release, so KVM sees the reads done), and calls
//! `KVM_RESET_DIRTY_RINGS` on the VM: KVM write-protects those pages again and reuses the
//! entries.

use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use kvm_bindings::{KVM_DIRTY_LOG_PAGE_OFFSET, KVMIO, kvm_dirty_gfn, kvm_enable_cap};
use kvm_ioctls::{VcpuFd, VmFd};
use vmm_sys_util::ioctl::ioctl;
use vmm_sys_util::ioctl_io_nr;

ioctl_io_nr!(KVM_RESET_DIRTY_RINGS, KVMIO, 0xc7);

/// `KVM_DIRTY_GFN_F_DIRTY`: KVM published the entry.
const GFN_DIRTY: u32 = 1 << 0;
/// `KVM_DIRTY_GFN_F_RESET`: the VMM collected it.
const GFN_RESET: u32 = 1 << 1;

/// Bytes in one ring entry.
pub const ENTRY_BYTES: u32 = 16;
const _: () = assert!(std::mem::size_of::<kvm_dirty_gfn>() == ENTRY_BYTES as usize);

/// Turns the dirty ring on for `vm` with `entries` entries per vCPU (a power of two),
/// through capability `cap` (`KVM_CAP_DIRTY_LOG_RING` or `..._ACQ_REL`). KVM accepts this
/// only before the VM's first vCPU is created.
///
/// # Errors
/// `KVM_ENABLE_CAP`'s: `EINVAL` for a size KVM does not take, `EINVAL`/`EBUSY` once a vCPU
/// exists.
pub fn enable(vm: &VmFd, cap: u32, entries: u32) -> Result<(), kvm_ioctls::Error> {
    let mut c = kvm_enable_cap { cap, ..Default::default() };
    c.args[0] = u64::from(entries) * u64::from(ENTRY_BYTES);
    vm.enable_cap(&c)
}

/// Gives every vCPU's collected entries back to KVM, which write-protects their pages
/// again (`KVM_RESET_DIRTY_RINGS`). Returns the entries reset.
///
/// # Errors
/// The ioctl's.
pub fn reset(vm: &VmFd) -> io::Result<u32> {
    // SAFETY: KVM_RESET_DIRTY_RINGS takes no argument and touches no memory of this
    // process other than the rings KVM itself mapped; `vm` is an open VM descriptor.
    let ret = unsafe { ioctl(vm, KVM_RESET_DIRTY_RINGS()) };
    u32::try_from(ret).map_err(|_| io::Error::last_os_error())
}

/// One vCPU's ring, mapped, and where harvesting continues in it. The mapping holds its
/// own reference to the vCPU's file, so it outlives the `VcpuFd` safely.
#[derive(Debug)]
pub struct DirtyRing {
    base: NonNull<kvm_dirty_gfn>,
    entries: u32,
    /// The next entry to read (free-running; the slot is `fetch % entries`).
    fetch: u32,
}

// SAFETY: the ring is plain shared memory; every access to its entries goes through
// `harvest`, which takes `&mut self`, and synchronises with KVM through the atomic flags
// word of each entry. Moving it to another thread moves only a pointer and two counters.
unsafe impl Send for DirtyRing {}

impl DirtyRing {
    /// Maps `vcpu`'s ring of `entries` entries (what [`enable`] set).
    ///
    /// # Errors
    /// `mmap`'s (`EINVAL` when the ring is not enabled on the VM).
    pub fn map(vcpu: &VcpuFd, entries: u32) -> io::Result<Self> {
        // SAFETY: sysconf reads no memory of this process.
        let page_size =
            u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).map_err(io::Error::other)?;
        let len = usize::try_from(u64::from(entries) * u64::from(ENTRY_BYTES)).map_err(io::Error::other)?;
        let offset = libc::off_t::try_from(u64::from(KVM_DIRTY_LOG_PAGE_OFFSET) * page_size)
            .map_err(io::Error::other)?;
        // SAFETY: a new shared mapping chosen by the kernel (no fixed address), of the
        // vCPU file at the offset KVM documents for the dirty ring; it aliases no Rust
        // object. The result is checked for MAP_FAILED before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vcpu.as_raw_fd(),
                offset,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base =
            NonNull::new(p.cast::<kvm_dirty_gfn>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(DirtyRing { base, entries, fetch: 0 })
    }

    /// Entries in the ring.
    pub fn entries(&self) -> u32 {
        self.entries
    }

    /// Collects every entry KVM published since the last call, in order, calling `f(slot,
    /// page_offset)` for each and marking it collected. Returns how many. The caller then
    /// calls [`reset`] on the VM so KVM can reuse them.
    pub fn harvest(&mut self, mut f: impl FnMut(u32, u64)) -> u32 {
        let mut n = 0;
        while n < self.entries {
            let i = usize::try_from(self.fetch % self.entries).unwrap_or(0);
            // SAFETY: `i < entries`, so the entry lies inside the mapping made in `map`
            // (entries * 16 bytes, page aligned), which lives as long as `self`.
            let e = unsafe { self.base.as_ptr().add(i) };
            // SAFETY: `flags` is the entry's first field, 4-byte aligned in a page-aligned
            // array of 16-byte entries; KVM writes it concurrently, so it is only accessed
            // atomically, here and below.
            let flags = unsafe { AtomicU32::from_ptr(std::ptr::addr_of_mut!((*e).flags)) };
            if flags.load(Ordering::Acquire) & GFN_DIRTY == 0 {
                break;
            }
            // SAFETY: KVM wrote `slot` and `offset` before publishing the entry (the
            // acquire load above orders these reads after that publication) and does not
            // write them again until the entry is reset; volatile, since the memory is
            // shared with the kernel.
            let (slot, offset) = unsafe {
                (
                    std::ptr::read_volatile(std::ptr::addr_of!((*e).slot)),
                    std::ptr::read_volatile(std::ptr::addr_of!((*e).offset)),
                )
            };
            f(slot, offset);
            flags.store(GFN_RESET, Ordering::Release);
            self.fetch = self.fetch.wrapping_add(1);
            n += 1;
        }
        n
    }
}

impl DirtyRing {
    /// Brings the fetch index back to where KVM pushes after KVM overran the ring (pushed
    /// more entries than it holds between two resets, which its soft limit should prevent
    /// but an instruction emulated in one go can do): entries KVM left invalid (flags 0)
    /// from the fetch index on are marked collected, up to the first one KVM published or
    /// a whole ring, so that `KVM_RESET_DIRTY_RINGS` can move past them. Their contents
    /// were lost in the overrun. Returns how many were skipped.
    pub fn resync(&mut self) -> u32 {
        let mut n = 0;
        while n < self.entries {
            let i = usize::try_from(self.fetch % self.entries).unwrap_or(0);
            // SAFETY: as in `harvest`: `i < entries` lies inside the mapping.
            let e = unsafe { self.base.as_ptr().add(i) };
            // SAFETY: as in `harvest`: the aligned flags word, accessed only atomically.
            let flags = unsafe { AtomicU32::from_ptr(std::ptr::addr_of_mut!((*e).flags)) };
            if flags.load(Ordering::Acquire) & GFN_DIRTY != 0 {
                break;
            }
            flags.store(GFN_RESET, Ordering::Release);
            self.fetch = self.fetch.wrapping_add(1);
            n += 1;
        }
        n
    }
}

impl Drop for DirtyRing {
    fn drop(&mut self) {
        let len = usize::try_from(u64::from(self.entries) * u64::from(ENTRY_BYTES)).unwrap_or(0);
        // SAFETY: unmaps exactly the mapping `map` created, which nothing references once
        // `self` is dropped (harvest borrows `self`).
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), len);
        }
    }
}

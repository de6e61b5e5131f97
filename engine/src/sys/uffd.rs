//! userfaultfd write-protection of guest memory: what lets a checkpoint keep the pages it
//! still has to write as they were at the pause while the guest runs on.
//!
//! A [`Uffd`] is opened with `UFFD_FEATURE_PAGEFAULT_FLAG_WP` (and, for memfd-backed
//! slots, `UFFD_FEATURE_WP_HUGETLBFS_SHMEM`); each slot mapping is registered once with
//! `UFFDIO_REGISTER_MODE_WP`; [`Uffd::protect`] arms or disarms ranges with
//! `UFFDIO_WRITEPROTECT`. A write to an armed page, by the guest through KVM (which
//! reaches host memory through `get_user_pages`, and so through the same page tables) or
//! by any thread of this process, blocks until another thread reads the fault from
//! [`Uffd::read_fault`] and disarms the page, which wakes the writer.
//!
//! The descriptor is opened without `UFFD_USER_MODE_ONLY`: KVM's accesses are kernel-mode
//! faults, and a user-mode-only descriptor would fail them (`EFAULT` from `KVM_RUN`)
//! instead of reporting them.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use vm_memory::MmapRegion;

use crate::page::PAGE_SIZE as PAGE;

const UFFD_API: u64 = 0xaa;
/// `_IOWR(0xaa, 0x3f, struct uffdio_api)`.
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
/// `_IOWR(0xaa, 0x00, struct uffdio_register)`.
const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
/// `_IOR(0xaa, 0x01, struct uffdio_range)`.
const UFFDIO_UNREGISTER: libc::c_ulong = 0x8010_aa01;
/// `_IOWR(0xaa, 0x06, struct uffdio_writeprotect)`.
const UFFDIO_WRITEPROTECT: libc::c_ulong = 0xc018_aa06;

const UFFD_FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
const UFFD_FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
/// `1 << _UFFDIO_WRITEPROTECT`: the ioctl a registered range must allow.
const UFFDIO_WRITEPROTECT_IOCTL: u64 = 1 << 0x06;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const UFFD_PAGEFAULT_FLAG_WP: u64 = 1 << 1;

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

/// Size of `struct uffd_msg`.
const MSG_SIZE: usize = 32;

/// A write-protect fault: a thread is blocked writing to an armed page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// Host address of the page (page-aligned).
    pub page_addr: u64,
    /// True when the fault is a write-protect fault (always, for the ranges registered
    /// here, which are registered for write-protection only).
    pub write_protect: bool,
}

/// A userfaultfd descriptor able to write-protect memfd-backed memory.
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

impl Uffd {
    /// Opens a descriptor and negotiates write-protection of shared memory.
    ///
    /// # Errors
    /// The kernel has no userfaultfd, forbids it to this process, or lacks
    /// write-protection of anonymous or shmem memory (`ENOTSUP` then).
    pub fn open() -> io::Result<Uffd> {
        // SAFETY: the userfaultfd system call takes one flags argument and returns a new
        // descriptor or -1; the flags are valid. The result is checked before use.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let raw = libc::c_int::try_from(fd).map_err(io::Error::other)?;
        // SAFETY: `raw` was just returned by userfaultfd, is open and owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let want = UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_HUGETLBFS_SHMEM;
        let mut api = UffdioApi { api: UFFD_API, features: want, ioctls: 0 };
        // SAFETY: UFFDIO_API reads and writes exactly one `struct uffdio_api`, which
        // `api` is (same layout, repr(C)), alive and exclusively borrowed for the call.
        check(unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API, &mut api as *mut UffdioApi) })?;
        if api.features & want != want {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("userfaultfd lacks write-protection of shared memory (features {:#x})", api.features),
            ));
        }
        Ok(Uffd { fd })
    }

    /// Registers all of `mapping` for write-protect faults. The registration lasts as long
    /// as the mapping (or this descriptor); a range replaced by `mmap(MAP_FIXED)` loses it.
    ///
    /// # Errors
    /// The kernel refuses (for instance memory it cannot write-protect).
    pub fn register(&self, mapping: &MmapRegion) -> io::Result<()> {
        let (start, len) = range(mapping, 0, mapping.size() as u64)?;
        let mut reg =
            UffdioRegister { range: UffdioRange { start, len }, mode: UFFDIO_REGISTER_MODE_WP, ioctls: 0 };
        // SAFETY: UFFDIO_REGISTER reads and writes one `struct uffdio_register`, which
        // `reg` is. The range is exactly a live mapping of this process; registering it
        // changes no byte of it and no protection Rust relies on: a write to it may later
        // block until this descriptor's reader disarms the page, never fail.
        check(unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_REGISTER, &mut reg as *mut UffdioRegister) })?;
        if reg.ioctls & UFFDIO_WRITEPROTECT_IOCTL == 0 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "userfaultfd cannot write-protect this memory",
            ));
        }
        Ok(())
    }

    /// Unregisters all of `mapping`: write-protection is lifted from every page and the
    /// threads blocked on it are woken.
    ///
    /// # Errors
    /// The kernel refused.
    pub fn unregister(&self, mapping: &MmapRegion) -> io::Result<()> {
        let (start, len) = range(mapping, 0, mapping.size() as u64)?;
        let mut r = UffdioRange { start, len };
        // SAFETY: UFFDIO_UNREGISTER reads one `struct uffdio_range`, which `r` is. The
        // range is exactly a live mapping of this process; unregistering changes no byte
        // of it and only lifts protection, so every pointer into it stays valid.
        check(unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_UNREGISTER, &mut r as *mut UffdioRange) })
    }

    /// Arms (`protect`) or disarms write-protection of `[offset, offset + len)` of
    /// `mapping`, which must be registered. Disarming wakes the threads blocked on
    /// the range.
    ///
    /// # Errors
    /// The range is not whole pages inside the mapping, or the kernel refused.
    pub fn protect(&self, mapping: &MmapRegion, offset: u64, len: u64, protect: bool) -> io::Result<()> {
        let (start, len) = range(mapping, offset, len)?;
        let mode = if protect { UFFDIO_WRITEPROTECT_MODE_WP } else { 0 };
        let mut wp = UffdioWriteprotect { range: UffdioRange { start, len }, mode };
        // SAFETY: UFFDIO_WRITEPROTECT reads and writes one `struct uffdio_writeprotect`,
        // which `wp` is. The range was checked to lie inside the borrowed live mapping;
        // write-protection changes no byte and unmaps nothing: a write to an armed page
        // blocks until disarmed, so no pointer into the mapping becomes invalid.
        check(unsafe {
            libc::ioctl(self.fd.as_raw_fd(), UFFDIO_WRITEPROTECT, &mut wp as *mut UffdioWriteprotect)
        })
    }

    /// Disarms the page at host address `page_addr` of `mapping` (a fault's page),
    /// waking its writers.
    ///
    /// # Errors
    /// As for [`Self::protect`].
    pub fn release(&self, mapping: &MmapRegion, page_addr: u64) -> io::Result<()> {
        let base = mapping.as_ptr() as u64;
        let offset =
            page_addr.checked_sub(base).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        self.protect(mapping, offset, PAGE, false)
    }

    /// Waits up to `timeout` for the next fault (`None`: none came).
    ///
    /// # Errors
    /// `poll` or `read` failed, or the kernel sent a message shorter than `uffd_msg`.
    pub fn read_fault(&self, timeout: Duration) -> io::Result<Option<Fault>> {
        loop {
            let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
            // SAFETY: `pfd` is one valid pollfd, alive for the call; the count says one.
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Ok(None);
            }
            let mut msg = [0u8; MSG_SIZE];
            // SAFETY: `msg` is a writable buffer of MSG_SIZE bytes, alive for the call;
            // read writes at most that many.
            let r = unsafe { libc::read(self.fd.as_raw_fd(), msg.as_mut_ptr().cast(), MSG_SIZE) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) {
                    continue;
                }
                return Err(e);
            }
            if usize::try_from(r).ok() != Some(MSG_SIZE) {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short userfaultfd message"));
            }
            if msg[0] != UFFD_EVENT_PAGEFAULT {
                // Other events are not requested; ignore any that come.
                continue;
            }
            let word = |at: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&msg[at..at + 8]);
                u64::from_ne_bytes(b)
            };
            let flags = word(8);
            let address = word(16);
            return Ok(Some(Fault {
                page_addr: address & !(PAGE - 1),
                write_protect: flags & UFFD_PAGEFAULT_FLAG_WP != 0,
            }));
        }
    }
}

/// The host range `[offset, offset + len)` of `mapping`, checked to be whole pages inside
/// it.
fn range(mapping: &MmapRegion, offset: u64, len: u64) -> io::Result<(u64, u64)> {
    super::mapping::check_range(mapping, offset, len)?;
    Ok((mapping.as_ptr() as u64 + offset, len))
}

/// Whether this host can write-protect memfd-backed memory with userfaultfd: opens a
/// descriptor, registers a one-page memfd mapping and arms it. `Err` says why not.
///
/// # Errors
/// The first step that failed.
pub fn probe() -> io::Result<()> {
    let uffd = Uffd::open()?;
    let file = super::memfd::create("vmrr-uffd-probe", PAGE)?;
    let region =
        MmapRegion::from_file(vm_memory::FileOffset::new(file, 0), 4096).map_err(io::Error::other)?;
    uffd.register(&region)?;
    uffd.protect(&region, 0, PAGE, true)?;
    uffd.protect(&region, 0, PAGE, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_checks() {
        let r = MmapRegion::new(2 * 4096).expect("anonymous mapping");
        assert!(range(&r, 0, 2 * PAGE).is_ok());
        assert!(range(&r, PAGE, 2 * PAGE).is_err());
        assert!(range(&r, 1, PAGE).is_err());
        assert!(range(&r, 0, 0).is_err());
    }
}

//! Replacing pages of a guest memory mapping in place: a file's pages mapped
//! copy-on-write over part of it, anonymous zero pages over part of it, and private copies
//! discarded. Each checks that the range lies inside the mapping it is given, which is what
//! makes it safe (see the SAFETY comments).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use vm_memory::MmapRegion;

use crate::page::PAGE_SIZE as PAGE;

/// Checks that `[offset, offset + len)` is whole pages, non-empty and inside `mapping`:
/// what makes an operation on that host range safe.
pub(super) fn check_range(mapping: &MmapRegion, offset: u64, len: u64) -> io::Result<()> {
    let size = mapping.size() as u64;
    let inside = offset.checked_add(len).is_some_and(|end| end <= size);
    if !inside || len == 0 || offset % PAGE != 0 || len % PAGE != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("range {offset:#x}+{len:#x} is not whole pages inside a mapping of {size:#x} bytes"),
        ));
    }
    Ok(())
}

/// The host address of `[offset, offset + len)` of `mapping`, after [`check_range`].
fn range(mapping: &MmapRegion, offset: u64, len: u64) -> io::Result<(*mut libc::c_void, usize)> {
    check_range(mapping, offset, len)?;
    let l = usize::try_from(len).map_err(io::Error::other)?;
    let o = usize::try_from(offset).map_err(io::Error::other)?;
    Ok((mapping.as_ptr().wrapping_add(o).cast(), l))
}

fn check_mmap(p: *mut libc::c_void, want: *mut libc::c_void) -> io::Result<()> {
    if p == libc::MAP_FAILED || p != want {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Maps `len` bytes of `file` at `file_offset` copy-on-write (`MAP_PRIVATE`) over
/// `[offset, offset + len)` of `mapping`: the guest then sees the file's bytes there, its
/// writes go to private copies, the file is never modified.
///
/// # Errors
/// The range is not whole pages inside the mapping, or `mmap` failed.
pub fn overlay_private(
    mapping: &MmapRegion,
    offset: u64,
    len: u64,
    file: &File,
    file_offset: u64,
) -> io::Result<()> {
    let (addr, l) = range(mapping, offset, len)?;
    let off = i64::try_from(file_offset).map_err(io::Error::other)?;
    // SAFETY: `[addr, addr + l)` was checked to lie inside `mapping`, a live mapping the
    // borrow keeps alive, so MAP_FIXED replaces only its own pages, with the same
    // protection: every pointer into it (vm-memory's volatile slices, KVM's memory slot)
    // still points at mapped, writable memory; only the bytes change, exactly as a guest
    // write would change them. vm-memory hands out no Rust references into guest memory.
    let p = unsafe {
        libc::mmap(
            addr,
            l,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
            file.as_raw_fd(),
            off,
        )
    };
    check_mmap(p, addr)
}

/// Replaces `[offset, offset + len)` of `mapping` with private anonymous memory (zero pages
/// until written).
///
/// # Errors
/// The range is not whole pages inside the mapping, or `mmap` failed.
pub fn anon_private(mapping: &MmapRegion, offset: u64, len: u64) -> io::Result<()> {
    let (addr, l) = range(mapping, offset, len)?;
    // SAFETY: as for `overlay_private`: the checked range lies inside the borrowed live
    // mapping, whose pages alone MAP_FIXED replaces, keeping them mapped read-write.
    let p = unsafe {
        libc::mmap(
            addr,
            l,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    check_mmap(p, addr)
}

/// Discards the private (copy-on-write) copies of `[offset, offset + len)` of `mapping`:
/// in a `MAP_PRIVATE` file mapping the next access sees the file's bytes again, in an
/// anonymous one zeros; in a shared mapping only the page-table entries go. O(pages), one
/// system call.
///
/// # Errors
/// The range is not whole pages inside the mapping, or `madvise` failed.
pub fn discard_private(mapping: &MmapRegion, offset: u64, len: u64) -> io::Result<()> {
    let (addr, l) = range(mapping, offset, len)?;
    // SAFETY: the checked range lies inside the borrowed live mapping; MADV_DONTNEED
    // leaves it mapped (later accesses refault), so no pointer into it dangles.
    let r = unsafe { libc::madvise(addr, l, libc::MADV_DONTNEED) };
    if r != 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

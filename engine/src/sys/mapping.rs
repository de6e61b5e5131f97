//! Memory-management calls for snapshots: finding populated ranges of a file, mapping a
//! file's pages copy-on-write over part of a guest mapping, and discarding private copies.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// The populated `(offset, len)` ranges of `file` within `[0, len)` (SEEK_DATA/SEEK_HOLE).
///
/// # Errors
/// `lseek` failures other than "no more data".
pub fn data_ranges(file: &File, len: u64) -> io::Result<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut pos: u64 = 0;
    while pos < len {
        let at = i64::try_from(pos).map_err(io::Error::other)?;
        // SAFETY: lseek on an fd we own with a valid whence; only the return value is used.
        let data = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // no data after pos
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        let (d, h) = (u64::try_from(data).unwrap_or(len), u64::try_from(hole).unwrap_or(len).min(len));
        if d >= len {
            break;
        }
        out.push((d, h - d));
        pos = h;
    }
    Ok(out)
}

/// Maps `len` bytes of `file` at `file_offset` copy-on-write (MAP_PRIVATE) over
/// `[addr, addr + len)`, replacing what was mapped there.
///
/// # Safety
/// `[addr, addr + len)` must lie inside a mapping the caller owns (a guest memory region),
/// page-aligned, with no Rust references into it alive; the new mapping is released when
/// that owning mapping is unmapped.
///
/// # Errors
/// The `mmap` error.
pub unsafe fn overlay_private(addr: u64, len: u64, file: &File, file_offset: u64) -> io::Result<()> {
    let l = usize::try_from(len).map_err(io::Error::other)?;
    let off = i64::try_from(file_offset).map_err(io::Error::other)?;
    // SAFETY: the caller guarantees the range is inside a mapping it owns, so MAP_FIXED
    // replaces only pages of that mapping; the fd is valid for the call.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            l,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
            file.as_raw_fd(),
            off,
        )
    };
    if p == libc::MAP_FAILED || p as u64 != addr {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Replaces `[addr, addr + len)` with private anonymous memory (zero pages until written).
///
/// # Safety
/// As for [`overlay_private`].
///
/// # Errors
/// The `mmap` error.
pub unsafe fn anon_private(addr: u64, len: u64) -> io::Result<()> {
    let l = usize::try_from(len).map_err(io::Error::other)?;
    // SAFETY: the caller guarantees the range is inside a mapping it owns, so MAP_FIXED
    // replaces only pages of that mapping; no fd is involved.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            l,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED || p as u64 != addr {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Discards the private (copy-on-write) copies of `[addr, addr + len)` in a MAP_PRIVATE
/// file mapping: the next access sees the file's content again. O(pages), one syscall.
///
/// # Safety
/// The range must lie inside a MAP_PRIVATE file mapping the caller owns, with no Rust
/// references into it alive.
///
/// # Errors
/// The `madvise` error.
pub unsafe fn discard_private(addr: u64, len: u64) -> io::Result<()> {
    let l = usize::try_from(len).map_err(io::Error::other)?;
    // SAFETY: the caller guarantees the range is in a private file mapping it owns; for such
    // a mapping MADV_DONTNEED drops the private copies and later reads refault from the file.
    let r = unsafe { libc::madvise(addr as *mut libc::c_void, l, libc::MADV_DONTNEED) };
    if r != 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

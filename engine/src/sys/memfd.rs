//! Anonymous memory files (`memfd_create`) backing guest RAM, so snapshots can map and
//! share it.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;

/// Creates a close-on-exec memfd named `name` of `size` bytes (sparse: no memory is
/// committed until touched).
///
/// # Errors
/// The OS error from `memfd_create` or `ftruncate`.
pub fn create(name: &str, size: u64) -> io::Result<File> {
    let cname = CString::new(name.replace('\0', "_")).map_err(io::Error::other)?;
    // SAFETY: `cname` is a valid NUL-terminated string that outlives the call; the flags
    // are a valid combination; the return value is checked before use.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create, is open, and is owned by nobody else;
    // the File takes ownership and closes it on drop.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)?;
    Ok(file)
}

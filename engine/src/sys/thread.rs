//! Scheduling of the engine's own helper threads.

use std::io;

/// Lowers the calling thread's scheduling priority to nice `nice` (Linux keeps a nice
/// value per thread): background work such as writing a snapshot then yields the CPU to
/// the vCPU thread on a busy host.
///
/// # Errors
/// The OS refused (for instance a value out of range).
pub fn set_current_nice(nice: i32) -> io::Result<()> {
    // SAFETY: setpriority takes plain integers and touches no memory of ours; `who` 0
    // with PRIO_PROCESS names the calling thread on Linux. The result is checked.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if r != 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

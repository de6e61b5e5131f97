//! Process signals vmrr reacts to.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

static USR1: OnceLock<Arc<AtomicBool>> = OnceLock::new();

extern "C" fn on_usr1(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Async-signal-safe: one atomic store.
    if let Some(f) = USR1.get() {
        f.store(true, Ordering::Relaxed);
    }
}

/// A flag that becomes true when the process receives SIGUSR1 (the flight recorder's
/// "write a bundle now"). Installs the handler on first use.
///
/// # Errors
/// `sigaction` failed.
pub fn sigusr1_flag() -> std::io::Result<Arc<AtomicBool>> {
    let flag = Arc::clone(USR1.get_or_init(|| Arc::new(AtomicBool::new(false))));
    vmm_sys_util::signal::register_signal_handler(libc::SIGUSR1, on_usr1)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
    Ok(flag)
}

static STOP: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop(signal: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Async-signal-safe: one atomic store. The first signal wins.
    let _ = STOP.compare_exchange(0, signal, Ordering::Relaxed, Ordering::Relaxed);
}

/// Catches SIGINT, SIGTERM, SIGHUP and SIGPIPE (the reader of stdout went away: `vmrr
/// inspect X | head -1`) from now on: instead of ending the process at once,
/// each records its number in the returned value (0 until one came). The caller watches it,
/// cleans up and ends the process with [`die_of`] (a watcher thread: see the CLI).
///
/// # Errors
/// `sigaction` failed.
pub fn catch_stop_signals() -> std::io::Result<&'static AtomicI32> {
    for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGPIPE] {
        vmm_sys_util::signal::register_signal_handler(s, on_stop)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
    }
    Ok(&STOP)
}

/// Ends the process as `signal` would have (default action), after a caught stop signal.
pub fn die_of(signal: i32) -> ! {
    crate::sys::stop::die_of(signal)
}

/// SIGPIPE: the signal a write to a closed pipe raises.
pub const CLOSED_PIPE: i32 = libc::SIGPIPE;

//! Process signals vmrr reacts to.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

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

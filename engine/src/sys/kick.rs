//! Kicking a vCPU thread out of `KVM_RUN` with a signal (for `--max-seconds` and stop
//! requests). The handler does nothing: its only effect is that `KVM_RUN` returns `EINTR`.

use std::io;
use std::sync::Once;

use vmm_sys_util::signal::{SIGRTMIN, register_signal_handler};

/// The signal used (SIGRTMIN + 2; kvm-ioctls' examples and vmm-sys-util use +0 and +1).
pub fn kick_signal() -> i32 {
    SIGRTMIN() + 2
}

extern "C" fn noop(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

static INSTALL: Once = Once::new();

/// A handle that can interrupt one thread's blocking system calls.
#[derive(Debug, Clone, Copy)]
pub struct Kicker {
    thread: libc::pthread_t,
}

impl Kicker {
    /// A kicker for the calling thread (installs the no-op handler once per process).
    ///
    /// # Errors
    /// `sigaction` failed.
    pub fn current() -> io::Result<Self> {
        let mut res = Ok(());
        INSTALL.call_once(|| {
            res = register_signal_handler(kick_signal(), noop)
                .map_err(|e| io::Error::from_raw_os_error(e.errno()));
        });
        res?;
        // SAFETY: pthread_self has no preconditions and always succeeds.
        let thread = unsafe { libc::pthread_self() };
        Ok(Kicker { thread })
    }

    /// Sends the kick signal.
    ///
    /// The caller must guarantee the thread is still alive: the owner joins every thread
    /// holding a `Kicker` before the kicked thread can exit (see `Watchdog`).
    pub fn kick(&self) {
        // SAFETY: `thread` names a live thread (owner's guarantee above); the signal has a
        // handler installed, so delivery cannot terminate the process.
        unsafe {
            libc::pthread_kill(self.thread, kick_signal());
        }
    }
}

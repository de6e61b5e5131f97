//! Ending the process the way a signal would have: after vmrr caught SIGINT, SIGTERM or
//! SIGHUP to remove its temporary files, it dies of that same signal, so the shell or CI
//! runner that sent it sees what it expects (`WIFSIGNALED`, exit status 128 + N).

/// Restores the default action of `signal` and raises it; if that does not end the
/// process (a signal whose default is not to terminate), exits with `128 + signal`.
pub fn die_of(signal: i32) -> ! {
    // SAFETY: SIG_DFL is a valid disposition for any catchable signal; `signal` comes from
    // the handler that caught it, so it is one.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
    }
    // SAFETY: raise has no preconditions; its default action for SIGINT/SIGTERM/SIGHUP is
    // to terminate the process.
    unsafe {
        libc::raise(signal);
    }
    std::process::exit(128 + signal)
}

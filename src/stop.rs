//! Stopping on SIGINT, SIGTERM or SIGHUP without leaving anything half-written: the
//! signal is caught, a watcher thread removes every temporary file and directory of the
//! process (`vmrr_format::scratch`: a bundle being extracted, an output not yet renamed
//! into place), then the process dies of the same signal. A closed pipe (SIGPIPE: `vmrr
//! inspect X | head -1`) ends the process the same way, quietly: no error, no panic
//! message (a `println!` that met the closed pipe dies of the signal instead of
//! panicking). Every command installs it but `record`, which keeps the default (its
//! trace survives any kill, see docs/RELIABILITY.md).

use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use vmrr_engine::machine::signals;

static CAUGHT: std::sync::OnceLock<&'static AtomicI32> = std::sync::OnceLock::new();

/// Catches the stop signals and starts the watcher.
///
/// # Errors
/// `sigaction` failed, or the thread could not start.
pub fn install() -> std::io::Result<()> {
    let flag = signals::catch_stop_signals()?;
    let _ = CAUGHT.set(flag);
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // Writing to a closed pipe raised SIGPIPE before `println!` saw EPIPE and panicked.
        if let Some(s) = caught() {
            stop(s);
        }
        report(info);
    }));
    std::thread::Builder::new().name("vmrr-stop".into()).spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(10));
            let s = flag.load(Ordering::Relaxed);
            if s != 0 {
                stop(s);
            }
        }
    })?;
    Ok(())
}

/// The signal caught, if one was.
pub fn caught() -> Option<i32> {
    CAUGHT.get().map(|f| f.load(Ordering::Relaxed)).filter(|s| *s != 0)
}

/// Removes the temporary files and dies of `signal`.
pub fn stop(signal: i32) -> ! {
    let n = vmrr_format::scratch::remove_all();
    if n > 0 && signal != signals::CLOSED_PIPE {
        eprintln!("vmrr: stopped by signal {signal}; removed {n} temporary file(s) or directories");
    }
    signals::die_of(signal)
}

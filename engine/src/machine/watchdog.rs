//! A thread that ends a run after a wall-clock limit, or on request, even when the guest
//! spins without exits: it sets a flag and kicks the vCPU thread until the run loop sees it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::sys::kick::Kicker;

/// Why the watchdog fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fired {
    /// The time limit passed.
    Deadline,
    /// [`StopHandle::stop`] was called.
    Stopped,
}

/// Shared flags the run loop polls (a relaxed load per exit).
#[derive(Debug, Default)]
pub struct Flags {
    /// The time limit passed.
    deadline: AtomicBool,
    /// A stop was requested.
    stop: AtomicBool,
}

impl Flags {
    /// What fired, if anything.
    pub fn fired(&self) -> Option<Fired> {
        if self.stop.load(Ordering::Relaxed) {
            Some(Fired::Stopped)
        } else if self.deadline.load(Ordering::Relaxed) {
            Some(Fired::Deadline)
        } else {
            None
        }
    }
}

/// Requests a stop from another thread (a signal handler thread, an embedding VMM).
#[derive(Debug, Clone)]
pub struct StopHandle {
    flags: Arc<Flags>,
    wake: Sender<()>,
}

impl StopHandle {
    /// Asks the run to stop at the next exit (kicking the vCPU if it spins).
    pub fn stop(&self) {
        self.flags.stop.store(true, Ordering::Relaxed);
        let _ = self.wake.send(());
    }
}

/// The watchdog thread; joined on drop (before the vCPU thread can go away).
pub struct Watchdog {
    /// Flags the run loop polls.
    pub(crate) flags: Arc<Flags>,
    done: Sender<()>,
    wake: Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Starts a watchdog for the calling thread with an optional time limit.
    ///
    /// # Errors
    /// The kick signal handler could not be installed, or the thread not spawned.
    pub fn start(limit: Option<Duration>) -> std::io::Result<Self> {
        Self::start_with(limit, None)
    }

    /// As [`Self::start`], also stopping the run when `external` becomes true (a signal
    /// handler's flag, polled every 50 ms).
    ///
    /// # Errors
    /// As for [`Self::start`].
    pub fn start_with(limit: Option<Duration>, external: Option<Arc<AtomicBool>>) -> std::io::Result<Self> {
        let kicker = Kicker::current()?;
        let flags = Arc::new(Flags::default());
        let (done_tx, done_rx) = channel::<()>();
        let (wake_tx, wake_rx) = channel::<()>();
        let f = Arc::clone(&flags);
        let thread = std::thread::Builder::new()
            .name("vmrr-watchdog".into())
            .spawn(move || watch(f, kicker, limit, external, done_rx, wake_rx))?;
        Ok(Watchdog { flags, done: done_tx, wake: wake_tx, thread: Some(thread) })
    }

    /// A handle to request a stop.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle { flags: Arc::clone(&self.flags), wake: self.wake.clone() }
    }
}

fn watch(
    flags: Arc<Flags>,
    kicker: Kicker,
    limit: Option<Duration>,
    external: Option<Arc<AtomicBool>>,
    done: Receiver<()>,
    wake: Receiver<()>,
) {
    let deadline = limit.map(|l| Instant::now() + l);
    // Phase 1: wait for the deadline or a stop request.
    loop {
        if done.try_recv().is_ok() {
            return;
        }
        let wait = deadline.map_or(Duration::from_millis(50), |d| {
            d.saturating_duration_since(Instant::now()).min(Duration::from_millis(50))
        });
        match wake.recv_timeout(wait) {
            Ok(()) => break,
            Err(RecvTimeoutError::Disconnected) => {
                // No stop handles left: only the deadline matters.
                std::thread::sleep(wait);
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            flags.deadline.store(true, Ordering::Relaxed);
            break;
        }
        if external.as_ref().is_some_and(|e| e.load(Ordering::Relaxed)) {
            flags.stop.store(true, Ordering::Relaxed);
        }
        if flags.stop.load(Ordering::Relaxed) {
            break;
        }
    }
    // Phase 2: kick until the run loop is done (a kick can land just before KVM_RUN).
    loop {
        kicker.kick();
        match done.recv_timeout(Duration::from_millis(10)) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let _ = self.done.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Kicks the thread that started it out of `KVM_RUN` when no exit has been reported for
/// `limit`: replay's guard against a diverged guest that spins forever without exiting.
/// Reporting an exit costs one relaxed atomic increment; the watching thread notices when
/// the count stops moving.
pub struct StallWatch {
    exits: Arc<std::sync::atomic::AtomicU64>,
    fired: Arc<AtomicBool>,
    done: Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for StallWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StallWatch").field("fired", &self.stalled()).finish()
    }
}

impl StallWatch {
    /// Starts watching the calling thread.
    ///
    /// # Errors
    /// The kick signal's handler cannot be installed, or the thread cannot start.
    pub fn start(limit: Duration) -> std::io::Result<Self> {
        let kicker = Kicker::current()?;
        let exits = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let fired = Arc::new(AtomicBool::new(false));
        let (done_tx, done_rx) = channel::<()>();
        let (e, f) = (Arc::clone(&exits), Arc::clone(&fired));
        let poll = (limit / 4).clamp(Duration::from_millis(1), Duration::from_millis(50));
        let thread = std::thread::Builder::new().name("vmrr-stall".into()).spawn(move || {
            let (mut seen, mut since) = (e.load(Ordering::Relaxed), Instant::now());
            loop {
                let wait = if f.load(Ordering::Relaxed) { Duration::from_millis(10) } else { poll };
                match done_rx.recv_timeout(wait) {
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                    Err(RecvTimeoutError::Timeout) => {}
                }
                let now = e.load(Ordering::Relaxed);
                if now != seen {
                    (seen, since) = (now, Instant::now());
                } else if since.elapsed() >= limit {
                    f.store(true, Ordering::Relaxed);
                }
                if f.load(Ordering::Relaxed) {
                    kicker.kick();
                }
            }
        })?;
        Ok(StallWatch { exits, fired, done: done_tx, thread: Some(thread) })
    }

    /// Notes an exit: the guest is not stalled.
    #[inline]
    pub fn progress(&self) {
        self.exits.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the limit passed without an exit.
    pub fn stalled(&self) -> bool {
        self.fired.load(Ordering::Relaxed)
    }
}

impl Drop for StallWatch {
    fn drop(&mut self) {
        let _ = self.done.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

//! The APs of a machine with several vCPUs: one host thread each for the length of a run.
//!
//! Each AP's thread enters its vCPU, hands the exit to the shared device bus (a mutex held
//! for the device's answer only), records it with its own recorder (no lock shared with
//! another vCPU on that path), and pulses the interrupt lines the devices raised into KVM's
//! in-kernel irqchip. The bootstrap processor keeps the caller's thread and the run loop of
//! `run.rs`, which coordinates the team:
//!
//! - **pausing** ([`Team::pause`]): every AP leaves `KVM_RUN` (kicked with a signal until it
//!   says it is parked) and waits at an exit boundary, so its state can be read or set (a
//!   checkpoint, the failure point); [`Team::resume`] lets them go on;
//! - **ending**: an AP whose exit ends the run (an emulation failure, a triple fault, the
//!   guest's exit port) pauses the team, keeps the first such end for the run loop, and
//!   stops the run through the watchdog, which kicks the bootstrap processor until its loop
//!   sees it;
//! - **stopping** ([`Team::stop`]): at the end of the run every thread is told to quit,
//!   kicked until it has, and joined; the vCPUs themselves stay in the VM.
//!
//! Lock order, everywhere: an AP's `VcpuFd` mutex, then its per-exit state's, then the
//! bus; the board (`Shared::board`) is never held while taking another lock.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_ioctls::{VcpuFd, VmFd};

use crate::devices::Bus;
use crate::devices::device::StopRequest;
use crate::kvm::irqchip;
use crate::machine::ending::{Ending, ending_of};
use crate::machine::run_error::RunError;
use crate::machine::vcpu::Vcpu;
use crate::machine::watchdog::StopHandle;
use crate::sys::kick::Kicker;

/// How long a pausing thread waits between kicks.
const KICK_INTERVAL: Duration = Duration::from_millis(1);

/// Locks `m`, taking the value a panicked holder left.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One AP: its vCPU and its per-exit state, each behind the mutex its thread holds while
/// it runs.
#[derive(Clone)]
pub(crate) struct ApCpu {
    /// Its index (1 and up).
    pub(crate) index: u32,
    /// Its vCPU (the VM's).
    pub(crate) fd: Arc<Mutex<VcpuFd>>,
    /// Its `kvm_run` page, the exit it stands at, its recorder.
    pub(crate) cpu: Arc<Mutex<Vcpu>>,
    /// Its exit and interrupt counts as of its last exit, readable while it runs.
    pub(crate) counts: Arc<Counts>,
}

/// An AP's counters, mirrored after each of its exits.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    /// Exits handled.
    pub(crate) exits: AtomicU64,
    /// Lines pulsed.
    pub(crate) interrupts: AtomicU64,
}

/// Why an AP ended the run.
#[derive(Debug)]
pub(crate) enum ApEnd {
    /// Its exit ends the run (a failure); the exit stays in its per-exit state.
    Exit {
        /// The AP.
        vcpu: u32,
        /// What kind of end.
        ending: Ending,
    },
    /// A device it wrote to asked the run to stop (the guest's exit port, a power-off).
    Stop(StopRequest),
    /// vmrr could not go on on its thread (an ioctl, the trace).
    Error(RunError),
}

#[derive(Default)]
struct Board {
    parked: usize,
    ended: Option<ApEnd>,
}

struct Shared {
    pause: AtomicBool,
    quit: AtomicBool,
    exits: AtomicU64,
    board: Mutex<Board>,
    changed: Condvar,
    stop: StopHandle,
}

/// The APs' threads during one run (see the module docs).
pub(crate) struct Team {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    kickers: Vec<Kicker>,
}

impl std::fmt::Debug for Team {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Team").field("aps", &self.threads.len()).finish()
    }
}

/// What an AP's thread needs besides its vCPU.
pub(crate) struct Devices {
    /// The machine's bus.
    pub(crate) bus: Arc<Mutex<Bus>>,
    /// A handle on the VM for `KVM_IRQ_LINE`.
    pub(crate) vm: Arc<VmFd>,
}

impl Team {
    /// Starts one thread per AP of `aps`; `stop` ends the run (the bootstrap processor's
    /// loop) when an AP ends it.
    ///
    /// # Errors
    /// A thread could not be spawned or its kick signal installed (the threads started are
    /// stopped again).
    pub(crate) fn start(aps: &[ApCpu], devices: &Devices, stop: StopHandle) -> Result<Team, RunError> {
        let shared = Arc::new(Shared {
            pause: AtomicBool::new(false),
            quit: AtomicBool::new(false),
            exits: AtomicU64::new(0),
            board: Mutex::new(Board::default()),
            changed: Condvar::new(),
            stop,
        });
        let mut team = Team { shared, threads: Vec::new(), kickers: Vec::new() };
        for ap in aps {
            let (tx, rx) = sync_channel(1);
            let worker = Worker {
                ap: ap.clone(),
                bus: Arc::clone(&devices.bus),
                vm: Arc::clone(&devices.vm),
                shared: Arc::clone(&team.shared),
            };
            let spawned =
                std::thread::Builder::new().name(format!("vmrr-vcpu{}", ap.index)).spawn(move || {
                    let kicker = Kicker::current();
                    let ok = kicker.is_ok();
                    let _ = tx.send(kicker);
                    if ok {
                        worker.run();
                    }
                });
            let os = |what, source| RunError::Os { what, source };
            let thread = match spawned {
                Ok(t) => t,
                Err(e) => {
                    team.stop();
                    return Err(os("spawning a vCPU thread", e));
                }
            };
            team.threads.push(thread);
            match rx.recv() {
                Ok(Ok(k)) => team.kickers.push(k),
                Ok(Err(e)) => {
                    team.stop();
                    return Err(os("installing the vCPU kick signal", e));
                }
                Err(_) => {
                    team.stop();
                    return Err(os("starting a vCPU thread", std::io::Error::other("it ended at once")));
                }
            }
        }
        Ok(team)
    }

    /// Exits the APs handled this run.
    pub(crate) fn exits(&self) -> u64 {
        self.shared.exits.load(Ordering::Relaxed)
    }

    /// Takes how an AP ended the run, if one did.
    pub(crate) fn take_end(&self) -> Option<ApEnd> {
        lock(&self.shared.board).ended.take()
    }

    /// Whether an AP ended the run (without taking it).
    pub(crate) fn ended(&self) -> bool {
        lock(&self.shared.board).ended.is_some()
    }

    /// Stops every AP at an exit boundary and returns once all are parked (their mutexes
    /// free). Idempotent.
    pub(crate) fn pause(&self) {
        self.shared.pause.store(true, Ordering::SeqCst);
        self.wait_for(|b, n| b.parked == n);
    }

    /// Lets paused APs go on.
    pub(crate) fn resume(&self) {
        if self.shared.pause.swap(false, Ordering::SeqCst) {
            let _b = lock(&self.shared.board);
            self.shared.changed.notify_all();
        }
    }

    /// Kicks the threads until `done` holds for the board and the thread count.
    fn wait_for(&self, done: impl Fn(&Board, usize) -> bool) {
        let n = self.kickers.len();
        let mut b = lock(&self.shared.board);
        while !done(&b, n) && !self.threads.iter().all(JoinHandle::is_finished) {
            drop(b);
            for k in &self.kickers {
                k.kick();
            }
            b = lock(&self.shared.board);
            if !done(&b, n) {
                b = self
                    .shared
                    .changed
                    .wait_timeout(b, KICK_INTERVAL)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
    }

    /// Ends every thread (kicked out of `KVM_RUN` until it has) and joins them.
    pub(crate) fn stop(&mut self) {
        self.shared.quit.store(true, Ordering::SeqCst);
        {
            let _b = lock(&self.shared.board);
            self.shared.changed.notify_all();
        }
        while !self.threads.iter().all(JoinHandle::is_finished) {
            for (k, t) in self.kickers.iter().zip(&self.threads) {
                if !t.is_finished() {
                    k.kick();
                }
            }
            std::thread::sleep(KICK_INTERVAL);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.kickers.clear();
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop();
        }
    }
}

/// One AP's thread.
struct Worker {
    ap: ApCpu,
    bus: Arc<Mutex<Bus>>,
    vm: Arc<VmFd>,
    shared: Arc<Shared>,
}

impl Worker {
    fn run(self) {
        loop {
            if self.shared.quit.load(Ordering::SeqCst) {
                break;
            }
            if self.shared.pause.load(Ordering::SeqCst) {
                self.park();
                continue;
            }
            let end = match self.step() {
                Ok(None) => continue,
                Ok(Some(end)) => end,
                Err(e) => ApEnd::Error(e),
            };
            self.end(end);
        }
    }

    /// Waits, counted as parked, while the team is paused.
    fn park(&self) {
        let s = &self.shared;
        let mut b = lock(&s.board);
        b.parked += 1;
        s.changed.notify_all();
        while s.pause.load(Ordering::SeqCst) && !s.quit.load(Ordering::SeqCst) {
            b = s.changed.wait(b).unwrap_or_else(PoisonError::into_inner);
        }
        b.parked -= 1;
    }

    /// Keeps the first end, pauses the team and stops the run.
    fn end(&self, end: ApEnd) {
        {
            let mut b = lock(&self.shared.board);
            if b.ended.is_none() {
                b.ended = Some(end);
            }
        }
        self.shared.pause.store(true, Ordering::SeqCst);
        self.shared.stop.stop();
    }

    /// One entry and the exit it made, handled and recorded: `Some` when it ends the run.
    fn step(&self) -> Result<Option<ApEnd>, RunError> {
        let mut fd = lock(&self.ap.fd);
        let mut cpu = lock(&self.ap.cpu);
        if self.shared.pause.load(Ordering::SeqCst) || self.shared.quit.load(Ordering::SeqCst) {
            return Ok(None);
        }
        if !cpu.enter(&mut fd)? {
            return Ok(None);
        }
        // A debug stop is never asked for on an AP: it ends the run like any unknown exit.
        let ending = ending_of(&cpu).unwrap_or(Some(Ending::Unhandled));
        let (lines, stop) = {
            let mut bus = crate::machine::lock_bus(&self.bus);
            cpu.serve(&mut bus)?;
            let lines =
                if bus.interrupts().has_lines() { bus.interrupts_mut().take_lines() } else { Vec::new() };
            (lines, bus.stop_request())
        };
        cpu.count_exit();
        self.shared.exits.fetch_add(1, Ordering::Relaxed);
        cpu.record()?;
        for line in lines {
            irqchip::pulse(&self.vm, u32::from(line))?;
            cpu.pulsed(u32::from(line))?;
        }
        self.ap.counts.exits.store(cpu.exits(), Ordering::Relaxed);
        self.ap.counts.interrupts.store(cpu.interrupts(), Ordering::Relaxed);
        Ok(match (ending, stop) {
            (Some(ending), _) => Some(ApEnd::Exit { vcpu: self.ap.index, ending }),
            (None, Some(s)) => Some(ApEnd::Stop(s)),
            (None, None) => None,
        })
    }
}

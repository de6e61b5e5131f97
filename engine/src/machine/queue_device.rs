//! The queue device the `virtqueue` guest drives, served the way production VMMs serve
//! virtio queues: the guest's notification is an ioeventfd (KVM signals an eventfd on the
//! port write, no exit), a device thread does the work, and the completion is an irqfd
//! (KVM raises the GSI when the thread signals it, no `KVM_IRQ_LINE` from a vCPU's loop).
//!
//! Lifetimes: the eventfds and their KVM registrations belong to the [`Machine`]
//! ([`Machine::attach_queue_device`]) and last as long as its VM. The device thread lasts
//! one run: [`Machine::run_with`] starts it with a fresh handle on guest memory (so it
//! never outlives the mappings it writes, and a restore between runs is seen) and stops and
//! joins it however the run ends, before it returns.
//!
//! Per notification the thread reads the descriptor at
//! [`crate::guests::virtqueue::DESC_ADDR`] (buffer address u64, length u32, round u32),
//! writes [`crate::guests::virtqueue::pattern`] for `length` bytes into the buffer (marked
//! written for snapshots: KVM's dirty log does not see a userspace write), tells its
//! [`DeviceEvents`] about the write, then about the interrupt, then raises it. A request
//! it cannot serve (longer than [`crate::guests::virtqueue::MAX_LEN`], or outside RAM) is
//! counted, left unwritten and still completed, so the guest sees the fault rather than
//! waiting forever.
//!
//! Not covered: a checkpoint taken during a run does not pause the thread (its writes
//! and a capture may interleave), and a replay, which enters the vCPU through its own
//! methods rather than a run and restores a machine without this device, has no device
//! thread serving: it diverges at the first notify write, which exits there.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vm_memory::GuestAddress;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::guests::virtqueue::{DESC_ADDR, MAX_LEN, pattern};
use crate::kvm::memory::SharedMemory;
use crate::kvm::system::KvmError;
use crate::machine::Machine;
use crate::machine::watchdog::StopHandle;

/// What the device thread reports as it works, in the order it happens: each request's
/// guest-memory write, then its completion interrupt. A recording turns these into the
/// trace's device-thread records; the thread calls it before the guest can see either
/// (the write before the interrupt that announces it, the interrupt before the irqfd).
pub trait DeviceEvents: Send {
    /// The device wrote `data` at guest-physical `gpa`.
    ///
    /// # Errors
    /// The event could not be kept (a trace write failed); the thread stops and the run
    /// ends with [`crate::machine::RunError::Device`].
    fn guest_write(&mut self, gpa: u64, data: &[u8]) -> Result<(), vmrr_format::WriteError>;

    /// The device raised GSI `gsi` (an edge, through its irqfd).
    ///
    /// # Errors
    /// As for [`Self::guest_write`].
    fn irq_line(&mut self, gsi: u32) -> Result<(), vmrr_format::WriteError>;
}

/// The queue device could not be set up, or its thread failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueDeviceError {
    /// The machine runs vmrr's own interrupt controllers: an irqfd needs KVM's.
    #[error("the queue device needs KVM's in-kernel irqchip (--irqchip kernel)")]
    NeedsKernelIrqchip,
    /// An eventfd or the thread's epoll could not be created or used.
    #[error("the queue device's {what} failed")]
    Os {
        /// The step that failed.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// KVM refused a registration.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// Its events could not be kept (the trace).
    #[error("the queue device's events could not be recorded")]
    Events(#[source] vmrr_format::WriteError),
    /// Its thread panicked.
    #[error("the queue device's thread panicked")]
    Panicked,
}

fn os(what: &'static str) -> impl FnOnce(std::io::Error) -> QueueDeviceError {
    move |source| QueueDeviceError::Os { what, source }
}

/// Counts a run's requests, readable at any time.
#[derive(Debug, Default)]
pub struct QueueCounts {
    /// Requests served (buffer written, completion raised).
    pub served: AtomicU64,
    /// Requests refused (descriptor out of bounds); completed without a write.
    pub refused: AtomicU64,
}

/// The machine's queue device: its notify and completion eventfds, registered with KVM,
/// and what its thread reports to.
pub(crate) struct QueueDevice {
    notify: EventFd,
    irq: EventFd,
    gsi: u32,
    /// Where events go; moved to the thread during a run and back after.
    events: Arc<Mutex<Option<Box<dyn DeviceEvents>>>>,
    counts: Arc<QueueCounts>,
}

/// A running device thread ([`QueueDevice::start`]); dropping it stops and joins it too.
pub(crate) struct Serving {
    quit: EventFd,
    thread: Option<JoinHandle<Result<(), QueueDeviceError>>>,
}

impl QueueDevice {
    /// Registers a notify eventfd on port `port` (any write, any data) and a completion
    /// eventfd on `gsi` with `vm`, which must have KVM's in-kernel irqchip.
    fn register(vm: &VmFd, port: u16, gsi: u32) -> Result<Self, QueueDeviceError> {
        let notify = EventFd::new(EFD_NONBLOCK).map_err(os("notify eventfd"))?;
        let irq = EventFd::new(EFD_NONBLOCK).map_err(os("irq eventfd"))?;
        vm.register_ioevent(&notify, &IoEventAddress::Pio(u64::from(port)), NoDatamatch)
            .map_err(KvmError::on("KVM_IOEVENTFD"))?;
        vm.register_irqfd(&irq, gsi).map_err(KvmError::on("KVM_IRQFD"))?;
        Ok(QueueDevice { notify, irq, gsi, events: Arc::default(), counts: Arc::default() })
    }

    /// Spawns the device thread over `mem`; it stops the run through `stop` if it fails.
    fn start(&self, mem: SharedMemory, stop: StopHandle) -> Result<Serving, QueueDeviceError> {
        let quit = EventFd::new(EFD_NONBLOCK).map_err(os("quit eventfd"))?;
        let worker = Worker {
            notify: self.notify.try_clone().map_err(os("notify eventfd clone"))?,
            quit: quit.try_clone().map_err(os("quit eventfd clone"))?,
            irq: self.irq.try_clone().map_err(os("irq eventfd clone"))?,
            gsi: self.gsi,
            mem,
            events: Arc::clone(&self.events),
            counts: Arc::clone(&self.counts),
        };
        let thread = std::thread::Builder::new()
            .name("vmrr-queue".into())
            .spawn(move || {
                let r = worker.serve();
                if r.is_err() {
                    stop.stop();
                }
                r
            })
            .map_err(os("thread spawn"))?;
        Ok(Serving { quit, thread: Some(thread) })
    }
}

impl Serving {
    /// Tells the thread to quit and joins it: its error, if it failed.
    fn stop(&mut self) -> Result<(), QueueDeviceError> {
        let Some(thread) = self.thread.take() else { return Ok(()) };
        // An eventfd write fails only when its count would overflow, which one write to
        // a fresh eventfd cannot do: the join below cannot hang on a quit never sent.
        self.quit.write(1).map_err(os("quit eventfd write"))?;
        thread.join().map_err(|_| QueueDeviceError::Panicked)?
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        // Its error was the run's to report; a machine dropped mid-run has no one to tell.
        let _ = self.stop();
    }
}

/// The device thread's side.
struct Worker {
    notify: EventFd,
    quit: EventFd,
    irq: EventFd,
    gsi: u32,
    mem: SharedMemory,
    events: Arc<Mutex<Option<Box<dyn DeviceEvents>>>>,
    counts: Arc<QueueCounts>,
}

const NOTIFY: u64 = 0;
const QUIT: u64 = 1;

impl Worker {
    /// Waits for notifications and serves them until told to quit.
    fn serve(self) -> Result<(), QueueDeviceError> {
        let epoll = Epoll::new().map_err(os("epoll"))?;
        for (fd, data) in [(self.notify.as_raw_fd(), NOTIFY), (self.quit.as_raw_fd(), QUIT)] {
            epoll
                .ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, data))
                .map_err(os("epoll registration"))?;
        }
        let mut ready = [EpollEvent::default(); 2];
        loop {
            let n = match epoll.wait(-1, &mut ready) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(os("epoll wait")(e)),
            };
            let ready = ready.get(..n).unwrap_or_default();
            if ready.iter().any(|e| e.data() == QUIT) {
                return Ok(());
            }
            if ready.iter().any(|e| e.data() == NOTIFY) {
                match self.notify.read() {
                    Ok(_) => self.request()?,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(os("notify eventfd read")(e)),
                }
            }
        }
    }

    /// Serves the descriptor the guest wrote, then raises the completion.
    fn request(&self) -> Result<(), QueueDeviceError> {
        let mut events = self.events.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match self.fill() {
            Some((gpa, data)) => {
                if let Some(ev) = events.as_mut() {
                    ev.guest_write(gpa, &data).map_err(QueueDeviceError::Events)?;
                }
                self.counts.served.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                self.counts.refused.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(ev) = events.as_mut() {
            ev.irq_line(self.gsi).map_err(QueueDeviceError::Events)?;
        }
        self.irq.write(1).map_err(os("irq eventfd write"))
    }

    /// Reads the descriptor and writes the pattern into its buffer: where and what was
    /// written, or `None` for a descriptor out of bounds (nothing written).
    fn fill(&self) -> Option<(u64, Vec<u8>)> {
        let mut desc = [0u8; 16];
        self.mem.read(GuestAddress(DESC_ADDR), &mut desc).ok()?;
        let gpa = u64::from_le_bytes(desc.get(0..8)?.try_into().ok()?);
        let len = u32::from_le_bytes(desc.get(8..12)?.try_into().ok()?);
        let round = u32::from_le_bytes(desc.get(12..16)?.try_into().ok()?);
        if len > MAX_LEN {
            return None;
        }
        let data: Vec<u8> = (0..len).map(|i| pattern(round, i)).collect();
        self.mem.write(GuestAddress(gpa), &data).ok()?;
        Some((gpa, data))
    }
}

impl Machine {
    /// Gives the machine the `virtqueue` guest's queue device: an ioeventfd on `port` and
    /// an irqfd on `gsi`, served by a device thread during each run.
    ///
    /// # Errors
    /// The machine runs vmrr's own irqchip, or KVM refused a registration.
    pub fn attach_queue_device(&mut self, port: u16, gsi: u32) -> Result<(), QueueDeviceError> {
        if self.vm.irqchip() != crate::kvm::irqchip::IrqchipKind::Kernel {
            return Err(QueueDeviceError::NeedsKernelIrqchip);
        }
        self.queue = Some(QueueDevice::register(self.vm.fd(), port, gsi)?);
        Ok(())
    }

    /// Sends the queue device's events (each request's guest write, then its interrupt) to
    /// `events` from the next request on, replacing what they went to, which it returns.
    /// When the machine has no queue device, `events` is dropped and `None` returned.
    pub fn attach_device_events(&mut self, events: Box<dyn DeviceEvents>) -> Option<Box<dyn DeviceEvents>> {
        let q = self.queue.as_ref()?;
        let mut slot = q.events.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        slot.replace(events)
    }

    /// Takes back what the queue device's events go to (a recording ends: its stream is
    /// finished with the trace).
    pub fn detach_device_events(&mut self) -> Option<Box<dyn DeviceEvents>> {
        let q = self.queue.as_ref()?;
        q.events.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }

    /// Whether the machine has a queue device.
    pub fn has_queue_device(&self) -> bool {
        self.queue.is_some()
    }

    /// The queue device's request counts, if the machine has one (they add up over runs).
    pub fn queue_counts(&self) -> Option<Arc<QueueCounts>> {
        self.queue.as_ref().map(|q| Arc::clone(&q.counts))
    }

    /// Starts the queue device's thread for a run, if the machine has one.
    pub(crate) fn start_queue(&mut self, stop: StopHandle) -> Result<(), QueueDeviceError> {
        if let Some(q) = &self.queue {
            self.serving = Some(q.start(self.vm.memory().shared(), stop)?);
        }
        Ok(())
    }

    /// Stops and joins the queue device's thread, if one runs: its error, if it failed.
    pub(crate) fn stop_queue(&mut self) -> Result<(), QueueDeviceError> {
        match self.serving.take() {
            Some(mut s) => s.stop(),
            None => Ok(()),
        }
    }
}

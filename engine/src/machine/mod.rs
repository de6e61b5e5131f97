//! A machine: a VM, its device bus and consoles, and its vCPU's per-exit state (`vcpu`:
//! the `kvm_run` page, the exit it stands at, decoded once, and its recorder).
//!
//! Its methods by role, one file each:
//! - **the machine itself** (here): building and booting it, its VM, memory, consoles,
//!   counters, and the snapshot chain its memory equals ([`origin`]);
//! - **recording** (`run`): [`Machine::run`] and [`Machine::run_with`], the run loop where
//!   the devices answer exits and interrupts are injected at exit boundaries, its limits
//!   and stop requests; `crate::recording::Runner` puts a trace's lifecycle around it;
//! - **replay** (`replay`): [`Machine::run_to_exit`], [`Machine::exit`],
//!   [`Machine::answer`], [`Machine::inject_recorded_interrupt`], ...: the trace answers
//!   instead of the devices;
//! - **inspection** (`inspect`, `fatal`): registers, instructions and guest memory as seen
//!   from outside ([`Machine::regs`], [`Machine::instruction_at`], [`Machine::read_linear`]),
//!   and [`FatalReport`], what a failing guest was doing;
//! - **debugging** ([`debug`]): single-step and hardware stops, a debugger's register and
//!   memory writes, and running live once those left the recorded path.
//!
//! [`Outcome`] says how a run ended; [`watchdog`] ends runs on time or request.

mod aps;
pub mod debug;
pub mod device_stream;
mod ending;
mod fatal;
mod inspect;
pub mod origin;
mod outcome;
pub mod queue_device;
mod replay;
mod run;
mod run_error;
pub mod signals;
mod vcpu;
pub mod watchdog;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

pub use debug::LiveEntry;
pub use fatal::FatalReport;
pub use inspect::AccessError;
pub use outcome::{Limits, Outcome, RunSummary};
pub use replay::LiveExit;
pub use run::ExitHook;
pub use run_error::RunError;

use crate::devices::Bus;
use crate::devices::console::Console;
use crate::guests::boot::{self, BootError, BootMode};
use crate::guests::linux::{self, PreparedKernel};
use crate::guests::{self, GuestImage, LoadError};
use crate::kvm::irqchip::IrqchipKind;
use crate::kvm::memory::GuestMemory;
use crate::kvm::vm::Vm;
use crate::machine::watchdog::StopHandle;
use crate::sys::run_page::RunPage;

/// A VM with devices, ready to run.
pub struct Machine {
    vm: Vm,
    /// The devices: shared with the APs' threads, which answer their own exits.
    bus: Arc<Mutex<Bus>>,
    serial: Console,
    debugcon: Console,
    /// The bootstrap processor's per-exit state: its `kvm_run` page, the exit it stands
    /// at, its recorder.
    cpu: vcpu::Vcpu,
    /// The APs (vCPUs 1 and up), each run on its own thread during a run.
    aps: Vec<aps::ApCpu>,
    /// The APs' threads while a run goes on.
    team: Option<aps::Team>,
    /// A handle on the VM for the APs' threads (`KVM_IRQ_LINE`), made at the first run.
    vm_handle: Option<Arc<kvm_ioctls::VmFd>>,
    limits: Limits,
    origin: Option<origin::Origin>,
    external_stop: Option<Arc<AtomicBool>>,
    stop: Option<StopHandle>,
    /// What the vCPU stops for besides its own exits.
    debug: debug::DebugStops,
    /// Running live ([`Machine::live_entry`]), the guest halted at its last exit.
    live_halted: bool,
    /// What the booted guest is (a kernel's identity), for the trace's annotations.
    guest_annotations: Vec<(String, String)>,
    /// The `virtqueue` guest's device: eventfds registered with KVM.
    queue: Option<queue_device::QueueDevice>,
    /// Its thread, during a run.
    serving: Option<queue_device::Serving>,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine").field("vm", &self.vm).field("exits", &self.cpu.exits()).finish()
    }
}

/// Errors booting a machine.
#[derive(Debug, thiserror::Error)]
pub enum BootMachineError {
    /// The image does not fit or cannot be read.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The vCPU could not be put in its initial state.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// Mapping the vCPU's `kvm_run` region failed.
    #[error("cannot map the vCPU's kvm_run region")]
    Map(#[source] std::io::Error),
    /// Loading a Linux kernel failed.
    #[error(transparent)]
    Linux(#[from] linux::boot::LinuxLoadError),
}

impl Machine {
    /// A machine over `vm` with the standard bus of built-in guests and images.
    ///
    /// # Errors
    /// The `kvm_run` region cannot be mapped.
    pub fn new(vm: Vm, serial: Console, debugcon: Console) -> Result<Self, BootMachineError> {
        let bus = guests::devices::standard_bus(&serial, &debugcon);
        Self::with_bus(vm, bus, serial, debugcon)
    }

    /// A machine over `vm` with `bus`.
    ///
    /// # Errors
    /// The `kvm_run` region cannot be mapped.
    pub fn with_bus(vm: Vm, bus: Bus, serial: Console, debugcon: Console) -> Result<Self, BootMachineError> {
        let run_page =
            RunPage::map(vm.vcpu(), vm.caps().vcpu_mmap_size, true).map_err(BootMachineError::Map)?;
        let rip = crate::kvm::probe::rip_convention().unwrap_or_default();
        let mut cpu = vcpu::Vcpu::new(run_page, rip, vm.caps().system_event_data);
        cpu.set_dirty_log(Arc::clone(vm.dirty()));
        let mut ap_cpus = Vec::new();
        for (index, fd) in (1..).zip(vm.aps()) {
            let page = RunPage::map(&aps::lock(fd), vm.caps().vcpu_mmap_size, true)
                .map_err(BootMachineError::Map)?;
            let mut cpu = vcpu::Vcpu::new(page, rip, vm.caps().system_event_data);
            cpu.set_dirty_log(Arc::clone(vm.dirty()));
            ap_cpus.push(aps::ApCpu {
                index,
                fd: Arc::clone(fd),
                cpu: Arc::new(Mutex::new(cpu)),
                counts: Arc::default(),
            });
        }
        Ok(Machine {
            aps: ap_cpus,
            team: None,
            vm_handle: None,
            vm,
            bus: Arc::new(Mutex::new(bus)),
            serial,
            debugcon,
            cpu,
            limits: Limits::default(),
            origin: None,
            external_stop: None,
            stop: None,
            debug: debug::DebugStops::default(),
            live_halted: false,
            guest_annotations: Vec::new(),
            queue: None,
            serving: None,
        })
    }

    /// Loads `image` and sets the vCPU up to start it.
    ///
    /// # Errors
    /// The image does not fit, or vCPU set-up failed.
    pub fn boot(&mut self, image: &GuestImage) -> Result<(), BootMachineError> {
        guests::load(self.vm.memory(), image)?;
        match image.mode {
            BootMode::Real => boot::setup_real_mode(self.vm.vcpu(), image.entry)?,
            BootMode::Long { ring } => {
                boot::setup_long_mode(self.vm.vcpu(), self.vm.memory(), image.entry, image.stack, ring)?
            }
        }
        Ok(())
    }

    /// Loads a Linux kernel (its initramfs, command line, ACPI tables and boot protocol
    /// structures) and sets the vCPU up to enter it.
    ///
    /// # Errors
    /// Loading failed, or vCPU set-up failed.
    pub fn boot_linux(&mut self, k: &PreparedKernel) -> Result<(), BootMachineError> {
        let start = linux::boot::load(self.vm.memory(), k, self.vm.vcpu_count())?;
        let lapic = self.vm.irqchip() == IrqchipKind::Kernel;
        linux::boot::setup_vcpu(self.vm.vcpu(), self.vm.memory(), start, lapic)?;
        self.guest_annotations = k.annotations();
        Ok(())
    }

    /// What the booted guest is, as annotations (a kernel's identity); empty for vmrr's
    /// own guests, whose annotations say it all.
    pub fn guest_annotations(&self) -> &[(String, String)] {
        &self.guest_annotations
    }

    /// The VM.
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// The VM, for the engine's own state changes (restore, reset, capture).
    pub(crate) fn vm_mut(&mut self) -> &mut Vm {
        &mut self.vm
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemory {
        self.vm.memory()
    }

    /// The vCPU's per-exit state (a restore stages registers in its `kvm_run` page).
    pub(crate) fn cpu_mut(&mut self) -> &mut vcpu::Vcpu {
        &mut self.cpu
    }

    /// The device bus, locked (uncontended but for the APs' threads of a run with
    /// several vCPUs; a thread that panicked holding it leaves it as it was).
    pub(crate) fn bus(&self) -> MutexGuard<'_, Bus> {
        lock_bus(&self.bus)
    }

    /// Replaces the device bus (a restore).
    pub(crate) fn set_bus(&mut self, bus: Bus) {
        *self.bus() = bus;
    }

    /// Serial console output.
    pub fn serial(&self) -> &Console {
        &self.serial
    }

    /// Debug console (port 0x402) output.
    pub fn debugcon(&self) -> &Console {
        &self.debugcon
    }

    /// The snapshot directory this machine's memory was last set to (a restore, a reset or
    /// a capture), if any.
    pub fn origin(&self) -> Option<&Path> {
        self.origin.as_ref().and_then(|o| o.top()).map(|l| l.dir.as_path())
    }

    /// The snapshot chain this machine's memory equals, apart from pages written since.
    pub fn memory_origin(&self) -> Option<&origin::Origin> {
        self.origin.as_ref()
    }

    /// Records what this machine's memory now equals (`None`: unknown).
    pub(crate) fn set_memory_origin(&mut self, origin: Option<origin::Origin>) {
        self.origin = origin;
    }

    /// Exits handled so far, by every vCPU.
    pub fn exits(&self) -> u64 {
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        self.cpu.exits() + self.aps.iter().map(|a| a.counts.exits.load(relaxed)).sum::<u64>()
    }

    /// Interrupts injected (or lines pulsed) so far, by every vCPU.
    pub fn interrupts(&self) -> u64 {
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        self.cpu.interrupts() + self.aps.iter().map(|a| a.counts.interrupts.load(relaxed)).sum::<u64>()
    }

    /// Sets the exit and interrupt counters (restore): the totals go to the bootstrap
    /// processor's, the APs' start again from 0.
    pub(crate) fn set_counters(&mut self, exits: u64, interrupts: u64) {
        self.cpu.set_counters(exits, interrupts);
        for a in &self.aps {
            aps::lock(&a.cpu).set_counters(0, 0);
            a.counts.exits.store(0, std::sync::atomic::Ordering::Relaxed);
            a.counts.interrupts.store(0, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// vCPUs in all.
    pub fn vcpu_count(&self) -> u32 {
        self.vm.vcpu_count()
    }

    /// Makes vCPU `index` the one the machine's single-vCPU methods act on (running to its
    /// next exit, its exit, registers, instructions, memory through its page tables, its
    /// fatal report): how a replay runs the vCPU that failed and a debugger switches
    /// threads. Between runs only.
    ///
    /// # Errors
    /// `index` is not one of the machine's vCPUs.
    pub fn focus(&mut self, index: u32) -> Result<(), crate::kvm::vm::VcpuLockError> {
        let before = self.vm.focused();
        if index == before {
            return Ok(());
        }
        if self.team.is_some() || index >= self.vm.vcpu_count() {
            return Err(crate::kvm::vm::VcpuLockError { vcpu: index });
        }
        self.vm.focus(index)?;
        let slot =
            |i: u32| usize::try_from(i).ok().and_then(|i| i.checked_sub(1)).and_then(|i| self.aps.get(i));
        if let Some(ap) = slot(before) {
            std::mem::swap(&mut self.cpu, &mut aps::lock(&ap.cpu));
        }
        if let Some(ap) = slot(index) {
            std::mem::swap(&mut self.cpu, &mut aps::lock(&ap.cpu));
        }
        for ap in &self.aps {
            let cpu = aps::lock(&ap.cpu);
            ap.counts.exits.store(cpu.exits(), std::sync::atomic::Ordering::Relaxed);
            ap.counts.interrupts.store(cpu.interrupts(), std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    /// The vCPU the machine's single-vCPU methods act on (0 unless [`Self::focus`] chose
    /// another).
    pub fn focused(&self) -> u32 {
        self.vm.focused()
    }
}

/// Locks `bus` (see [`Machine::bus`]).
pub(crate) fn lock_bus(bus: &Mutex<Bus>) -> MutexGuard<'_, Bus> {
    bus.lock().unwrap_or_else(PoisonError::into_inner)
}

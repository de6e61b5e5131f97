//! A machine: a VM, its device bus and consoles, and (when recording) a recorder.
//!
//! - [`run`](Machine::run): the run loop ([`run`] module), where devices answer exits and
//!   interrupts are injected at exit boundaries.
//! - The replay entry ([`Machine::run_to_exit`], [`Machine::exit`], [`Machine::answer`],
//!   [`Machine::inject_recorded_interrupt`]): the trace answers instead of the devices.
//! - [`FatalReport`]: what a failing guest was doing; [`Outcome`]: how a run ended.
//! - Registers, instructions and guest memory as seen from outside ([`Machine::regs`],
//!   [`Machine::instruction_at`], [`Machine::memory`]).

mod alter;
pub mod debug;
mod fatal;
mod inspect;
mod live;
pub mod origin;
mod outcome;
mod replay;
mod run;
pub mod signals;
pub mod watchdog;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

pub use fatal::FatalReport;
pub use inspect::AccessError;
pub use live::LiveEntry;
pub use outcome::{Limits, Outcome, RunSummary};
pub use replay::LiveExit;
pub use run::{ExitHook, RunError};

use crate::devices::Bus;
use crate::devices::console::Console;
use crate::exit::RipConvention;
use crate::guests::boot::{self, BootError, BootMode};
use crate::guests::linux::{self, PreparedKernel};
use crate::guests::{self, GuestImage, LoadError};
use crate::kvm::irqchip::IrqchipKind;
use crate::kvm::memory::GuestMemory;
use crate::kvm::vm::Vm;
use crate::machine::watchdog::StopHandle;
use crate::record::Recorder;
use crate::sys::run_page::RunPage;

/// A VM with devices, ready to run.
pub struct Machine {
    vm: Vm,
    bus: Bus,
    serial: Console,
    debugcon: Console,
    recorder: Option<Recorder>,
    limits: Limits,
    origin: Option<origin::Origin>,
    external_stop: Option<Arc<AtomicBool>>,
    run_page: RunPage,
    rip: RipConvention,
    exits: u64,
    interrupts: u64,
    window_requested: bool,
    stop: Option<StopHandle>,
    /// Where devices' answers go when replay only shows them an access.
    scratch: Vec<u8>,
    /// What the vCPU stops for besides its own exits.
    debug: debug::DebugStops,
    /// Running live ([`Machine::live_entry`]), the guest halted at its last exit.
    live_halted: bool,
    /// What the booted guest is (a kernel's identity), for the trace's annotations.
    guest_annotations: Vec<(String, String)>,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine").field("vm", &self.vm).field("exits", &self.exits).finish()
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
        Ok(Machine {
            vm,
            bus,
            serial,
            debugcon,
            recorder: None,
            limits: Limits::default(),
            origin: None,
            external_stop: None,
            run_page,
            rip: crate::kvm::probe::rip_convention().unwrap_or_default(),
            exits: 0,
            interrupts: 0,
            window_requested: false,
            stop: None,
            scratch: Vec::new(),
            debug: debug::DebugStops::default(),
            live_halted: false,
            guest_annotations: Vec::new(),
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
        let start = linux::boot::load(self.vm.memory(), k, 1)?;
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

    /// The device bus.
    pub(crate) fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Replaces the device bus (a restore).
    pub(crate) fn set_bus(&mut self, bus: Bus) {
        self.bus = bus;
    }

    /// Serial console output.
    pub fn serial(&self) -> &Console {
        &self.serial
    }

    /// Debug console (port 0x402) output.
    pub fn debugcon(&self) -> &Console {
        &self.debugcon
    }

    /// A recorder for this machine's vCPU, writing to `writer` (hand it to
    /// [`Self::start_recording`], after its prelude).
    ///
    /// # Errors
    /// The recorder cannot map the vCPU's `kvm_run` region.
    pub fn recorder_for(
        &self,
        writer: vmrr_format::TraceWriter,
    ) -> Result<Recorder, crate::record::RecorderError> {
        Recorder::new(self.vm.kvm(), self.vm.vcpu(), 0, writer)
    }

    /// Starts recording every exit and injection with `recorder`.
    pub fn start_recording(&mut self, recorder: Recorder) {
        self.recorder = Some(recorder);
    }

    /// The recorder, when recording.
    pub fn recorder(&self) -> Option<&Recorder> {
        self.recorder.as_ref()
    }

    /// The recorder, to record events beside the exits (checkpoints) or swap its writer.
    pub fn recorder_mut(&mut self) -> Option<&mut Recorder> {
        self.recorder.as_mut()
    }

    /// Stops recording and hands the recorder back (to finish its trace).
    pub fn stop_recording(&mut self) -> Option<Recorder> {
        self.recorder.take()
    }

    /// The limits that end a run.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Sets the limits that end the next run.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Ends the next run after `max` exits in all (counting those already made), or
    /// lifts the limit.
    pub fn set_max_exits(&mut self, max: Option<u64>) {
        self.limits.max_exits = max;
    }

    /// When set to true (by a signal handler, another thread), the run stops at the next
    /// exit, kicking the vCPU if it spins.
    pub fn stop_when(&mut self, flag: Arc<AtomicBool>) {
        self.external_stop = Some(flag);
    }

    /// A handle that stops the run from another thread (valid once `run` started).
    pub fn stop_handle(&self) -> Option<StopHandle> {
        self.stop.clone()
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

    /// Exits handled so far.
    pub fn exits(&self) -> u64 {
        self.exits
    }

    /// Interrupts injected so far.
    pub fn interrupts(&self) -> u64 {
        self.interrupts
    }

    /// Sets the exit and interrupt counters (restore).
    pub(crate) fn set_counters(&mut self, exits: u64, interrupts: u64) {
        self.exits = exits;
        self.interrupts = interrupts;
    }
}

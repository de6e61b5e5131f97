//! The run loop: a VM, its device bus, and (when recording) a recorder.
//!
//! Per exit: handle it on the bus (or as an MSR access), record it with the reply, stop
//! if a device, a fatal exit or a limit says so, then fire due timers and inject the
//! highest pending interrupt if the vCPU can take it (else ask for an interrupt window).
//! Interrupts are injected only here, at exit boundaries, and each injection is recorded
//! right after the exit it follows, so replay can place it exactly.

pub mod signals;
pub mod watchdog;

use std::fmt;
use std::time::{Duration, Instant};

use kvm_ioctls::VcpuExit;
use vmrr_format::{RegsSample, end_reason};

use crate::devices::console::Console;
use crate::devices::legacy::serial;
use crate::devices::pseudo::{clock_port, debug_exit, debugcon, entropy, sink, timer};
use crate::devices::{Bus, StopRequest, map};
use crate::disasm;
use crate::error::{LoadError, RunError};
use crate::exit::RunView;
use crate::guests::boot::{self, BootError, BootMode};
use crate::guests::{self, GuestImage};
use crate::kvm::vm::{VMRR_CLOCK_MSR, Vm};
use crate::machine::watchdog::{Fired, StopHandle, Watchdog};
use crate::record::recorder::Recorder;
use crate::sys::run_page::RunPage;

/// Limits that end a run cleanly.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// Stop after this many exits.
    pub max_exits: Option<u64>,
    /// Stop after this much wall-clock time.
    pub max_duration: Option<Duration>,
}

/// Details of a fatal exit: what KVM said and what the guest was doing.
#[derive(Debug, Clone)]
pub struct FatalReport {
    /// `KVM_EXIT_*`.
    pub exit_reason: u32,
    /// `KVM_INTERNAL_ERROR_*` (internal errors).
    pub suberror: u32,
    /// Emulation-failure flags.
    pub flags: u64,
    /// KVM's `insn_size` (its fetch window, not the instruction length).
    pub insn_size: u8,
    /// KVM's instruction bytes (`insn_size` of them).
    pub insn_bytes: Vec<u8>,
    /// Further data words KVM reported.
    pub data: Vec<u64>,
    /// Guest RIP.
    pub rip: u64,
    /// Code bitness.
    pub bitness: u32,
    /// The instruction in Intel syntax, when the bytes decode.
    pub disassembly: Option<String>,
    /// The instruction's true length.
    pub insn_len: Option<usize>,
    /// The memory operand's effective address, where known.
    pub memory_operand: Option<u64>,
    /// General registers.
    pub regs: kvm_bindings::kvm_regs,
}

impl fmt::Display for FatalReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "exit reason {} ({})",
            self.exit_reason,
            vmrr_format::kind::kvm_exit_name(self.exit_reason)
        )?;
        if self.exit_reason == kvm_bindings::KVM_EXIT_INTERNAL_ERROR {
            let what = if self.suberror == 1 { "KVM_INTERNAL_ERROR_EMULATION" } else { "" };
            writeln!(f, "suberror {} {what}, flags {:#x}", self.suberror, self.flags)?;
        }
        match (&self.disassembly, self.insn_len) {
            (Some(d), Some(n)) => writeln!(
                f,
                "instruction at {:#x}: {d}  ({n} bytes: {}; KVM insn_size {} is its fetch window)",
                self.rip,
                hex(&self.insn_bytes[..n.min(self.insn_bytes.len())]),
                self.insn_size
            )?,
            _ if !self.insn_bytes.is_empty() => writeln!(
                f,
                "instruction bytes at {:#x}: {} (not decodable)",
                self.rip,
                hex(&self.insn_bytes)
            )?,
            _ => writeln!(f, "rip {:#x} (no instruction bytes)", self.rip)?,
        }
        if let Some(a) = self.memory_operand {
            writeln!(f, "memory operand: {a:#x}")?;
        }
        let r = &self.regs;
        writeln!(f, "rax {:#018x} rbx {:#018x} rcx {:#018x} rdx {:#018x}", r.rax, r.rbx, r.rcx, r.rdx)?;
        writeln!(f, "rsi {:#018x} rdi {:#018x} rsp {:#018x} rbp {:#018x}", r.rsi, r.rdi, r.rsp, r.rbp)?;
        writeln!(f, "r8  {:#018x} r9  {:#018x} r10 {:#018x} r11 {:#018x}", r.r8, r.r9, r.r10, r.r11)?;
        writeln!(f, "r12 {:#018x} r13 {:#018x} r14 {:#018x} r15 {:#018x}", r.r12, r.r13, r.r14, r.r15)?;
        write!(f, "rip {:#018x} rflags {:#010x}", r.rip, r.rflags)
    }
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// How a run ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The guest wrote its status to the debug-exit port.
    GuestExit(u64),
    /// The guest halted with nothing that could wake it.
    Halted,
    /// Triple fault.
    Shutdown(Box<FatalReport>),
    /// KVM could not emulate an instruction.
    EmulationFailure(Box<FatalReport>),
    /// Another internal error.
    InternalError(Box<FatalReport>),
    /// VM entry failed.
    FailEntry(Box<FatalReport>),
    /// `KVM_EXIT_SYSTEM_EVENT` (type).
    SystemEvent(u32),
    /// An exit vmrr does not handle (recorded raw).
    Unhandled(u32),
    /// `max_exits` reached.
    MaxExits,
    /// `max_duration` passed.
    MaxDuration,
    /// Stopped on request.
    Stopped,
}

impl Outcome {
    /// The trace's end-of-run reason.
    pub fn end_reason(&self) -> u32 {
        match self {
            Outcome::GuestExit(_) => end_reason::GUEST_EXIT,
            Outcome::Halted => end_reason::HLT,
            Outcome::Shutdown(_) => end_reason::SHUTDOWN,
            Outcome::EmulationFailure(_) => end_reason::EMULATION_FAILURE,
            Outcome::InternalError(_) => end_reason::INTERNAL_ERROR,
            Outcome::FailEntry(_) => end_reason::FAIL_ENTRY,
            Outcome::SystemEvent(_) => end_reason::SYSTEM_EVENT,
            Outcome::Unhandled(_) => end_reason::VMM_ERROR,
            Outcome::MaxExits => end_reason::MAX_EXITS,
            Outcome::MaxDuration => end_reason::MAX_SECONDS,
            Outcome::Stopped => end_reason::STOPPED,
        }
    }

    /// The status word for the end-of-run record.
    pub fn status(&self) -> u64 {
        match self {
            Outcome::GuestExit(s) => *s,
            Outcome::SystemEvent(t) | Outcome::Unhandled(t) => u64::from(*t),
            _ => 0,
        }
    }

    /// True for failures a repro is for (emulation failure, internal error, triple fault,
    /// failed entry, unhandled exit).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Outcome::Shutdown(_)
                | Outcome::EmulationFailure(_)
                | Outcome::InternalError(_)
                | Outcome::FailEntry(_)
                | Outcome::Unhandled(_)
        )
    }

    /// The fatal report, where there is one.
    pub fn report(&self) -> Option<&FatalReport> {
        match self {
            Outcome::Shutdown(r)
            | Outcome::EmulationFailure(r)
            | Outcome::InternalError(r)
            | Outcome::FailEntry(r) => Some(r),
            _ => None,
        }
    }

    /// Short name.
    pub fn name(&self) -> &'static str {
        end_reason::name(self.end_reason())
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// How it ended.
    pub outcome: Outcome,
    /// Exits handled.
    pub exits: u64,
    /// Interrupts injected.
    pub interrupts: u64,
    /// Wall-clock time in the run loop.
    pub elapsed: Duration,
}

/// Where the answer to the current exit goes (the reply slots of `kvm_run`).
pub enum Reply<'a> {
    /// `KVM_EXIT_IO` in: the bytes the guest reads.
    In(&'a mut [u8]),
    /// `KVM_EXIT_IO` out: nothing to answer.
    Out,
    /// `KVM_EXIT_MMIO` read: the bytes the guest reads.
    MmioRead(&'a mut [u8]),
    /// `KVM_EXIT_MMIO` write: nothing to answer.
    MmioWrite,
    /// `KVM_EXIT_X86_RDMSR`: the value and whether to raise #GP.
    RdMsr {
        /// Value.
        data: &'a mut u64,
        /// Non-zero: #GP.
        error: &'a mut u8,
    },
    /// `KVM_EXIT_X86_WRMSR`: whether to raise #GP.
    WrMsr {
        /// Non-zero: #GP.
        error: &'a mut u8,
    },
    /// `KVM_EXIT_HYPERCALL`: the return value.
    Hypercall {
        /// Returned to the guest.
        ret: &'a mut u64,
    },
    /// Any other exit: nothing to answer.
    Nothing,
}

/// A hook called after every exit is handled and recorded (checkpoints live here).
pub trait ExitHook {
    /// Called with the machine after exit number `exits` (1-based). Returning an error
    /// ends the run with it.
    ///
    /// # Errors
    /// Whatever the hook reports.
    fn after_exit(&mut self, machine: &mut Machine, exits: u64) -> Result<(), RunError>;
}

/// A VM with devices, ready to run.
pub struct Machine {
    /// The VM.
    pub vm: Vm,
    /// Devices.
    pub bus: Bus,
    /// Serial console output.
    pub serial: Console,
    /// Debug console (0x402) output.
    pub debugcon: Console,
    /// Recorder, when recording.
    pub recorder: Option<Recorder>,
    /// Limits.
    pub limits: Limits,
    /// The snapshot directory this machine was restored from, if any.
    pub origin: Option<std::path::PathBuf>,
    /// When set to true (by a signal handler, another thread), the run stops at the next
    /// exit, kicking the vCPU if it spins.
    pub external_stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    run_page: RunPage,
    exits: u64,
    interrupts: u64,
    window_requested: bool,
    stop: Option<StopHandle>,
}

impl fmt::Debug for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
}

impl Machine {
    /// The standard bus: serial, debug console, debug exit, POST, entropy, clock, timer,
    /// storm sinks.
    pub fn standard_bus(serial_out: &Console, debugcon_out: &Console) -> Bus {
        let mut bus = Bus::new();
        bus.add_pio(map::SERIAL, 8, Box::new(serial::Serial::new(serial_out.clone())));
        bus.add_pio(map::DEBUGCON, 1, Box::new(debugcon::DebugCon::new(debugcon_out.clone())));
        bus.add_pio(map::DEBUG_EXIT, 4, Box::new(debug_exit::DebugExit));
        bus.add_pio(map::POST, 1, Box::new(sink::Sink::echoing("post")));
        bus.add_pio(map::ENTROPY, 4, Box::new(entropy::Entropy::default()));
        bus.add_pio(map::CLOCK, 8, Box::new(clock_port::ClockPort::default()));
        bus.add_pio(map::TIMER, 8, Box::new(timer::Timer::default()));
        bus.add_pio(map::STORM, 4, Box::new(sink::Sink::new("storm")));
        bus.add_mmio(map::MMIO_SINK, 0x1000, Box::new(sink::Sink::new("mmio-sink")));
        bus
    }

    /// A machine over `vm` with the standard bus.
    ///
    /// # Errors
    /// The `kvm_run` region cannot be mapped.
    pub fn new(vm: Vm, serial: Console, debugcon: Console) -> Result<Self, BootMachineError> {
        let bus = Self::standard_bus(&serial, &debugcon);
        Self::with_bus(vm, bus, serial, debugcon)
    }

    /// A machine over `vm` with `bus`.
    ///
    /// # Errors
    /// The `kvm_run` region cannot be mapped.
    pub fn with_bus(vm: Vm, bus: Bus, serial: Console, debugcon: Console) -> Result<Self, BootMachineError> {
        let run_page = RunPage::new(&vm.vcpu, vm.caps.vcpu_mmap_size).map_err(BootMachineError::Map)?;
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
            exits: 0,
            interrupts: 0,
            window_requested: false,
            stop: None,
        })
    }

    /// Loads `image` and sets the vCPU up to start it.
    ///
    /// # Errors
    /// The image does not fit, or vCPU set-up failed.
    pub fn boot(&mut self, image: &GuestImage) -> Result<(), BootMachineError> {
        guests::load(&self.vm.memory, image)?;
        match image.mode {
            BootMode::Real => boot::setup_real_mode(&self.vm.vcpu, image.entry)?,
            BootMode::Long { ring } => {
                boot::setup_long_mode(&self.vm.vcpu, &self.vm.memory, image.entry, image.stack, ring)?
            }
        }
        Ok(())
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
    pub fn set_counters(&mut self, exits: u64, interrupts: u64) {
        self.exits = exits;
        self.interrupts = interrupts;
    }

    /// Lets KVM finish the instruction the vCPU last exited for (an IN's RAX, an MMIO
    /// read's destination, RIP past an OUT) without entering the guest: `KVM_RUN` with
    /// `immediate_exit` set returns `EINTR` right after completing it. Needed before
    /// reading vCPU state at an exit. Does nothing before the first run.
    ///
    /// # Errors
    /// `KVM_RUN` failing with something other than `EINTR`.
    pub fn complete_pending_io(&mut self) -> Result<(), kvm_ioctls::Error> {
        if self.exits == 0 {
            return Ok(());
        }
        self.vm.vcpu.set_kvm_immediate_exit(1);
        let r = self.vm.vcpu.run().map(|_| ());
        self.vm.vcpu.set_kvm_immediate_exit(0);
        match r {
            Err(e) if e.errno() == libc::EINTR => Ok(()),
            Err(e) => Err(e),
            Ok(()) => Ok(()),
        }
    }

    /// A handle that stops the run from another thread (valid once `run` started).
    pub fn stop_handle(&self) -> Option<StopHandle> {
        self.stop.clone()
    }

    /// The current exit as `kvm_run` shows it.
    pub fn view(&self) -> RunView<'_> {
        RunView::new(self.run_page.bytes())
    }

    /// What the guest was doing at the current (fatal) exit: KVM's data, the instruction
    /// decoded, registers.
    pub fn fatal_report(&self) -> FatalReport {
        let view = self.view();
        let reason = view.exit_reason();
        let regs = self.vm.vcpu.get_regs().unwrap_or_default();
        let sregs = self.vm.vcpu.get_sregs().unwrap_or_default();
        let bits = disasm::bitness(&sregs);
        let mut rep = FatalReport {
            exit_reason: reason,
            suberror: 0,
            flags: 0,
            insn_size: 0,
            insn_bytes: Vec::new(),
            data: Vec::new(),
            rip: regs.rip,
            bitness: bits,
            disassembly: None,
            insn_len: None,
            memory_operand: None,
            regs,
        };
        match view.body(self.vm.caps.system_event_data) {
            vmrr_format::Body::InternalError(ie) => {
                rep.suberror = ie.suberror;
                rep.data = ie.data.iter().collect();
                if let Some(ef) = ie.emulation_failure() {
                    rep.flags = ef.flags;
                    rep.insn_size = ef.insn_size;
                    rep.insn_bytes = ef.bytes().to_vec();
                    rep.data = ie.data.iter().skip(if ef.has_insn_bytes { 3 } else { 1 }).collect();
                }
            }
            vmrr_format::Body::FailEntry(fe) => {
                rep.data = vec![fe.hardware_entry_failure_reason, u64::from(fe.cpu)]
            }
            _ => {}
        }
        if rep.insn_bytes.is_empty() {
            // Fetch the bytes at RIP ourselves (triple faults, entry failures).
            let linear = if bits == 16 { sregs.cs.base + (regs.rip & 0xffff) } else { regs.rip };
            let phys =
                self.vm.vcpu.translate_gva(linear).ok().filter(|t| t.valid != 0).map(|t| t.physical_address);
            let mut buf = [0u8; 15];
            if let Some(p) = phys {
                if self.vm.memory.read(p, &mut buf).is_some() {
                    rep.insn_bytes = buf.to_vec();
                }
            }
        }
        if let Some(d) = disasm::decode(&rep.insn_bytes, bits, rep.rip) {
            rep.insn_len = Some(d.len);
            rep.disassembly = Some(d.text);
            rep.memory_operand = disasm::memory_operand(&rep.insn_bytes, bits, rep.rip, &regs);
        }
        rep
    }

    /// Runs until the guest ends, fails, or a limit is reached.
    ///
    /// # Errors
    /// KVM ioctl failures and trace write failures (a full disk); guest failures are an
    /// [`Outcome`], not an error.
    pub fn run(&mut self) -> Result<RunSummary, RunError> {
        self.run_with(None)
    }

    /// Runs with a hook called after every exit.
    ///
    /// # Errors
    /// As for [`Self::run`], and the hook's errors.
    pub fn run_with(&mut self, mut hook: Option<&mut dyn ExitHook>) -> Result<RunSummary, RunError> {
        let start = Instant::now();
        let watchdog = Watchdog::start_with(self.limits.max_duration, self.external_stop.clone())
            .map_err(|source| RunError::Os { what: "starting the watchdog", source })?;
        self.stop = Some(watchdog.stop_handle());
        let flags = std::sync::Arc::clone(&watchdog.flags);
        let outcome = loop {
            if let Some(fired) = flags.fired() {
                break match fired {
                    Fired::Deadline => Outcome::MaxDuration,
                    Fired::Stopped => Outcome::Stopped,
                };
            }
            if self.limits.max_exits.is_some_and(|m| self.exits >= m) {
                break Outcome::MaxExits;
            }
            let mut halted = false;
            let mut end: Option<Outcome> = None;
            match self.vm.vcpu.run() {
                Ok(exit) => match exit {
                    VcpuExit::IoIn(port, data) => {
                        self.bus.pio_read(port, data);
                    }
                    VcpuExit::IoOut(port, data) => {
                        self.bus.pio_write(port, data);
                    }
                    VcpuExit::MmioRead(addr, data) => {
                        self.bus.mmio_read(addr, data);
                    }
                    VcpuExit::MmioWrite(addr, data) => {
                        self.bus.mmio_write(addr, data);
                    }
                    VcpuExit::Hlt => halted = true,
                    VcpuExit::IrqWindowOpen | VcpuExit::Intr => {}
                    VcpuExit::X86Rdmsr(msr) => {
                        if msr.index == VMRR_CLOCK_MSR {
                            *msr.data = self.bus.clock.realtime_ns();
                            *msr.error = 0;
                        } else {
                            // What KVM itself does for an MSR it does not know: #GP.
                            *msr.error = 1;
                        }
                    }
                    VcpuExit::X86Wrmsr(msr) => {
                        *msr.error = u8::from(msr.index != VMRR_CLOCK_MSR);
                    }
                    VcpuExit::Shutdown => end = Some(Outcome::Shutdown(Box::new(FatalReport::placeholder()))),
                    VcpuExit::InternalError => {
                        end = Some(Outcome::InternalError(Box::new(FatalReport::placeholder())))
                    }
                    VcpuExit::FailEntry(..) => {
                        end = Some(Outcome::FailEntry(Box::new(FatalReport::placeholder())))
                    }
                    VcpuExit::SystemEvent(t, _) => end = Some(Outcome::SystemEvent(t)),
                    _ => end = Some(Outcome::Unhandled(0)),
                },
                Err(e) if e.errno() == libc::EINTR => {
                    // Kicked by the watchdog: not an exit the guest made; nothing recorded.
                    self.vm.vcpu.set_kvm_immediate_exit(0);
                    continue;
                }
                Err(e) => return Err(RunError::Kvm { what: "KVM_RUN", source: e }),
            }
            self.exits += 1;
            if let Some(rec) = self.recorder.as_mut() {
                rec.record_exit()?;
            }
            // Fill in fatal reports now that the exit is recorded.
            end = end.map(|o| match o {
                Outcome::Shutdown(_) => Outcome::Shutdown(Box::new(self.fatal_report())),
                Outcome::InternalError(_) => {
                    let r = self.fatal_report();
                    if r.suberror == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION {
                        Outcome::EmulationFailure(Box::new(r))
                    } else {
                        Outcome::InternalError(Box::new(r))
                    }
                }
                Outcome::FailEntry(_) => Outcome::FailEntry(Box::new(self.fatal_report())),
                Outcome::Unhandled(_) => Outcome::Unhandled(self.view().exit_reason()),
                o => o,
            });
            if let Some(o) = end {
                break o;
            }
            if let Some(StopRequest::GuestExit(status)) = self.bus.stop {
                break Outcome::GuestExit(status);
            }
            if let Some(h) = hook.as_deref_mut() {
                h.after_exit(self, self.exits)?;
            }
            if halted {
                if let Some(o) = self.wait_in_hlt(&flags)? {
                    break o;
                }
            } else if let Some(d) = self.bus.next_deadline() {
                let now = self.bus.clock.now_ns();
                if now >= d {
                    self.bus.poll(now);
                }
            }
            self.inject()?;
        };
        drop(watchdog);
        self.stop = None;
        self.serial.flush();
        self.debugcon.flush();
        if let Some(e) = self.serial.take_error().or_else(|| self.debugcon.take_error()) {
            return Err(RunError::Output(e));
        }
        Ok(RunSummary { outcome, exits: self.exits, interrupts: self.interrupts, elapsed: start.elapsed() })
    }

    /// The guest executed HLT. With interrupts enabled and a timer armed, sleep until it
    /// fires (the wake-up interrupt is injected by the caller); with nothing that could
    /// wake it, the run is over.
    fn wait_in_hlt(&mut self, flags: &crate::machine::watchdog::Flags) -> Result<Option<Outcome>, RunError> {
        if !self.view().if_flag() {
            return Ok(Some(Outcome::Halted));
        }
        loop {
            if !self.bus.irq.is_empty() {
                return Ok(None);
            }
            let Some(deadline) = self.bus.next_deadline() else {
                return Ok(Some(Outcome::Halted));
            };
            let now = self.bus.clock.now_ns();
            if now >= deadline {
                self.bus.poll(now);
                continue;
            }
            if let Some(rec) = self.recorder.as_mut() {
                // The guest is idle: let its last records reach the disk.
                rec.writer_mut().poll_flush()?;
            }
            if let Some(fired) = flags.fired() {
                return Ok(Some(match fired {
                    Fired::Deadline => Outcome::MaxDuration,
                    Fired::Stopped => Outcome::Stopped,
                }));
            }
            std::thread::sleep(Duration::from_nanos((deadline - now).min(10_000_000)));
        }
    }

    /// Injects the highest pending interrupt if the vCPU can take it now; otherwise asks
    /// KVM for an interrupt-window exit. Both the injection and every change of the
    /// window request are recorded.
    fn inject(&mut self) -> Result<(), RunError> {
        let window = match self.bus.irq.pending() {
            None => false,
            Some(vector) => {
                let view = self.view();
                if view.ready_for_interrupt_injection() && view.if_flag() {
                    self.bus.irq.acknowledge();
                    self.inject_interrupt(vector)?;
                    false
                } else {
                    true
                }
            }
        };
        self.set_interrupt_window(window)
    }

    /// Queues external interrupt `vector` for the next entry (`KVM_INTERRUPT`) and records
    /// it. The caller has checked that the vCPU can take it.
    ///
    /// # Errors
    /// The ioctl or the trace failed.
    pub fn inject_interrupt(&mut self, vector: u8) -> Result<(), RunError> {
        crate::sys::vcpu_ioctl::interrupt(&self.vm.vcpu, vector)
            .map_err(|source| RunError::Os { what: "KVM_INTERRUPT", source })?;
        self.interrupts += 1;
        if let Some(rec) = self.recorder.as_mut() {
            rec.record_interrupt(vector, vmrr_format::INTERRUPT_EXTERNAL)?;
        }
        Ok(())
    }

    /// Sets or withdraws `request_interrupt_window` for the next entry, recording changes.
    ///
    /// # Errors
    /// The trace failed.
    pub fn set_interrupt_window(&mut self, request: bool) -> Result<(), RunError> {
        if request == self.window_requested {
            return Ok(());
        }
        self.window_requested = request;
        self.vm.vcpu.get_kvm_run().request_interrupt_window = u8::from(request);
        if let Some(rec) = self.recorder.as_mut() {
            rec.record_window(request)?;
        }
        Ok(())
    }

    /// Runs the vCPU to its next exit and lets `answer` see it and fill the reply. Returns
    /// `false` when `KVM_RUN` was interrupted by a signal (no exit happened). No device,
    /// recorder or interrupt logic runs: this is the primitive replay drives.
    ///
    /// # Errors
    /// `KVM_RUN` failed.
    pub fn step<F>(&mut self, answer: F) -> Result<bool, RunError>
    where
        F: FnOnce(RunView<'_>, Reply<'_>),
    {
        let bytes = self.run_page.bytes();
        let reply = match self.vm.vcpu.run() {
            Ok(exit) => match exit {
                VcpuExit::IoIn(_, data) => Reply::In(data),
                VcpuExit::IoOut(..) => Reply::Out,
                VcpuExit::MmioRead(_, data) => Reply::MmioRead(data),
                VcpuExit::MmioWrite(..) => Reply::MmioWrite,
                VcpuExit::X86Rdmsr(m) => Reply::RdMsr { data: m.data, error: m.error },
                VcpuExit::X86Wrmsr(m) => Reply::WrMsr { error: m.error },
                VcpuExit::Hypercall(h) => Reply::Hypercall { ret: h.ret },
                _ => Reply::Nothing,
            },
            Err(e) if e.errno() == libc::EINTR => {
                self.vm.vcpu.set_kvm_immediate_exit(0);
                return Ok(false);
            }
            Err(source) => return Err(RunError::Kvm { what: "KVM_RUN", source }),
        };
        answer(RunView::new(bytes), reply);
        self.exits += 1;
        Ok(true)
    }

    /// The length of the instruction at guest virtual address `rip` (translated through
    /// the vCPU's page tables), decoded in the vCPU's current mode.
    pub fn instruction_len_at(&self, rip: u64) -> Option<usize> {
        let sregs = self.vm.vcpu.get_sregs().ok()?;
        let bits = disasm::bitness(&sregs);
        let linear = if bits == 16 { sregs.cs.base + (rip & 0xffff) } else { rip };
        let t = self.vm.vcpu.translate_gva(linear).ok().filter(|t| t.valid != 0)?;
        let mut buf = [0u8; 15];
        self.vm.memory.read(t.physical_address, &mut buf)?;
        disasm::decode(&buf, bits, rip).map(|d| d.len)
    }

    /// The register sample of the current exit.
    pub fn regs_sample(&self) -> Option<RegsSample> {
        self.view().regs_sample(crate::kvm::probe::rip_convention().unwrap_or_default())
    }
}

impl FatalReport {
    fn placeholder() -> Self {
        FatalReport {
            exit_reason: 0,
            suberror: 0,
            flags: 0,
            insn_size: 0,
            insn_bytes: Vec::new(),
            data: Vec::new(),
            rip: 0,
            bitness: 64,
            disassembly: None,
            insn_len: None,
            memory_operand: None,
            regs: Default::default(),
        }
    }
}

//! The run loop: per exit, handle it on the bus (or as an MSR access), record it with the
//! reply, stop if a device, a fatal exit or a limit says so, then fire due timers and
//! inject the highest pending interrupt if the vCPU can take it (else ask for an interrupt
//! window). Interrupts are injected only here, at exit boundaries, and each injection is
//! recorded right after the exit it follows, so replay can place it exactly.

use std::time::{Duration, Instant};

use kvm_ioctls::VcpuExit;

use crate::kvm::system::KvmError;
use crate::kvm::vm::VMRR_CLOCK_MSR;
use crate::machine::Machine;
use crate::machine::outcome::{Outcome, RunSummary};
use crate::machine::watchdog::{Fired, Flags, Watchdog};

/// Running the guest failed (as opposed to the guest failing, which is an outcome).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A KVM ioctl failed.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// An OS call failed.
    #[error("{what} failed")]
    Os {
        /// The call that failed.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The trace could not be written (a full disk shows up here).
    #[error("cannot record")]
    Trace(#[source] vmrr_format::WriteError),
    /// A hook run after an exit failed (a checkpoint could not be written, say).
    #[error("the {hook} after exit {exit} failed")]
    Hook {
        /// What the hook does.
        hook: &'static str,
        /// The exit it ran after.
        exit: u64,
        /// What the hook reported.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A device's output (the serial console file) could not be written.
    #[error("cannot write device output")]
    Output(#[source] std::io::Error),
}

impl From<vmrr_format::WriteError> for RunError {
    fn from(e: vmrr_format::WriteError) -> Self {
        RunError::Trace(e)
    }
}

/// Work done after every exit is handled and recorded (checkpoints live here).
pub trait ExitHook {
    /// Called with the machine after exit number `exits` (1-based). Returning an error
    /// ends the run with it.
    ///
    /// # Errors
    /// Whatever the hook reports, as [`RunError::Hook`].
    fn after_exit(&mut self, machine: &mut Machine, exits: u64) -> Result<(), RunError>;
}

/// What one entry ended with, once handled.
pub(crate) enum Handled {
    /// An exit the devices handled: whether the guest halted, and whether it ends the run.
    Exit {
        /// The guest executed `hlt`.
        halted: bool,
        /// The exit ends the run.
        ending: Option<Ending>,
    },
    /// A debug stop (`KVM_SET_GUEST_DEBUG`): nothing to handle.
    Debug,
}

/// A run-ending exit, before it is recorded and reported.
pub(crate) enum Ending {
    Shutdown,
    InternalError,
    FailEntry,
    SystemEvent(u32),
    Unhandled,
}

impl Machine {
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
                break fired_outcome(fired);
            }
            if self.limits.max_exits.is_some_and(|m| self.exits >= m) {
                break Outcome::MaxExits;
            }
            let (halted, ending) = match self.handle_next_exit()? {
                None => continue,
                Some(Handled::Exit { halted, ending }) => (halted, ending),
                // Debug stops are not asked for in a run: an unexpected one ends it.
                Some(Handled::Debug) => (false, Some(Ending::Unhandled)),
            };
            self.exits += 1;
            if let Some(rec) = self.recorder.as_mut() {
                rec.record_exit()?;
            }
            if let Some(e) = ending {
                break self.ending_outcome(e);
            }
            if let Some(stop) = self.bus.stop {
                break Outcome::from(stop);
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
            self.deliver_lines()?;
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

    /// Enters the guest and handles the exit it makes on the bus, or `None` when
    /// `KVM_RUN` was interrupted by the watchdog (no exit happened, nothing to record).
    pub(crate) fn handle_next_exit(&mut self) -> Result<Option<Handled>, RunError> {
        if let Some(rec) = self.recorder.as_mut() {
            rec.entering();
        }
        let vcpu = self.vm.vcpu_mut();
        let exit = match vcpu.run() {
            Ok(exit) => {
                if let Some(rec) = self.recorder.as_mut() {
                    rec.exited();
                }
                exit
            }
            Err(e) if e.errno() == libc::EINTR => {
                vcpu.set_kvm_immediate_exit(0);
                return Ok(None);
            }
            Err(source) => return Err(KvmError { what: "KVM_RUN", source }.into()),
        };
        let bus = &mut self.bus;
        let (mut halted, mut ending) = (false, None);
        match exit {
            VcpuExit::IoIn(port, data) => {
                bus.pio_read(port, data);
            }
            VcpuExit::IoOut(port, data) => {
                bus.pio_write(port, data);
            }
            VcpuExit::MmioRead(addr, data) => {
                bus.mmio_read(addr, data);
            }
            VcpuExit::MmioWrite(addr, data) => {
                bus.mmio_write(addr, data);
            }
            VcpuExit::Hlt => halted = true,
            VcpuExit::IrqWindowOpen | VcpuExit::Intr => {}
            VcpuExit::X86Rdmsr(msr) => {
                if msr.index == VMRR_CLOCK_MSR {
                    *msr.data = bus.clock.realtime_ns();
                    *msr.error = 0;
                } else {
                    // What KVM itself does for an MSR it does not know: #GP.
                    *msr.error = 1;
                }
            }
            VcpuExit::X86Wrmsr(msr) => *msr.error = u8::from(msr.index != VMRR_CLOCK_MSR),
            VcpuExit::Shutdown => ending = Some(Ending::Shutdown),
            VcpuExit::InternalError => ending = Some(Ending::InternalError),
            VcpuExit::FailEntry(..) => ending = Some(Ending::FailEntry),
            VcpuExit::SystemEvent(t, _) => ending = Some(Ending::SystemEvent(t)),
            VcpuExit::Debug(_) => return Ok(Some(Handled::Debug)),
            _ => ending = Some(Ending::Unhandled),
        }
        Ok(Some(Handled::Exit { halted, ending }))
    }

    /// The outcome of a run-ending exit, its fatal report read now that it is recorded.
    pub(crate) fn ending_outcome(&self, e: Ending) -> Outcome {
        match e {
            Ending::Shutdown => Outcome::Shutdown(Box::new(self.fatal_report())),
            Ending::InternalError => {
                let r = self.fatal_report();
                if r.suberror == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION {
                    Outcome::EmulationFailure(Box::new(r))
                } else {
                    Outcome::InternalError(Box::new(r))
                }
            }
            Ending::FailEntry => Outcome::FailEntry(Box::new(self.fatal_report())),
            Ending::SystemEvent(t) => Outcome::SystemEvent(t),
            Ending::Unhandled => Outcome::Unhandled(self.view().exit_reason()),
        }
    }

    /// The guest executed HLT. With interrupts enabled and a timer armed, sleep until it
    /// fires (the wake-up interrupt is injected by the caller); with nothing that could
    /// wake it, the run is over.
    pub(crate) fn wait_in_hlt(&mut self, flags: &Flags) -> Result<Option<Outcome>, RunError> {
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
                return Ok(Some(fired_outcome(fired)));
            }
            std::thread::sleep(Duration::from_nanos((deadline - now).min(10_000_000)));
        }
    }

    /// Hands the ISA lines devices raised to KVM's in-kernel irqchip, one pulse each (with
    /// vmrr's own 8259 pair there are none: [`Self::inject`] delivers those).
    ///
    /// # Errors
    /// `KVM_IRQ_LINE` failed.
    pub(crate) fn deliver_lines(&mut self) -> Result<(), RunError> {
        if !self.bus.irq.has_lines() {
            return Ok(());
        }
        for line in self.bus.irq.take_lines() {
            self.vm.pulse_irq_line(u32::from(line))?;
            self.interrupts += 1;
        }
        Ok(())
    }

    /// Injects the highest pending interrupt if the vCPU can take it now; otherwise asks
    /// KVM for an interrupt-window exit. Both the injection and every change of the
    /// window request are recorded.
    pub(crate) fn inject(&mut self) -> Result<(), RunError> {
        let window = match self.bus.irq.pending() {
            None => false,
            Some(vector) => {
                if self.can_take_interrupt() {
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
}

fn fired_outcome(fired: Fired) -> Outcome {
    match fired {
        Fired::Deadline => Outcome::MaxDuration,
        Fired::Stopped => Outcome::Stopped,
    }
}

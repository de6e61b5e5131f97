//! The recording role: the run loop, its limits and stop requests, and the recorder it
//! feeds. Per exit: hand it to the devices (the one dispatch, `Bus::handle_exit`), record it
//! with their answer, stop if a device, a fatal exit or a limit says so, then fire due
//! timers and inject the highest pending interrupt if the vCPU can take it (else ask for an
//! interrupt window). Interrupts are injected only here, at exit boundaries, and each
//! injection is recorded right after the exit it follows, so replay can place it exactly.
//! (`crate::recording::Runner` adds the trace's lifecycle and checkpoints around it.)

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use vmrr_format::kind;

use crate::machine::device_stream::StreamEvents;
use crate::machine::ending::{Ending, ending_of};
use crate::machine::outcome::{Limits, Outcome, RunSummary};
pub use crate::machine::run_error::RunError;
use crate::machine::watchdog::{Fired, Flags, StopHandle, Watchdog};
use crate::machine::{Machine, aps};
use crate::record::Recorder;

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

impl Machine {
    /// A recorder for this machine's vCPU, writing to `writer` (hand it to
    /// [`Self::start_recording`], after its prelude).
    ///
    /// # Errors
    /// The recorder cannot map the vCPU's `kvm_run` region.
    pub(crate) fn recorder_for(
        &self,
        writer: vmrr_format::TraceWriter,
    ) -> Result<Recorder, crate::record::RecorderError> {
        Recorder::new(self.vm.kvm(), self.vm.vcpu(), 0, writer)
    }

    /// Starts recording every exit and injection with `recorder`.
    ///
    /// With APs or a queue device, the trace becomes one every vCPU's thread and the device
    /// thread append to, each through its own stream (`vmrr_format::SharedTrace`): the
    /// bootstrap processor's recorder keeps the trace, each AP gets a recorder of its own,
    /// the device thread a [`StreamEvents`] as device thread 0.
    ///
    /// # Errors
    /// The trace's writer failed, or an AP's recorder could not attach.
    pub(crate) fn start_recording(&mut self, recorder: Recorder) -> Result<(), crate::record::RecorderError> {
        let device = self.has_queue_device();
        if self.aps.is_empty() && !device {
            self.cpu.set_recorder(Some(recorder));
            return Ok(());
        }
        if !self.aps.is_empty() {
            self.focus(0).map_err(|e| crate::record::RecorderError::Probe(e.to_string()))?;
        }
        let (recorder, trace) = recorder.into_shared()?;
        for ap in &self.aps {
            let fd = aps::lock(&ap.fd);
            let r = Recorder::on_stream(self.vm.kvm(), &fd, ap.index, trace.stream())?;
            aps::lock(&ap.cpu).set_recorder(Some(r));
        }
        if device {
            // The queue device is device thread 0.
            self.attach_device_events(Box::new(StreamEvents::new(trace.stream(), 0)));
        }
        self.cpu.set_recorder(Some(recorder));
        Ok(())
    }

    /// The recorder, to record events beside the exits (checkpoints) or swap its writer.
    pub(crate) fn recorder_mut(&mut self) -> Option<&mut Recorder> {
        self.cpu.recorder_mut()
    }

    /// Stops recording and hands the recorder back (to finish its trace).
    pub(crate) fn stop_recording(&mut self) -> Option<Recorder> {
        // The APs' streams are collected when the bootstrap processor's recorder finishes
        // the trace.
        for ap in &self.aps {
            aps::lock(&ap.cpu).set_recorder(None);
        }
        // So is the device thread's (its thread was joined when the run ended).
        drop(self.detach_device_events());
        self.cpu.set_recorder(None)
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
    pub fn run_with(&mut self, hook: Option<&mut dyn ExitHook>) -> Result<RunSummary, RunError> {
        let start = Instant::now();
        let watchdog = Watchdog::start_with(self.limits.max_duration, self.external_stop.clone())
            .map_err(|source| RunError::Os { what: "starting the watchdog", source })?;
        self.stop = Some(watchdog.stop_handle());
        let flags = Arc::clone(&watchdog.flags);
        let started = match self.start_queue(watchdog.stop_handle()) {
            Ok(()) => self.start_team(watchdog.stop_handle()),
            Err(e) => Err(RunError::Device(e)),
        };
        let looped = match started {
            Ok(()) => self.run_loop(&flags, hook),
            Err(e) => Err(e),
        };
        let outcome = self.end_team(looped);
        // Joined whatever ended the run: the thread never outlives it.
        let device = self.stop_queue();
        drop(watchdog);
        self.stop = None;
        let outcome = outcome?;
        // A device thread that failed stopped the run: its error is the run's.
        device?;
        self.serial.flush();
        self.debugcon.flush();
        if let Some(e) = self.serial.take_error().or_else(|| self.debugcon.take_error()) {
            return Err(RunError::Output(e));
        }
        let (exits, interrupts) = (self.exits(), self.interrupts());
        Ok(RunSummary { outcome, exits, interrupts, elapsed: start.elapsed() })
    }

    /// The bootstrap processor's loop (see the module docs); with APs, it also ends when
    /// one of them ended the run ([`Self::end_team`] says how).
    fn run_loop(&mut self, flags: &Flags, mut hook: Option<&mut dyn ExitHook>) -> Result<Outcome, RunError> {
        Ok(loop {
            if self.team.as_ref().is_some_and(aps::Team::ended) {
                // Replaced by the AP's own end in `end_team`.
                break Outcome::Stopped;
            }
            if let Some(fired) = flags.fired() {
                break fired_outcome(fired);
            }
            let total = self.cpu.exits() + self.team.as_ref().map_or(0, aps::Team::exits);
            if self.limits.max_exits.is_some_and(|m| total >= m) {
                break Outcome::MaxExits;
            }
            let (halted, ending) = match self.handle_next_exit()? {
                None => continue,
                Some(Handled::Exit { halted, ending }) => (halted, ending),
                // Debug stops are not asked for in a run: an unexpected one ends it.
                Some(Handled::Debug) => (false, Some(Ending::Unhandled)),
            };
            self.cpu.count_exit();
            self.cpu.record()?;
            if let Some(e) = ending {
                break self.ending_outcome(e);
            }
            if let Some(stop) = self.bus().stop_request() {
                break Outcome::from(stop);
            }
            if let Some(h) = hook.as_deref_mut() {
                let exits = self.cpu.exits() + self.team.as_ref().map_or(0, aps::Team::exits);
                h.after_exit(self, exits)?;
                // A checkpoint paused the APs to read them.
                if let Some(t) = &self.team {
                    t.resume();
                }
            }
            if halted {
                if let Some(o) = self.wait_in_hlt(flags)? {
                    break o;
                }
            } else {
                self.bus().tick_due();
            }
            self.deliver_lines()?;
            self.inject()?;
        })
    }

    /// Starts the APs' threads, if the machine has APs.
    fn start_team(&mut self, stop: StopHandle) -> Result<(), RunError> {
        if self.aps.is_empty() {
            return Ok(());
        }
        // The threads run the vCPUs their slots are labelled with.
        self.focus(0)
            .map_err(|e| RunError::Os { what: "focusing vCPU 0", source: std::io::Error::other(e) })?;
        let vm = match &self.vm_handle {
            Some(h) => Arc::clone(h),
            None => {
                let h = crate::sys::vm_handle::duplicate(self.vm.kvm(), self.vm.fd())
                    .map_err(|source| RunError::Os { what: "duplicating the VM handle", source })?;
                let h = Arc::new(h);
                self.vm_handle = Some(Arc::clone(&h));
                h
            }
        };
        let devices = aps::Devices { bus: Arc::clone(&self.bus), vm };
        self.team = Some(aps::Team::start(&self.aps, &devices, stop)?);
        Ok(())
    }

    /// Stops the APs' threads after the loop ended as `looped` says: all parked at an exit
    /// boundary, then joined. When an AP ended the run, its end is the run's: its failure
    /// (read from its vCPU now, before anything else touches it), its device's stop
    /// request, or the error vmrr met on its thread.
    fn end_team(&mut self, looped: Result<Outcome, RunError>) -> Result<Outcome, RunError> {
        let Some(mut team) = self.team.take() else { return looped };
        team.pause();
        let end = team.take_end();
        team.stop();
        let by_ap = matches!(looped, Ok(Outcome::Stopped)) && end.is_some();
        match (looped, end) {
            (Err(e), _) | (Ok(_), Some(aps::ApEnd::Error(e))) => Err(e),
            (Ok(_), Some(aps::ApEnd::Exit { vcpu, ending })) if by_ap => Ok(self.ap_outcome(vcpu, ending)),
            (Ok(_), Some(aps::ApEnd::Stop(s))) if by_ap => Ok(Outcome::from(s)),
            (Ok(o), _) => Ok(o),
        }
    }

    /// The outcome of AP `vcpu`'s run-ending exit.
    fn ap_outcome(&self, vcpu: u32, e: Ending) -> Outcome {
        let Some(ap) = self.aps.iter().find(|a| a.index == vcpu) else {
            return Outcome::Stopped;
        };
        let fd = aps::lock(&ap.fd);
        let cpu = aps::lock(&ap.cpu);
        let reason = cpu.exit().reason();
        outcome_of(e, || crate::machine::fatal::report(vcpu, &fd, &cpu, self.vm.memory()), reason)
    }

    /// Enters the guest and hands the exit it makes to the devices, whose answer goes into
    /// `kvm_run` and the decoded exit; `None` when `KVM_RUN` was interrupted by the
    /// watchdog (no exit happened, nothing to record).
    pub(crate) fn handle_next_exit(&mut self) -> Result<Option<Handled>, RunError> {
        if !self.cpu.enter(self.vm.vcpu_mut())? {
            return Ok(None);
        }
        let Some(ending) = ending_of(&self.cpu) else {
            return Ok(Some(Handled::Debug));
        };
        let halted = self.cpu.exit().kind() == kind::HLT;
        self.cpu.serve(&mut crate::machine::lock_bus(&self.bus))?;
        Ok(Some(Handled::Exit { halted, ending }))
    }

    /// The outcome of a run-ending exit, its fatal report read now that it is recorded.
    pub(crate) fn ending_outcome(&self, e: Ending) -> Outcome {
        outcome_of(e, || self.fatal_report(), self.cpu.exit().reason())
    }

    /// The guest executed HLT. With interrupts enabled and a timer armed, sleep until it
    /// fires (the wake-up interrupt is injected by the caller); with nothing that could
    /// wake it, the run is over.
    pub(crate) fn wait_in_hlt(&mut self, flags: &Flags) -> Result<Option<Outcome>, RunError> {
        if !self.cpu.view().if_flag() {
            return Ok(Some(Outcome::Halted));
        }
        loop {
            if !self.bus().interrupts().is_empty() {
                return Ok(None);
            }
            let Some(deadline) = self.bus().next_deadline() else {
                return Ok(Some(Outcome::Halted));
            };
            let now = self.bus().clock().now_ns();
            if now >= deadline {
                self.bus().poll(now);
                continue;
            }
            if let Some(rec) = self.cpu.recorder_mut() {
                // The guest is idle: let its last records reach the disk.
                rec.poll_flush()?;
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
        if !self.bus().interrupts().has_lines() {
            return Ok(());
        }
        let lines = self.bus().interrupts_mut().take_lines();
        for line in lines {
            self.vm.pulse_irq_line(u32::from(line))?;
            self.cpu.pulsed(u32::from(line))?;
        }
        Ok(())
    }

    /// Injects the highest pending interrupt if the vCPU can take it now; otherwise asks
    /// KVM for an interrupt-window exit. Both the injection and every change of the
    /// window request are recorded. Interrupts are injected only here, at exit boundaries.
    pub(crate) fn inject(&mut self) -> Result<(), RunError> {
        let pending = self.bus().interrupts().pending();
        let window = match pending {
            None => false,
            Some(vector) => {
                if self.cpu.can_take_interrupt() {
                    self.bus().interrupts_mut().acknowledge();
                    self.cpu.inject(self.vm.vcpu(), vector)?;
                    false
                } else {
                    true
                }
            }
        };
        Ok(self.cpu.set_interrupt_window(window)?)
    }
}

/// The outcome of a run-ending exit of kind `e`, with `report` saying what the vCPU was
/// doing and `reason` its raw exit reason.
fn outcome_of(e: Ending, report: impl Fn() -> crate::machine::FatalReport, reason: u32) -> Outcome {
    match e {
        Ending::Shutdown => Outcome::Shutdown(Box::new(report())),
        Ending::InternalError => {
            let r = report();
            if r.suberror == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION {
                Outcome::EmulationFailure(Box::new(r))
            } else {
                Outcome::InternalError(Box::new(r))
            }
        }
        Ending::FailEntry => Outcome::FailEntry(Box::new(report())),
        Ending::SystemEvent(t) => Outcome::SystemEvent(t),
        Ending::Unhandled => Outcome::Unhandled(reason),
    }
}

fn fired_outcome(fired: Fired) -> Outcome {
    match fired {
        Fired::Deadline => Outcome::MaxDuration,
        Fired::Stopped => Outcome::Stopped,
    }
}

//! The narrow entry replay (and a debugger) drives: run to the guest's next exit, see what
//! it did, answer it with the recorded reply while the devices observe the access, and
//! inject interrupts where the trace says. No device answers, no timer fires, nothing is
//! recorded: the trace does all of that.

use vmrr_format::{Body, Direction, RegsSample};

use crate::exit::answer::{self, AnswerError};
use crate::kvm::system::KvmError;
use crate::machine::Machine;
use crate::machine::run::RunError;

/// What the guest did at the current exit, borrowed from the `kvm_run` page.
#[derive(Debug, Clone, Copy)]
pub struct LiveExit<'a> {
    /// The exit, in the trace's terms (an IN's data and an MMIO read's bytes are what it
    /// was answered with, once answered).
    pub body: Body<'a>,
    /// RIP, RSP and RFLAGS at the exit, with this host's RIP convention.
    pub regs: Option<RegsSample>,
}

/// Largest access the devices observe in one go (a string I/O exit's data fits a page).
const OBSERVE_MAX: usize = 4096;

impl Machine {
    /// Enters the guest until its next exit. `Ok(false)` when `KVM_RUN` was interrupted by
    /// a signal (a stall watchdog) before any exit.
    ///
    /// # Errors
    /// `KVM_RUN` failed.
    pub fn run_to_exit(&mut self) -> Result<bool, RunError> {
        let vcpu = self.vm.vcpu_mut();
        match vcpu.run() {
            Ok(_) => {
                self.exits += 1;
                Ok(true)
            }
            Err(e) if e.errno() == libc::EINTR => {
                vcpu.set_kvm_immediate_exit(0);
                Ok(false)
            }
            Err(source) => Err(KvmError { what: "KVM_RUN", source }.into()),
        }
    }

    /// The current exit.
    pub fn exit(&self) -> LiveExit<'_> {
        let view = self.view();
        LiveExit { body: view.body(self.vm.caps().system_event_data), regs: view.regs_sample(self.rip) }
    }

    /// Answers the current exit with `reply` (the recorded exit's body): see
    /// [`answer::write`]. Then the devices observe the access as answered (an OUT's bytes,
    /// an IN of the answered length), so their guest-visible state stays in step with the
    /// recording and a snapshot taken during replay holds it; what they would answer is
    /// discarded.
    ///
    /// # Errors
    /// The reply does not fit the exit (nothing is written then).
    pub fn answer(&mut self, reply: &Body<'_>) -> Result<(), AnswerError> {
        answer::write(self.run_page.bytes_mut().ok_or(AnswerError::ReadOnly)?, reply)?;
        self.observe();
        Ok(())
    }

    /// Shows the current exit's access to the devices.
    fn observe(&mut self) {
        let view = crate::exit::RunView::new(self.run_page.bytes());
        let Ok(view) = view else { return };
        let scratch = &mut self.scratch;
        match view.body(false) {
            Body::Io(io) if io.direction == Direction::Out => {
                self.bus.pio_write(io.port, io.data);
            }
            Body::Io(io) => {
                let n = io.data.len().min(OBSERVE_MAX);
                scratch.resize(scratch.len().max(n), 0);
                self.bus.pio_read(io.port, &mut scratch[..n]);
            }
            Body::Mmio(m) if m.is_write => {
                self.bus.mmio_write(m.phys_addr, m.bytes());
            }
            Body::Mmio(m) => {
                let n = m.bytes().len();
                scratch.resize(scratch.len().max(n), 0);
                self.bus.mmio_read(m.phys_addr, &mut scratch[..n]);
            }
            _ => {}
        }
        // Lines the devices raised while observing: the trace says which reach the guest.
        self.bus.irq.take_lines();
    }

    /// Whether the vCPU can take an external interrupt before its next entry
    /// (`ready_for_interrupt_injection` and IF set).
    pub fn can_take_interrupt(&self) -> bool {
        let v = self.view();
        v.ready_for_interrupt_injection() && v.if_flag()
    }

    /// Injects `vector` because the trace says it was injected here: the interrupt lines
    /// move it to in-service (8259) or clear it (a direct vector), then it is queued for
    /// the next entry.
    ///
    /// # Errors
    /// The ioctl or the trace failed.
    pub fn inject_recorded_interrupt(&mut self, vector: u8) -> Result<(), RunError> {
        self.bus.irq.acknowledge_vector(vector);
        self.inject_interrupt(vector)
    }

    /// Queues external interrupt `vector` for the next entry (`KVM_INTERRUPT`) and records
    /// it. The caller has checked that the vCPU can take it.
    ///
    /// # Errors
    /// The ioctl or the trace failed.
    pub(crate) fn inject_interrupt(&mut self, vector: u8) -> Result<(), RunError> {
        crate::sys::vcpu_ioctl::interrupt(self.vm.vcpu(), vector)
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
        self.vm.vcpu_mut().get_kvm_run().request_interrupt_window = u8::from(request);
        if let Some(rec) = self.recorder.as_mut() {
            rec.record_window(request)?;
        }
        Ok(())
    }
}

//! The narrow entry replay (and a debugger) drives: run to the guest's next exit, see what
//! it did, answer it with the recorded reply while the devices observe the access, and
//! inject interrupts where the trace says. No device answers, no timer fires, nothing is
//! recorded: the trace does all of that. Each exit is decoded once, when `KVM_RUN`
//! returns; [`Machine::exit`] and [`Machine::answer`] work on that decoded exit.

use vmrr_format::{Body, RegsSample};

use crate::exit::answer::AnswerError;
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

impl Machine {
    /// Gives the vCPU `entries` as its CPUID (a replay's guest must see the CPUID it saw
    /// when recorded); before the first run only.
    ///
    /// # Errors
    /// Too many entries, or KVM refused them.
    pub fn set_cpuid(
        &mut self,
        entries: &[vmrr_format::CpuidEntry],
    ) -> Result<(), crate::kvm::cpuid::SetCpuidError> {
        crate::kvm::cpuid::set(self.vm.vcpu(), entries)
    }

    /// Changes line `gsi` of KVM's in-kernel irqchip as a recorded IRQ_LINE record says
    /// (`level` 0 lowered, 1 raised, 2 pulsed), before the next entry.
    ///
    /// # Errors
    /// `KVM_IRQ_LINE` failed (the machine has no in-kernel irqchip, say).
    pub fn set_recorded_irq_line(&mut self, gsi: u32, level: u32) -> Result<(), RunError> {
        let fd = self.vm.fd();
        let set = |up: bool| fd.set_irq_line(gsi, up).map_err(KvmError::on("KVM_IRQ_LINE"));
        match level {
            vmrr_format::IRQ_LEVEL_LOW => set(false)?,
            vmrr_format::IRQ_LEVEL_HIGH => set(true)?,
            _ => crate::kvm::irqchip::pulse(fd, gsi)?,
        }
        // Counted (a replay records nothing).
        Ok(self.cpu.pulsed(gsi)?)
    }

    /// Enters the guest until its next exit. `Ok(false)` when `KVM_RUN` was interrupted by
    /// a signal (a stall watchdog) before any exit.
    ///
    /// # Errors
    /// `KVM_RUN` failed.
    pub fn run_to_exit(&mut self) -> Result<bool, RunError> {
        let exited = self.cpu.enter(self.vm.vcpu_mut())?;
        if exited {
            self.cpu.count_exit();
        }
        Ok(exited)
    }

    /// The current exit.
    pub fn exit(&self) -> LiveExit<'_> {
        LiveExit { body: self.cpu.body(), regs: self.cpu.exit().regs() }
    }

    /// Whether `reply` (a recorded exit's body) can answer the current exit: the same kind
    /// and, for port I/O and MMIO, the same direction.
    pub fn answer_fits(&self, reply: &Body<'_>) -> bool {
        crate::exit::answer::fits(self.cpu.exit(), reply)
    }

    /// Answers the current exit with `reply` (the recorded exit's body): see
    /// [`crate::exit::answer::write`]. Then the devices observe the access as answered (an
    /// OUT's bytes, an IN of the answered length), so their guest-visible state stays in
    /// step with the recording and a snapshot taken during replay holds it; what they
    /// would answer is discarded.
    ///
    /// # Errors
    /// The reply does not fit the exit (nothing is written then).
    pub fn answer(&mut self, reply: &Body<'_>) -> Result<(), AnswerError> {
        self.cpu.answer(reply, &mut crate::machine::lock_bus(&self.bus))?;
        // Lines the devices raised while observing: the trace says which reach the guest.
        self.bus().interrupts_mut().take_lines();
        Ok(())
    }

    /// Whether the vCPU can take an external interrupt before its next entry
    /// (`ready_for_interrupt_injection` and IF set).
    pub fn can_take_interrupt(&self) -> bool {
        self.cpu.can_take_interrupt()
    }

    /// Injects `vector` because the trace says it was injected here: the interrupt lines
    /// move it to in-service (8259) or clear it (a direct vector), then it is queued for
    /// the next entry.
    ///
    /// # Errors
    /// The ioctl or the trace failed.
    pub fn inject_recorded_interrupt(&mut self, vector: u8) -> Result<(), RunError> {
        self.bus().interrupts_mut().acknowledge_vector(vector);
        Ok(self.cpu.inject(self.vm.vcpu(), vector)?)
    }

    /// Sets or withdraws `request_interrupt_window` for the next entry, as the trace says.
    ///
    /// # Errors
    /// The trace failed (when the machine also records).
    pub fn set_interrupt_window(&mut self, request: bool) -> Result<(), RunError> {
        Ok(self.cpu.set_interrupt_window(request)?)
    }

    /// Lets KVM finish the instruction the vCPU last exited for (an IN's RAX, an MMIO
    /// read's destination, RIP past an OUT) without entering the guest (see
    /// [`crate::kvm::entry::complete_pending`]). Needed before reading vCPU state at an
    /// exit. Does nothing before the first run.
    ///
    /// # Errors
    /// `KVM_RUN` failing with something other than `EINTR`.
    pub fn complete_pending_io(&mut self) -> Result<(), KvmError> {
        // The APs first: parked (their threads, during a run), then completed as the
        // bootstrap processor is.
        if let Some(t) = &self.team {
            t.pause();
        }
        for a in &self.aps {
            let mut fd = super::aps::lock(&a.fd);
            if super::aps::lock(&a.cpu).exits() > 0 {
                crate::kvm::entry::complete_pending(&mut fd)?;
            }
        }
        if self.cpu.exits() == 0 {
            return Ok(());
        }
        self.refresh_run_state()
    }

    /// Has KVM rewrite the `kvm_run` page's view of the vCPU (the interrupt flag,
    /// readiness for an injected interrupt) without entering the guest, which also
    /// finishes an interrupted instruction. After a restore the page still shows the vCPU
    /// as it was before; replay asks it whether the guest can take an interrupt.
    ///
    /// # Errors
    /// `KVM_RUN` failing with something other than `EINTR`.
    pub fn refresh_run_state(&mut self) -> Result<(), KvmError> {
        crate::kvm::entry::complete_pending(self.vm.vcpu_mut())
    }
}

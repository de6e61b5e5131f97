//! Looking at the guest from outside: registers, the current exit's view, instructions at
//! guest-virtual addresses, and completing the instruction an exit interrupted.

use kvm_bindings::{kvm_regs, kvm_sregs};
use vm_memory::GuestAddress;
use vmrr_format::RegsSample;

use crate::disasm;
use crate::exit::RunView;
use crate::kvm::system::KvmError;
use crate::machine::Machine;

impl Machine {
    /// The current exit as `kvm_run` shows it.
    pub(crate) fn view(&self) -> RunView<'_> {
        RunView::new(self.run_page.bytes()).expect("the machine's kvm_run mapping holds struct kvm_run")
    }

    /// General registers.
    ///
    /// # Errors
    /// `KVM_GET_REGS` failed.
    pub fn regs(&self) -> Result<kvm_regs, KvmError> {
        self.vm.vcpu().get_regs().map_err(KvmError::on("KVM_GET_REGS"))
    }

    /// Segment and control registers.
    ///
    /// # Errors
    /// `KVM_GET_SREGS` failed.
    pub fn sregs(&self) -> Result<kvm_sregs, KvmError> {
        self.vm.vcpu().get_sregs().map_err(KvmError::on("KVM_GET_SREGS"))
    }

    /// The current privilege level (CS's RPL): 0 for a kernel, 3 for user code.
    ///
    /// # Errors
    /// `KVM_GET_SREGS` failed.
    pub fn cpl(&self) -> Result<u8, KvmError> {
        Ok(u8::try_from(self.sregs()?.cs.selector & 3).unwrap_or(0))
    }

    /// The guest-physical address of guest-virtual `rip` in the vCPU's current mode
    /// (real mode: through CS's base; otherwise through its page tables).
    pub fn translate_code(&self, rip: u64) -> Option<GuestAddress> {
        let sregs = self.sregs().ok()?;
        let linear = if disasm::bitness(&sregs) == 16 { sregs.cs.base + (rip & 0xffff) } else { rip };
        let t = self.vm.vcpu().translate_gva(linear).ok().filter(|t| t.valid != 0)?;
        Some(GuestAddress(t.physical_address))
    }

    /// The instruction at guest-virtual `rip`, decoded in the vCPU's current mode.
    pub fn instruction_at(&self, rip: u64) -> Option<disasm::Decoded> {
        let sregs = self.sregs().ok()?;
        let mut buf = [0u8; 15];
        self.vm.memory().read(self.translate_code(rip)?, &mut buf).ok()?;
        disasm::decode(&buf, disasm::bitness(&sregs), rip)
    }

    /// The length of the instruction at guest-virtual `rip`.
    pub fn instruction_len_at(&self, rip: u64) -> Option<usize> {
        self.instruction_at(rip).map(|d| d.len)
    }

    /// The name of the device at `port` (`serial`, `debugcon`), if one claims it.
    pub fn device_at_port(&self, port: u16) -> Option<&'static str> {
        self.bus.device_at_port(port)
    }

    /// The name of the device at guest-physical `addr`, if one claims it.
    pub fn device_at_mmio(&self, addr: u64) -> Option<&'static str> {
        self.bus.device_at_mmio(addr)
    }

    /// The register sample of the current exit.
    pub fn regs_sample(&self) -> Option<RegsSample> {
        self.view().regs_sample(self.rip)
    }

    /// Lets KVM finish the instruction the vCPU last exited for (an IN's RAX, an MMIO
    /// read's destination, RIP past an OUT) without entering the guest: `KVM_RUN` with
    /// `immediate_exit` set returns `EINTR` right after completing it. Needed before
    /// reading vCPU state at an exit. Does nothing before the first run.
    ///
    /// # Errors
    /// `KVM_RUN` failing with something other than `EINTR`.
    pub fn complete_pending_io(&mut self) -> Result<(), KvmError> {
        if self.exits == 0 {
            return Ok(());
        }
        let vcpu = self.vm.vcpu_mut();
        vcpu.set_kvm_immediate_exit(1);
        let r = vcpu.run().map(|_| ());
        vcpu.set_kvm_immediate_exit(0);
        match r {
            Err(e) if e.errno() == libc::EINTR => Ok(()),
            Err(source) => Err(KvmError { what: "completing pending I/O", source }),
            Ok(()) => Ok(()),
        }
    }
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
}

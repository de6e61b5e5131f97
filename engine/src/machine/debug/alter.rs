//! Changing the guest from outside: a debugger's register and memory writes. A replay
//! that does this has left its recorded path (the caller says so and stops answering from
//! the trace).

use kvm_bindings::{kvm_regs, kvm_sregs};
use vm_memory::GuestAddress;

use crate::kvm::system::KvmError;
use crate::machine::Machine;
use crate::machine::inspect::AccessError;

use crate::page::PAGE_SIZE as PAGE;

impl Machine {
    /// Sets the general registers.
    ///
    /// # Errors
    /// `KVM_SET_REGS` failed.
    pub fn set_regs(&mut self, regs: &kvm_regs) -> Result<(), KvmError> {
        self.vm.vcpu().set_regs(regs).map_err(KvmError::on("KVM_SET_REGS"))
    }

    /// Sets the segment and control registers.
    ///
    /// # Errors
    /// `KVM_SET_SREGS` failed (KVM refuses inconsistent control registers).
    pub fn set_sregs(&mut self, sregs: &kvm_sregs) -> Result<(), KvmError> {
        self.vm.vcpu().set_sregs(sregs).map_err(KvmError::on("KVM_SET_SREGS"))
    }

    /// Writes guest-physical memory.
    ///
    /// # Errors
    /// Part of the range is not memory (nothing past that point is written).
    pub fn write_phys(&mut self, gpa: u64, data: &[u8]) -> Result<(), AccessError> {
        self.vm.memory().write(GuestAddress(gpa), data).map_err(|_| AccessError::NotMemory(gpa))
    }

    /// Writes guest memory at linear address `linear`, page by page through the page
    /// tables.
    ///
    /// # Errors
    /// A page is unmapped or not memory (pages before it are written).
    pub fn write_linear(&mut self, linear: u64, data: &[u8]) -> Result<(), AccessError> {
        let mut done = 0usize;
        while done < data.len() {
            let at = linear.wrapping_add(done as u64);
            let in_page = usize::try_from(PAGE - at % PAGE).unwrap_or(usize::MAX).min(data.len() - done);
            let gpa = self.translate(at).ok_or(AccessError::Unmapped(at))?;
            self.write_phys(gpa, &data[done..done + in_page])?;
            done += in_page;
        }
        Ok(())
    }
}

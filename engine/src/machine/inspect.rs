//! Looking at the guest from outside (the inspection role): registers, instructions at
//! guest-virtual addresses, guest memory by physical or linear address, interrupt
//! handlers, the devices at a port or address.

use kvm_bindings::{kvm_regs, kvm_sregs};
use vm_memory::GuestAddress;

use crate::disasm;
use crate::kvm::system::KvmError;
use crate::machine::Machine;

impl Machine {
    /// General registers.
    ///
    /// # Errors
    /// `KVM_GET_REGS` failed.
    pub fn regs(&self) -> Result<kvm_regs, KvmError> {
        self.vm.vcpu().get_regs().map_err(KvmError::on("KVM_GET_REGS"))
    }

    /// x87 and SSE registers.
    ///
    /// # Errors
    /// `KVM_GET_FPU` failed.
    pub fn fpu(&self) -> Result<kvm_bindings::kvm_fpu, KvmError> {
        self.vm.vcpu().get_fpu().map_err(KvmError::on("KVM_GET_FPU"))
    }

    /// Segment and control registers.
    ///
    /// # Errors
    /// `KVM_GET_SREGS` failed.
    pub fn sregs(&self) -> Result<kvm_sregs, KvmError> {
        self.vm.vcpu().get_sregs().map_err(KvmError::on("KVM_GET_SREGS"))
    }

    /// The linear address of the next instruction: RIP plus CS's base outside 64-bit
    /// mode (`segment * 16 + IP` in real mode), RIP in 64-bit mode. Hardware breakpoints
    /// and a debugger's program counter use it.
    ///
    /// # Errors
    /// Reading registers failed.
    pub fn linear_pc(&self) -> Result<u64, KvmError> {
        let rip = self.regs()?.rip;
        let sregs = self.sregs()?;
        Ok(match disasm::bitness(&sregs) {
            64 => rip,
            32 => sregs.cs.base.wrapping_add(rip) & 0xffff_ffff,
            _ => sregs.cs.base.wrapping_add(rip & 0xffff),
        })
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
        self.bus().device_at_port(port)
    }

    /// The name of the device at guest-physical `addr`, if one claims it.
    pub fn device_at_mmio(&self, addr: u64) -> Option<&'static str> {
        self.bus().device_at_mmio(addr)
    }
}

/// Reading or writing guest memory by address failed.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// The guest's page tables do not map the linear address.
    #[error("linear address {0:#x} is not mapped by the guest's page tables")]
    Unmapped(u64),
    /// The guest-physical address is not backed by RAM or ROM (an MMIO hole, or past the
    /// end of memory).
    #[error("guest-physical address {0:#x} is not memory")]
    NotMemory(u64),
    /// `KVM_GET_SREGS` failed.
    #[error(transparent)]
    Kvm(#[from] KvmError),
}

use crate::page::PAGE_SIZE as PAGE;

impl Machine {
    /// The guest-physical address of linear address `linear` through the vCPU's page
    /// tables (`KVM_TRANSLATE`; without paging, the same address).
    pub fn translate(&self, linear: u64) -> Option<u64> {
        let t = self.vm.vcpu().translate_gva(linear).ok().filter(|t| t.valid != 0)?;
        Some(t.physical_address)
    }

    /// Reads guest-physical memory.
    ///
    /// # Errors
    /// Part of the range is not memory.
    pub fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> Result<(), AccessError> {
        self.vm.memory().read(GuestAddress(gpa), buf).map_err(|_| AccessError::NotMemory(gpa))
    }

    /// Reads guest memory at linear address `linear` (real mode: `segment * 16 + offset`;
    /// otherwise through the page tables, page by page).
    ///
    /// # Errors
    /// A page is unmapped or not memory.
    pub fn read_linear(&self, linear: u64, buf: &mut [u8]) -> Result<(), AccessError> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = linear.wrapping_add(done as u64);
            let in_page = usize::try_from(PAGE - at % PAGE).unwrap_or(usize::MAX).min(buf.len() - done);
            let gpa = self.translate(at).ok_or(AccessError::Unmapped(at))?;
            self.read_phys(gpa, &mut buf[done..done + in_page])?;
            done += in_page;
        }
        Ok(())
    }

    /// The linear address of the handler the guest's interrupt table names for `vector`:
    /// the real-mode IVT (`segment:offset`), a 64-bit IDT gate, or a 32-bit IDT gate with
    /// its code segment's base from the GDT. `None` when the table cannot be read.
    pub fn interrupt_handler(&self, vector: u8) -> Option<u64> {
        const CR0_PE: u64 = 1;
        const EFER_LMA: u64 = 0x400;
        let sregs = self.sregs().ok()?;
        let v = u64::from(vector);
        if sregs.cr0 & CR0_PE == 0 {
            let mut e = [0u8; 4];
            self.read_linear(sregs.idt.base + 4 * v, &mut e).ok()?;
            let off = u64::from(u16::from_le_bytes([e[0], e[1]]));
            let seg = u64::from(u16::from_le_bytes([e[2], e[3]]));
            return Some(seg * 16 + off);
        }
        if sregs.efer & EFER_LMA != 0 {
            let mut g = [0u8; 16];
            self.read_linear(sregs.idt.base + 16 * v, &mut g).ok()?;
            let lo = u64::from(u16::from_le_bytes([g[0], g[1]]));
            let mid = u64::from(u16::from_le_bytes([g[6], g[7]]));
            let hi = u64::from(u32::from_le_bytes([g[8], g[9], g[10], g[11]]));
            return Some(lo | mid << 16 | hi << 32);
        }
        let mut g = [0u8; 8];
        self.read_linear(sregs.idt.base + 8 * v, &mut g).ok()?;
        let off =
            u64::from(u16::from_le_bytes([g[0], g[1]])) | u64::from(u16::from_le_bytes([g[6], g[7]])) << 16;
        let selector = u64::from(u16::from_le_bytes([g[2], g[3]]) & !7);
        let mut d = [0u8; 8];
        self.read_linear(sregs.gdt.base + selector, &mut d).ok()?;
        let base = u64::from(d[2]) | u64::from(d[3]) << 8 | u64::from(d[4]) << 16 | u64::from(d[7]) << 24;
        Some((base + off) & 0xffff_ffff)
    }
}

//! Looking at the guest from outside: registers, the current exit's view, instructions at
//! guest-virtual addresses, and completing the instruction an exit interrupted.

use kvm_bindings::{kvm_regs, kvm_sregs};
use vm_memory::GuestAddress;
use vmrr_format::RegsSample;

use crate::disasm;
use crate::exit::RunView;
use crate::kvm::system::KvmError;
use crate::machine::Machine;

/// `KVM_SYNC_X86_REGS`.
const SYNC_X86_REGS: u64 = 1;
/// `KVM_SYNC_X86_EVENTS`.
const SYNC_X86_EVENTS: u64 = 4;

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
        self.refresh_run_state()
    }

    /// Stages `regs` and `events` in the `kvm_run` page's synced registers and marks them
    /// dirty (`KVM_SYNC_X86_REGS | KVM_SYNC_X86_EVENTS` in `kvm_dirty_regs`): the next
    /// `KVM_RUN` sets them before anything else, as `KVM_SET_REGS` and
    /// `KVM_SET_VCPU_EVENTS` would. Returns `false` (nothing staged) when the page is not
    /// writable.
    pub(crate) fn stage_synced(&mut self, regs: &kvm_regs, events: &kvm_bindings::kvm_vcpu_events) -> bool {
        use crate::sys::run_page::off;
        use zerocopy::IntoBytes;
        let Some(page) = self.run_page.bytes_mut() else { return false };
        let put = |page: &mut [u8], at: usize, b: &[u8]| match page.get_mut(at..at + b.len()) {
            Some(dst) => {
                dst.copy_from_slice(b);
                true
            }
            None => false,
        };
        let dirty = page
            .get(off::DIRTY_REGS..off::DIRTY_REGS + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map_or(0, u64::from_ne_bytes);
        let mask = SYNC_X86_REGS | SYNC_X86_EVENTS;
        put(page, off::SYNC_REGS, regs.as_bytes())
            && put(page, off::SYNC_EVENTS, events.as_bytes())
            && put(page, off::DIRTY_REGS, &(dirty | mask).to_ne_bytes())
    }

    /// Whether registers staged by [`Self::stage_synced`] are still waiting for a
    /// `KVM_RUN` to apply them (KVM clears the bits it applied); clears the marks.
    pub(crate) fn synced_pending(&mut self) -> bool {
        use crate::sys::run_page::off;
        let Some(page) = self.run_page.bytes_mut() else { return false };
        let Some(b) = page.get_mut(off::DIRTY_REGS..off::DIRTY_REGS + 8) else { return false };
        let dirty = <[u8; 8]>::try_from(&*b).map_or(0, u64::from_ne_bytes);
        b.copy_from_slice(&0u64.to_ne_bytes());
        dirty & (SYNC_X86_REGS | SYNC_X86_EVENTS) != 0
    }

    /// Has KVM rewrite the `kvm_run` page's view of the vCPU (the interrupt flag,
    /// readiness for an injected interrupt) without entering the guest: `KVM_RUN` with
    /// `immediate_exit` set, which also finishes an interrupted instruction. After a
    /// restore the page still shows the vCPU as it was before; replay asks it whether the
    /// guest can take an interrupt.
    ///
    /// # Errors
    /// `KVM_RUN` failing with something other than `EINTR`.
    pub fn refresh_run_state(&mut self) -> Result<(), KvmError> {
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

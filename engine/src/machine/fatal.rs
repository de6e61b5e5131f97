//! What the guest was doing at a fatal exit: KVM's data, the instruction decoded, the
//! registers.

use std::fmt;

use vm_memory::GuestAddress;
use vmrr_format::describe::hex;

use crate::disasm;
use crate::machine::Machine;

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
    /// The vCPU that failed (0: the bootstrap processor, the only one of most machines).
    pub vcpu: u32,
    /// The sequence number of the failing exit's trace record, when recorded.
    pub seq: Option<u64>,
}

impl FatalReport {
    /// The failing instruction's own bytes (its decoded length when known; else KVM's
    /// whole fetch window).
    pub fn insn(&self) -> &[u8] {
        self.insn_len.and_then(|n| self.insn_bytes.get(..n)).unwrap_or(&self.insn_bytes)
    }
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
                hex(self.insn_bytes.get(..n).unwrap_or(&self.insn_bytes)),
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

impl Machine {
    /// What the guest was doing at the current (fatal) exit: KVM's data, the instruction
    /// decoded, registers.
    pub fn fatal_report(&self) -> FatalReport {
        report(self.vm.focused(), self.vm.vcpu(), &self.cpu, self.vm.memory())
    }
}

/// What vCPU `index` (`fd`, its per-exit state `cpu`) was doing at its current fatal exit.
pub(crate) fn report(
    index: u32,
    fd: &kvm_ioctls::VcpuFd,
    cpu: &crate::machine::vcpu::Vcpu,
    memory: &crate::kvm::memory::GuestMemory,
) -> FatalReport {
    {
        let reason = cpu.exit().reason();
        let regs = fd.get_regs().unwrap_or_default();
        let sregs = fd.get_sregs().unwrap_or_default();
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
            vcpu: index,
            seq: cpu.last_seq(),
        };
        match cpu.body() {
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
            let phys = fd.translate_gva(linear).ok().filter(|t| t.valid != 0).map(|t| t.physical_address);
            let mut buf = [0u8; 15];
            if let Some(p) = phys {
                if memory.read(GuestAddress(p), &mut buf).is_ok() {
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
}

//! Decoding guest instructions for reports (iced-x86).

use iced_x86::{Decoder, DecoderOptions, Formatter, Instruction, IntelFormatter};

/// A decoded instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// Intel syntax, e.g. `popcnt rax,[rdi]`.
    pub text: String,
    /// True instruction length in bytes (KVM's `insn_size` is its fetch window).
    pub len: usize,
    /// Where its result comes from when no exit carries it (and no trace holds it).
    pub unrecorded: Option<Unrecorded>,
    /// Whether it is `hlt`.
    pub halts: bool,
}

/// Instructions whose result reaches the guest without an exit under KVM, so a trace of
/// exits cannot hold it and a replay computes it anew.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unrecorded {
    /// `rdtsc`, `rdtscp`: the time-stamp counter.
    Tsc,
    /// `rdrand`, `rdseed`: the CPU's random number generator.
    Random,
    /// `rdpid`: IA32_TSC_AUX, which the host sets (a CPU number).
    TscAux,
    /// `rdpmc`: a performance counter.
    Pmc,
    /// `rdmsr`: KVM answers most MSRs in the kernel; some (the TSC, APERF/MPERF) are
    /// time.
    MsrRead,
    /// `cpuid`: the host's answer where it does not apply the vCPU's CPUID set.
    Cpuid,
}

impl Unrecorded {
    fn of(m: iced_x86::Mnemonic) -> Option<Self> {
        use iced_x86::Mnemonic as M;
        Some(match m {
            M::Rdtsc | M::Rdtscp => Unrecorded::Tsc,
            M::Rdrand | M::Rdseed => Unrecorded::Random,
            M::Rdpid => Unrecorded::TscAux,
            M::Rdpmc => Unrecorded::Pmc,
            M::Rdmsr => Unrecorded::MsrRead,
            M::Cpuid => Unrecorded::Cpuid,
            _ => return None,
        })
    }
}

/// MSRs KVM answers in the kernel whose values are time: IA32_TIME_STAMP_COUNTER,
/// IA32_MPERF, IA32_APERF, IA32_TSC_ADJUST, IA32_TSC_AUX.
pub const TIME_MSRS: &[u32] = &[0x10, 0xe7, 0xe8, 0x3b, 0xc000_0103];

/// Decodes the first instruction of `bytes` at `rip` in `bitness`-bit mode (16, 32, 64).
pub fn decode(bytes: &[u8], bitness: u32, rip: u64) -> Option<Decoded> {
    let mut dec = Decoder::try_with_ip(bitness, bytes, rip, DecoderOptions::NONE).ok()?;
    let mut insn = Instruction::default();
    dec.decode_out(&mut insn);
    if insn.is_invalid() {
        return None;
    }
    let mut text = String::new();
    let mut fmt = IntelFormatter::new();
    fmt.options_mut().set_space_after_operand_separator(false);
    fmt.format(&insn, &mut text);
    let m = insn.mnemonic();
    Some(Decoded {
        text,
        len: insn.len(),
        unrecorded: Unrecorded::of(m),
        halts: m == iced_x86::Mnemonic::Hlt,
    })
}

/// The code bitness from segment state: 64 in long mode with CS.L, else 32 with CS.D, else 16.
pub fn bitness(sregs: &kvm_bindings::kvm_sregs) -> u32 {
    const EFER_LMA: u64 = 0x400;
    if sregs.efer & EFER_LMA != 0 && sregs.cs.l != 0 {
        64
    } else if sregs.cs.db != 0 {
        32
    } else {
        16
    }
}

/// The effective address of the instruction's first memory operand, given the register
/// file (`None` without one, or for RIP-relative/segment forms it cannot resolve).
pub fn memory_operand(bytes: &[u8], bitness: u32, rip: u64, regs: &kvm_bindings::kvm_regs) -> Option<u64> {
    use iced_x86::{OpKind, Register};
    let mut dec = Decoder::try_with_ip(bitness, bytes, rip, DecoderOptions::NONE).ok()?;
    let insn = dec.decode();
    if insn.is_invalid() || !(0..insn.op_count()).any(|i| insn.op_kind(i) == OpKind::Memory) {
        return None;
    }
    let next = rip.wrapping_add(insn.len() as u64);
    let base = gpr(regs, insn.memory_base(), next)?;
    let index = gpr(regs, insn.memory_index(), next)?;
    let scale = u64::from(insn.memory_index_scale());
    let disp = insn.memory_displacement64();
    if insn.memory_base() == Register::RIP {
        return Some(disp);
    }
    Some(base.wrapping_add(index.wrapping_mul(scale)).wrapping_add(disp))
}

/// A general register's full 64-bit value (`next` is RIP after the instruction, what
/// RIP-relative addressing adds to); `Some(0)` for no register.
fn gpr(regs: &kvm_bindings::kvm_regs, r: iced_x86::Register, next: u64) -> Option<u64> {
    use iced_x86::Register;
    Some(match r.full_register() {
        Register::None => 0,
        Register::RAX => regs.rax,
        Register::RBX => regs.rbx,
        Register::RCX => regs.rcx,
        Register::RDX => regs.rdx,
        Register::RSI => regs.rsi,
        Register::RDI => regs.rdi,
        Register::RSP => regs.rsp,
        Register::RBP => regs.rbp,
        Register::R8 => regs.r8,
        Register::R9 => regs.r9,
        Register::R10 => regs.r10,
        Register::R11 => regs.r11,
        Register::R12 => regs.r12,
        Register::R13 => regs.r13,
        Register::R14 => regs.r14,
        Register::R15 => regs.r15,
        Register::RIP => next,
        _ => return None,
    })
}

/// One memory access an instruction makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemAccess {
    /// Its linear address (segment base included).
    pub linear: u64,
    /// Bytes accessed.
    pub size: u64,
    /// It reads (or may read).
    pub read: bool,
    /// It writes (or may write).
    pub write: bool,
}

/// The memory the instruction at `rip` accesses when it runs with `regs` and `sregs`:
/// explicit operands and implicit ones (the stack of `push`, `call`, `iret`; the first
/// element of a string instruction). `None` when it cannot be decoded or an address
/// depends on a register outside the general ones.
pub fn memory_accesses(
    bytes: &[u8],
    rip: u64,
    regs: &kvm_bindings::kvm_regs,
    sregs: &kvm_bindings::kvm_sregs,
) -> Option<Vec<MemAccess>> {
    use iced_x86::{InstructionInfoFactory, OpAccess, Register};
    let bits = bitness(sregs);
    let mut dec = Decoder::try_with_ip(bits, bytes, rip, DecoderOptions::NONE).ok()?;
    let insn = dec.decode();
    if insn.is_invalid() {
        return None;
    }
    let next = rip.wrapping_add(insn.len() as u64);
    let segment_base = |r: Register| -> u64 {
        match r {
            Register::FS => sregs.fs.base,
            Register::GS => sregs.gs.base,
            // Long mode ignores the other segments' bases.
            _ if bits == 64 => 0,
            Register::ES => sregs.es.base,
            Register::CS => sregs.cs.base,
            Register::SS => sregs.ss.base,
            Register::DS => sregs.ds.base,
            _ => 0,
        }
    };
    let mut factory = InstructionInfoFactory::new();
    let info = factory.info(&insn);
    let mut out = Vec::new();
    for m in info.used_memory() {
        let (read, write) = match m.access() {
            OpAccess::Read | OpAccess::CondRead => (true, false),
            OpAccess::Write | OpAccess::CondWrite => (false, true),
            OpAccess::ReadWrite | OpAccess::ReadCondWrite => (true, true),
            _ => continue,
        };
        let value = |r: Register, _: usize, _: usize| -> Option<u64> {
            if r.is_segment_register() { Some(segment_base(r)) } else { register_value(regs, r, next) }
        };
        let linear = m.virtual_address(0, value)?;
        let size = m.memory_size().size() as u64;
        out.push(MemAccess { linear, size: size.max(1), read, write });
    }
    Some(out)
}

/// A general register's value at its own width (`eax` is the low 32 bits of `rax`; `ah`
/// bits 8-15).
fn register_value(regs: &kvm_bindings::kvm_regs, r: iced_x86::Register, next: u64) -> Option<u64> {
    use iced_x86::Register;
    if r == Register::None {
        return Some(0);
    }
    let full = gpr(regs, r, next)?;
    if r.is_gpr8() && matches!(r, Register::AH | Register::BH | Register::CH | Register::DH) {
        return Some((full >> 8) & 0xff);
    }
    Some(match r.size() {
        1 => full & 0xff,
        2 => full & 0xffff,
        4 => full & 0xffff_ffff,
        _ => full,
    })
}

//! `entropy`: reads the entropy port, the clock port and vmrr's clock MSR, mixes them into
//! a digest and prints it. The digest differs from run to run; replay must reproduce it.

use iced_x86::IcedError;
use iced_x86::code_asm::*;

use super::asm::{exit, long_mode};
use crate::devices::map;
use crate::kvm::vm::VMRR_CLOCK_MSR;

/// Rounds of reads.
pub const ROUNDS: u32 = 4;

/// Ring 0 (RDMSR needs it).
pub fn build(base: u64) -> Result<Vec<u8>, IcedError> {
    long_mode(base, |a, p| {
        let hdr = p.text(a, "entropy digest: ");
        let nl = p.text(a, "\n");
        let mut round = a.create_label();
        // r8 = digest (FNV-1a style over 32-bit words), r9 = rounds left
        a.mov(r8, 0xcbf2_9ce4_8422_2325u64)?;
        a.mov(r10, 0x0000_0100_0000_01b3u64)?;
        a.mov(r9d, ROUNDS)?;
        a.set_label(&mut round)?;
        // entropy
        a.mov(dx, u32::from(map::ENTROPY))?;
        a.in_(eax, dx)?;
        a.xor(r8, rax)?;
        a.imul_2(r8, r10)?;
        // clock (low half, then the latched high half)
        a.mov(dx, u32::from(map::CLOCK))?;
        a.in_(eax, dx)?;
        a.xor(r8, rax)?;
        a.imul_2(r8, r10)?;
        a.mov(dx, u32::from(map::CLOCK + 4))?;
        a.in_(eax, dx)?;
        a.xor(r8, rax)?;
        a.imul_2(r8, r10)?;
        // the clock MSR
        a.mov(ecx, VMRR_CLOCK_MSR)?;
        a.rdmsr()?;
        a.shl(rdx, 32)?;
        a.or(rax, rdx)?;
        a.xor(r8, rax)?;
        a.imul_2(r8, r10)?;
        a.dec(r9d)?;
        a.jnz(round)?;
        p.print(a, hdr)?;
        a.mov(rax, r8)?;
        p.print_hex(a)?;
        p.print(a, nl)?;
        exit(a, 0)
    })
}

//! `entropy`: reads the entropy port, the clock port and vmrr's clock MSR, mixes them into
//! a digest and prints it. The digest differs from run to run; replay must reproduce it.

use iced_x86::IcedError;
use iced_x86::code_asm::*;

use super::asm::{Lib, exit, print, string};
use crate::devices::map;
use crate::kvm::vm::VMRR_CLOCK_MSR;

/// Rounds of reads.
pub const ROUNDS: u32 = 4;

/// Ring 0 (RDMSR needs it).
pub fn build(base: u64) -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    let lib = Lib::new(&mut a);
    let mut hdr = a.create_label();
    let mut nl = a.create_label();
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
    print(&mut a, &lib, hdr)?;
    a.mov(rax, r8)?;
    a.call(lib.puthex)?;
    print(&mut a, &lib, nl)?;
    exit(&mut a, 0)?;
    lib.emit(&mut a)?;
    a.set_label(&mut hdr)?;
    a.db(b"entropy digest: \0")?;
    a.set_label(&mut nl)?;
    a.db(b"\n\0")?;
    let _ = string;
    a.assemble(base)
}

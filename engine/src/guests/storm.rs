//! `pio-storm` and `mmio-storm`: N exits in a tight loop, run at ring 3 so that hosts
//! that emulate ring-0 code (kvm_pvm) still run the loop natively.

use iced_x86::IcedError;
use iced_x86::code_asm::*;

use super::asm::exit;
use crate::devices::map;

/// `out dx, al` to the storm port `n` times, then exit with status 0 (`n + 1` exits).
pub fn pio(base: u64, n: u64) -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    let mut top = a.create_label();
    let mut end = a.create_label();
    a.mov(rcx, n)?;
    a.mov(dx, u32::from(map::STORM))?;
    a.xor(eax, eax)?;
    a.test(rcx, rcx)?;
    a.jz(end)?;
    a.set_label(&mut top)?;
    a.out(dx, al)?;
    a.inc(eax)?;
    a.dec(rcx)?;
    a.jnz(top)?;
    a.set_label(&mut end)?;
    exit(&mut a, 0)?;
    a.assemble(base)
}

/// A 4-byte MMIO write to the sink page `n` times, then exit with status 0.
pub fn mmio(base: u64, n: u64) -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    let mut top = a.create_label();
    let mut end = a.create_label();
    a.mov(rcx, n)?;
    a.mov(rdi, map::MMIO_SINK)?;
    a.xor(eax, eax)?;
    a.test(rcx, rcx)?;
    a.jz(end)?;
    a.set_label(&mut top)?;
    a.mov(dword_ptr(rdi), eax)?;
    a.inc(eax)?;
    a.dec(rcx)?;
    a.jnz(top)?;
    a.set_label(&mut end)?;
    exit(&mut a, 0)?;
    a.assemble(base)
}

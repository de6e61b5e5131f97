//! `pio-storm` and `mmio-storm`: N exits in a tight loop, run at ring 3 so that hosts
//! that emulate ring-0 code (kvm_pvm) still run the loop natively.

use iced_x86::IcedError;
use iced_x86::code_asm::*;

use super::asm::exit;
use crate::devices::map;

/// `out dx, al` to the storm port `n` times, then exit with status 0 (`n + 1` exits).
pub fn pio(base: u64, n: u64) -> Result<Vec<u8>, IcedError> {
    storm(base, n, |a| a.mov(dx, u32::from(map::STORM)), |a| a.out(dx, al))
}

/// A 4-byte MMIO write to the sink page `n` times, then exit with status 0.
pub fn mmio(base: u64, n: u64) -> Result<Vec<u8>, IcedError> {
    storm(base, n, |a| a.mov(rdi, map::MMIO_SINK), |a| a.mov(dword_ptr(rdi), eax))
}

/// `setup` once, then `body` (one exit) `n` times with `eax` counting up from 0, then exit
/// with status 0.
fn storm(
    base: u64,
    n: u64,
    setup: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
    body: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    let mut top = a.create_label();
    let mut end = a.create_label();
    a.mov(rcx, n)?;
    setup(&mut a)?;
    a.xor(eax, eax)?;
    a.test(rcx, rcx)?;
    a.jz(end)?;
    a.set_label(&mut top)?;
    body(&mut a)?;
    a.inc(eax)?;
    a.dec(rcx)?;
    a.jnz(top)?;
    a.set_label(&mut end)?;
    exit(&mut a, 0)?;
    a.assemble(base)
}

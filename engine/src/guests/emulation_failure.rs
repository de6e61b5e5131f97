//! `emulation-failure`: does real work (computes Fibonacci numbers and prints them), then
//! executes `popcnt rax, [rdi]` against an MMIO address. KVM's instruction emulator has no
//! POPCNT, so the MMIO access cannot be emulated: `KVM_EXIT_INTERNAL_ERROR` with
//! `KVM_INTERNAL_ERROR_EMULATION` and the instruction bytes, on hardware and paravirtual
//! hosts alike.

use iced_x86::IcedError;
use iced_x86::code_asm::*;

use super::asm::{Lib, exit, print};
use crate::devices::map;

/// The failing instruction, as assembled.
pub const FAILING: &str = "popcnt rax,[rdi]";

/// Ring 0.
pub fn build(base: u64) -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    let lib = Lib::new(&mut a);
    let mut msg = a.create_label();
    let mut msg2 = a.create_label();
    let mut nl = a.create_label();
    let mut fib = a.create_label();
    // fib(90) by iteration: rax, rbx = 0, 1
    a.xor(eax, eax)?;
    a.mov(ebx, 1)?;
    a.mov(ecx, 90)?;
    a.set_label(&mut fib)?;
    a.mov(rdx, rax)?;
    a.add(rdx, rbx)?;
    a.mov(rax, rbx)?;
    a.mov(rbx, rdx)?;
    a.dec(ecx)?;
    a.jnz(fib)?;
    print(&mut a, &lib, msg)?;
    a.call(lib.puthex)?;
    print(&mut a, &lib, nl)?;
    print(&mut a, &lib, msg2)?;
    a.mov(rdi, map::MMIO_UNCLAIMED)?;
    a.popcnt(rax, qword_ptr(rdi))?;
    // Only reached on a host that emulates POPCNT on MMIO.
    exit(&mut a, 1)?;
    lib.emit(&mut a)?;
    a.set_label(&mut msg)?;
    a.db(b"fib(90) = 0x\0")?;
    a.set_label(&mut msg2)?;
    a.db(b"now: popcnt rax, [rdi] with rdi = 0xd0001000 (MMIO)\n\0")?;
    a.set_label(&mut nl)?;
    a.db(b"\n\0")?;
    a.assemble(base)
}

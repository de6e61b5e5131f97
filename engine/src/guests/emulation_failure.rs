//! `emulation-failure`: does real work (computes Fibonacci numbers and prints them), then
//! executes `popcnt rax, [rdi]` against an MMIO address. KVM's instruction emulator has no
//! POPCNT, so the MMIO access cannot be emulated: `KVM_EXIT_INTERNAL_ERROR` with
//! `KVM_INTERNAL_ERROR_EMULATION` and the instruction bytes, on hardware and paravirtual
//! hosts alike.

use iced_x86::IcedError;
use iced_x86::code_asm::*;

use super::asm::{exit, long_mode};
use crate::devices::map;

/// The failing instruction, as assembled.
pub const FAILING: &str = "popcnt rax,[rdi]";

/// Ring 0.
pub fn build(base: u64) -> Result<Vec<u8>, IcedError> {
    long_mode(base, |a, p| {
        let msg = p.text(a, "fib(90) = 0x");
        let msg2 = p.text(a, "now: popcnt rax, [rdi] with rdi = 0xd0001000 (MMIO)\n");
        let nl = p.text(a, "\n");
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
        p.print(a, msg)?;
        p.print_hex(a)?;
        p.print(a, nl)?;
        p.print(a, msg2)?;
        a.mov(rdi, map::MMIO_UNCLAIMED)?;
        a.popcnt(rax, qword_ptr(rdi))?;
        // Only reached on a host that emulates POPCNT on MMIO.
        exit(a, 1)
    })
}

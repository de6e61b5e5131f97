//! `tsc` and `tsc-fail`: guests that read the time-stamp counter, which never exits under
//! KVM, and print values derived from it. Their replays diverge on every host (the TSC
//! differs between runs), so they test that a divergence report names `rdtsc`. `tsc-fail`
//! then ends in the same emulation failure as `emulation-failure`: its path diverges, and
//! its failure reproduces from the failure-point snapshot.

use iced_x86::IcedError;
use iced_x86::code_asm::*;

use super::asm::{exit, long_mode};
use crate::devices::map;

/// Ring 0: prints the TSC `rounds` times, the cycles a short loop took after each, then
/// exits with status 0 (`tsc`), or runs `popcnt rax, [rdi]` on MMIO (`tsc-fail`).
pub fn build(base: u64, rounds: u64, fail: bool) -> Result<Vec<u8>, IcedError> {
    long_mode(base, |a, p| {
        let label = p.text(a, "tsc 0x");
        let took = p.text(a, ", a 200-iteration loop took 0x");
        let nl = p.text(a, " cycles\n");
        let mut round = a.create_label();
        let mut spin = a.create_label();
        a.mov(r12, rounds.max(1))?;
        a.set_label(&mut round)?;
        // r13 = TSC now; print it.
        a.rdtsc()?;
        a.shl(rdx, 32)?;
        a.or(rax, rdx)?;
        a.mov(r13, rax)?;
        p.print(a, label)?;
        a.mov(rax, r13)?;
        p.print_hex(a)?;
        // Spin a little, then print how many cycles it took.
        a.mov(ecx, 200)?;
        a.set_label(&mut spin)?;
        a.dec(ecx)?;
        a.jnz(spin)?;
        a.rdtsc()?;
        a.shl(rdx, 32)?;
        a.or(rax, rdx)?;
        a.sub(rax, r13)?;
        a.mov(r13, rax)?;
        p.print(a, took)?;
        a.mov(rax, r13)?;
        p.print_hex(a)?;
        p.print(a, nl)?;
        a.dec(r12)?;
        a.jnz(round)?;
        if fail {
            a.mov(rdi, map::MMIO_UNCLAIMED)?;
            a.popcnt(rax, qword_ptr(rdi))?;
            // Only reached on a host that emulates POPCNT on MMIO.
            exit(a, 1)
        } else {
            exit(a, 0)
        }
    })
}

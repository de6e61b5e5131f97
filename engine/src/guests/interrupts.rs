//! `interrupts`: installs an IDT, starts the interval timer, counts timer interrupts while
//! halting, and prints the count. Injections are recorded; replay places them exactly.

use iced_x86::IcedError;
use iced_x86::code_asm::*;

use super::asm::{exit, idt_gate, long_mode};
use crate::devices::map;
use crate::guests::boot::IDT_ADDR;

/// Timer vector.
pub const VECTOR: u8 = 0x20;
/// Timer period in microseconds.
pub const PERIOD_US: u32 = 1000;

/// Ring 0 (it owns the IDT); counts `n` interrupts.
pub fn build(base: u64, n: u64) -> Result<Vec<u8>, IcedError> {
    long_mode(base, |a, p| {
        let msg = p.text(a, "timer interrupts: ");
        let nl = p.text(a, "\n");
        let counter = p.data(a, &[0; 8]);
        let idtr = p.data(a, &[0; 16]);
        let mut handler = a.create_label();
        let mut wait = a.create_label();
        // Gate for VECTOR: 64-bit interrupt gate, DPL 0, selector CS_RING0.
        idt_gate(a, VECTOR, handler)?;
        // IDTR = { limit 16 * 256 - 1, base IDT_ADDR }
        a.lea(rdi, ptr(idtr))?;
        a.mov(word_ptr(rdi), 0x0fffu32)?;
        a.mov(rax, IDT_ADDR)?;
        a.mov(qword_ptr(rdi + 2), rax)?;
        a.lidt(ptr(idtr))?;
        // Timer: vector, then period.
        a.mov(dx, u32::from(map::TIMER + 4))?;
        a.mov(eax, u32::from(VECTOR))?;
        a.out(dx, eax)?;
        a.mov(dx, u32::from(map::TIMER))?;
        a.mov(eax, PERIOD_US)?;
        a.out(dx, eax)?;
        // Wait for n interrupts.
        a.set_label(&mut wait)?;
        a.sti()?;
        a.hlt()?;
        a.cli()?;
        a.mov(rax, qword_ptr(counter))?;
        a.mov(rcx, n)?;
        a.cmp(rax, rcx)?;
        a.jb(wait)?;
        // Stop the timer and report.
        a.mov(dx, u32::from(map::TIMER))?;
        a.xor(eax, eax)?;
        a.out(dx, eax)?;
        p.print(a, msg)?;
        a.mov(rax, qword_ptr(counter))?;
        p.print_hex(a)?;
        p.print(a, nl)?;
        exit(a, 0)?;
        // The handler: count and return (no EOI: the timer is vmrr's, not an APIC).
        a.set_label(&mut handler)?;
        a.inc(qword_ptr(counter))?;
        a.iretq()
    })
}

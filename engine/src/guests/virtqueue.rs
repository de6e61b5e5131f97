//! `virtqueue`: a guest driving a device the way a virtio driver does, with none of its
//! requests or completions passing through an exit. It runs on KVM's in-kernel irqchip.
//!
//! Set-up, at ring 0 on the bootstrap processor (APs stay unstarted): an IDT gate for
//! [`VECTOR`], the 8259 pair masked and the local APIC's LINT0 masked (so an in-kernel
//! PIT tick cannot arrive as ExtINT), the local APIC software-enabled (spurious vector
//! 0xff, which has an `iretq` gate of its own), and IOAPIC redirection entry [`GSI`] sent
//! to [`VECTOR`]: fixed delivery, edge, active high, physical destination APIC 0,
//! unmasked.
//!
//! Then for rounds `1..=N`: the guest writes a request descriptor at [`DESC_ADDR`]
//! (buffer address u64, length u32, round u32; the length is [`len_of`] the round), puts a
//! guard byte just past the buffer, and writes the round number to [`NOTIFY_PORT`] (an
//! ioeventfd: no exit). It waits with `sti; hlt` until its handler saw the completion
//! interrupt (the handler sets a flag, writes the local APIC's EOI register and returns),
//! then checks that the buffer holds [`pattern`] and the guard byte is untouched, and
//! prints `virtqueue: round K ok` (or `... WRONG` and exits with status 1). After the
//! last round it exits with status 0.

use iced_x86::IcedError;
use iced_x86::code_asm::*;

use super::asm::{exit, idt_gate, long_mode};
use super::decimal::Decimal;
use crate::devices::map;
use crate::guests::boot::IDT_ADDR;

/// The notify port: a write of the round number asks the device to serve the descriptor.
/// No vmrr device claims it; the device's ioeventfd takes the write inside KVM.
pub const NOTIFY_PORT: u16 = map::VIRTQUEUE_NOTIFY;
/// The completion's GSI (IOAPIC pin). ISA assigns nothing to IRQ 10 on a PC (0 timer,
/// 1 keyboard, 2 cascade, 3/4 serial, 6 floppy, 8 RTC, 9 ACPI, 12 mouse, 13 FPU, 14/15
/// IDE), vmrr's devices raise none there, and KVM's default routing sends GSIs 0-23 to
/// the IOAPIC pin of the same number.
pub const GSI: u32 = 10;
/// The vector the IOAPIC entry delivers.
pub const VECTOR: u8 = 0x41;
/// The spurious-interrupt vector the local APIC is enabled with.
const SPURIOUS: u8 = 0xff;
/// Where the request descriptor lives: buffer address (u64), length (u32), round (u32).
pub const DESC_ADDR: u64 = 0x9_0000;
/// The buffer the device fills (not page-aligned: a request spans partial pages).
pub const BUF_ADDR: u64 = 0x9_1100;
/// The largest request length the guest makes ([`len_of`]) and the device serves.
pub const MAX_LEN: u32 = 8 * 1024;

/// xAPIC registers (identity-mapped by the boot page tables, which cover 4 GiB).
const LAPIC: u64 = 0xfee0_0000;
const LAPIC_EOI: u64 = LAPIC + 0xb0;
const LAPIC_SVR: u64 = LAPIC + 0xf0;
const LAPIC_LVT_LINT0: u64 = LAPIC + 0x350;
/// IOAPIC index and data registers.
const IOAPIC_INDEX: u64 = 0xfec0_0000;
const IOAPIC_DATA: u64 = 0xfec0_0010;

/// Bytes the guest asks for in round `round`: 1 KiB to 8 KiB, cycling.
pub fn len_of(round: u32) -> u32 {
    1024 * (1 + round % 8)
}

/// Byte `i` the device writes for round `round`.
pub fn pattern(round: u32, i: u32) -> u8 {
    round.wrapping_mul(31).wrapping_add(i).to_le_bytes()[0]
}

/// Emits a 32-bit store of `value` at the absolute address `addr`. Clobbers RAX.
fn store32(a: &mut CodeAssembler, addr: u64, value: u32) -> Result<(), IcedError> {
    a.mov(rax, addr)?;
    a.mov(dword_ptr(rax), value)
}

/// Ring 0: `rounds` requests, each checked (see the module docs).
pub fn build(base: u64, rounds: u64) -> Result<Vec<u8>, IcedError> {
    long_mode(base, |a, p| {
        let round_msg = p.text(a, "virtqueue: round ");
        let ok_msg = p.text(a, " ok\n");
        let wrong_msg = p.text(a, " WRONG\n");
        let flag = p.data(a, &[0; 8]);
        let idtr = p.data(a, &[0; 16]);
        let mut handler = a.create_label();
        let mut spurious = a.create_label();
        let dec = Decimal::new(a);
        let mut round = a.create_label();
        let mut wait = a.create_label();
        let mut got = a.create_label();
        let mut check = a.create_label();
        let mut checked = a.create_label();
        let mut wrong = a.create_label();
        let mut done = a.create_label();

        a.cli()?;
        idt_gate(a, VECTOR, handler)?;
        idt_gate(a, SPURIOUS, spurious)?;
        a.lea(rdi, ptr(idtr))?;
        a.mov(word_ptr(rdi), 0x0fffu32)?;
        a.mov(rax, IDT_ADDR)?;
        a.mov(qword_ptr(rdi + 2), rax)?;
        a.lidt(ptr(idtr))?;
        // The 8259 pair masked (KVM's, answered in the kernel).
        a.mov(al, 0xffu32)?;
        a.out(0x21u32, al)?;
        a.out(0xa1u32, al)?;
        // Local APIC: LINT0 masked, then software-enabled with the spurious vector.
        store32(a, LAPIC_LVT_LINT0, 0x1_0000)?;
        store32(a, LAPIC_SVR, 0x100 | u32::from(SPURIOUS))?;
        // IOAPIC entry GSI: high half (destination APIC 0) first, then the low half
        // (vector, fixed, physical, active high, edge, unmasked).
        store32(a, IOAPIC_INDEX, 0x11 + 2 * GSI)?;
        store32(a, IOAPIC_DATA, 0)?;
        store32(a, IOAPIC_INDEX, 0x10 + 2 * GSI)?;
        store32(a, IOAPIC_DATA, u32::from(VECTOR))?;

        // r12: the round (1..=rounds); r13: its length; rdi: the buffer.
        a.mov(r12d, 1u32)?;
        a.set_label(&mut round)?;
        a.mov(rax, rounds)?;
        a.cmp(r12, rax)?;
        a.ja(done)?;
        a.mov(eax, r12d)?;
        a.and(eax, 7)?;
        a.inc(eax)?;
        a.shl(eax, 10)?;
        a.mov(r13d, eax)?;
        a.mov(byte_ptr(flag), 0u32)?;
        // The guard byte: what the pattern would hold at `len`, inverted.
        a.mov(rdi, BUF_ADDR)?;
        a.imul_3(eax, r12d, 31)?;
        a.add(eax, r13d)?;
        a.not(eax)?;
        a.mov(byte_ptr(rdi + r13), al)?;
        // The descriptor, then the notification.
        a.mov(rsi, DESC_ADDR)?;
        a.mov(qword_ptr(rsi), rdi)?;
        a.mov(dword_ptr(rsi + 8), r13d)?;
        a.mov(dword_ptr(rsi + 12), r12d)?;
        a.mov(dx, u32::from(NOTIFY_PORT))?;
        a.mov(eax, r12d)?;
        a.out(dx, eax)?;
        // Wait for the completion: `sti; hlt` wakes for an interrupt pending at `sti`.
        a.set_label(&mut wait)?;
        a.cmp(byte_ptr(flag), 0)?;
        a.jne(got)?;
        a.sti()?;
        a.hlt()?;
        a.cli()?;
        a.jmp(wait)?;
        a.set_label(&mut got)?;
        // Check bytes 0..len, then the guard.
        a.xor(ecx, ecx)?;
        a.set_label(&mut check)?;
        a.cmp(rcx, r13)?;
        a.jae(checked)?;
        a.imul_3(eax, r12d, 31)?;
        a.add(eax, ecx)?;
        a.cmp(byte_ptr(rdi + rcx), al)?;
        a.jne(wrong)?;
        a.inc(rcx)?;
        a.jmp(check)?;
        a.set_label(&mut checked)?;
        a.imul_3(eax, r12d, 31)?;
        a.add(eax, r13d)?;
        a.not(eax)?;
        a.cmp(byte_ptr(rdi + r13), al)?;
        a.jne(wrong)?;
        p.print(a, round_msg)?;
        a.mov(rax, r12)?;
        a.call(dec.putdec)?;
        p.print(a, ok_msg)?;
        a.inc(r12)?;
        a.jmp(round)?;

        a.set_label(&mut wrong)?;
        p.print(a, round_msg)?;
        a.mov(rax, r12)?;
        a.call(dec.putdec)?;
        p.print(a, wrong_msg)?;
        exit(a, 1)?;

        a.set_label(&mut done)?;
        exit(a, 0)?;

        // The completion: note it, end the interrupt at the local APIC, return.
        a.set_label(&mut handler)?;
        a.push(rax)?;
        a.mov(byte_ptr(flag), 1u32)?;
        a.mov(rax, LAPIC_EOI)?;
        a.mov(dword_ptr(rax), 0u32)?;
        a.pop(rax)?;
        a.iretq()?;
        // A spurious interrupt takes no EOI.
        a.set_label(&mut spurious)?;
        a.iretq()?;

        dec.emit(a, &p.lib)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_fit_the_buffer_and_the_pattern_moves_per_round() {
        assert!((1..=64).all(|r| len_of(r) <= MAX_LEN && len_of(r) > 0));
        const { assert!(BUF_ADDR + (MAX_LEN as u64) < 0xa_0000, "below the VGA window firmware keeps") };
        const { assert!(DESC_ADDR + 16 <= BUF_ADDR) };
        assert_eq!(pattern(1, 0), 31);
        assert_eq!(pattern(2, 1), 63);
        assert_eq!(pattern(9, 300), ((9 * 31 + 300) & 0xff) as u8);
        assert_ne!(pattern(1, 5), pattern(2, 5));
    }

    #[test]
    fn assembles() {
        let b = build(0x10_0000, 16).expect("assembles");
        assert!(b.len() < 4096);
    }
}

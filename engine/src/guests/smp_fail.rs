//! `smp-fail`: every vCPU prints `cpu K: round R` (decimal) under a print lock, round
//! after round, each line a run of serial port exits; the AP with the highest APIC ID (vCPU `vcpus - 1`), once
//! every vCPU (itself included) has printed N rounds, announces and runs `popcnt rax, [rdi]` on MMIO (as `emulation-failure`): KVM cannot emulate it, so
//! that AP stops with an emulation failure while the other vCPUs keep printing. Should a
//! host emulate it, the AP says so and exits with status 1.

use iced_x86::code_asm::*;

use super::asm::{exit, long_mode};
use super::decimal::Decimal;
use super::smp::layout::MAX_VCPUS;
use super::smp::lock::{acquire, release};
use super::smp::startup::start_aps;
use super::smp::trampoline::{TrampolineError, trampoline};
use crate::devices::map;

/// The failing instruction, as assembled (the highest-index AP runs it).
pub const FAILING: &str = "popcnt rax,[rdi]";

/// Ring 0, `vcpus` vCPUs (at least 2), the failing AP fails after `n` rounds.
///
/// # Errors
/// The assembler's or the trampoline's.
pub fn build(base: u64, vcpus: u32, n: u64) -> Result<Vec<u8>, TrampolineError> {
    let tramp = trampoline()?;
    let last = vcpus.saturating_sub(1);
    let bytes = long_mode(base, |a, p| {
        let print_lock = p.data(a, &[0; 4]);
        // Rounds each vCPU has printed, by APIC ID.
        let done = p.data(a, &[0; 8 * MAX_VCPUS as usize]);
        let cpu = p.text(a, "cpu ");
        let round = p.text(a, ": round ");
        let nl = p.text(a, "\n");
        let now = p.text(a, ": now popcnt rax, [rdi] with rdi = 0xd0001000 (MMIO)\n");
        let emulated = p.text(a, ": popcnt on MMIO was emulated\n");
        let dec = Decimal::new(a);
        let mut ap_entry = a.create_label();
        let mut next = a.create_label();

        start_aps(a, p, vcpus, &tramp, ap_entry)?;
        a.xor(ebx, ebx)?;
        a.jmp(ap_entry)?;
        // Every vCPU: EBX = APIC ID, R12 = round (from 1).
        a.set_label(&mut ap_entry)?;
        a.mov(r12d, 1)?;
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        acquire(a, print_lock)?;
        p.print(a, cpu)?;
        a.mov(eax, ebx)?;
        a.call(dec.putdec)?;
        p.print(a, round)?;
        a.mov(rax, r12)?;
        a.call(dec.putdec)?;
        p.print(a, nl)?;
        release(a, print_lock)?;
        let mut counted = a.create_label();
        a.cmp(ebx, MAX_VCPUS)?;
        a.jae(counted)?;
        a.lea(rsi, ptr(done))?;
        a.mov(qword_ptr(rsi + rbx * 8), r12)?;
        a.set_label(&mut counted)?;
        a.cmp(ebx, last)?;
        a.jne(next)?;
        // The last AP fails once every vCPU has printed N rounds.
        a.mov(rdx, n)?;
        a.xor(ecx, ecx)?;
        let mut check = a.create_label();
        a.set_label(&mut check)?;
        a.cmp(qword_ptr(rsi + rcx * 8), rdx)?;
        a.jb(next)?;
        a.inc(ecx)?;
        a.cmp(ecx, vcpus)?;
        a.jb(check)?;
        // The last AP fails here.
        acquire(a, print_lock)?;
        p.print(a, cpu)?;
        a.mov(eax, ebx)?;
        a.call(dec.putdec)?;
        p.print(a, now)?;
        release(a, print_lock)?;
        a.mov(rdi, map::MMIO_UNCLAIMED)?;
        a.popcnt(rax, qword_ptr(rdi))?;
        // Only reached on a host that emulates POPCNT on MMIO.
        acquire(a, print_lock)?;
        p.print(a, cpu)?;
        a.mov(eax, ebx)?;
        a.call(dec.putdec)?;
        p.print(a, emulated)?;
        exit(a, 1)?;
        a.set_label(&mut next)?;
        a.inc(r12)?;
        a.jmp(top)?;
        dec.emit(a, &p.lib)
    })?;
    Ok(bytes)
}

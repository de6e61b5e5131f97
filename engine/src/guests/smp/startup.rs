//! The BSP's side of the start-up: copy the trampoline, fill the mailbox, INIT-SIPI-SIPI
//! to all but itself through the local APIC, wait for every AP to check in.

use iced_x86::IcedError;
use iced_x86::code_asm::*;

use super::layout::{
    ICR_INIT_ALL_BUT_SELF, ICR_PENDING, ICR_SIPI_ALL_BUT_SELF, INIT_DELAY_LOOPS, LAPIC_BASE, LAPIC_ICR_HIGH,
    LAPIC_ICR_LOW, LAPIC_SVR, MAILBOX, MAILBOX_CHECKED_IN, MAILBOX_ENTRY, MAILBOX_NEXT_INDEX,
    SIPI_DELAY_LOOPS, SIPI_VECTOR, SVR_ENABLE, TRAMPOLINE,
};
use crate::guests::asm::Program;

/// Emits the BSP's start-up of `vcpus - 1` APs, each to continue at `ap_entry` with its
/// APIC ID in EBX (vmrr's vCPU index: 1..`vcpus`) and its own stack; `trampoline` is the bytes of
/// [`super::trampoline::trampoline`]. Returns once all have checked in (it waits as long
/// as that takes). Emits nothing for one vCPU. Clobbers RAX, RCX, RDX, RSI, RDI.
///
/// # Errors
/// The assembler's.
pub fn start_aps(
    a: &mut CodeAssembler,
    p: &mut Program,
    vcpus: u32,
    trampoline: &[u8],
    ap_entry: CodeLabel,
) -> Result<(), IcedError> {
    if vcpus <= 1 {
        return Ok(());
    }
    let image = p.data(a, trampoline);
    let len = u32::try_from(trampoline.len()).unwrap_or(u32::MAX);
    // The trampoline to its page.
    a.lea(rsi, ptr(image))?;
    a.mov(edi, u32::try_from(TRAMPOLINE).unwrap_or(0))?;
    a.mov(ecx, len)?;
    a.cld()?;
    a.rep().movsb()?;
    // The mailbox.
    a.mov(edx, u32::try_from(MAILBOX).unwrap_or(0))?;
    a.lea(rax, ptr(ap_entry))?;
    a.mov(qword_ptr(rdx + MAILBOX_ENTRY as i32), rax)?;
    a.mov(dword_ptr(rdx + MAILBOX_NEXT_INDEX as i32), 1)?;
    a.mov(dword_ptr(rdx + MAILBOX_CHECKED_IN as i32), 0)?;
    // The local APIC: enable, then INIT, SIPI, SIPI to all but self.
    a.mov(esi, u32::try_from(LAPIC_BASE).unwrap_or(0))?;
    a.mov(dword_ptr(rsi + LAPIC_SVR as i32), SVR_ENABLE)?;
    a.mov(dword_ptr(rsi + LAPIC_ICR_HIGH as i32), 0)?;
    send_ipi(a, ICR_INIT_ALL_BUT_SELF)?;
    delay(a, INIT_DELAY_LOOPS)?;
    for _ in 0..2 {
        send_ipi(a, ICR_SIPI_ALL_BUT_SELF | u32::from(SIPI_VECTOR))?;
        delay(a, SIPI_DELAY_LOOPS)?;
    }
    // Wait for the check-ins.
    let mut wait = a.create_label();
    a.set_label(&mut wait)?;
    a.pause()?;
    a.cmp(dword_ptr(rdx + MAILBOX_CHECKED_IN as i32), vcpus - 1)?;
    a.jb(wait)?;
    Ok(())
}

/// Writes ICR low (RSI = the LAPIC base) and waits until the LAPIC has sent it.
fn send_ipi(a: &mut CodeAssembler, icr_low: u32) -> Result<(), IcedError> {
    a.mov(dword_ptr(rsi + LAPIC_ICR_LOW as i32), icr_low)?;
    let mut pending = a.create_label();
    a.set_label(&mut pending)?;
    a.pause()?;
    a.test(dword_ptr(rsi + LAPIC_ICR_LOW as i32), ICR_PENDING)?;
    a.jnz(pending)
}

/// A counted wait of `loops` iterations (clobbers ECX).
fn delay(a: &mut CodeAssembler, loops: u32) -> Result<(), IcedError> {
    let mut top = a.create_label();
    a.mov(ecx, loops)?;
    a.set_label(&mut top)?;
    a.pause()?;
    a.dec(ecx)?;
    a.jnz(top)
}

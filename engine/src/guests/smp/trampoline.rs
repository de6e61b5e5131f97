//! The trampoline an AP starts in: 16-bit real mode at [`TRAMPOLINE`] straight to 64-bit
//! long mode (no 32-bit stage), then an index, a stack, a check-in and a jump to the AP
//! entry the BSP left in the mailbox. It depends on nothing in the guest image: the BSP
//! copies it (embedded as data) and fills the mailbox, so one trampoline serves every
//! smp guest.
//!
//! Page layout: 16-bit code at offset 0; the GDT pseudo-descriptor at [`GDTR_OFFSET`];
//! 64-bit code at [`LONG_OFFSET`]; the mailbox at [`MAILBOX`] (written by the BSP, not
//! part of the bytes).

use iced_x86::IcedError;
use iced_x86::code_asm::*;

use super::layout::{
    AP_CR3, AP_STACK_SHIFT, AP_STACKS, GDTR_OFFSET, LONG_OFFSET, MAILBOX, MAILBOX_CHECKED_IN, MAILBOX_ENTRY,
    MAILBOX_NEXT_INDEX, MAILBOX_SIZE, MAX_VCPUS, MSR_EFER, TRAMPOLINE, TRAMPOLINE_PAGE,
};
use crate::guests::boot::{CS_RING0, DS_RING0, EFER_LME, GDT_ADDR, GDT_LIMIT, LONG_MODE_CR0, LONG_MODE_CR4};

/// The pseudo-descriptor `lgdt` loads in real mode: the BSP's GDT at [`GDT_ADDR`] (its
/// 64-bit code segment [`CS_RING0`] and data segment [`DS_RING0`]), limit then 32-bit base.
pub const GDTR: [u8; 6] = {
    let l = GDT_LIMIT.to_le_bytes();
    let b = (GDT_ADDR as u32).to_le_bytes();
    [l[0], l[1], b[0], b[1], b[2], b[3]]
};

/// Assembling the trampoline failed (a bug: its code is fixed).
#[derive(Debug, thiserror::Error)]
pub enum TrampolineError {
    /// The assembler refused an instruction.
    #[error("cannot assemble the AP trampoline")]
    Assemble(#[from] IcedError),
    /// A part of the trampoline outgrew its place in the page.
    #[error("the AP trampoline's {part} ends at offset {end:#x}, past {limit:#x}")]
    Layout {
        /// Which part.
        part: &'static str,
        /// Where it ends (offset in the page).
        end: u64,
        /// Where it must end by.
        limit: u64,
    },
}

/// Assembles the trampoline's bytes, to be copied to [`TRAMPOLINE`].
///
/// # Errors
/// The assembler's, or a part outgrowing its place in the page.
pub fn trampoline() -> Result<Vec<u8>, TrampolineError> {
    let mut bytes = real_part()?;
    let fits = |part, end: usize, limit: u64| {
        let end = end as u64;
        if end > limit { Err(TrampolineError::Layout { part, end, limit }) } else { Ok(()) }
    };
    fits("16-bit part", bytes.len(), GDTR_OFFSET)?;
    bytes.resize(bytes.len().max(GDTR_OFFSET as usize), 0x90);
    bytes.extend_from_slice(&GDTR);
    fits("GDT pseudo-descriptor", bytes.len(), LONG_OFFSET)?;
    bytes.resize(bytes.len().max(LONG_OFFSET as usize), 0);
    bytes.extend_from_slice(&long_part()?);
    fits("64-bit part", bytes.len(), MAILBOX - TRAMPOLINE)?;
    fits("mailbox", (MAILBOX - TRAMPOLINE + MAILBOX_SIZE) as usize, TRAMPOLINE_PAGE)?;
    Ok(bytes)
}

/// Real mode, CS = vector << 8: interrupts off, the BSP's GDT, PAE, its page tables,
/// EFER.LME, then PE and PG at once and a far jump into the 64-bit code segment.
fn real_part() -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(16)?;
    a.cli()?;
    a.xor(ax, ax)?;
    a.mov(ds, ax)?;
    a.lgdt(ptr(TRAMPOLINE + GDTR_OFFSET))?;
    a.mov(eax, u32::try_from(LONG_MODE_CR4).unwrap_or(0x20))?;
    a.mov(cr4, eax)?;
    a.mov(eax, u32::try_from(AP_CR3).unwrap_or(0))?;
    a.mov(cr3, eax)?;
    a.mov(ecx, MSR_EFER)?;
    a.rdmsr()?;
    a.or(eax, i32::try_from(EFER_LME).unwrap_or(0))?;
    a.wrmsr()?;
    a.mov(eax, u32::try_from(LONG_MODE_CR0).unwrap_or(0))?;
    a.mov(cr0, eax)?;
    a.jmp_far(CS_RING0, u32::try_from(TRAMPOLINE + LONG_OFFSET).unwrap_or(0))?;
    a.assemble(TRAMPOLINE)
}

/// 64-bit, at [`TRAMPOLINE`] + [`LONG_OFFSET`]: data segments, an index by `lock xadd`
/// (an index past [`MAX_VCPUS`] parks), RSP, the check-in, and `jmp` to the entry with
/// the index in EBX.
fn long_part() -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    let mut park = a.create_label();
    a.mov(ax, u32::from(DS_RING0))?;
    a.mov(ds, ax)?;
    a.mov(es, ax)?;
    a.mov(ss, ax)?;
    a.mov(fs, ax)?;
    a.mov(gs, ax)?;
    a.mov(edx, u32::try_from(MAILBOX).unwrap_or(0))?;
    a.mov(ebx, 1)?;
    a.lock().xadd(dword_ptr(rdx + MAILBOX_NEXT_INDEX as i32), ebx)?;
    a.cmp(ebx, MAX_VCPUS)?;
    a.jae(park)?;
    a.mov(esp, ebx)?;
    a.shl(rsp, AP_STACK_SHIFT)?;
    a.add(rsp, i32::try_from(AP_STACKS).unwrap_or(0))?;
    a.lock().inc(dword_ptr(rdx + MAILBOX_CHECKED_IN as i32))?;
    a.mov(rax, qword_ptr(rdx + MAILBOX_ENTRY as i32))?;
    a.jmp(rax)?;
    a.set_label(&mut park)?;
    a.cli()?;
    a.hlt()?;
    a.jmp(park)?;
    a.assemble(TRAMPOLINE + LONG_OFFSET)
}

//! The trampoline an AP starts in: 16-bit real mode at [`TRAMPOLINE`] straight to 64-bit
//! long mode (no 32-bit stage), then a stack slot, its APIC ID, a check-in and a jump to the AP
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
    AP_CR3, AP_STACK_SHIFT, AP_STACKS, GDTR_OFFSET, LAPIC_BASE, LAPIC_ID, LONG_OFFSET, MAILBOX,
    MAILBOX_CHECKED_IN, MAILBOX_ENTRY, MAILBOX_NEXT_INDEX, MAILBOX_SIZE, MAX_VCPUS, MSR_EFER, TRAMPOLINE,
    TRAMPOLINE_PAGE,
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

/// 64-bit, at [`TRAMPOLINE`] + [`LONG_OFFSET`]: data segments, a stack slot by
/// `lock xadd` (a slot past [`MAX_VCPUS`] parks), RSP, the APIC ID in EBX, the check-in,
/// and `jmp` to the entry.
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
    a.mov(ecx, 1)?;
    a.lock().xadd(dword_ptr(rdx + MAILBOX_NEXT_INDEX as i32), ecx)?;
    a.cmp(ecx, MAX_VCPUS)?;
    a.jae(park)?;
    a.mov(esp, ecx)?;
    a.shl(rsp, AP_STACK_SHIFT)?;
    a.add(rsp, i32::try_from(AP_STACKS).unwrap_or(0))?;
    a.mov(esi, u32::try_from(LAPIC_BASE).unwrap_or(0))?;
    a.mov(ebx, dword_ptr(rsi + LAPIC_ID as i32))?;
    a.shr(ebx, 24)?;
    a.lock().inc(dword_ptr(rdx + MAILBOX_CHECKED_IN as i32))?;
    a.mov(rax, qword_ptr(rdx + MAILBOX_ENTRY as i32))?;
    a.jmp(rax)?;
    a.set_label(&mut park)?;
    a.cli()?;
    a.hlt()?;
    a.jmp(park)?;
    a.assemble(TRAMPOLINE + LONG_OFFSET)
}

#[cfg(test)]
mod tests {
    use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind};

    use super::*;

    #[test]
    fn fits_its_page_below_the_mailbox() {
        let t = trampoline().expect("assembles");
        assert!((t.len() as u64) <= MAILBOX - TRAMPOLINE, "{} bytes", t.len());
        assert_eq!(&t[GDTR_OFFSET as usize..GDTR_OFFSET as usize + 6], &GDTR);
        assert_eq!(u16::from_le_bytes([GDTR[0], GDTR[1]]), GDT_LIMIT);
        assert_eq!(u32::from_le_bytes([GDTR[2], GDTR[3], GDTR[4], GDTR[5]]) as u64, GDT_ADDR);
    }

    #[test]
    fn real_part_decodes_to_cli_lgdt_and_a_far_jump_into_the_long_part() {
        let t = trampoline().expect("assembles");
        let mut d = Decoder::with_ip(16, &t[..GDTR_OFFSET as usize], TRAMPOLINE, DecoderOptions::NONE);
        let insns: Vec<_> = d.iter().collect();
        assert_eq!(insns[0].mnemonic(), Mnemonic::Cli);
        let lgdt = insns.iter().find(|i| i.mnemonic() == Mnemonic::Lgdt).expect("lgdt");
        assert_eq!(lgdt.memory_displacement64(), TRAMPOLINE + GDTR_OFFSET);
        assert!(insns.iter().any(|i| i.mnemonic() == Mnemonic::Wrmsr));
        let jmp = insns.iter().find(|i| i.mnemonic() == Mnemonic::Jmp).expect("far jump");
        assert_eq!(jmp.op0_kind(), OpKind::FarBranch16);
        assert_eq!(jmp.far_branch_selector(), CS_RING0);
        assert_eq!(u64::from(jmp.far_branch16()), TRAMPOLINE + LONG_OFFSET);
        // Everything after the far jump up to the descriptor is padding.
        let end = (jmp.next_ip() - TRAMPOLINE) as usize;
        assert!(t[end..GDTR_OFFSET as usize].iter().all(|&b| b == 0x90));
    }

    #[test]
    fn long_part_takes_a_slot_with_lock_xadd_and_jumps_through_the_mailbox() {
        let t = trampoline().expect("assembles");
        let ip = TRAMPOLINE + LONG_OFFSET;
        let mut d = Decoder::with_ip(64, &t[LONG_OFFSET as usize..], ip, DecoderOptions::NONE);
        let insns: Vec<_> = d.iter().collect();
        let xadd = insns.iter().find(|i| i.mnemonic() == Mnemonic::Xadd).expect("xadd");
        assert!(xadd.has_lock_prefix());
        assert_eq!(xadd.memory_displacement64(), MAILBOX_NEXT_INDEX);
        let load = insns
            .iter()
            .find(|i| {
                i.mnemonic() == Mnemonic::Mov
                    && i.memory_displacement64() == MAILBOX_ENTRY
                    && i.op1_kind() == OpKind::Memory
            })
            .expect("entry load");
        let jmp = insns.iter().find(|i| i.mnemonic() == Mnemonic::Jmp).expect("jmp");
        assert_eq!(jmp.op0_kind(), OpKind::Register);
        assert_eq!(jmp.op0_register(), load.op0_register());
    }
}

//! Fixed guest-physical addresses and values of the AP start-up.
//!
//! The trampoline page is [`TRAMPOLINE`] (`0x8000`): a real-mode AP starts at a 4 KiB page
//! below 1 MiB named by the SIPI vector. `0x8000` is the first such page clear of
//! everything else the built-in guests place low: the GDT at `0x500`, the IDT page at
//! `0x1000`, the TSS and its I/O bitmap at `0x3000..0x5069`, and a boot sector at
//! [`super::super::REAL_LOAD`] (`0x7c00..0x7e00`, real-mode guests only); it lies below
//! the page tables at `0x10000` and far below the BSP's stack, which grows down from
//! `0x80000`. The AP stacks take [`AP_STACKS`]`..`[`AP_STACKS_END`], above the long-mode
//! image (loaded at 1 MiB, a few KiB long) and inside the smallest guest memory the
//! built-in guests are run with.

use crate::guests::boot::PML4_ADDR;

/// Guest-physical address of the trampoline page (4 KiB aligned, below 1 MiB).
pub const TRAMPOLINE: u64 = 0x8000;
/// Size of the trampoline page.
pub const TRAMPOLINE_PAGE: u64 = 0x1000;
/// The SIPI vector: the trampoline's page number. An AP starts at CS = vector << 8, IP 0.
pub const SIPI_VECTOR: u8 = (TRAMPOLINE >> 12) as u8;
/// Offset in the trampoline of the pseudo-descriptor `lgdt` loads (limit u16, base u32).
pub const GDTR_OFFSET: u64 = 0x78;
/// Offset in the trampoline of its 64-bit part, the target of the far jump.
pub const LONG_OFFSET: u64 = 0x80;
/// The mailbox the BSP fills after copying the trampoline: guest-physical address.
pub const MAILBOX: u64 = TRAMPOLINE + 0xf00;
/// Mailbox offset of the AP entry address (u64) the trampoline jumps to.
pub const MAILBOX_ENTRY: u64 = 0;
/// Mailbox offset of the next AP stack slot (u32, the BSP sets it to 1; each AP takes one
/// with `lock xadd`, in the order they arrive).
pub const MAILBOX_NEXT_INDEX: u64 = 8;
/// Mailbox offset of the number of APs that checked in (u32, the BSP waits on it).
pub const MAILBOX_CHECKED_IN: u64 = 12;
/// Bytes of the mailbox.
pub const MAILBOX_SIZE: u64 = 16;
/// Most vCPUs the smp guests run on (their AP stacks are laid out for this many).
pub const MAX_VCPUS: u32 = 64;
/// Bytes of stack per AP.
pub const AP_STACK_SIZE: u64 = 0x2000;
/// log2 of [`AP_STACK_SIZE`] (the trampoline shifts the index by it).
pub const AP_STACK_SHIFT: u32 = AP_STACK_SIZE.trailing_zeros();
/// Base of the AP stacks: the AP that took slot `i` (1..[`MAX_VCPUS`]) starts with RSP =
/// `AP_STACKS + i * AP_STACK_SIZE`, so its stack is the `AP_STACK_SIZE` bytes below.
pub const AP_STACKS: u64 = 0x20_0000;
/// End of the AP stacks (the top of the last AP's stack).
pub const AP_STACKS_END: u64 = AP_STACKS + (MAX_VCPUS as u64 - 1) * AP_STACK_SIZE;
/// The local APIC's MMIO base (xAPIC mode, the reset value of IA32_APIC_BASE).
pub const LAPIC_BASE: u64 = 0xfee0_0000;
/// Local APIC register: the APIC ID, in bits 24..32 (vmrr gives vCPU `i` APIC ID `i`).
pub const LAPIC_ID: u64 = 0x20;
/// Local APIC register: spurious-interrupt vector (bit 8 enables the APIC in software).
pub const LAPIC_SVR: u64 = 0xf0;
/// Local APIC register: interrupt command, low half (writing it sends the IPI).
pub const LAPIC_ICR_LOW: u64 = 0x300;
/// Local APIC register: interrupt command, high half (destination APIC ID in bits 24..32).
pub const LAPIC_ICR_HIGH: u64 = 0x310;
/// SVR value the BSP writes: APIC software-enabled, spurious vector 0xff.
pub const SVR_ENABLE: u32 = 0x1ff;
/// ICR delivery-status bit: the previous IPI is still being sent.
pub const ICR_PENDING: u32 = 1 << 12;
/// ICR low for INIT: shorthand "all excluding self", level assert, delivery mode INIT.
pub const ICR_INIT_ALL_BUT_SELF: u32 = 0x000c_4500;
/// ICR low for a start-up IPI to all but self, without its vector (the low byte).
pub const ICR_SIPI_ALL_BUT_SELF: u32 = 0x000c_4600;
/// Iterations of the counted wait after INIT (the in-kernel LAPIC needs no real delay;
/// on hardware the architecture asks for 10 ms, which this does not promise).
pub const INIT_DELAY_LOOPS: u32 = 10_000;
/// Iterations of the counted wait after each SIPI.
pub const SIPI_DELAY_LOOPS: u32 = 1_000;
/// EFER's MSR number.
pub const MSR_EFER: u32 = 0xc000_0080;
/// CR3 the APs load: the BSP's identity page tables.
pub const AP_CR3: u64 = PML4_ADDR;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guests::boot::{GDT_ADDR, GDT_LIMIT, IDT_ADDR, LONG_MODE_FREE, TSS_ADDR};
    use crate::guests::{LONG_LOAD, LONG_STACK, REAL_LOAD};

    #[test]
    fn trampoline_page_is_a_sipi_page_clear_of_the_boot_layout() {
        assert_eq!(TRAMPOLINE % 0x1000, 0);
        const { assert!(TRAMPOLINE + TRAMPOLINE_PAGE <= 0x10_0000) };
        assert_eq!(u64::from(SIPI_VECTOR) << 12, TRAMPOLINE);
        let page = TRAMPOLINE..TRAMPOLINE + TRAMPOLINE_PAGE;
        // GDT, IDT page, TSS with its 8 KiB I/O bitmap, a boot sector, the page tables.
        let others = [
            (GDT_ADDR, GDT_ADDR + u64::from(GDT_LIMIT) + 1),
            (IDT_ADDR, IDT_ADDR + 0x1000),
            (TSS_ADDR, TSS_ADDR + 0x68 + 8192 + 1),
            (REAL_LOAD, REAL_LOAD + 512),
            (PML4_ADDR, LONG_MODE_FREE),
        ];
        for (s, e) in others {
            assert!(e <= page.start || s >= page.end, "{s:#x}..{e:#x} overlaps the trampoline page");
        }
        assert!(page.end <= LONG_STACK - 0x1000, "the BSP stack grows down from {LONG_STACK:#x}");
        assert!(MAILBOX >= TRAMPOLINE && MAILBOX + MAILBOX_SIZE <= page.end);
    }

    #[test]
    fn ap_stacks_lie_above_the_image_and_below_the_mmio_hole() {
        assert_eq!(1u64 << AP_STACK_SHIFT, AP_STACK_SIZE);
        const { assert!(AP_STACKS >= LONG_LOAD + 0x10_0000, "a MiB left for the image") };
        const { assert!(AP_STACKS_END <= crate::kvm::memory::MMIO_HOLE_START) };
        assert!(i32::try_from(AP_STACKS_END).is_ok(), "the trampoline adds it as an imm32");
        const { assert!(LAPIC_BASE >= crate::kvm::memory::MMIO_HOLE_START) };
    }
}

//! Where a Linux guest's boot structures live in guest-physical memory, and the memory map
//! it is given.
//!
//! | address | holds |
//! |---|---|
//! | `0x500` | GDT: `0x10` code, `0x18` data (the boot protocol's `__BOOT_CS`/`__BOOT_DS`), `0x20` TSS |
//! | `0x6000` | PVH `hvm_start_info`, then its module list and memory map |
//! | `0x7000` | the 64-bit boot protocol's `boot_params` (the "zero page") |
//! | `0x10000` | identity page tables (64-bit boot protocol only) |
//! | `0x20000` | the command line |
//! | `0x9fc00..0x100000` | reserved: the EBDA, the VGA window, the BIOS area; ACPI tables at `0xe0000` |
//! | `0x1000000` | the kernel (its ELF's physical addresses) |
//! | top of low RAM | the initramfs, page-aligned, below the kernel's `initrd_addr_max` |

use crate::kvm::memory::PAGE_SIZE;

/// The Linux GDT.
pub const GDT: u64 = 0x500;
/// `__BOOT_CS`.
pub const BOOT_CS: u16 = 0x10;
/// `__BOOT_DS`.
pub const BOOT_DS: u16 = 0x18;
/// The TSS selector.
pub const BOOT_TSS: u16 = 0x20;
/// PVH start info.
pub const START_INFO: u64 = 0x6000;
/// PVH module list (one entry: the initramfs).
pub const MODLIST: u64 = 0x6040;
/// PVH memory map.
pub const MEMMAP: u64 = 0x6080;
/// Most memory-map entries written.
pub const MEMMAP_MAX: usize = 8;
/// The zero page.
pub const ZERO_PAGE: u64 = 0x7000;
/// The command line.
pub const CMDLINE: u64 = 0x2_0000;
/// Longest command line vmrr places (the x86 kernel's `COMMAND_LINE_SIZE` is 2048,
/// terminating NUL included).
pub const CMDLINE_MAX: usize = 2047;
/// Start of the reserved area below 1 MiB (the EBDA).
pub const EBDA: u64 = 0x9_fc00;
/// Where the ACPI tables start (the RSDP first; firmware's usual place, which the
/// kernel also scans).
pub const ACPI: u64 = 0xe_0000;
/// First address of high memory: the kernel and initramfs live above it.
pub const HIGH: u64 = 0x10_0000;
/// Highest end of an initramfs when the kernel says nothing (PVH): the boot protocol's
/// historical default.
pub const INITRD_MAX_DEFAULT: u64 = 0x7fff_ffff;

/// An E820 memory-map entry type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E820 {
    /// Usable RAM.
    Ram = 1,
    /// Reserved.
    Reserved = 2,
}

/// The memory map of a guest whose RAM is `ram` (`(start, end)` ranges, in order).
pub fn memory_map(ram: &[(u64, u64)]) -> Vec<(u64, u64, E820)> {
    let mut map = Vec::new();
    for &(start, end) in ram {
        if start == 0 {
            map.push((0, EBDA.min(end), E820::Ram));
            if end > HIGH {
                map.push((EBDA, HIGH, E820::Reserved));
                map.push((HIGH, end, E820::Ram));
            }
        } else {
            map.push((start, end, E820::Ram));
        }
    }
    map
}

/// Where an initramfs of `len` bytes goes: as high as it fits below `max_end` (and below
/// the end of low RAM), above `floor`, page-aligned. `None` when it does not fit.
pub fn initrd_at(len: u64, low_ram_end: u64, max_end: u64, floor: u64) -> Option<u64> {
    let top = low_ram_end.min(max_end.saturating_add(1));
    let at = top.checked_sub(len)? & !(PAGE_SIZE - 1);
    (at >= floor.next_multiple_of(PAGE_SIZE)).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_ram_has_its_bios_hole_reserved() {
        let m = memory_map(&[(0, 512 << 20)]);
        assert_eq!(m, vec![(0, EBDA, E820::Ram), (EBDA, HIGH, E820::Reserved), (HIGH, 512 << 20, E820::Ram)]);
        let m = memory_map(&[(0, 3 << 30), (4 << 30, 5 << 30)]);
        assert_eq!(m.last(), Some(&(4 << 30, 5 << 30, E820::Ram)));
    }

    #[test]
    fn initrd_goes_high_and_refuses_what_does_not_fit() {
        assert_eq!(initrd_at(0x1800, 0x100_0000, INITRD_MAX_DEFAULT, 0x40_0000), Some(0xffe000));
        assert_eq!(initrd_at(0x100_0000, 0x100_0000, INITRD_MAX_DEFAULT, 0x40_0000), None);
        assert_eq!(initrd_at(1 << 40, 0x100_0000, INITRD_MAX_DEFAULT, 0), None);
    }
}

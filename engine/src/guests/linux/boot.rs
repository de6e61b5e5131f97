//! Loading a prepared kernel into guest memory and setting up the boot vCPU: rust-vmm's
//! `linux-loader` loads the ELF or bzImage and writes the PVH start info or the zero page
//! through its configurators; vmrr places the command line, the initramfs, the ACPI tables
//! and the GDT, and gives the vCPU the state each protocol specifies.

use std::io::Cursor;

use kvm_bindings::{Msrs, kvm_dtable, kvm_msr_entry, kvm_regs, kvm_segment};
use kvm_ioctls::VcpuFd;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{ByteValued, GuestAddress};

use super::layout::{self, E820};
use super::{Entry, PreparedKernel, acpi};
use crate::guests::boot::{BootError, flat_segment};
use crate::kvm::memory::GuestMemory;
use crate::kvm::system::KvmError;

/// `hvm_start_info.magic`.
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// `setup_header.boot_flag`.
const BOOT_FLAG: u16 = 0xaa55;
/// `setup_header.header`: `HdrS`.
const HDRS: u32 = 0x5372_6448;
/// `setup_header.type_of_loader`: "other".
const LOADER_OTHER: u8 = 0xff;
/// `loadflags.LOADED_HIGH`.
const LOADED_HIGH: u8 = 0x1;
/// `IA32_MTRR_DEF_TYPE`.
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// `IA32_MISC_ENABLE`.
const MSR_MISC_ENABLE: u32 = 0x1a0;
/// Local APIC register offsets of LINT0 and LINT1.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;

/// Where a loaded kernel starts and what its first instruction finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// 32-bit protected mode at `rip`, `EBX` = the start info.
    Pvh {
        /// The PVH entry.
        rip: u64,
    },
    /// 64-bit long mode at `rip`, `RSI` = the zero page.
    Long {
        /// `startup_64`.
        rip: u64,
    },
}

/// Loading the kernel failed (a bug or a kernel the checks let through).
#[derive(Debug, thiserror::Error)]
pub enum LinuxLoadError {
    /// `linux-loader` refused the kernel.
    #[error("linux-loader could not load the kernel")]
    Loader(#[source] linux_loader::loader::Error),
    /// A boot configurator failed.
    #[error("linux-loader could not write the boot parameters")]
    Configurator(#[source] linux_loader::configurator::Error),
    /// Writing a boot structure into guest memory failed.
    #[error("cannot write {what} into guest memory")]
    Memory {
        /// The structure.
        what: &'static str,
        /// The memory error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// The initramfs no longer fits (the checks said it did).
    #[error("the initramfs does not fit guest memory")]
    Initrd,
}

fn mem_err(what: &'static str) -> impl FnOnce(vm_memory::GuestMemoryError) -> LinuxLoadError {
    move |source| LinuxLoadError::Memory { what, source }
}

/// Loads `k` into `mem` for a machine of `vcpus` vCPUs; returns where it starts.
///
/// # Errors
/// [`LinuxLoadError`].
pub fn load(mem: &GuestMemory, k: &PreparedKernel, vcpus: u32) -> Result<Start, LinuxLoadError> {
    let high = Some(GuestAddress(layout::HIGH));
    let mut image = Cursor::new(&k.image[..]);
    let (loaded, kernel_end) = match k.entry {
        Entry::BzImage => {
            let r = BzImage::load(mem.mem(), None, &mut image, high).map_err(LinuxLoadError::Loader)?;
            (r.kernel_load.0, r.kernel_end)
        }
        Entry::Pvh { .. } | Entry::Elf64 { .. } => {
            let r = Elf::load(mem.mem(), None, &mut image, high).map_err(LinuxLoadError::Loader)?;
            (r.kernel_load.0, r.kernel_end)
        }
    };
    // Everything the kernel occupies once running (a bzImage decompresses in place).
    let occupied = match (&k.elf, &k.setup) {
        (Some(e), _) => e.span().1,
        (None, Some(h)) => h.pref_address.max(layout::HIGH) + u64::from(h.init_size),
        (None, None) => kernel_end,
    }
    .max(kernel_end);
    let mut cmdline = k.cmdline.as_bytes().to_vec();
    cmdline.push(0);
    mem.write(GuestAddress(layout::CMDLINE), &cmdline).map_err(mem_err("the command line"))?;
    let rsdp = acpi::write(mem, layout::ACPI, vcpus).map_err(mem_err("the ACPI tables"))?;
    write_gdt(mem, matches!(k.entry, Entry::Pvh { .. })).map_err(mem_err("the GDT"))?;
    let ram = mem.ram_ranges();
    let map = layout::memory_map(&ram);
    let low_end = ram.iter().find(|r| r.0 == 0).map_or(0, |r| r.1);
    let max = k.setup.as_ref().map_or(layout::INITRD_MAX_DEFAULT, |h| u64::from(h.initrd_addr_max));
    let initrd = match &k.initrd {
        None => None,
        Some((bytes, _)) => {
            let len = bytes.len() as u64;
            let at = layout::initrd_at(len, low_end, max, occupied).ok_or(LinuxLoadError::Initrd)?;
            mem.write(GuestAddress(at), bytes).map_err(mem_err("the initramfs"))?;
            Some((at, len))
        }
    };
    match k.entry {
        Entry::Pvh { entry } => {
            write_start_info(mem, &map, initrd, rsdp)?;
            Ok(Start::Pvh { rip: entry })
        }
        Entry::Elf64 { entry } => {
            write_zero_page(mem, k, &map, initrd, rsdp)?;
            Ok(Start::Long { rip: entry })
        }
        Entry::BzImage => {
            write_zero_page(mem, k, &map, initrd, rsdp)?;
            Ok(Start::Long { rip: loaded + 0x200 })
        }
    }
}

/// The GDT: null, null, `__BOOT_CS` (32-bit code for PVH, 64-bit otherwise), `__BOOT_DS`,
/// and a TSS descriptor.
fn write_gdt(mem: &GuestMemory, pvh: bool) -> Result<(), vm_memory::GuestMemoryError> {
    let code = if pvh { 0x00cf_9b00_0000_ffffu64 } else { 0x00af_9b00_0000_ffff };
    let entries: [u64; 6] = [0, 0, code, 0x00cf_9300_0000_ffff, 0x0000_8b00_0000_0067, 0];
    let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.write(GuestAddress(layout::GDT), &bytes)
}

fn write_start_info(
    mem: &GuestMemory,
    map: &[(u64, u64, E820)],
    initrd: Option<(u64, u64)>,
    rsdp: u64,
) -> Result<(), LinuxLoadError> {
    let entries: Vec<hvm_memmap_table_entry> = map
        .iter()
        .take(layout::MEMMAP_MAX)
        .map(|&(s, e, t)| hvm_memmap_table_entry { addr: s, size: e - s, type_: t as u32, reserved: 0 })
        .collect();
    let info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        flags: 0,
        nr_modules: u32::from(initrd.is_some()),
        modlist_paddr: if initrd.is_some() { layout::MODLIST } else { 0 },
        cmdline_paddr: layout::CMDLINE,
        rsdp_paddr: rsdp,
        memmap_paddr: layout::MEMMAP,
        memmap_entries: u32::try_from(entries.len()).unwrap_or(0),
        reserved: 0,
    };
    let mut params = BootParams::new(&info, GuestAddress(layout::START_INFO));
    params.set_sections(&entries, GuestAddress(layout::MEMMAP));
    if let Some((at, len)) = initrd {
        let module = hvm_modlist_entry { paddr: at, size: len, cmdline_paddr: 0, reserved: 0 };
        params.set_modules(&[module], GuestAddress(layout::MODLIST));
    }
    PvhBootConfigurator::write_bootparams(&params, mem.mem()).map_err(LinuxLoadError::Configurator)
}

fn write_zero_page(
    mem: &GuestMemory,
    k: &PreparedKernel,
    map: &[(u64, u64, E820)],
    initrd: Option<(u64, u64)>,
    rsdp: u64,
) -> Result<(), LinuxLoadError> {
    let mut p = boot_params::default();
    let from_file = k.setup_raw.as_deref().and_then(setup_header::from_slice).copied();
    p.hdr = from_file.unwrap_or_else(|| setup_header {
        boot_flag: BOOT_FLAG,
        header: HDRS,
        version: 0x020f,
        kernel_alignment: 0x100_0000,
        ..Default::default()
    });
    p.hdr.type_of_loader = LOADER_OTHER;
    p.hdr.loadflags |= LOADED_HIGH;
    p.hdr.cmd_line_ptr = u32::try_from(layout::CMDLINE).unwrap_or(0);
    p.hdr.cmdline_size = u32::try_from(k.cmdline.len() + 1).unwrap_or(0);
    if let Some((at, len)) = initrd {
        p.hdr.ramdisk_image = u32::try_from(at).unwrap_or(0);
        p.hdr.ramdisk_size = u32::try_from(len).unwrap_or(0);
    }
    p.acpi_rsdp_addr = rsdp;
    for (slot, &(s, e, t)) in p.e820_table.iter_mut().zip(map) {
        *slot = boot_e820_entry { addr: s, size: e - s, r#type: t as u32 };
    }
    p.e820_entries = u8::try_from(map.len().min(p.e820_table.len())).unwrap_or(0);
    let params = BootParams::new(&p, GuestAddress(layout::ZERO_PAGE));
    LinuxBootConfigurator::write_bootparams(&params, mem.mem()).map_err(LinuxLoadError::Configurator)
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> BootError {
    move |source| BootError::Kvm(KvmError { what, source })
}

/// Gives the boot vCPU the state `start` needs: segments and control registers of the
/// protocol, the boot structure's address, the FPU's reset state, write-back MTRRs and,
/// with an in-kernel local APIC, LINT0 as ExtINT and LINT1 as NMI (what firmware leaves).
///
/// # Errors
/// vCPU ioctl failures; memory too small for the page tables.
pub fn setup_vcpu(vcpu: &VcpuFd, mem: &GuestMemory, start: Start, lapic: bool) -> Result<(), BootError> {
    let mut sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    let long = matches!(start, Start::Long { .. });
    // 32-bit (PVH) segments have D/B set; 64-bit ones have it clear, and L on code.
    sregs.cs = flat_segment(layout::BOOT_CS, true, 0, !long, long);
    let data = flat_segment(layout::BOOT_DS, false, 0, !long, false);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment {
        base: 0,
        limit: 0x67,
        selector: layout::BOOT_TSS,
        type_: 0xb,
        present: 1,
        s: 0,
        ..Default::default()
    };
    sregs.gdt = kvm_dtable { base: layout::GDT, limit: 6 * 8 - 1, padding: [0; 3] };
    sregs.idt = kvm_dtable { base: 0, limit: 0, padding: [0; 3] };
    let mut regs = kvm_regs { rflags: 0x2, ..Default::default() };
    match start {
        Start::Pvh { rip } => {
            sregs.cr0 = 0x11; // PE | ET
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = rip;
            regs.rbx = layout::START_INFO;
        }
        Start::Long { rip } => {
            let cr3 = crate::guests::boot::write_long_mode_tables(mem)?;
            // write_long_mode_tables put vmrr's own GDT at the same place: Linux's again.
            write_gdt(mem, false).map_err(BootError::Memory)?;
            sregs.cr0 = 0x8000_0011 | 0x20; // PG | ET | PE | NE
            sregs.cr3 = cr3;
            sregs.cr4 = 0x20; // PAE
            sregs.efer = 0x500; // LME | LMA
            regs.rip = rip;
            regs.rsi = layout::ZERO_PAGE;
        }
    }
    vcpu.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))?;
    vcpu.set_regs(&regs).map_err(kvm("KVM_SET_REGS"))?;
    let mut fpu = vcpu.get_fpu().map_err(kvm("KVM_GET_FPU"))?;
    fpu.fcw = 0x37f;
    fpu.mxcsr = 0x1f80;
    vcpu.set_fpu(&fpu).map_err(kvm("KVM_SET_FPU"))?;
    let entries = [
        kvm_msr_entry { index: MSR_MTRR_DEF_TYPE, data: (1 << 11) | 6, ..Default::default() },
        kvm_msr_entry { index: MSR_MISC_ENABLE, data: 1, ..Default::default() },
    ];
    if let Ok(msrs) = Msrs::from_entries(&entries) {
        // Best effort: a host whose KVM refuses one still boots Linux (without PAT).
        let _ = vcpu.set_msrs(&msrs);
    }
    if lapic {
        let mut l = vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
        set_lvt(&mut l.regs, APIC_LVT0, 0x700); // ExtINT
        set_lvt(&mut l.regs, APIC_LVT1, 0x400); // NMI
        vcpu.set_lapic(&l).map_err(kvm("KVM_SET_LAPIC"))?;
    }
    Ok(())
}

/// Sets the delivery mode (bits 8-10) of a local vector table register.
fn set_lvt(regs: &mut [std::ffi::c_char; 1024], at: usize, mode: u32) {
    let Some(r) = regs.get_mut(at..at + 4) else { return };
    let mut bytes = [0u8; 4];
    for (b, c) in bytes.iter_mut().zip(r.iter()) {
        *b = u8::from_ne_bytes(c.to_ne_bytes());
    }
    let v = (u32::from_le_bytes(bytes) & !0x700) | mode;
    for (d, s) in r.iter_mut().zip(v.to_le_bytes()) {
        *d = std::ffi::c_char::from_ne_bytes([s]);
    }
}

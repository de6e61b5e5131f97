//! Initial vCPU state: 16-bit real mode, or 64-bit long mode at ring 0 or ring 3 with
//! identity-mapped page tables, a GDT and a TSS built by the engine.
//!
//! Fixed guest-physical layout of the long-mode environment:
//!
//! | address | holds |
//! |---|---|
//! | `0x500` | GDT: null, code64 ring 0 (`0x08`), data ring 0 (`0x10`), code64 ring 3 (`0x1b`), data ring 3 (`0x23`), TSS (`0x28`) |
//! | `0x1000` | free for the guest's IDT |
//! | `0x3000` | 64-bit TSS (104 bytes) and its I/O permission bitmap (8 KiB, all ports allowed) |
//! | `0x10000` | PML4, then PDPT at `0x11000`, then one page directory per GiB |
//!
//! Page-table entries have Accessed and Dirty pre-set at every level, so the MMU never
//! writes them: dirty logging then counts only pages the guest itself wrote. Every entry
//! has the User bit, so ring-3 guests (which run natively even on emulating hosts) can
//! reach all memory, including the MMIO hole. Ring-3 port I/O is allowed by the TSS I/O
//! permission bitmap rather than by IOPL alone: some hosts run ring-3 guest code natively
//! and do not keep IOPL 3, but they honour the bitmap.

use kvm_bindings::{kvm_dtable, kvm_regs, kvm_segment};
use kvm_ioctls::VcpuFd;

use vm_memory::GuestAddress;

use crate::kvm::memory::GuestMemory;
use crate::kvm::system::KvmError;

/// GDT address.
pub const GDT_ADDR: u64 = 0x500;
/// TSS address.
pub const TSS_ADDR: u64 = 0x3000;
/// Offset of the I/O permission bitmap in the TSS.
const IOMAP_OFFSET: u64 = 0x68;
/// TSS limit: the 104-byte TSS, an 8 KiB bitmap (one bit per port) and the 0xff byte the
/// architecture requires after it.
const TSS_LIMIT: u64 = IOMAP_OFFSET + 8192;
/// Suggested IDT address for guests that install one.
pub const IDT_ADDR: u64 = 0x1000;
/// PML4 address.
pub const PML4_ADDR: u64 = 0x1_0000;
/// Most page directories (one per GiB identity-mapped).
pub const MAX_PD: u64 = 64;
/// Lowest address available to guest images in long mode.
pub const LONG_MODE_FREE: u64 = PML4_ADDR + (2 + MAX_PD) * 0x1000;

/// Limit of the GDT at [`GDT_ADDR`]: seven 8-byte entries (the TSS descriptor takes two).
pub const GDT_LIMIT: u16 = 7 * 8 - 1;
/// CR0 in long mode: PE | MP | ET | NE | WP | PG.
pub const LONG_MODE_CR0: u64 = 0x1 | 0x2 | 0x10 | 0x20 | 0x1_0000 | 0x8000_0000;
/// CR4 in long mode: PAE | OSFXSR | OSXMMEXCPT (SSE for ring-3 guests).
pub const LONG_MODE_CR4: u64 = 0x20 | 0x200 | 0x400;
/// EFER.LME: long mode enable (the CPU sets LMA once paging is on).
pub const EFER_LME: u64 = 0x100;

/// Kernel code selector.
pub const CS_RING0: u16 = 0x08;
/// Kernel data selector.
pub const DS_RING0: u16 = 0x10;
/// User code selector (RPL 3).
pub const CS_RING3: u16 = 0x1b;
/// User data selector (RPL 3).
pub const DS_RING3: u16 = 0x23;
/// TSS selector.
pub const TSS_SEL: u16 = 0x28;

/// How the vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootMode {
    /// 16-bit real mode.
    Real,
    /// 64-bit long mode at `ring` (0 or 3).
    Long {
        /// Privilege level: 0, or 3 (with IOPL 3, so port I/O works).
        ring: u8,
    },
}

impl BootMode {
    /// Name for annotations and `vmrr guests`.
    pub fn name(&self) -> &'static str {
        match self {
            BootMode::Real => "real",
            BootMode::Long { ring: 3 } => "long (ring 3)",
            BootMode::Long { .. } => "long (ring 0)",
        }
    }
}

/// Errors setting up boot state.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A vCPU ioctl failed.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// Boot structures do not fit guest memory.
    #[error("guest memory too small for the boot structures")]
    Memory(#[source] vm_memory::GuestMemoryError),
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> BootError {
    move |source| BootError::Kvm(KvmError { what, source })
}

/// Writes the GDT, TSS and identity-mapped page tables covering at least 4 GiB and all
/// RAM. Returns the CR3 value.
///
/// # Errors
/// Memory too small for the tables.
pub fn write_long_mode_tables(mem: &GuestMemory) -> Result<u64, BootError> {
    let put = |gpa: u64, v: u64| mem.write(GuestAddress(gpa), &v.to_le_bytes()).map_err(BootError::Memory);
    let gdt: [u64; 7] = [
        0,
        0x00af_9b00_0000_ffff, // code64, ring 0, accessed
        0x00cf_9300_0000_ffff, // data, ring 0, accessed
        0x00af_fb00_0000_ffff, // code64, ring 3, accessed
        0x00cf_f300_0000_ffff, // data, ring 3, accessed
        0x0000_8b00_0000_0000
            | (TSS_LIMIT & 0xffff)
            | ((TSS_LIMIT >> 16) & 0xf) << 48
            | ((TSS_ADDR & 0xff_ffff) << 16)
            | (((TSS_ADDR >> 24) & 0xff) << 56),
        TSS_ADDR >> 32,
    ];
    for (i, e) in (0u64..).zip(gdt) {
        put(GDT_ADDR + 8 * i, e)?;
    }
    // TSS: zero; I/O map base at 0x68; a zero bitmap allows every port; then 0xff.
    let mut tss = vec![0u8; usize::try_from(TSS_LIMIT + 1).unwrap_or(0)];
    tss[0x66..0x68].copy_from_slice(&u16::try_from(IOMAP_OFFSET).unwrap_or(0).to_le_bytes());
    if let Some(last) = tss.last_mut() {
        *last = 0xff;
    }
    mem.write(GuestAddress(TSS_ADDR), &tss).map_err(BootError::Memory)?;

    const TABLE: u64 = 0x1 | 0x2 | 0x4 | 0x20; // present, writable, user, accessed
    const LEAF_2M: u64 = TABLE | 0x40 | 0x80; // + dirty, page size
    let gib = 1u64 << 30;
    let top = mem.ram_end().0.max(1 << 32);
    let pds = top.div_ceil(gib).min(MAX_PD);
    let pdpt = PML4_ADDR + 0x1000;
    put(PML4_ADDR, pdpt | TABLE)?;
    for i in 1..512 {
        put(PML4_ADDR + 8 * i, 0)?;
    }
    for g in 0..512u64 {
        let pd = pdpt + 0x1000 * (1 + g);
        put(pdpt + 8 * g, if g < pds { pd | TABLE } else { 0 })?;
        if g < pds {
            for j in 0..512u64 {
                put(pd + 8 * j, (g * gib + j * (2 << 20)) | LEAF_2M)?;
            }
        }
    }
    Ok(PML4_ADDR)
}

/// A flat segment (base 0, 4 GiB, page-granular, present, accessed): execute/read code or
/// read/write data at privilege `dpl`, with the descriptor's D/B bit `db` and L bit `long`
/// (a 64-bit code segment).
pub(crate) fn flat_segment(selector: u16, code: bool, dpl: u8, db: bool, long: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 11 } else { 3 },
        present: 1,
        dpl,
        db: u8::from(db),
        s: 1,
        l: u8::from(long),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Puts the vCPU in 64-bit long mode at `entry` with stack `rsp`.
///
/// # Errors
/// vCPU ioctl failures, or memory too small for the tables.
pub fn setup_long_mode(
    vcpu: &VcpuFd,
    mem: &GuestMemory,
    entry: u64,
    rsp: u64,
    ring: u8,
) -> Result<(), BootError> {
    let cr3 = write_long_mode_tables(mem)?;
    let mut sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    let user = ring == 3;
    let (cs, ds, dpl) = if user { (CS_RING3, DS_RING3, 3) } else { (CS_RING0, DS_RING0, 0) };
    sregs.cs = flat_segment(cs, true, dpl, false, true);
    let data = flat_segment(ds, false, dpl, true, false);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment {
        base: TSS_ADDR,
        limit: u32::try_from(TSS_LIMIT).unwrap_or(0x67),
        selector: TSS_SEL,
        type_: 11,
        present: 1,
        dpl: 0,
        db: 0,
        s: 0,
        l: 0,
        g: 0,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    sregs.gdt = kvm_dtable { base: GDT_ADDR, limit: GDT_LIMIT, padding: [0; 3] };
    sregs.idt = kvm_dtable { base: 0, limit: 0, padding: [0; 3] };
    sregs.cr0 = LONG_MODE_CR0;
    sregs.cr3 = cr3;
    sregs.cr4 = LONG_MODE_CR4;
    // LME | LMA
    sregs.efer = EFER_LME | 0x400;
    vcpu.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))?;
    let regs =
        kvm_regs { rip: entry, rsp, rflags: if user { 0x2 | 0x3000 } else { 0x2 }, ..Default::default() };
    vcpu.set_regs(&regs).map_err(kvm("KVM_SET_REGS"))?;
    Ok(())
}

/// Puts the vCPU in real mode at linear address `entry` (CS = `entry & !0xffff >> 4`),
/// stack at `0:0x7000`.
///
/// # Errors
/// vCPU ioctl failures.
pub fn setup_real_mode(vcpu: &VcpuFd, entry: u64) -> Result<(), BootError> {
    let mut sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    let base = entry & !0xffff;
    let sel = u16::try_from(base >> 4).unwrap_or(0xf000);
    sregs.cs.base = base;
    sregs.cs.selector = sel;
    for s in [&mut sregs.ds, &mut sregs.es, &mut sregs.ss, &mut sregs.fs, &mut sregs.gs] {
        s.base = 0;
        s.selector = 0;
    }
    vcpu.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))?;
    let regs = kvm_regs { rip: entry - base, rsp: 0x7000, rflags: 0x2, ..Default::default() };
    vcpu.set_regs(&regs).map_err(kvm("KVM_SET_REGS"))?;
    Ok(())
}

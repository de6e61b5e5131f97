//! Guest physical memory: memfd-backed slots registered with `KVM_SET_USER_MEMORY_REGION2`.
//!
//! Layout: RAM from 0 up to the MMIO hole at 3 GiB; RAM beyond 3 GiB continues at 4 GiB.
//! The hole `[0xc000_0000, 0x1_0000_0000)` is left unbacked, so guest accesses there exit
//! to userspace as MMIO. With firmware, the legacy VGA window `[0xa0000, 0xc0000)` is also
//! a hole and the ROM occupies the top of the 4 GiB space.

use std::fs::File;
use std::sync::Arc;

use kvm_bindings::{KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY};
use kvm_ioctls::VmFd;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use crate::error::CreateVmError;
use crate::sys::slots::{SlotRegion, set_slot};

/// Guest page size.
pub const PAGE_SIZE: u64 = 4096;
/// Start of the MMIO hole below 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End of the MMIO hole (4 GiB).
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// Legacy VGA window, a hole when firmware runs.
pub const VGA_HOLE: (u64, u64) = (0xa_0000, 0xc_0000);

/// What a slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SlotKind {
    /// Guest RAM.
    Ram,
    /// Read-only firmware image.
    Rom,
}

/// A guest-physical range and what backs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotSpec {
    /// Guest physical address.
    pub gpa: u64,
    /// Size in bytes (a multiple of the page size).
    pub size: u64,
    /// RAM or ROM.
    pub kind: SlotKind,
}

/// One registered slot.
#[derive(Debug)]
pub struct Slot {
    /// KVM slot number.
    pub id: u32,
    /// Placement and kind.
    pub spec: SlotSpec,
    /// Current `KVM_MEM_*` flags.
    pub flags: u32,
    /// Backing file (a memfd, or a snapshot file mapped privately).
    pub file: Arc<File>,
    /// How the backing is mapped.
    pub mapping: Mapping,
    /// The host mapping.
    pub region: Arc<GuestRegionMmap>,
}

impl Slot {
    /// Host address of the slot's first byte.
    pub fn host_addr(&self) -> u64 {
        self.region.as_ptr() as u64
    }
    /// Number of pages.
    pub fn pages(&self) -> u64 {
        self.spec.size / PAGE_SIZE
    }
}

/// How a slot's backing is mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// `MAP_SHARED` of a memfd (recording: snapshots read it, nothing else writes it).
    Shared,
    /// `MAP_PRIVATE` of a file (restore: copy-on-write, the file is never modified).
    Private,
}

/// All guest memory of a VM.
#[derive(Debug)]
pub struct GuestMemory {
    slots: Vec<Slot>,
    mem: GuestMemoryMmap,
    use_region2: bool,
}

/// The RAM ranges for `mem_bytes` of guest memory (no firmware).
pub fn ram_layout(mem_bytes: u64) -> Vec<SlotSpec> {
    let low = mem_bytes.min(MMIO_HOLE_START);
    let mut v = vec![SlotSpec { gpa: 0, size: low, kind: SlotKind::Ram }];
    if mem_bytes > low {
        v.push(SlotSpec { gpa: MMIO_HOLE_END, size: mem_bytes - low, kind: SlotKind::Ram });
    }
    v
}

/// The layout with firmware of `rom_size` bytes: RAM around the VGA hole and the MMIO hole,
/// the ROM at the top of 4 GiB.
pub fn firmware_layout(mem_bytes: u64, rom_size: u64) -> Vec<SlotSpec> {
    let mut v = vec![SlotSpec { gpa: 0, size: VGA_HOLE.0, kind: SlotKind::Ram }];
    let low_end = mem_bytes.min(MMIO_HOLE_START);
    v.push(SlotSpec { gpa: VGA_HOLE.1, size: low_end - VGA_HOLE.1, kind: SlotKind::Ram });
    if mem_bytes > low_end {
        v.push(SlotSpec { gpa: MMIO_HOLE_END, size: mem_bytes - low_end, kind: SlotKind::Ram });
    }
    v.push(SlotSpec { gpa: MMIO_HOLE_END - rom_size, size: rom_size, kind: SlotKind::Rom });
    v
}

fn mem_err(what: String) -> impl FnOnce(std::io::Error) -> CreateVmError {
    move |source| CreateVmError::Memory { what, source }
}

/// Maps `size` bytes of `file` at offset 0 as guest memory at `gpa`.
pub fn map_file(
    file: &Arc<File>,
    gpa: u64,
    size: u64,
    mapping: Mapping,
    readonly: bool,
) -> Result<GuestRegionMmap, CreateVmError> {
    let len = usize::try_from(size)
        .map_err(|_| CreateVmError::Config(format!("slot of {size} bytes too large")))?;
    let fd = file.try_clone().map_err(mem_err("dup of backing file".into()))?;
    let flags = libc::MAP_NORESERVE
        | match mapping {
            Mapping::Shared => libc::MAP_SHARED,
            Mapping::Private => libc::MAP_PRIVATE,
        };
    let prot = if readonly { libc::PROT_READ } else { libc::PROT_READ | libc::PROT_WRITE };
    let region = MmapRegionBuilder::new(len)
        .with_file_offset(FileOffset::new(fd, 0))
        .with_mmap_prot(prot)
        .with_mmap_flags(flags)
        .build()
        .map_err(|e| CreateVmError::Memory {
            what: format!("mmap of {len} bytes"),
            source: std::io::Error::other(e.to_string()),
        })?;
    GuestRegionMmap::new(region, GuestAddress(gpa))
        .ok_or_else(|| CreateVmError::Config(format!("slot at {gpa:#x} of {size:#x} bytes overflows")))
}

impl GuestMemory {
    /// Creates memfd-backed slots for `specs` (ROM slots are filled later by the loader).
    ///
    /// # Errors
    /// memfd or mmap failures.
    pub fn create(specs: &[SlotSpec]) -> Result<Self, CreateVmError> {
        let mut backed = Vec::with_capacity(specs.len());
        for (i, s) in specs.iter().enumerate() {
            let file = crate::sys::memfd::create(&format!("vmrr-slot{i}"), s.size)
                .map_err(mem_err(format!("memfd of {} bytes", s.size)))?;
            backed.push((*s, Arc::new(file), Mapping::Shared));
        }
        Self::from_backing(backed)
    }

    /// Builds memory from existing files: each `(spec, file, mapping)`.
    ///
    /// # Errors
    /// mmap failures, or overlapping ranges.
    pub fn from_backing(backed: Vec<(SlotSpec, Arc<File>, Mapping)>) -> Result<Self, CreateVmError> {
        let mut slots = Vec::with_capacity(backed.len());
        let mut regions = Vec::with_capacity(backed.len());
        for (i, (spec, file, mapping)) in backed.into_iter().enumerate() {
            // ROM is mapped writable on the host so the loader can fill it; KVM_MEM_READONLY
            // keeps the guest from writing it.
            let region = Arc::new(map_file(&file, spec.gpa, spec.size, mapping, false)?);
            let flags = if spec.kind == SlotKind::Rom { KVM_MEM_READONLY } else { 0 };
            regions.push(Arc::clone(&region));
            slots.push(Slot { id: u32::try_from(i).unwrap_or(u32::MAX), spec, flags, file, mapping, region });
        }
        let mem = GuestMemoryMmap::from_arc_regions(regions)
            .map_err(|e| CreateVmError::Config(format!("invalid memory layout: {e}")))?;
        Ok(GuestMemory { slots, mem, use_region2: true })
    }

    /// The slots.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// Total bytes of RAM (ROM excluded).
    pub fn ram_bytes(&self) -> u64 {
        self.slots.iter().filter(|s| s.spec.kind == SlotKind::Ram).map(|s| s.spec.size).sum()
    }

    /// Highest guest-physical address backed by RAM, plus one.
    pub fn ram_end(&self) -> u64 {
        self.slots
            .iter()
            .filter(|s| s.spec.kind == SlotKind::Ram)
            .map(|s| s.spec.gpa + s.spec.size)
            .max()
            .unwrap_or(0)
    }

    /// The vm-memory view, for byte access.
    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Writes `data` at `gpa`.
    ///
    /// # Errors
    /// `None` when the range is not backed.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Option<()> {
        self.mem.write_slice(data, GuestAddress(gpa)).ok()
    }

    /// Reads into `buf` from `gpa`.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Option<()> {
        self.mem.read_slice(buf, GuestAddress(gpa)).ok()
    }

    /// Registers every slot with `vm`; `dirty_log` turns on `KVM_MEM_LOG_DIRTY_PAGES` for
    /// RAM slots. Uses region2 when `region2` is true, else the v1 ioctl.
    ///
    /// # Errors
    /// The ioctl's error.
    pub fn register(&mut self, vm: &VmFd, region2: bool, dirty_log: bool) -> Result<(), kvm_ioctls::Error> {
        self.use_region2 = region2;
        for s in &mut self.slots {
            if s.spec.kind == SlotKind::Ram && dirty_log {
                s.flags |= KVM_MEM_LOG_DIRTY_PAGES;
            } else {
                s.flags &= !KVM_MEM_LOG_DIRTY_PAGES;
            }
            let r = SlotRegion {
                slot: s.id,
                flags: s.flags,
                guest_phys_addr: s.spec.gpa,
                memory_size: s.spec.size,
                userspace_addr: s.host_addr(),
            };
            // SAFETY: the region is owned by `self.slots` (an Arc held for the VM's life:
            // GuestMemory is dropped after the VmFd, see `Vm`'s field order), so the host
            // range stays mapped while KVM may access it.
            unsafe { set_slot(vm, r, region2)? };
        }
        Ok(())
    }

    /// Records that slot `i` is now backed by `file`, mapped privately over the same host
    /// range (the caller has remapped it).
    pub(crate) fn rebind(&mut self, i: usize, file: Arc<File>) {
        if let Some(s) = self.slots.get_mut(i) {
            s.file = file;
            s.mapping = Mapping::Private;
        }
    }

    /// Whether slots were registered with region2.
    pub fn uses_region2(&self) -> bool {
        self.use_region2
    }

    /// The slot containing `gpa`.
    pub fn slot_of(&self, gpa: u64) -> Option<&Slot> {
        self.slots.iter().find(|s| gpa >= s.spec.gpa && gpa - s.spec.gpa < s.spec.size)
    }
}

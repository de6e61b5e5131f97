//! Guest physical memory: memfd-backed slots registered with `KVM_SET_USER_MEMORY_REGION2`.
//!
//! Layout: RAM from 0 up to the MMIO hole at 3 GiB; RAM beyond 3 GiB continues at 4 GiB.
//! The hole `[0xc000_0000, 0x1_0000_0000)` is left unbacked, so guest accesses there exit
//! to userspace as MMIO. With firmware, the legacy VGA window `[0xa0000, 0xc0000)` is also
//! a hole and the ROM occupies the top of the 4 GiB space.
//!
//! Guest-physical addresses are [`GuestAddress`]es; host addresses never leave this module
//! and `sys`. Replacing a slot's pages in place (a snapshot's file mapped copy-on-write
//! over it, its private copies discarded) is done through [`Slot`]'s methods, safe because
//! each checks its range against the slot's own mapping.

use std::fs::File;
use std::sync::Arc;

use kvm_bindings::{KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryError, GuestMemoryMmap, GuestRegionMmap, MmapRegion,
};

use super::written::WrittenPages;
use crate::page::PAGE_SIZE;
use crate::sys::slots::VmSlots;

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
    /// Guest physical address of its first byte.
    pub gpa: GuestAddress,
    /// Size in bytes (a multiple of the page size).
    pub size: u64,
    /// RAM or ROM.
    pub kind: SlotKind,
}

impl SlotSpec {
    /// Whether `addr` lies in this range.
    pub fn contains(&self, addr: GuestAddress) -> bool {
        addr.0 >= self.gpa.0 && addr.0 - self.gpa.0 < self.size
    }

    /// The first address past the range.
    pub fn end(&self) -> GuestAddress {
        GuestAddress(self.gpa.0 + self.size)
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

/// Guest memory could not be set up or accessed.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// A backing file could not be created, sized or mapped.
    #[error("cannot {what} for a slot of {size:#x} bytes at {:#x}", gpa.0)]
    Backing {
        /// The step that failed.
        what: &'static str,
        /// Where the slot starts.
        gpa: GuestAddress,
        /// Its size.
        size: u64,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The slots overlap, or one does not fit the address space.
    #[error("invalid memory layout")]
    Layout(#[source] vm_memory::GuestRegionCollectionError),
    /// A slot's size does not fit this host's address space.
    #[error("a slot of {size:#x} bytes at {:#x} does not fit this host", gpa.0)]
    TooLarge {
        /// Where the slot starts.
        gpa: GuestAddress,
        /// Its size.
        size: u64,
    },
    /// An access to guest memory failed.
    #[error("cannot access guest memory")]
    Access(#[source] GuestMemoryError),
    /// Replacing a slot's pages failed.
    #[error("cannot {what} pages {first}..{} of slot {slot}", first + count)]
    Remap {
        /// What was being done.
        what: &'static str,
        /// The slot's index.
        slot: usize,
        /// First page.
        first: u64,
        /// How many pages.
        count: u64,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// One registered slot.
#[derive(Debug)]
pub struct Slot {
    id: u32,
    spec: SlotSpec,
    flags: u32,
    file: Arc<File>,
    mapping: Mapping,
    region: Arc<GuestRegionMmap>,
    written: Arc<WrittenPages>,
}

impl Slot {
    /// KVM slot number.
    pub fn id(&self) -> u32 {
        self.id
    }
    /// Placement and kind.
    pub fn spec(&self) -> SlotSpec {
        self.spec
    }
    /// Current `KVM_MEM_*` flags.
    pub fn flags(&self) -> u32 {
        self.flags
    }
    /// Backing file (a memfd, or a snapshot file mapped privately).
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }
    /// How the backing is mapped.
    pub fn mapping(&self) -> Mapping {
        self.mapping
    }
    /// Number of pages.
    pub fn pages(&self) -> u64 {
        self.spec.size / PAGE_SIZE
    }
    /// Host address of the slot's first byte: for diagnostics only (a restore over a kept
    /// machine must leave it unchanged).
    pub fn host_addr(&self) -> u64 {
        self.region.as_ptr() as u64
    }
    /// The host mapping (for write-protecting it during a background capture).
    pub(crate) fn region(&self) -> &Arc<GuestRegionMmap> {
        &self.region
    }

    fn remap_err(
        &self,
        what: &'static str,
        first: u64,
        count: u64,
    ) -> impl FnOnce(std::io::Error) -> MemoryError {
        let slot = usize::try_from(self.id).unwrap_or(usize::MAX);
        move |source| MemoryError::Remap { what, slot, first, count, source }
    }

    /// Maps pages `[first, first + count)` of `file` (at the same page offsets)
    /// copy-on-write over the same pages of this slot.
    ///
    /// # Errors
    /// The pages are not inside the slot, or `mmap` failed.
    pub fn overlay_file(&self, first: u64, count: u64, file: &File) -> Result<(), MemoryError> {
        let (off, len) = (first * PAGE_SIZE, count * PAGE_SIZE);
        crate::sys::mapping::overlay_private(&self.region, off, len, file, off).map_err(self.remap_err(
            "map a file over",
            first,
            count,
        ))
    }

    /// Replaces the whole slot with anonymous zero pages.
    ///
    /// # Errors
    /// `mmap` failed.
    pub fn zero_anonymous(&self) -> Result<(), MemoryError> {
        crate::sys::mapping::anon_private(&self.region, 0, self.spec.size).map_err(self.remap_err(
            "zero",
            0,
            self.pages(),
        ))
    }

    /// Takes the bitmap (one bit per page) of pages written from userspace since the last
    /// call, clearing it; `None` when none were. KVM's dirty log does not see these writes.
    pub fn take_written(&self) -> Option<Vec<u64>> {
        self.written.take()
    }

    /// Discards the private copies of pages `[first, first + count)`: a privately mapped
    /// slot reads its file's bytes there again.
    ///
    /// # Errors
    /// The pages are not inside the slot, or `madvise` failed.
    pub fn discard(&self, first: u64, count: u64) -> Result<(), MemoryError> {
        crate::sys::mapping::discard_private(&self.region, first * PAGE_SIZE, count * PAGE_SIZE)
            .map_err(self.remap_err("discard", first, count))
    }
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
    let mut v = vec![SlotSpec { gpa: GuestAddress(0), size: low, kind: SlotKind::Ram }];
    if mem_bytes > low {
        v.push(SlotSpec { gpa: GuestAddress(MMIO_HOLE_END), size: mem_bytes - low, kind: SlotKind::Ram });
    }
    v
}

/// The layout with firmware of `rom_size` bytes: RAM around the VGA hole and the MMIO hole,
/// the ROM at the top of 4 GiB.
pub fn firmware_layout(mem_bytes: u64, rom_size: u64) -> Vec<SlotSpec> {
    let mut v = vec![SlotSpec { gpa: GuestAddress(0), size: VGA_HOLE.0, kind: SlotKind::Ram }];
    let low_end = mem_bytes.min(MMIO_HOLE_START);
    v.push(SlotSpec { gpa: GuestAddress(VGA_HOLE.1), size: low_end - VGA_HOLE.1, kind: SlotKind::Ram });
    if mem_bytes > low_end {
        v.push(SlotSpec { gpa: GuestAddress(MMIO_HOLE_END), size: mem_bytes - low_end, kind: SlotKind::Ram });
    }
    v.push(SlotSpec { gpa: GuestAddress(MMIO_HOLE_END - rom_size), size: rom_size, kind: SlotKind::Rom });
    v
}

/// Maps all of `file` (`spec.size` bytes from offset 0) as the guest memory `spec` describes.
fn map_file(file: &Arc<File>, spec: SlotSpec, mapping: Mapping) -> Result<GuestRegionMmap, MemoryError> {
    let backing = |what| move |source| MemoryError::Backing { what, gpa: spec.gpa, size: spec.size, source };
    let len =
        usize::try_from(spec.size).map_err(|_| MemoryError::TooLarge { gpa: spec.gpa, size: spec.size })?;
    let fd = file.try_clone().map_err(backing("duplicate the backing file"))?;
    let flags = libc::MAP_NORESERVE
        | match mapping {
            Mapping::Shared => libc::MAP_SHARED,
            Mapping::Private => libc::MAP_PRIVATE,
        };
    // ROM is mapped writable on the host so the loader can fill it; KVM_MEM_READONLY keeps
    // the guest from writing it.
    let region: MmapRegion = MmapRegionBuilder::new(len)
        .with_file_offset(FileOffset::new(fd, 0))
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(flags)
        .build()
        .map_err(|e| backing("map the backing file")(std::io::Error::other(e)))?;
    GuestRegionMmap::new(region, spec.gpa).ok_or(MemoryError::TooLarge { gpa: spec.gpa, size: spec.size })
}

impl GuestMemory {
    /// Creates memfd-backed slots for `specs` (ROM slots are filled later by the loader).
    ///
    /// # Errors
    /// memfd or mmap failures.
    pub fn create(specs: &[SlotSpec]) -> Result<Self, MemoryError> {
        let mut backed = Vec::with_capacity(specs.len());
        for (i, s) in specs.iter().enumerate() {
            let file = crate::sys::memfd::create(&format!("vmrr-slot{i}"), s.size).map_err(|source| {
                MemoryError::Backing { what: "create a memfd", gpa: s.gpa, size: s.size, source }
            })?;
            backed.push((*s, Arc::new(file), Mapping::Shared));
        }
        Self::from_backing(backed)
    }

    /// Builds memory from existing files: each `(spec, file, mapping)`.
    ///
    /// # Errors
    /// mmap failures, or overlapping ranges.
    pub fn from_backing(backed: Vec<(SlotSpec, Arc<File>, Mapping)>) -> Result<Self, MemoryError> {
        let mut slots = Vec::with_capacity(backed.len());
        let mut regions = Vec::with_capacity(backed.len());
        for (i, (spec, file, mapping)) in backed.into_iter().enumerate() {
            let region = Arc::new(map_file(&file, spec, mapping)?);
            let flags = if spec.kind == SlotKind::Rom { KVM_MEM_READONLY } else { 0 };
            regions.push(Arc::clone(&region));
            let written = Arc::new(WrittenPages::new(spec.size / PAGE_SIZE));
            let id = u32::try_from(i).unwrap_or(u32::MAX);
            slots.push(Slot { id, spec, flags, file, mapping, region, written });
        }
        let mem = GuestMemoryMmap::from_arc_regions(regions).map_err(MemoryError::Layout)?;
        Ok(GuestMemory { slots, mem, use_region2: true })
    }

    /// The slots.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// Their placement and kinds, in slot order.
    pub fn layout(&self) -> Vec<SlotSpec> {
        self.slots.iter().map(|s| s.spec).collect()
    }

    /// Total bytes of RAM (ROM excluded).
    pub fn ram_bytes(&self) -> u64 {
        self.slots.iter().filter(|s| s.spec.kind == SlotKind::Ram).map(|s| s.spec.size).sum()
    }

    /// The guest-physical ranges backed by RAM, `(start, end)` with `end` exclusive, in
    /// slot order.
    pub fn ram_ranges(&self) -> Vec<(u64, u64)> {
        self.slots
            .iter()
            .filter(|s| s.spec.kind == SlotKind::Ram)
            .map(|s| (s.spec.gpa.0, s.spec.end().0))
            .collect()
    }

    /// Highest guest-physical address backed by RAM, plus one.
    pub fn ram_end(&self) -> GuestAddress {
        self.slots
            .iter()
            .filter(|s| s.spec.kind == SlotKind::Ram)
            .map(|s| s.spec.end())
            .max()
            .unwrap_or_default()
    }

    /// The vm-memory view, for byte access.
    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Writes `data` at `addr`, marking the pages written (see [`Slot::take_written`]).
    ///
    /// # Errors
    /// The range is not all backed by memory (the error names the address).
    pub fn write(&self, addr: GuestAddress, data: &[u8]) -> Result<(), GuestMemoryError> {
        let end = addr.0.saturating_add(data.len() as u64);
        for s in &self.slots {
            let (lo, hi) = (addr.0.max(s.spec.gpa.0), end.min(s.spec.end().0));
            if lo < hi {
                s.written.mark(lo - s.spec.gpa.0, hi - lo);
            }
        }
        self.mem.write_slice(data, addr)
    }

    /// A handle on this memory for another thread (a device thread): it reads and writes
    /// the same mappings, and its writes are marked written like [`Self::write`]'s. It
    /// keeps the mappings alive, but a restore that builds new memory does not reach it:
    /// take a new handle after one (a device thread takes it when a run starts).
    pub fn shared(&self) -> SharedMemory {
        SharedMemory {
            mem: self.mem.clone(),
            written: self.slots.iter().map(|s| (s.spec, Arc::clone(&s.written))).collect(),
        }
    }

    /// Forgets every page written from userspace: the memory was just set as a whole (a
    /// restore), so nothing differs from what it was set to.
    pub(crate) fn clear_written(&self) {
        for s in &self.slots {
            s.written.clear();
        }
    }

    /// Reads into `buf` from `addr`.
    ///
    /// # Errors
    /// The range is not all backed by memory (the error names the address).
    pub fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), GuestMemoryError> {
        self.mem.read_slice(buf, addr)
    }

    /// Registers every slot with the VM; `dirty_log` turns on `KVM_MEM_LOG_DIRTY_PAGES` for
    /// RAM slots. Uses region2 when `region2` is true, else the v1 ioctl.
    ///
    /// # Errors
    /// The ioctl's error.
    pub fn register(
        &mut self,
        vm: &mut VmSlots,
        region2: bool,
        dirty_log: bool,
    ) -> Result<(), kvm_ioctls::Error> {
        self.use_region2 = region2;
        for s in &mut self.slots {
            if s.spec.kind == SlotKind::Ram && dirty_log {
                s.flags |= KVM_MEM_LOG_DIRTY_PAGES;
            } else {
                s.flags &= !KVM_MEM_LOG_DIRTY_PAGES;
            }
            vm.register(s.id, s.flags, s.spec.gpa, &s.region.get_mmap(), region2)?;
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

    /// The slot containing `addr`.
    pub fn slot_of(&self, addr: GuestAddress) -> Option<&Slot> {
        self.slots.iter().find(|s| s.spec.contains(addr))
    }
}

/// Guest memory as another thread sees it ([`GuestMemory::shared`]): the same mappings
/// (reference-counted, so they outlive the VM's own handle if need be) and the same
/// written-pages tracking, `Send` and `Sync`.
#[derive(Debug, Clone)]
pub struct SharedMemory {
    mem: GuestMemoryMmap,
    written: Vec<(SlotSpec, Arc<WrittenPages>)>,
}

impl SharedMemory {
    /// Reads into `buf` from `addr`.
    ///
    /// # Errors
    /// The range is not all backed by memory (the error names the address).
    pub fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), GuestMemoryError> {
        self.mem.read_slice(buf, addr)
    }

    /// Writes `data` at `addr`, marking the pages written (KVM's dirty log does not see a
    /// write from userspace; snapshots read these marks beside it).
    ///
    /// # Errors
    /// The range is not all backed by memory or is ROM (nothing is written then).
    pub fn write(&self, addr: GuestAddress, data: &[u8]) -> Result<(), GuestMemoryError> {
        let end = addr.0.checked_add(data.len() as u64).ok_or(GuestMemoryError::InvalidGuestAddress(addr))?;
        let ram = |lo: u64, hi: u64| {
            self.written.iter().any(|(s, _)| s.kind == SlotKind::Ram && lo >= s.gpa.0 && hi <= s.end().0)
        };
        if !data.is_empty() && !ram(addr.0, end) {
            return Err(GuestMemoryError::InvalidGuestAddress(addr));
        }
        for (s, w) in &self.written {
            let (lo, hi) = (addr.0.max(s.gpa.0), end.min(s.end().0));
            if lo < hi {
                w.mark(lo - s.gpa.0, hi - lo);
            }
        }
        self.mem.write_slice(data, addr)
    }
}

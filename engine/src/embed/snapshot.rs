//! Snapshots of a VM another VMM runs, in the format of vmrr's own (see
//! [`crate::snapshot`]): memory read through the VMM's `GuestMemoryMmap`, the vCPU state
//! from its `VcpuFd`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use kvm_ioctls::{VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmrr_format::FileError;
use vmrr_format::layout::memory_file_name;

use super::GuestSlot;
use crate::devices::bus::BusState;
use crate::kvm::KvmError;
use crate::kvm::memory::{MemoryError, PAGE_SIZE, SlotKind};
use crate::kvm::vcpu_state::VcpuState;
use crate::snapshot::{Identity, SlotState, SnapshotError, SnapshotState, VmState, bitmap_runs};

/// What one capture reads.
pub(super) struct Capture<'a> {
    pub kvm_vm: &'a VmFd,
    pub vcpu: &'a mut VcpuFd,
    pub memory: &'a GuestMemoryMmap,
    pub slots: &'a [GuestSlot],
    /// Per slot, the pages devices wrote since the last snapshot.
    pub device_pages: &'a [Vec<u64>],
    pub msrs: &'a [u32],
    pub bus: &'a BusState,
    pub exits: u64,
    pub interrupts: u64,
}

impl Capture<'_> {
    /// Writes snapshot `who` into `dir` (through `<dir>.tmp`, renamed when complete and
    /// synced). `ran`: the vCPU has run, so a pending I/O may need completing first.
    pub(super) fn write(self, dir: &Path, who: &Identity<'_>, ran: bool) -> Result<(), SnapshotError> {
        if ran {
            // At an IN exit RAX is not written until the next KVM_RUN: complete it
            // without entering the guest (KVM_RUN with immediate_exit returns EINTR).
            self.vcpu.set_kvm_immediate_exit(1);
            let r = self.vcpu.run().map(|_| ());
            self.vcpu.set_kvm_immediate_exit(0);
            match r {
                Err(e) if e.errno() == libc::EINTR => {}
                Err(e) => return Err(KvmError::on("completing pending I/O")(e).into()),
                Ok(()) => {}
            }
        }
        let root = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let tmp = dir.with_extension("tmp");
        std::fs::create_dir_all(root).map_err(FileError::on("creating", root))?;
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir(&tmp).map_err(FileError::on("creating", &tmp))?;
        if let Err(e) = self.write_into(&tmp, who) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(FileError::on("replacing", dir))?;
        }
        std::fs::rename(&tmp, dir).map_err(FileError::on("renaming", &tmp))?;
        File::open(root).and_then(|d| d.sync_all()).map_err(FileError::on("syncing", root))?;
        Ok(())
    }

    fn write_into(&self, dir: &Path, who: &Identity<'_>) -> Result<(), SnapshotError> {
        let vcpu = VcpuState::save(self.vcpu, self.msrs)?;
        let mut slots = Vec::with_capacity(self.slots.len());
        let mut page = vec![0u8; usize::try_from(PAGE_SIZE).unwrap_or(4096)];
        for (i, s) in self.slots.iter().enumerate() {
            let pages = s.size / PAGE_SIZE;
            let name = memory_file_name(s.slot);
            let path = dir.join(&name);
            let out = File::create(&path).map_err(FileError::on("creating", &path))?;
            out.set_len(s.size).map_err(FileError::on("sizing", &path))?;
            let (full, bitmap) = match who.parent {
                None => {
                    if s.dirty_log {
                        // Reading the log clears it: the next snapshot sees changes since now.
                        self.dirty_log(s)?;
                    }
                    (true, Vec::new())
                }
                Some(_) => {
                    let mut bits = self.dirty_log(s)?;
                    for (w, d) in bits.iter_mut().zip(self.device_pages.get(i).into_iter().flatten()) {
                        *w |= d;
                    }
                    (false, bits)
                }
            };
            let runs = if full { vec![(0, pages)] } else { bitmap_runs(&bitmap, pages) };
            let mut stored = 0;
            for (first, count) in runs {
                for p in first..first + count {
                    self.memory
                        .read_slice(&mut page, GuestAddress(s.gpa + p * PAGE_SIZE))
                        .map_err(|e| SnapshotError::Memory(MemoryError::Access(e)))?;
                    // A full snapshot leaves zero pages as holes; an incremental one stores
                    // every changed page (a page that became zero must cover its parent's).
                    if full && page.iter().all(|&b| b == 0) {
                        continue;
                    }
                    out.write_all_at(&page, p * PAGE_SIZE).map_err(FileError::on("writing", &path))?;
                    stored += 1;
                }
            }
            out.sync_all().map_err(FileError::on("syncing", &path))?;
            slots.push(SlotState {
                id: s.slot,
                gpa: s.gpa,
                size: s.size,
                kind: SlotKind::Ram,
                flags: 0,
                file: name,
                full,
                pages: bitmap,
                stored_pages: stored,
            });
        }
        let state = SnapshotState {
            id: who.id,
            parent: who.parent,
            trace_id: who.trace_id,
            exit_seq: who.exit_seq,
            exits: self.exits,
            interrupts: self.interrupts,
            created_unix_ns: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            vm: VmState {
                mem_bytes: self.slots.iter().map(|s| s.size).sum(),
                cpuid: crate::kvm::cpuid::CpuidProfile::default().name().to_string(),
                rom_size: None,
            },
            slots,
            vcpus: vec![vcpu],
            bus: self.bus.clone(),
            annotations: who.annotations.to_vec(),
            kernel_irqchip: None,
        };
        crate::snapshot::finish_dir(dir, &state)
    }

    /// Reads and clears KVM's dirty log of slot `s`.
    fn dirty_log(&self, s: &GuestSlot) -> Result<Vec<u64>, SnapshotError> {
        let size = usize::try_from(s.size).unwrap_or(0);
        Ok(self.kvm_vm.get_dirty_log(s.slot, size).map_err(KvmError::on("KVM_GET_DIRTY_LOG"))?)
    }
}

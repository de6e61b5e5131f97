//! Snapshots of a VM another VMM runs, in the format of vmrr's own and written by the same
//! capture (`crate::snapshot::capture`): this module only says what it reads, memory
//! through the VMM's `GuestMemoryMmap`, the vCPU state from its `VcpuFd`.

use std::path::Path;

use kvm_ioctls::{VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmrr_format::layout::memory_file_name;

use super::GuestSlot;
use crate::devices::bus::BusState;
use crate::kvm::memory::{MemoryError, SlotKind};
use crate::kvm::vcpu_state::VcpuState;
use crate::page::PAGE_SIZE;
use crate::snapshot::{
    Identity, Plan, SlotState, SnapshotError, SnapshotState, Source, VmState, bitmap_runs,
};

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

impl Source for Capture<'_> {
    fn complete_pending(&mut self) -> Result<(), SnapshotError> {
        if self.exits > 0 {
            // At an IN exit RAX is not written until the next KVM_RUN.
            crate::kvm::entry::complete_pending(self.vcpu)?;
        }
        Ok(())
    }

    fn plan(&mut self, _final_dir: &Path, who: &Identity<'_>) -> Result<Plan, SnapshotError> {
        let vcpu = VcpuState::save(self.vcpu, self.msrs)?;
        let mut slots = Vec::with_capacity(self.slots.len());
        let mut runs = Vec::with_capacity(self.slots.len());
        for (i, s) in self.slots.iter().enumerate() {
            let pages = s.size / PAGE_SIZE;
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
            runs.push(if full { vec![(0, pages)] } else { bitmap_runs(&bitmap, pages) });
            slots.push(SlotState {
                id: s.slot,
                gpa: s.gpa,
                size: s.size,
                kind: SlotKind::Ram,
                flags: 0,
                file: memory_file_name(s.slot),
                full,
                pages: bitmap,
                stored_pages: 0,
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
        Ok(Plan { state, runs })
    }

    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), SnapshotError> {
        self.memory
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|e| SnapshotError::Memory(MemoryError::Access(e)))
    }
}

impl Capture<'_> {
    /// Reads and clears KVM's dirty log of slot `s`.
    fn dirty_log(&self, s: &GuestSlot) -> Result<Vec<u64>, SnapshotError> {
        // Another VMM made the vCPUs, so the ring cannot be turned on: always the bitmap.
        Ok(crate::kvm::dirty::take_bitmap(self.kvm_vm, s.slot, s.size)?)
    }
}

//! Snapshots of a VM another VMM runs, in the format of vmrr's own and written by the same
//! capture (`crate::snapshot::capture`): this module only says what it reads, memory
//! through the VMM's `GuestMemoryMmap`, the vCPU state from its `VcpuFd`s (and, with KVM's
//! in-kernel irqchip, each local APIC and the PIC, IOAPIC, PIT and clock from its `VmFd`).

use std::path::Path;

use kvm_ioctls::{VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmrr_format::layout::memory_file_name;

use super::GuestSlot;
use crate::devices::bus::BusState;
use crate::kvm::KvmError;
use crate::kvm::irqchip::IrqchipState;
use crate::kvm::memory::{MemoryError, SlotKind};
use crate::kvm::vcpu_state::VcpuState;
use crate::page::PAGE_SIZE;
use crate::snapshot::state::KernelIrqchip;
use crate::snapshot::{
    Identity, Plan, SlotState, SnapshotError, SnapshotState, Source, VmState, bitmap_runs,
};

/// The vCPUs a capture reads.
pub(super) enum Vcpus<'a> {
    /// One vCPU, interrupts from userspace: its pending I/O is completed here.
    One(&'a mut VcpuFd),
    /// Every vCPU of a VM on KVM's in-kernel irqchip, in index order; each thread
    /// completed its pending I/O before it parked (`EmbeddedVcpu::park`).
    Kernel(&'a [&'a VcpuFd]),
}

/// What one capture reads.
pub(super) struct Capture<'a> {
    pub kvm_vm: &'a VmFd,
    pub vcpus: Vcpus<'a>,
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
        if let (Vcpus::One(vcpu), true) = (&mut self.vcpus, self.exits > 0) {
            // At an IN exit RAX is not written until the next KVM_RUN.
            crate::kvm::entry::complete_pending(vcpu)?;
        }
        Ok(())
    }

    fn plan(&mut self, _final_dir: &Path, who: &Identity<'_>) -> Result<Plan, SnapshotError> {
        let (vcpus, kernel_irqchip) = match &self.vcpus {
            Vcpus::One(vcpu) => (vec![VcpuState::save(vcpu, self.msrs)?], None),
            Vcpus::Kernel(fds) => {
                let mut vcpus = Vec::with_capacity(fds.len());
                let mut lapics = Vec::with_capacity(fds.len());
                for fd in *fds {
                    vcpus.push(VcpuState::save(fd, self.msrs)?);
                    lapics.push(crate::kvm::vcpu_state::save_lapic(fd)?);
                }
                let chip = IrqchipState::save(self.kvm_vm)?;
                (vcpus, Some(KernelIrqchip { chip, lapics }))
            }
        };
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
            vcpus,
            bus: self.bus.clone(),
            annotations: who.annotations.to_vec(),
            kernel_irqchip,
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
        let size = usize::try_from(s.size).unwrap_or(0);
        Ok(self.kvm_vm.get_dirty_log(s.slot, size).map_err(KvmError::on("KVM_GET_DIRTY_LOG"))?)
    }
}

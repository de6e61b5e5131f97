//! A vCPU's complete architectural state: save and restore.
//!
//! Saved: general registers, segment and control registers, FPU, XSAVE area, XCRs, MSRs
//! (every index `KVM_GET_MSR_INDEX_LIST` reports that this vCPU can read, so TSC,
//! IA32_XSS, SYSENTER, PAT and friends are all in; KVM's paravirtual MSRs are left out
//! when the guest's CPUID does not expose KVM's features), pending events, MP state, debug
//! registers, CPUID and the TSC frequency. The local APIC, when the VM has KVM's in-kernel
//! irqchip, is saved beside this state ([`save_lapic`]) and set by
//! [`VcpuState::restore_with_lapic`].
//!
//! Restore order (measured to matter): CPUID, MP state, regs, sregs, FPU, XSAVE, XCRs,
//! debug registers, MSRs (every one must be accepted), events.
//!
//! kvm-bindings' serde implementations serialise each struct as its raw bytes and silently
//! pad or cut a wrong length, so the state carries each struct's size and restore refuses
//! a mismatch.

use kvm_bindings::{
    CpuId, Msrs, kvm_cpuid_entry2, kvm_debugregs, kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::{Kvm, VcpuFd};
use serde::{Deserialize, Serialize};
use zerocopy::{FromBytes, IntoBytes};

/// `kvm_fpu` as plain fields (kvm-bindings has no serde for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct FpuState {
    /// x87 registers.
    pub fpr: [[u8; 16]; 8],
    /// Control word.
    pub fcw: u16,
    /// Status word.
    pub fsw: u16,
    /// Abridged tag word.
    pub ftwx: u8,
    /// Last opcode.
    pub last_opcode: u16,
    /// Last instruction pointer.
    pub last_ip: u64,
    /// Last data pointer.
    pub last_dp: u64,
    /// XMM registers.
    pub xmm: [[u8; 16]; 16],
    /// MXCSR.
    pub mxcsr: u32,
}

impl From<&kvm_fpu> for FpuState {
    fn from(f: &kvm_fpu) -> Self {
        FpuState {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
        }
    }
}

impl From<&FpuState> for kvm_fpu {
    fn from(f: &FpuState) -> Self {
        kvm_fpu {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            pad1: 0,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
            pad2: 0,
        }
    }
}

/// Sizes of the kvm structs as this build sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StructSizes {
    /// `kvm_regs`.
    pub regs: u32,
    /// `kvm_sregs`.
    pub sregs: u32,
    /// `kvm_xsave`.
    pub xsave: u32,
    /// `kvm_xcrs`.
    pub xcrs: u32,
    /// `kvm_vcpu_events`.
    pub events: u32,
    /// `kvm_debugregs`.
    pub debugregs: u32,
    /// `kvm_msr_entry`.
    pub msr_entry: u32,
    /// `kvm_cpuid_entry2`.
    pub cpuid_entry: u32,
}

fn sz<T>() -> u32 {
    u32::try_from(std::mem::size_of::<T>()).unwrap_or(u32::MAX)
}

impl StructSizes {
    /// This build's sizes.
    pub fn current() -> Self {
        StructSizes {
            regs: sz::<kvm_regs>(),
            sregs: sz::<kvm_sregs>(),
            xsave: sz::<kvm_xsave>(),
            xcrs: sz::<kvm_xcrs>(),
            events: sz::<kvm_vcpu_events>(),
            debugregs: sz::<kvm_debugregs>(),
            msr_entry: sz::<kvm_msr_entry>(),
            cpuid_entry: sz::<kvm_cpuid_entry2>(),
        }
    }
}

/// Complete vCPU state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VcpuState {
    /// Struct sizes when saved.
    pub sizes: StructSizes,
    /// General registers.
    pub regs: kvm_regs,
    /// Segment and control registers.
    pub sregs: kvm_sregs,
    /// FPU.
    pub fpu: FpuState,
    /// XSAVE area (`kvm_xsave.region`, 1024 words).
    pub xsave: Vec<u32>,
    /// Extended control registers.
    pub xcrs: kvm_xcrs,
    /// MSRs.
    pub msrs: Vec<kvm_msr_entry>,
    /// Pending exceptions, interrupts, NMIs, SMI state.
    pub events: kvm_vcpu_events,
    /// MP state.
    pub mp_state: kvm_mp_state,
    /// Debug registers.
    pub debugregs: kvm_debugregs,
    /// CPUID.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// TSC frequency in kHz (0 when unknown).
    pub tsc_khz: u32,
}

/// Saving or restoring vCPU state failed.
#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    /// An ioctl failed.
    #[error(transparent)]
    Kvm(#[from] crate::kvm::system::KvmError),
    /// The state was saved with different struct layouts.
    #[error("vCPU state layout differs from this build: saved {saved:?}, this build {current:?}")]
    Layout {
        /// Sizes in the state.
        saved: Box<StructSizes>,
        /// This build's sizes.
        current: Box<StructSizes>,
    },
    /// KVM refused an MSR.
    #[error("KVM accepted {set} of {total} MSRs; it refused index {index:#x}")]
    Msr {
        /// MSRs KVM accepted before refusing one.
        set: usize,
        /// MSRs in the state.
        total: usize,
        /// The first refused index.
        index: u32,
    },
    /// The state holds more entries than KVM allows.
    #[error("{what}: {count} entries exceed the limit of {max}")]
    TooMany {
        /// Which list.
        what: &'static str,
        /// Entries the state holds.
        count: usize,
        /// The most KVM takes.
        max: usize,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuStateError {
    move |source| VcpuStateError::Kvm(crate::kvm::system::KvmError { what, source })
}

/// KVM's paravirtual MSR ranges (kvmclock, async PF, steal time...).
fn is_kvm_pv_msr(i: u32) -> bool {
    (0x4b56_4d00..=0x4b56_4dff).contains(&i) || i == 0x11 || i == 0x12
}

/// The local APIC of `vcpu` (`kvm_lapic_state` bytes), for a VM with KVM's in-kernel
/// irqchip.
///
/// # Errors
/// `KVM_GET_LAPIC` failed.
pub fn save_lapic(vcpu: &VcpuFd) -> Result<Vec<u8>, VcpuStateError> {
    Ok(vcpu.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?.as_bytes().to_vec())
}

/// Whether the guest's CPUID (as the vCPU has it) offers KVM's paravirtual features
/// (kvmclock, steal time...): their MSRs then belong in its state.
pub fn guest_has_kvm_pv(vcpu: &VcpuFd) -> bool {
    vcpu.get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .is_ok_and(|c| c.as_slice().iter().any(|e| e.function == 0x4000_0001 && e.eax != 0))
}

/// The MSR indices worth saving on this vCPU: those KVM lists and this vCPU can read.
///
/// # Errors
/// `KVM_GET_MSR_INDEX_LIST` failed.
pub fn msr_list(kvm: &Kvm, vcpu: &VcpuFd, guest_has_kvm_pv: bool) -> Result<Vec<u32>, VcpuStateError> {
    let list = kvm.get_msr_index_list().map_err(kvm_err("KVM_GET_MSR_INDEX_LIST"))?;
    let mut readable = Vec::new();
    for &i in list.as_slice() {
        if !guest_has_kvm_pv && is_kvm_pv_msr(i) {
            continue;
        }
        // KVM_GET_MSRS stops at the first index it cannot read: probe one by one (once
        // per VM; a few dozen ioctls).
        let Ok(mut one) = Msrs::from_entries(&[kvm_msr_entry { index: i, ..Default::default() }]) else {
            continue;
        };
        if vcpu.get_msrs(&mut one).is_ok_and(|n| n == 1) {
            readable.push(i);
        }
    }
    Ok(readable)
}

impl VcpuState {
    /// Reads the state of `vcpu`. Any I/O or MMIO the vCPU exited for must be complete
    /// (see `Machine::complete_pending_io`): until then RAX of an IN is not written yet.
    ///
    /// # Errors
    /// An ioctl failure.
    pub fn save(vcpu: &VcpuFd, msr_indices: &[u32]) -> Result<Self, VcpuStateError> {
        let entries: Vec<kvm_msr_entry> =
            msr_indices.iter().map(|&index| kvm_msr_entry { index, ..Default::default() }).collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| VcpuStateError::TooMany {
            what: "MSRs",
            count: entries.len(),
            max: kvm_bindings::KVM_MAX_MSR_ENTRIES,
        })?;
        let n = vcpu.get_msrs(&mut msrs).map_err(kvm_err("KVM_GET_MSRS"))?;
        let cpuid =
            vcpu.get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES).map_err(kvm_err("KVM_GET_CPUID2"))?;
        Ok(VcpuState {
            sizes: StructSizes::current(),
            regs: vcpu.get_regs().map_err(kvm_err("KVM_GET_REGS"))?,
            sregs: vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?,
            fpu: FpuState::from(&vcpu.get_fpu().map_err(kvm_err("KVM_GET_FPU"))?),
            xsave: vcpu.get_xsave().map_err(kvm_err("KVM_GET_XSAVE"))?.region.to_vec(),
            xcrs: vcpu.get_xcrs().map_err(kvm_err("KVM_GET_XCRS"))?,
            msrs: msrs.as_slice()[..n.min(msrs.as_slice().len())].to_vec(),
            events: vcpu.get_vcpu_events().map_err(kvm_err("KVM_GET_VCPU_EVENTS"))?,
            mp_state: vcpu.get_mp_state().map_err(kvm_err("KVM_GET_MP_STATE"))?,
            debugregs: vcpu.get_debug_regs().map_err(kvm_err("KVM_GET_DEBUGREGS"))?,
            cpuid: cpuid.as_slice().to_vec(),
            tsc_khz: vcpu.get_tsc_khz().unwrap_or(0),
        })
    }

    /// Checks the state's layout and list sizes (before anything reaches KVM).
    ///
    /// # Errors
    /// [`VcpuStateError::Layout`] or [`VcpuStateError::TooMany`].
    pub fn validate(&self) -> Result<(), VcpuStateError> {
        let current = StructSizes::current();
        if self.sizes != current {
            return Err(VcpuStateError::Layout { saved: Box::new(self.sizes), current: Box::new(current) });
        }
        if self.xsave.len() != 1024 {
            return Err(VcpuStateError::TooMany {
                what: "XSAVE words (must be exactly)",
                count: self.xsave.len(),
                max: 1024,
            });
        }
        if self.cpuid.len() > kvm_bindings::KVM_MAX_CPUID_ENTRIES {
            return Err(VcpuStateError::TooMany {
                what: "CPUID entries",
                count: self.cpuid.len(),
                max: kvm_bindings::KVM_MAX_CPUID_ENTRIES,
            });
        }
        if self.msrs.len() > kvm_bindings::KVM_MAX_MSR_ENTRIES {
            return Err(VcpuStateError::TooMany {
                what: "MSRs",
                count: self.msrs.len(),
                max: kvm_bindings::KVM_MAX_MSR_ENTRIES,
            });
        }
        Ok(())
    }

    /// Writes the state into `vcpu`, in the order that matters.
    ///
    /// # Errors
    /// Validation, an ioctl failure, or an MSR KVM refuses.
    pub fn restore(&self, vcpu: &VcpuFd) -> Result<(), VcpuStateError> {
        self.restore_with(vcpu, true)
    }

    /// As [`Self::restore_with`], with the vCPU's local APIC (`kvm_lapic_state` bytes) when
    /// the VM has KVM's in-kernel irqchip: set after the special registers (which hold the
    /// APIC base) and before the MSRs (the TSC deadline lives in the APIC timer).
    ///
    /// # Errors
    /// As for [`Self::restore`]; a LAPIC of the wrong size or refused by KVM.
    pub fn restore_with_lapic(
        &self,
        vcpu: &VcpuFd,
        set_cpuid: bool,
        lapic: Option<&[u8]>,
    ) -> Result<(), VcpuStateError> {
        self.put_all(vcpu, set_cpuid, true, lapic)
    }

    /// Sets this state's CPUID on `vcpu`. Once a vCPU has run, KVM accepts only the CPUID
    /// it already has (`EINVAL` otherwise), so this also checks that the state fits a vCPU
    /// that ran, before anything else about it changes.
    ///
    /// # Errors
    /// Too many entries, or KVM refused them.
    pub fn apply_cpuid(&self, vcpu: &VcpuFd) -> Result<(), VcpuStateError> {
        let cpuid = CpuId::from_entries(&self.cpuid).map_err(|_| VcpuStateError::TooMany {
            what: "CPUID entries",
            count: self.cpuid.len(),
            max: kvm_bindings::KVM_MAX_CPUID_ENTRIES,
        })?;
        vcpu.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))
    }

    /// As [`Self::restore`]; `set_cpuid` false skips CPUID, for a vCPU that already has
    /// this state's CPUID (an in-place reset: the CPUID cannot change after a run).
    ///
    /// # Errors
    /// As for [`Self::restore`].
    pub fn restore_with(&self, vcpu: &VcpuFd, set_cpuid: bool) -> Result<(), VcpuStateError> {
        self.put(vcpu, set_cpuid, true)
    }

    /// As [`Self::restore_with`] without CPUID, general registers and events: for a caller
    /// that stages those in `kvm_run`'s synced registers, which the next `KVM_RUN` applies
    /// (two ioctls fewer on an in-place reset). Events are applied last either way.
    ///
    /// # Errors
    /// As for [`Self::restore`].
    pub fn restore_unsynced(&self, vcpu: &VcpuFd) -> Result<(), VcpuStateError> {
        self.put(vcpu, false, false)
    }

    fn put(&self, vcpu: &VcpuFd, set_cpuid: bool, regs_and_events: bool) -> Result<(), VcpuStateError> {
        self.put_all(vcpu, set_cpuid, regs_and_events, None)
    }

    fn put_all(
        &self,
        vcpu: &VcpuFd,
        set_cpuid: bool,
        regs_and_events: bool,
        lapic: Option<&[u8]>,
    ) -> Result<(), VcpuStateError> {
        self.validate()?;
        if set_cpuid {
            self.apply_cpuid(vcpu)?;
        }
        vcpu.set_mp_state(self.mp_state).map_err(kvm_err("KVM_SET_MP_STATE"))?;
        if regs_and_events {
            vcpu.set_regs(&self.regs).map_err(kvm_err("KVM_SET_REGS"))?;
        }
        vcpu.set_sregs(&self.sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
        // No KVM_SET_FPU: the XSAVE area set next holds the same x87 and SSE state (its
        // legacy region) and KVM_SET_XSAVE overwrites all of it; one ioctl less per
        // restore and reset. `fpu` stays in the state for readers (gdb's registers).
        let mut xsave = kvm_xsave::default();
        xsave.region.copy_from_slice(&self.xsave);
        crate::sys::vcpu_state::set_xsave(vcpu, &xsave).map_err(kvm_err("KVM_SET_XSAVE"))?;
        vcpu.set_xcrs(&self.xcrs).map_err(kvm_err("KVM_SET_XCRS"))?;
        vcpu.set_debug_regs(&self.debugregs).map_err(kvm_err("KVM_SET_DEBUGREGS"))?;
        if let Some(bytes) = lapic {
            let l = kvm_lapic_state::read_from_bytes(bytes).map_err(|_| VcpuStateError::TooMany {
                what: "LAPIC bytes (must be exactly)",
                count: bytes.len(),
                max: std::mem::size_of::<kvm_lapic_state>(),
            })?;
            vcpu.set_lapic(&l).map_err(kvm_err("KVM_SET_LAPIC"))?;
        }
        let msrs = Msrs::from_entries(&self.msrs).map_err(|_| VcpuStateError::TooMany {
            what: "MSRs",
            count: self.msrs.len(),
            max: kvm_bindings::KVM_MAX_MSR_ENTRIES,
        })?;
        let set = vcpu.set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
        if set != self.msrs.len() {
            return Err(VcpuStateError::Msr {
                set,
                total: self.msrs.len(),
                index: self.msrs.get(set).map_or(0, |e| e.index),
            });
        }
        if regs_and_events {
            vcpu.set_vcpu_events(&self.events).map_err(kvm_err("KVM_SET_VCPU_EVENTS"))?;
        }
        Ok(())
    }
}

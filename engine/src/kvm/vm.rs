//! A KVM VM with one vCPU or several, memfd-backed region2 memory slots, vmrr's capability set-up,
//! and, when asked, KVM's in-kernel irqchip and PIT.

use kvm_bindings::{
    CpuId, KVM_CAP_EXIT_ON_EMULATION_FAILURE, KVM_CAP_X86_USER_SPACE_MSR, KVM_MSR_EXIT_REASON_FILTER,
    KVM_MSR_EXIT_REASON_UNKNOWN, kvm_enable_cap,
};
use std::sync::{Arc, Mutex};

use kvm_ioctls::{Kvm, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, SyncReg, VcpuFd, VmFd};

use crate::kvm::caps::HostCaps;
use crate::kvm::cpuid::{self, CpuidProfile};
use crate::kvm::dirty::{DirtyLog, DirtyTracking};
use crate::kvm::irqchip::{self, IrqchipKind};
use crate::kvm::memory::{GuestMemory, MemoryError, SlotSpec, firmware_layout, ram_layout};
use crate::kvm::system::{KvmError, open_kvm};
use crate::sys::slots::VmSlots;

/// Where KVM's real-mode TSS lives (three pages just below a 256 KiB ROM).
pub const KVM_TSS_ADDR: usize = 0xfffb_d000;
pub use crate::devices::map::CLOCK_MSR as VMRR_CLOCK_MSR;

/// Creating or configuring a VM failed.
#[derive(Debug, thiserror::Error)]
pub enum CreateVmError {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// The host's KVM lacks something vmrr needs.
    #[error("the host's KVM lacks {what}")]
    MissingCapability {
        /// The capability.
        what: &'static str,
    },
    /// A KVM ioctl failed.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// Guest memory could not be set up.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// More vCPUs than vmrr runs, or several without KVM's in-kernel irqchip.
    #[error("{0}")]
    Vcpus(String),
    /// An empty VM made ahead of time has its interrupt controllers elsewhere.
    #[error("the VM needs a {} irqchip but was created with a {} one", wanted.name(), created.name())]
    Irqchip {
        /// What the configuration asks for.
        wanted: IrqchipKind,
        /// What the empty VM has.
        created: IrqchipKind,
    },
}

/// VM settings.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Guest RAM in bytes.
    pub mem_bytes: u64,
    /// CPUID profile.
    pub cpuid: CpuidProfile,
    /// Turn on dirty-page logging for RAM slots (checkpoints, in-place reset).
    pub dirty_log: bool,
    /// Firmware ROM size, when booting firmware (the layout then reserves the ROM slot).
    pub rom_size: Option<u64>,
    /// Where the interrupt controllers live.
    pub irqchip: IrqchipKind,
    /// vCPUs (1 to [`MAX_VCPUS`]; more than one needs [`IrqchipKind::Kernel`]).
    pub vcpus: u32,
    /// How dirty pages are tracked when `dirty_log` is on (KVM's dirty ring or bitmap).
    pub dirty_tracking: DirtyTracking,
}

/// Most vCPUs a vmrr machine runs.
pub const MAX_VCPUS: u32 = 8;

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            mem_bytes: 128 << 20,
            cpuid: CpuidProfile::default(),
            dirty_log: false,
            rom_size: None,
            irqchip: IrqchipKind::User,
            vcpus: 1,
            dirty_tracking: DirtyTracking::Auto,
        }
    }
}

/// A VM without memory: `/dev/kvm`, the VM with vmrr's capabilities and MSR filter, and
/// its vCPU (with synced registers). Creating one is most of a VM's start-up cost (several
/// KVM calls that wait for grace periods), so a host that restores often can create empty
/// VMs ahead of need and restore into them.
pub struct EmptyVm {
    kvm: Kvm,
    fd: VmFd,
    vcpu: VcpuFd,
    aps: Vec<VcpuFd>,
    caps: HostCaps,
    notes: Vec<String>,
    irqchip: IrqchipKind,
    dirty: DirtyLog,
}

impl std::fmt::Debug for EmptyVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmptyVm").field("caps", &self.caps).finish()
    }
}

impl EmptyVm {
    /// Creates an empty VM whose interrupts vmrr injects ([`IrqchipKind::User`]).
    ///
    /// # Errors
    /// `/dev/kvm` cannot be opened, a required capability is missing, or an ioctl fails.
    pub fn create() -> Result<Self, CreateVmError> {
        Self::create_with(IrqchipKind::User)
    }

    /// Creates an empty VM with its interrupt controllers where `irqchip` says (KVM's
    /// in-kernel irqchip and PIT are created before the vCPU, as KVM requires).
    ///
    /// # Errors
    /// As for [`Self::create`], and `KVM_CREATE_IRQCHIP`/`KVM_CREATE_PIT2` failures.
    pub fn create_with(irqchip: IrqchipKind) -> Result<Self, CreateVmError> {
        Self::create_for(irqchip, 1)
    }

    /// Creates an empty VM with `vcpus` vCPUs (ids 0 to `vcpus - 1`, 0 the bootstrap
    /// processor) and its interrupt controllers where `irqchip` says. Several vCPUs need
    /// KVM's in-kernel irqchip: their local APICs start the APs (INIT/SIPI).
    ///
    /// # Errors
    /// As for [`Self::create_with`], and a vCPU count out of range for vmrr or the host.
    pub fn create_for(irqchip: IrqchipKind, vcpus: u32) -> Result<Self, CreateVmError> {
        Self::create_tracking(irqchip, vcpus, DirtyTracking::Auto)
    }

    /// As [`Self::create_for`], tracking dirty pages as `dirty` says (the dirty ring must
    /// be turned on before any vCPU exists, so this is decided here).
    ///
    /// # Errors
    /// As for [`Self::create_for`], and the ring refused or not mapped.
    pub fn create_tracking(
        irqchip: IrqchipKind,
        vcpus: u32,
        dirty: DirtyTracking,
    ) -> Result<Self, CreateVmError> {
        check_vcpus(irqchip, vcpus)?;
        let kvm = open_kvm().map_err(CreateVmError::OpenKvm)?;
        let caps = HostCaps::query(&kvm);
        if !caps.sync_regs {
            return Err(CreateVmError::MissingCapability { what: "KVM_CAP_SYNC_REGS" });
        }
        let mut notes = Vec::new();
        let fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        fd.set_tss_address(KVM_TSS_ADDR).map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        if !caps.user_memory2 {
            notes.push(
                "KVM_CAP_USER_MEMORY2 is absent: memory slots use KVM_SET_USER_MEMORY_REGION".to_string(),
            );
        }
        if caps.exit_on_emulation_failure {
            let mut cap = kvm_enable_cap { cap: KVM_CAP_EXIT_ON_EMULATION_FAILURE, ..Default::default() };
            cap.args[0] = 1;
            fd.enable_cap(&cap).map_err(kvm_err("enabling KVM_CAP_EXIT_ON_EMULATION_FAILURE"))?;
        } else {
            notes.push(
                "KVM_CAP_EXIT_ON_EMULATION_FAILURE is absent: emulation failures carry no instruction bytes"
                    .to_string(),
            );
        }
        if caps.user_space_msr && caps.msr_filter {
            let mut cap = kvm_enable_cap { cap: KVM_CAP_X86_USER_SPACE_MSR, ..Default::default() };
            cap.args[0] = u64::from(KVM_MSR_EXIT_REASON_FILTER | KVM_MSR_EXIT_REASON_UNKNOWN);
            fd.enable_cap(&cap).map_err(kvm_err("enabling KVM_CAP_X86_USER_SPACE_MSR"))?;
            // Deny (so exit to userspace) reads and writes of vmrr's clock MSR only.
            let bitmap = [0u8; 1];
            let range = MsrFilterRange {
                flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
                base: VMRR_CLOCK_MSR,
                msr_count: 1,
                bitmap: &bitmap,
            };
            fd.set_msr_filter(MsrFilterDefaultAction::ALLOW, &[range])
                .map_err(kvm_err("KVM_X86_SET_MSR_FILTER"))?;
        } else {
            notes.push(
                "userspace MSR handling is absent: vmrr's clock MSR raises #GP in the guest".to_string(),
            );
        }
        if irqchip == IrqchipKind::Kernel {
            if !caps.irqchip {
                return Err(CreateVmError::MissingCapability { what: "KVM_CAP_IRQCHIP" });
            }
            irqchip::create(&fd)?;
        }
        let host_max = kvm.get_max_vcpus();
        if usize::try_from(vcpus).is_ok_and(|n| n > host_max) {
            return Err(CreateVmError::Vcpus(format!(
                "{vcpus} vCPUs asked for; this host's KVM allows {host_max}"
            )));
        }
        // The ring before any vCPU (KVM refuses it after); each vCPU's ring mapped as it is made.
        let mut dirty = DirtyLog::enable(&kvm, &fd, dirty, &mut notes)?;
        let mut vcpu = fd.create_vcpu(0).map_err(kvm_err("KVM_CREATE_VCPU"))?;
        vcpu.set_sync_valid_reg(SyncReg::Register);
        dirty.add_vcpu(&vcpu)?;
        let mut aps = Vec::new();
        for id in 1..u64::from(vcpus) {
            let mut ap = fd.create_vcpu(id).map_err(kvm_err("KVM_CREATE_VCPU"))?;
            ap.set_sync_valid_reg(SyncReg::Register);
            dirty.add_vcpu(&ap)?;
            aps.push(ap);
        }
        Ok(EmptyVm { kvm, fd, vcpu, aps, caps, notes, irqchip, dirty })
    }

    /// Its vCPUs.
    pub fn vcpus(&self) -> u32 {
        u32::try_from(self.aps.len() + 1).unwrap_or(u32::MAX)
    }

    /// Where its interrupt controllers live.
    pub fn irqchip(&self) -> IrqchipKind {
        self.irqchip
    }
}

/// A VM with one vCPU or several. vCPU 0 (the bootstrap processor) is the machine's own;
/// each other one (an AP) sits behind a mutex, held by the thread that runs it while it is
/// in `KVM_RUN` or handling an exit, and by whoever reads or sets its state while it is
/// parked (a checkpoint, a restore).
///
/// Field order is drop order: the vCPUs, then the VM (whose slots hold their host mappings
/// until after the VM is closed), then guest memory.
pub struct Vm {
    /// The focused vCPU (see [`Vm::focus`]): vCPU 0 unless a replay or a debugger chose
    /// another.
    vcpu: VcpuFd,
    /// The others, in index order with the focused one's place taken by vCPU 0.
    aps: Vec<Arc<Mutex<VcpuFd>>>,
    /// Which vCPU `vcpu` is.
    focus: u32,
    slots: VmSlots,
    memory: GuestMemory,
    kvm: Kvm,
    caps: HostCaps,
    cpuid: CpuId,
    notes: Vec<String>,
    config: VmConfig,
    /// Where dirty pages come from (the ring's mappings, one per vCPU).
    dirty: Arc<DirtyLog>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm").field("caps", &self.caps).field("config", &self.config).finish()
    }
}

/// An AP's mutex was poisoned: the thread running it panicked.
#[derive(Debug, thiserror::Error)]
#[error("vCPU {vcpu}'s thread panicked")]
pub struct VcpuLockError {
    /// The vCPU.
    pub vcpu: u32,
}

/// A vCPU count vmrr can run with `irqchip`.
fn check_vcpus(irqchip: IrqchipKind, vcpus: u32) -> Result<(), CreateVmError> {
    if !(1..=MAX_VCPUS).contains(&vcpus) {
        return Err(CreateVmError::Vcpus(format!("{vcpus} vCPUs: vmrr runs 1 to {MAX_VCPUS}")));
    }
    if vcpus > 1 && irqchip != IrqchipKind::Kernel {
        return Err(CreateVmError::Vcpus(format!(
            "{vcpus} vCPUs need KVM's in-kernel irqchip (--irqchip kernel): their local APICs start them"
        )));
    }
    Ok(())
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> CreateVmError {
    move |source| CreateVmError::Kvm(KvmError { what, source })
}

impl Vm {
    /// The memory layout `config` asks for.
    pub fn layout(config: &VmConfig) -> Vec<SlotSpec> {
        match config.rom_size {
            Some(rom) => firmware_layout(config.mem_bytes, rom),
            None => ram_layout(config.mem_bytes),
        }
    }

    /// Creates a VM with fresh (zeroed, memfd-backed) memory.
    ///
    /// # Errors
    /// KVM or memory failures.
    pub fn new(config: VmConfig) -> Result<Self, CreateVmError> {
        let memory = GuestMemory::create(&Self::layout(&config))?;
        Self::with_memory(config, memory)
    }

    /// Creates a VM over existing memory (a snapshot's files).
    ///
    /// # Errors
    /// KVM failures.
    pub fn with_memory(config: VmConfig, memory: GuestMemory) -> Result<Self, CreateVmError> {
        let empty = EmptyVm::create_tracking(config.irqchip, config.vcpus, config.dirty_tracking)?;
        Self::from_empty(empty, config, memory, true)
    }

    /// Finishes a VM from an [`EmptyVm`] created earlier: registers `memory` and, when
    /// `set_cpuid`, gives the vCPU the CPUID of `config`'s profile (a restore sets the
    /// saved CPUID instead and skips the `KVM_GET_SUPPORTED_CPUID` query).
    ///
    /// # Errors
    /// KVM failures.
    pub fn from_empty(
        empty: EmptyVm,
        config: VmConfig,
        mut memory: GuestMemory,
        set_cpuid: bool,
    ) -> Result<Self, CreateVmError> {
        let EmptyVm { kvm, fd, vcpu, aps, caps, notes, irqchip, dirty } = empty;
        if irqchip != config.irqchip {
            return Err(CreateVmError::Irqchip { wanted: config.irqchip, created: irqchip });
        }
        let count = u32::try_from(aps.len() + 1).unwrap_or(u32::MAX);
        if count != config.vcpus {
            return Err(CreateVmError::Vcpus(format!(
                "the VM needs {} vCPUs but was created with {count}",
                config.vcpus
            )));
        }
        let mut slots = VmSlots::new(fd);
        memory
            .register(&mut slots, caps.user_memory2, config.dirty_log)
            .map_err(kvm_err("registering memory slots"))?;
        let cpuid = if set_cpuid {
            let c = cpuid::build(&kvm, config.cpuid, config.irqchip == IrqchipKind::Kernel)
                .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
            vcpu.set_cpuid2(&cpuid::for_vcpu(&c, 0, count)).map_err(kvm_err("KVM_SET_CPUID2"))?;
            for (i, ap) in (1..).zip(&aps) {
                ap.set_cpuid2(&cpuid::for_vcpu(&c, i, count)).map_err(kvm_err("KVM_SET_CPUID2"))?;
            }
            c
        } else {
            CpuId::new(0).map_err(|_| CreateVmError::MissingCapability { what: "an empty CPUID set" })?
        };
        let aps = aps.into_iter().map(|a| Arc::new(Mutex::new(a))).collect();
        let dirty = Arc::new(dirty);
        Ok(Vm { vcpu, aps, focus: 0, slots, memory, kvm, caps, cpuid, notes, config, dirty })
    }

    /// vCPUs in all (the bootstrap processor and the APs).
    pub fn vcpu_count(&self) -> u32 {
        u32::try_from(self.aps.len() + 1).unwrap_or(u32::MAX)
    }

    /// The APs (vCPUs 1 and up), each behind the mutex its thread holds while it runs.
    pub(crate) fn aps(&self) -> &[Arc<Mutex<VcpuFd>>] {
        &self.aps
    }

    /// Makes vCPU `index` the focused one, the one [`Vm::vcpu`] gives (swapping places
    /// with the one focused before): how a replay runs the vCPU that failed, and a
    /// debugger shows one vCPU's registers and view of memory. No AP thread may be running.
    ///
    /// # Errors
    /// `index` is not a vCPU of this VM, or an AP's mutex is poisoned.
    pub(crate) fn focus(&mut self, index: u32) -> Result<(), VcpuLockError> {
        if index == self.focus {
            return Ok(());
        }
        if index >= self.vcpu_count() {
            return Err(VcpuLockError { vcpu: index });
        }
        // Back to vCPU 0 first, then to `index`.
        if self.focus != 0 {
            let slot = self.slot_of(self.focus).ok_or(VcpuLockError { vcpu: self.focus })?;
            let mut g = slot.lock().map_err(|_| VcpuLockError { vcpu: self.focus })?;
            std::mem::swap(&mut self.vcpu, &mut g);
            drop(g);
            self.focus = 0;
        }
        if index != 0 {
            let slot = self.slot_of(index).ok_or(VcpuLockError { vcpu: index })?;
            let mut g = slot.lock().map_err(|_| VcpuLockError { vcpu: index })?;
            std::mem::swap(&mut self.vcpu, &mut g);
            drop(g);
            self.focus = index;
        }
        Ok(())
    }

    /// The AP slot vCPU `index` (not 0) lives in when vCPU 0 is focused.
    fn slot_of(&self, index: u32) -> Option<Arc<Mutex<VcpuFd>>> {
        let i = usize::try_from(index.checked_sub(1)?).ok()?;
        self.aps.get(i).cloned()
    }

    /// The focused vCPU's index.
    pub fn focused(&self) -> u32 {
        self.focus
    }

    /// Calls `f` with each vCPU in index order, locking each AP's mutex in turn (its
    /// thread must be parked: see [`Vm`]). Stops at the first error.
    ///
    /// # Errors
    /// `f`'s, or a poisoned AP mutex (its thread panicked) as [`VcpuLockError`].
    pub(crate) fn each_vcpu<E: From<VcpuLockError>>(
        &self,
        mut f: impl FnMut(u32, &VcpuFd) -> Result<(), E>,
    ) -> Result<(), E> {
        for i in 0..self.vcpu_count() {
            if i == self.focus {
                f(i, &self.vcpu)?;
                continue;
            }
            // vCPU 0 sits in the focused one's slot.
            let slot = if i == 0 { self.focus } else { i };
            let ap = self.slot_of(slot).ok_or(VcpuLockError { vcpu: i })?;
            let g = ap.lock().map_err(|_| VcpuLockError { vcpu: i })?;
            f(i, &g)?;
        }
        Ok(())
    }

    /// The vCPU.
    pub(crate) fn vcpu(&self) -> &VcpuFd {
        &self.vcpu
    }

    /// The vCPU, for `KVM_RUN` and `kvm_run` changes.
    pub(crate) fn vcpu_mut(&mut self) -> &mut VcpuFd {
        &mut self.vcpu
    }

    /// The VM file descriptor.
    pub(crate) fn fd(&self) -> &VmFd {
        self.slots.fd()
    }

    /// `/dev/kvm`.
    pub(crate) fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    /// Guest memory, to rebind slots to other files (a restore over the kept machine).
    pub(crate) fn memory_mut(&mut self) -> &mut GuestMemory {
        &mut self.memory
    }

    /// What the host's KVM offers.
    pub fn caps(&self) -> &HostCaps {
        &self.caps
    }

    /// The CPUID set the guest sees.
    pub fn cpuid(&self) -> &CpuId {
        &self.cpuid
    }

    /// Notes for the user (capability fallbacks), printed by the CLI.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Adds a note for the user.
    pub fn add_note(&mut self, note: String) {
        self.notes.push(note);
    }

    /// Where the guest's dirty pages come from (the ring or the bitmap).
    pub fn dirty(&self) -> &Arc<DirtyLog> {
        &self.dirty
    }

    /// The pages of `slot` the guest wrote since the last call for it (and since the
    /// last snapshot, reset or restore over this VM, which take them too), forgotten
    /// once returned. The vCPUs should be parked.
    ///
    /// # Errors
    /// KVM's (`KVM_GET_DIRTY_LOG` on a slot without dirty logging, say).
    pub fn take_dirty(
        &self,
        slot: &crate::kvm::memory::Slot,
    ) -> Result<crate::kvm::dirty::DirtyPages, KvmError> {
        self.dirty.take(self.fd(), slot)
    }

    /// The configuration.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// Where the interrupt controllers live.
    pub fn irqchip(&self) -> IrqchipKind {
        self.config.irqchip
    }

    /// Pulses ISA line `gsi` on KVM's in-kernel irqchip.
    ///
    /// # Errors
    /// `KVM_IRQ_LINE` failed (no in-kernel irqchip, say).
    pub fn pulse_irq_line(&self, gsi: u32) -> Result<(), KvmError> {
        irqchip::pulse(self.fd(), gsi)
    }
}

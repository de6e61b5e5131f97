//! A KVM VM with one vCPU, memfd-backed region2 memory slots, and vmrr's capability set-up.

use kvm_bindings::{
    CpuId, KVM_CAP_EXIT_ON_EMULATION_FAILURE, KVM_CAP_X86_USER_SPACE_MSR, KVM_MSR_EXIT_REASON_FILTER,
    KVM_MSR_EXIT_REASON_UNKNOWN, kvm_enable_cap,
};
use kvm_ioctls::{Kvm, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, SyncReg, VcpuFd, VmFd};

use crate::error::CreateVmError;
use crate::kvm::caps::HostCaps;
use crate::kvm::cpuid::{self, CpuidProfile};
use crate::kvm::memory::{GuestMemory, SlotSpec, firmware_layout, ram_layout};

/// Where KVM's real-mode TSS lives (three pages just below a 256 KiB ROM).
pub const KVM_TSS_ADDR: usize = 0xfffb_d000;
/// vmrr's clock MSR: RDMSR returns host time (ns); handled in userspace via the MSR filter.
pub const VMRR_CLOCK_MSR: u32 = 0x5652_0001;

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
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig { mem_bytes: 128 << 20, cpuid: CpuidProfile::default(), dirty_log: false, rom_size: None }
    }
}

/// Everything of a VM that does not depend on its memory or guest: `/dev/kvm`, the VM with
/// vmrr's capabilities and MSR filter, and its vCPU (with synced registers). Creating one
/// is most of a VM's start-up cost (several KVM calls that wait for grace periods), so a
/// host that restores often can create shells ahead of need and restore into them.
pub struct Shell {
    kvm: Kvm,
    fd: VmFd,
    vcpu: VcpuFd,
    caps: HostCaps,
    notes: Vec<String>,
}

impl std::fmt::Debug for Shell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shell").field("caps", &self.caps).finish()
    }
}

impl Shell {
    /// Creates a shell.
    ///
    /// # Errors
    /// `/dev/kvm` cannot be opened, a required capability is missing, or an ioctl fails.
    pub fn create() -> Result<Self, CreateVmError> {
        let kvm = open_kvm()?;
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
        let mut vcpu = fd.create_vcpu(0).map_err(kvm_err("KVM_CREATE_VCPU"))?;
        vcpu.set_sync_valid_reg(SyncReg::Register);
        Ok(Shell { kvm, fd, vcpu, caps, notes })
    }
}

/// A VM with one vCPU.
///
/// Field order is drop order: the vCPU and VM file descriptors close before guest memory
/// is unmapped, so KVM never holds a slot whose mapping is gone.
pub struct Vm {
    /// The vCPU.
    pub vcpu: VcpuFd,
    /// The VM.
    pub fd: VmFd,
    /// Guest memory.
    pub memory: GuestMemory,
    /// `/dev/kvm`.
    pub kvm: Kvm,
    /// Host capabilities.
    pub caps: HostCaps,
    /// The CPUID set the guest sees.
    pub cpuid: CpuId,
    /// Notes for the user (capability fallbacks), printed by the CLI.
    pub notes: Vec<String>,
    /// The configuration.
    pub config: VmConfig,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm").field("caps", &self.caps).field("config", &self.config).finish()
    }
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> CreateVmError {
    move |source| CreateVmError::Kvm { what, source }
}

/// Opens `/dev/kvm`.
///
/// # Errors
/// [`CreateVmError::OpenKvm`].
pub fn open_kvm() -> Result<Kvm, CreateVmError> {
    open_kvm_device().map_err(CreateVmError::OpenKvm)
}

/// Opens `/dev/kvm`; every path into KVM goes through here.
///
/// Built with the `testing` feature (as the test suite builds vmrr), `VMRR_DENY_KVM` in the
/// environment makes it fail with `EACCES` instead: the hostile-input tests run that way
/// to prove a bad trace, snapshot or bundle is refused before KVM is ever touched.
///
/// # Errors
/// The `open` error.
pub fn open_kvm_device() -> Result<Kvm, kvm_ioctls::Error> {
    #[cfg(feature = "testing")]
    if std::env::var_os("VMRR_DENY_KVM").is_some() {
        return Err(kvm_ioctls::Error::new(libc::EACCES));
    }
    Kvm::new()
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
        Self::from_shell(Shell::create()?, config, memory, true)
    }

    /// Finishes a VM from a [`Shell`] created earlier: registers `memory` and, when
    /// `set_cpuid`, gives the vCPU the CPUID of `config`'s profile (a restore sets the
    /// saved CPUID instead and skips the `KVM_GET_SUPPORTED_CPUID` query).
    ///
    /// # Errors
    /// KVM failures.
    pub fn from_shell(
        shell: Shell,
        config: VmConfig,
        mut memory: GuestMemory,
        set_cpuid: bool,
    ) -> Result<Self, CreateVmError> {
        let Shell { kvm, fd, vcpu, caps, mut notes } = shell;
        memory
            .register(&fd, caps.user_memory2, config.dirty_log)
            .map_err(kvm_err("registering memory slots"))?;
        let cpuid = if set_cpuid {
            let c = cpuid::build(&kvm, config.cpuid).map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
            vcpu.set_cpuid2(&c).map_err(kvm_err("KVM_SET_CPUID2"))?;
            c
        } else {
            CpuId::new(0).map_err(|_| CreateVmError::Config("empty CPUID".into()))?
        };
        if let Ok(f) = crate::kvm::probe::host_facts() {
            if !f.cpuid_enforced {
                notes.push(
                    "this host does not apply KVM_SET_CPUID2 to the guest's CPUID instruction (measured): \
                     the TSC and RDRAND cannot be hidden, so replay of a guest that reads them may diverge"
                        .to_string(),
                );
            }
        }
        Ok(Vm { vcpu, fd, memory, kvm, caps, cpuid, notes, config })
    }

    /// A VM with `mem_bytes` of RAM and no vmrr set-up beyond memory (used by the host probe).
    ///
    /// # Errors
    /// KVM or memory failures.
    pub fn bare(mem_bytes: u64) -> Result<(Kvm, VmFd, VcpuFd, GuestMemory), CreateVmError> {
        let kvm = open_kvm()?;
        let caps = HostCaps::query(&kvm);
        let fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        fd.set_tss_address(KVM_TSS_ADDR).map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        let mut memory = GuestMemory::create(&ram_layout(mem_bytes))?;
        memory.register(&fd, caps.user_memory2, false).map_err(kvm_err("registering memory slots"))?;
        let vcpu = fd.create_vcpu(0).map_err(kvm_err("KVM_CREATE_VCPU"))?;
        let cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        vcpu.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
        Ok((kvm, fd, vcpu, memory))
    }
}

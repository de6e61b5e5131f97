//! What the host's KVM offers, checked once per VM.

use kvm_bindings::{
    KVM_CAP_EXIT_ON_EMULATION_FAILURE, KVM_CAP_IMMEDIATE_EXIT, KVM_CAP_READONLY_MEM, KVM_CAP_SYNC_REGS,
    KVM_CAP_SYSTEM_EVENT_DATA, KVM_CAP_USER_MEMORY2, KVM_CAP_X86_MSR_FILTER, KVM_CAP_X86_USER_SPACE_MSR,
};
use kvm_ioctls::Kvm;

/// Capabilities vmrr uses, as the host reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostCaps {
    /// `KVM_CAP_USER_MEMORY2`: slots are registered with `KVM_SET_USER_MEMORY_REGION2`.
    pub user_memory2: bool,
    /// `KVM_CAP_EXIT_ON_EMULATION_FAILURE`: emulation failures exit with instruction bytes.
    pub exit_on_emulation_failure: bool,
    /// `KVM_CAP_SYNC_REGS`: registers arrive in `kvm_run` with every exit.
    pub sync_regs: bool,
    /// `KVM_CAP_X86_USER_SPACE_MSR`.
    pub user_space_msr: bool,
    /// `KVM_CAP_X86_MSR_FILTER`.
    pub msr_filter: bool,
    /// `KVM_CAP_SYSTEM_EVENT_DATA`: `system_event.ndata` is valid.
    pub system_event_data: bool,
    /// `KVM_CAP_IMMEDIATE_EXIT`.
    pub immediate_exit: bool,
    /// `KVM_CAP_READONLY_MEM` (firmware ROM).
    pub readonly_mem: bool,
    /// `KVM_GET_VCPU_MMAP_SIZE`.
    pub vcpu_mmap_size: usize,
    /// `KVM_CAP_IRQCHIP`: KVM's in-kernel PIC, IOAPIC and local APICs.
    pub irqchip: bool,
    /// The performance-monitoring unit KVM offers guests (`KVM_GET_SUPPORTED_CPUID` leaf
    /// 0xA): `(version, general-purpose counters)`, `None` without one. An instruction
    /// counter is what could place what several vCPUs did between exits.
    pub pmu: Option<(u8, u8)>,
}

impl HostCaps {
    /// Queries `kvm`.
    pub fn query(kvm: &Kvm) -> Self {
        // `kvm_ioctls::Cap` lacks some of these, so all are asked by number.
        let has = |c: u32| kvm.check_extension_raw(libc::c_ulong::from(c)) > 0;
        HostCaps {
            user_memory2: has(KVM_CAP_USER_MEMORY2),
            exit_on_emulation_failure: has(KVM_CAP_EXIT_ON_EMULATION_FAILURE),
            sync_regs: has(KVM_CAP_SYNC_REGS),
            user_space_msr: has(KVM_CAP_X86_USER_SPACE_MSR),
            msr_filter: has(KVM_CAP_X86_MSR_FILTER),
            system_event_data: has(KVM_CAP_SYSTEM_EVENT_DATA),
            immediate_exit: has(KVM_CAP_IMMEDIATE_EXIT),
            readonly_mem: has(KVM_CAP_READONLY_MEM),
            vcpu_mmap_size: kvm.get_vcpu_mmap_size().unwrap_or(0),
            irqchip: has(kvm_bindings::KVM_CAP_IRQCHIP),
            pmu: pmu(kvm),
        }
    }

    /// `host.pmu`: `none`, or `version V, N counters`.
    pub fn describe_pmu(&self) -> String {
        match self.pmu {
            None => "none".into(),
            Some((v, n)) => format!("version {v}, {n} counters"),
        }
    }

    /// `key=value` pairs for the trace's annotations.
    pub fn describe(&self) -> String {
        format!(
            "user_memory2={} exit_on_emulation_failure={} sync_regs={} user_space_msr={} msr_filter={} system_event_data={} immediate_exit={} readonly_mem={} irqchip={}",
            self.user_memory2,
            self.exit_on_emulation_failure,
            self.sync_regs,
            self.user_space_msr,
            self.msr_filter,
            self.system_event_data,
            self.immediate_exit,
            self.readonly_mem,
            self.irqchip
        )
    }
}

/// Leaf 0xA of the CPUID KVM supports: the architectural PMU's version and counters.
fn pmu(kvm: &Kvm) -> Option<(u8, u8)> {
    let cpuid = kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES).ok()?;
    let e = cpuid.as_slice().iter().find(|e| e.function == 0xa)?;
    let [version, counters, ..] = e.eax.to_le_bytes();
    (version != 0).then_some((version, counters))
}

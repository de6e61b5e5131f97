//! The CPUID the guest sees.
//!
//! The default **deterministic** profile starts from `KVM_GET_SUPPORTED_CPUID` and hides
//! what makes a guest nondeterministic without any exit showing it:
//! - RDRAND and RDSEED (random numbers straight from the CPU);
//! - the TSC family: TSC, RDTSCP, invariant TSC and the TSC-deadline timer, so guests that
//!   honour CPUID (SeaBIOS, Linux) fall back to timers that exit (the PIT), whose reads are
//!   recorded;
//! - KVM's paravirtual features (kvmclock writes host time into guest memory).
//!
//! A guest that executes RDTSC anyway still gets the host TSC (KVM does not trap it), and
//! replay may diverge: vmrr reports that as a divergence, not silently.
//! `--cpuid host` passes the host's set through and warns that replay may diverge.

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES, kvm_cpuid_entry2};
use kvm_ioctls::Kvm;

/// Which CPUID set the guest gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuidProfile {
    /// Host features minus nondeterministic ones (see the module docs).
    #[default]
    Deterministic,
    /// Everything KVM supports on this host.
    Host,
}

impl CpuidProfile {
    /// Parses `deterministic` or `host`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "deterministic" => Some(CpuidProfile::Deterministic),
            "host" => Some(CpuidProfile::Host),
            _ => None,
        }
    }
    /// The profile's name, as `--cpuid` takes it and annotations record it.
    pub fn name(&self) -> &'static str {
        match self {
            CpuidProfile::Deterministic => "deterministic",
            CpuidProfile::Host => "host",
        }
    }
}

/// A feature bit: leaf, sub-leaf (None = any), register, bit, name.
#[derive(Debug, Clone, Copy)]
pub struct FeatureBit {
    /// CPUID leaf (EAX on input).
    pub leaf: u32,
    /// Sub-leaf, when the leaf has them.
    pub index: Option<u32>,
    /// Register: 0 eax, 1 ebx, 2 ecx, 3 edx.
    pub reg: u8,
    /// Bit number in that register.
    pub bit: u8,
    /// The feature's usual name (`rdrand`, `tsc`).
    pub name: &'static str,
}

/// Bits the deterministic profile clears.
pub const MASKED: &[FeatureBit] = &[
    FeatureBit { leaf: 1, index: None, reg: 2, bit: 30, name: "rdrand" },
    FeatureBit { leaf: 7, index: Some(0), reg: 1, bit: 18, name: "rdseed" },
    FeatureBit { leaf: 1, index: None, reg: 3, bit: 4, name: "tsc" },
    FeatureBit { leaf: 1, index: None, reg: 2, bit: 24, name: "tsc-deadline" },
    FeatureBit { leaf: 0x8000_0001, index: None, reg: 3, bit: 27, name: "rdtscp" },
    FeatureBit { leaf: 0x8000_0007, index: None, reg: 3, bit: 8, name: "invariant-tsc" },
];

fn reg_mut(e: &mut kvm_cpuid_entry2, reg: u8) -> &mut u32 {
    match reg {
        0 => &mut e.eax,
        1 => &mut e.ebx,
        2 => &mut e.ecx,
        _ => &mut e.edx,
    }
}

/// Reads register `reg` of an entry.
pub fn reg(e: &kvm_cpuid_entry2, reg: u8) -> u32 {
    match reg {
        0 => e.eax,
        1 => e.ebx,
        2 => e.ecx,
        _ => e.edx,
    }
}

/// Bits cleared in every profile of a machine without KVM's in-kernel irqchip: the guest
/// has no local APIC (vmrr injects its interrupts from userspace).
pub const ABSENT: &[FeatureBit] = &[
    FeatureBit { leaf: 1, index: None, reg: 3, bit: 9, name: "apic" },
    FeatureBit { leaf: 1, index: None, reg: 2, bit: 21, name: "x2apic" },
];

/// The CPUID set for `profile`; `lapic` when the VM has KVM's in-kernel irqchip (the
/// local APIC then stays visible).
///
/// # Errors
/// `KVM_GET_SUPPORTED_CPUID`'s error.
pub fn build(kvm: &Kvm, profile: CpuidProfile, lapic: bool) -> Result<CpuId, kvm_ioctls::Error> {
    let mut cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)?;
    for e in cpuid.as_mut_slice() {
        for m in ABSENT.iter().filter(|_| !lapic) {
            if e.function == m.leaf && m.index.is_none_or(|i| i == e.index) {
                *reg_mut(e, m.reg) &= !(1u32 << m.bit);
            }
        }
    }
    if profile == CpuidProfile::Deterministic {
        for e in cpuid.as_mut_slice() {
            for m in MASKED {
                if e.function == m.leaf && m.index.is_none_or(|i| i == e.index) {
                    *reg_mut(e, m.reg) &= !(1u32 << m.bit);
                }
            }
            // KVM paravirtual features (kvmclock and friends): none.
            if e.function == 0x4000_0001 {
                e.eax = 0;
                e.edx = 0;
            }
        }
    }
    Ok(cpuid)
}

/// The entries as trace records hold them.
pub fn to_format(cpuid: &CpuId) -> Vec<vmrr_format::CpuidEntry> {
    cpuid
        .as_slice()
        .iter()
        .map(|e| vmrr_format::CpuidEntry {
            function: e.function,
            index: e.index,
            flags: e.flags,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
        })
        .collect()
}

/// Trace records' CPUID entries as KVM takes them (`KVM_SET_CPUID2`).
pub fn from_format(entries: &[vmrr_format::CpuidEntry]) -> Vec<kvm_cpuid_entry2> {
    entries
        .iter()
        .map(|e| kvm_cpuid_entry2 {
            function: e.function,
            index: e.index,
            flags: e.flags,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
            padding: [0; 3],
        })
        .collect()
}

/// A CPUID set a vCPU cannot take.
#[derive(Debug, thiserror::Error)]
pub enum SetCpuidError {
    /// More entries than KVM accepts.
    #[error("{count} CPUID entries exceed KVM's limit of {max}")]
    TooMany {
        /// Entries given.
        count: usize,
        /// KVM's limit.
        max: usize,
    },
    /// KVM refused the set.
    #[error(transparent)]
    Kvm(#[from] crate::kvm::system::KvmError),
}

/// Gives `vcpu` the CPUID set `entries` (before its first run: KVM refuses a change after).
///
/// # Errors
/// Too many entries, or KVM refused them.
pub fn set(vcpu: &kvm_ioctls::VcpuFd, entries: &[vmrr_format::CpuidEntry]) -> Result<(), SetCpuidError> {
    let max = KVM_MAX_CPUID_ENTRIES;
    let c = CpuId::from_entries(&from_format(entries))
        .map_err(|_| SetCpuidError::TooMany { count: entries.len(), max })?;
    vcpu.set_cpuid2(&c).map_err(crate::kvm::system::KvmError::on("KVM_SET_CPUID2"))?;
    Ok(())
}

/// This host's supported CPUID (`KVM_GET_SUPPORTED_CPUID`), as trace records hold it.
///
/// # Errors
/// `/dev/kvm` cannot be opened or queried.
pub fn host_supported() -> Result<Vec<vmrr_format::CpuidEntry>, crate::kvm::system::KvmError> {
    use crate::kvm::system::{KvmError, open_kvm};
    let kvm = open_kvm().map_err(KvmError::on("opening /dev/kvm"))?;
    let c =
        kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(KvmError::on("KVM_GET_SUPPORTED_CPUID"))?;
    Ok(to_format(&c))
}

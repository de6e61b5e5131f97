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

impl FeatureBit {
    const fn new(leaf: u32, index: Option<u32>, reg: u8, bit: u8, name: &'static str) -> Self {
        FeatureBit { leaf, index, reg, bit, name }
    }

    /// Whether this bit lives in `reg` of the entry for (`leaf`, `index`).
    fn in_word(&self, leaf: u32, index: Option<u32>, reg: u8) -> bool {
        self.leaf == leaf && self.index == index && self.reg == reg
    }
}

const EAX: u8 = 0;
const EBX: u8 = 1;
const ECX: u8 = 2;
const EDX: u8 = 3;

/// `rdrand`.
pub const RDRAND: FeatureBit = FeatureBit::new(1, None, ECX, 30, "rdrand");
/// `rdseed`.
pub const RDSEED: FeatureBit = FeatureBit::new(7, Some(0), EBX, 18, "rdseed");
/// `tsc`.
pub const TSC: FeatureBit = FeatureBit::new(1, None, EDX, 4, "tsc");
/// `tsc-deadline`.
pub const TSC_DEADLINE: FeatureBit = FeatureBit::new(1, None, ECX, 24, "tsc-deadline");
/// `rdtscp`.
pub const RDTSCP: FeatureBit = FeatureBit::new(0x8000_0001, None, EDX, 27, "rdtscp");
/// `invariant-tsc`.
pub const INVARIANT_TSC: FeatureBit = FeatureBit::new(0x8000_0007, None, EDX, 8, "invariant-tsc");
/// `apic`.
pub const APIC: FeatureBit = FeatureBit::new(1, None, EDX, 9, "apic");
/// `x2apic`.
pub const X2APIC: FeatureBit = FeatureBit::new(1, None, ECX, 21, "x2apic");

/// Bits the deterministic profile clears.
pub const MASKED: &[FeatureBit] = &[RDRAND, RDSEED, TSC, TSC_DEADLINE, RDTSCP, INVARIANT_TSC];

/// Bits cleared in every profile of a machine without KVM's in-kernel irqchip: the guest
/// has no local APIC (vmrr injects its interrupts from userspace).
pub const ABSENT: &[FeatureBit] = &[APIC, X2APIC];

/// Every feature vmrr names: the ones above, and those a replay host must have when the
/// recorded guest saw them ([`missing`]).
pub const FEATURES: &[FeatureBit] = &[
    FeatureBit::new(1, None, ECX, 0, "sse3"),
    FeatureBit::new(1, None, ECX, 1, "pclmulqdq"),
    FeatureBit::new(1, None, ECX, 9, "ssse3"),
    FeatureBit::new(1, None, ECX, 12, "fma"),
    FeatureBit::new(1, None, ECX, 13, "cx16"),
    FeatureBit::new(1, None, ECX, 19, "sse4.1"),
    FeatureBit::new(1, None, ECX, 20, "sse4.2"),
    X2APIC,
    FeatureBit::new(1, None, ECX, 22, "movbe"),
    FeatureBit::new(1, None, ECX, 23, "popcnt"),
    TSC_DEADLINE,
    FeatureBit::new(1, None, ECX, 25, "aes"),
    FeatureBit::new(1, None, ECX, 26, "xsave"),
    FeatureBit::new(1, None, ECX, 28, "avx"),
    FeatureBit::new(1, None, ECX, 29, "f16c"),
    RDRAND,
    FeatureBit::new(1, None, EDX, 0, "fpu"),
    TSC,
    FeatureBit::new(1, None, EDX, 8, "cx8"),
    APIC,
    FeatureBit::new(1, None, EDX, 15, "cmov"),
    FeatureBit::new(1, None, EDX, 23, "mmx"),
    FeatureBit::new(1, None, EDX, 25, "sse"),
    FeatureBit::new(1, None, EDX, 26, "sse2"),
    FeatureBit::new(7, Some(0), EBX, 3, "bmi1"),
    FeatureBit::new(7, Some(0), EBX, 5, "avx2"),
    FeatureBit::new(7, Some(0), EBX, 8, "bmi2"),
    FeatureBit::new(7, Some(0), EBX, 9, "erms"),
    FeatureBit::new(7, Some(0), EBX, 16, "avx512f"),
    FeatureBit::new(7, Some(0), EBX, 17, "avx512dq"),
    RDSEED,
    FeatureBit::new(7, Some(0), EBX, 19, "adx"),
    FeatureBit::new(7, Some(0), EBX, 29, "sha"),
    FeatureBit::new(7, Some(0), EBX, 30, "avx512bw"),
    FeatureBit::new(7, Some(0), EBX, 31, "avx512vl"),
    FeatureBit::new(7, Some(0), ECX, 1, "avx512vbmi"),
    FeatureBit::new(7, Some(0), ECX, 8, "gfni"),
    FeatureBit::new(7, Some(0), ECX, 9, "vaes"),
    FeatureBit::new(7, Some(0), ECX, 10, "vpclmulqdq"),
    FeatureBit::new(7, Some(0), EDX, 4, "fsrm"),
    FeatureBit::new(0x8000_0001, None, ECX, 0, "lahf_lm"),
    FeatureBit::new(0x8000_0001, None, ECX, 5, "abm"),
    FeatureBit::new(0x8000_0001, None, EDX, 11, "syscall"),
    FeatureBit::new(0x8000_0001, None, EDX, 20, "nx"),
    FeatureBit::new(0x8000_0001, None, EDX, 26, "pdpe1gb"),
    RDTSCP,
    FeatureBit::new(0x8000_0001, None, EDX, 29, "lm"),
    INVARIANT_TSC,
    FeatureBit::new(0xd, Some(1), EAX, 0, "xsaveopt"),
    FeatureBit::new(0xd, Some(1), EAX, 1, "xsavec"),
    FeatureBit::new(0xd, Some(1), EAX, 3, "xsaves"),
];

/// The feature words a replay host is checked on: `(leaf, sub-leaf, register)`.
const CHECKED_WORDS: &[(u32, Option<u32>, u8)] = &[
    (1, None, ECX),
    (1, None, EDX),
    (7, Some(0), EBX),
    (7, Some(0), ECX),
    (7, Some(0), EDX),
    (0x8000_0001, None, ECX),
    (0x8000_0001, None, EDX),
    (0xd, Some(1), EAX),
];

fn reg_mut(e: &mut kvm_cpuid_entry2, reg: u8) -> &mut u32 {
    match reg {
        EAX => &mut e.eax,
        EBX => &mut e.ebx,
        ECX => &mut e.ecx,
        _ => &mut e.edx,
    }
}

/// Register `reg` of a recorded entry.
fn recorded_reg(e: &vmrr_format::CpuidEntry, reg: u8) -> u32 {
    match reg {
        EAX => e.eax,
        EBX => e.ebx,
        ECX => e.ecx,
        _ => e.edx,
    }
}

/// Features set in `recorded` (the CPUID a recorded guest saw) that `host` (a replay
/// host's supported CPUID) lacks, in the checked words: by name where [`FEATURES`] has
/// one, as "leaf 0x7.0 ebx bit 16" otherwise.
pub fn missing(recorded: &[vmrr_format::CpuidEntry], host: &[vmrr_format::CpuidEntry]) -> Vec<String> {
    let find = |entries: &'_ [vmrr_format::CpuidEntry], leaf: u32, sub: Option<u32>| {
        entries.iter().find(|e| e.function == leaf && sub.is_none_or(|s| s == e.index)).copied()
    };
    let mut out = Vec::new();
    for &(leaf, sub, r) in CHECKED_WORDS {
        let Some(rec) = find(recorded, leaf, sub) else { continue };
        let have = find(host, leaf, sub).map_or(0, |h| recorded_reg(&h, r));
        let lacking = recorded_reg(&rec, r) & !have;
        for bit in (0..32u8).filter(|b| lacking & (1 << b) != 0) {
            let name = FEATURES.iter().find(|f| f.in_word(leaf, sub, r) && f.bit == bit);
            out.push(name.map_or_else(
                || {
                    let rn = ["eax", "ebx", "ecx", "edx"][usize::from(r.min(EDX))];
                    format!("leaf {leaf:#x}.{} {rn} bit {bit}", sub.unwrap_or(0))
                },
                |f| f.name.to_string(),
            ));
        }
    }
    out
}

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

/// `cpuid` as vCPU `index` of `count` sees it: its initial APIC ID (leaf 1 `EBX[31:24]`,
/// leaves 0xB and 0x1F EDX), and a topology of `count` single-thread cores in one package
/// (leaf 1's logical-processor count and HTT bit, leaf 4's cores per package, leaves 0xB
/// and 0x1F's levels). KVM gives vCPU `index` the local APIC ID `index`; the CPUID the guest
/// reads must agree with it and with the MADT, or Linux numbers its CPUs inconsistently.
/// With `count` 1 the set is returned unchanged.
pub fn for_vcpu(cpuid: &CpuId, index: u32, count: u32) -> CpuId {
    let mut c = cpuid.clone();
    if count <= 1 {
        return c;
    }
    // Bits of the APIC ID that number cores: enough for `count`.
    let shift = u32::BITS - (count - 1).leading_zeros();
    for e in c.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (index << 24) | (count.min(255) << 16);
                e.edx |= 1 << 28;
            }
            4 if e.eax & 0x1f != 0 => {
                e.eax = (e.eax & 0x03ff_ffff) | ((count - 1).min(63) << 26);
            }
            0xb | 0x1f => {
                // ECX: level type (1 SMT, 2 core, 0 none) in 15:8, the sub-leaf in 7:0.
                let (eax, ebx, ecx) = match e.index {
                    0 => (0, 1, 0x100),
                    1 => (shift, count, 0x201),
                    i => (0, 0, i & 0xff),
                };
                e.eax = eax;
                e.ebx = ebx;
                e.ecx = ecx;
                e.edx = index;
            }
            _ => {}
        }
    }
    c
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

#[cfg(test)]
mod tests {
    use super::*;
    use vmrr_format::CpuidEntry;

    #[test]
    fn names_missing_features() {
        let e = |edx, ebx| {
            vec![
                CpuidEntry { function: 1, edx, ..Default::default() },
                CpuidEntry { function: 7, index: 0, ebx, ..Default::default() },
            ]
        };
        let rec = e(1 << 26, (1 << 16) | (1 << 13));
        let host = e(1 << 26, 0);
        assert_eq!(missing(&rec, &host), vec!["leaf 0x7.0 ebx bit 13".to_string(), "avx512f".to_string()]);
        assert!(missing(&host, &rec).is_empty());
    }

    #[test]
    fn the_masks_are_named_features() {
        for m in MASKED.iter().chain(ABSENT) {
            let f = FEATURES.iter().find(|f| f.name == m.name).expect("every mask is a named feature");
            assert!(f.in_word(m.leaf, m.index, m.reg) && f.bit == m.bit, "{}", m.name);
        }
        let mut names: Vec<_> = FEATURES.iter().map(|f| f.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FEATURES.len(), "names are unique");
    }
}

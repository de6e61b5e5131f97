//! Facts about this host's KVM, measured once per process with a tiny real-mode guest
//! (about a millisecond), not assumed from what the host claims to be:
//!
//! - where RIP points at I/O, MMIO and HLT exits (hardware VMX/SVM report port I/O at the
//!   instruction; some paravirtual hosts past it). Every register sample records it, so a
//!   replay on another host compares RIPs without special-casing any host;
//! - whether the CPUID set with `KVM_SET_CPUID2` is what the guest's `CPUID` returns. On
//!   VMX/SVM it always is; a host that lets CPUID through cannot hide the TSC or RDRAND,
//!   so vmrr warns that replay of guests using them may diverge there.

use std::sync::OnceLock;

use kvm_ioctls::VcpuExit;

use crate::error::CreateVmError;
use crate::exit::RipConvention;
use crate::kvm::vm::Vm;

/// What the probe measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostFacts {
    /// RIP reporting at exits.
    pub rip: RipConvention,
    /// The guest's CPUID instruction returns the vCPU's CPUID set (masks take effect).
    pub cpuid_enforced: bool,
}

static FACTS: OnceLock<Result<HostFacts, String>> = OnceLock::new();

/// This host's facts (measured at first use).
///
/// # Errors
/// KVM failures while probing, as text.
pub fn host_facts() -> Result<HostFacts, String> {
    FACTS.get_or_init(|| measure().map_err(|e| e.to_string())).clone()
}

/// This host's RIP convention (see [`host_facts`]).
///
/// # Errors
/// As for [`host_facts`].
pub fn rip_convention() -> Result<RipConvention, String> {
    host_facts().map(|f| f.rip)
}

fn measure() -> Result<HostFacts, CreateVmError> {
    let (_kvm, _fd, mut vcpu, mem) = Vm::bare(64 << 10)?;
    // Real mode at 0x1000:
    //   out 0x80, al          ; IO exit
    //   mov [0], al           ; DS = 0x2000: GPA 0x20000 is unbacked: MMIO exit
    //   mov eax, 1 ; cpuid    ; with the TSC bit masked in the vCPU's CPUID
    //   hlt                   ; HLT exit, EDX read back
    let code = [0xe6, 0x80, 0xa2, 0x00, 0x00, 0x66, 0xb8, 0x01, 0x00, 0x00, 0x00, 0x0f, 0xa2, 0xf4];
    mem.write(0x1000, &code).ok_or(CreateVmError::Config("probe memory".into()))?;
    let kvm_err = |what| move |source| CreateVmError::Kvm { what, source };
    let mut cpuid = _kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    for e in cpuid.as_mut_slice() {
        if e.function == 1 {
            e.edx &= !(1 << 4);
        }
    }
    vcpu.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
    let mut sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    sregs.ds.base = 0x2_0000;
    sregs.ds.selector = 0x2000;
    vcpu.set_sregs(&sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
    let regs = kvm_bindings::kvm_regs { rip: 0x1000, rflags: 2, ..Default::default() };
    vcpu.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;
    let mut facts = HostFacts::default();
    for _ in 0..3 {
        let kind = match vcpu.run().map_err(kvm_err("KVM_RUN"))? {
            VcpuExit::IoOut(..) => 0,
            VcpuExit::MmioWrite(..) => 1,
            VcpuExit::Hlt => 2,
            _ => return Err(CreateVmError::Config("unexpected exit while probing the host".into())),
        };
        let r = vcpu.get_regs().map_err(kvm_err("KVM_GET_REGS"))?;
        match kind {
            0 => facts.rip.io_after = r.rip == 0x1002,
            1 => facts.rip.mmio_after = r.rip == 0x1005,
            _ => {
                facts.cpuid_enforced = r.rdx & (1 << 4) == 0;
                break;
            }
        }
    }
    Ok(facts)
}

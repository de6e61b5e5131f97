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

use crate::exit::RipConvention;
use crate::kvm::caps::HostCaps;
use crate::kvm::memory::{GuestMemory, ram_layout};
use crate::kvm::system::{KvmError, open_kvm};
use crate::kvm::vm::{CreateVmError, KVM_TSS_ADDR};
use crate::sys::slots::VmSlots;

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
    let kvm = open_kvm().map_err(CreateVmError::OpenKvm)?;
    let caps = HostCaps::query(&kvm);
    let kvm_err = |what| move |source| CreateVmError::Kvm(KvmError { what, source });
    let fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    fd.set_tss_address(KVM_TSS_ADDR).map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    let mut slots = VmSlots::new(fd);
    let mut mem = GuestMemory::create(&ram_layout(64 << 10))?;
    mem.register(&mut slots, caps.user_memory2, false).map_err(kvm_err("registering memory slots"))?;
    let mut vcpu = slots.fd().create_vcpu(0).map_err(kvm_err("KVM_CREATE_VCPU"))?;
    // Real mode at 0x1000:
    //   out 0x80, al          ; IO exit
    //   mov [0], al           ; DS = 0x2000: GPA 0x20000 is unbacked: MMIO exit
    //   mov eax, 1 ; cpuid    ; with the TSC bit masked in the vCPU's CPUID
    //   hlt                   ; HLT exit, EDX read back
    let code = [0xe6, 0x80, 0xa2, 0x00, 0x00, 0x66, 0xb8, 0x01, 0x00, 0x00, 0x00, 0x0f, 0xa2, 0xf4];
    mem.write(vm_memory::GuestAddress(0x1000), &code)
        .map_err(|e| CreateVmError::Memory(crate::kvm::memory::MemoryError::Access(e)))?;
    let mut cpuid = kvm
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
            _ => {
                return Err(CreateVmError::MissingCapability {
                    what: "the expected exits while probing the host",
                });
            }
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

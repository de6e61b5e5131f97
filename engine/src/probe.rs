//! Measures, once per process, where this host's KVM leaves RIP at I/O, MMIO and HLT
//! exits. Hardware VMX/SVM report port I/O at the instruction; some paravirtual hosts
//! report it past the instruction. The answer goes into every register sample, so a
//! replay on another host can compare RIPs without special-casing any host.

use std::sync::OnceLock;

use kvm_ioctls::VcpuExit;

use crate::error::CreateVmError;
use crate::exit::RipConvention;
use crate::vm::Vm;

static CONVENTION: OnceLock<Result<RipConvention, String>> = OnceLock::new();

/// The convention of this host's KVM (measured at first use, about a millisecond).
///
/// # Errors
/// KVM failures while probing, as text (the probe is repeated by no one).
pub fn rip_convention() -> Result<RipConvention, String> {
    CONVENTION.get_or_init(|| measure().map_err(|e| e.to_string())).clone()
}

fn measure() -> Result<RipConvention, CreateVmError> {
    let (_kvm, _fd, mut vcpu, mem) = Vm::bare(64 << 10)?;
    // Real mode at 0x1000:  out 0x80, al ; mov [0], al (DS = 0x2000: GPA 0x20000, unbacked) ; hlt
    let code = [0xe6, 0x80, 0xa2, 0x00, 0x00, 0xf4];
    mem.write(0x1000, &code).ok_or(CreateVmError::Config("probe memory".into()))?;
    let kvm_err = |what| move |source| CreateVmError::Kvm { what, source };
    let mut sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    sregs.ds.base = 0x2_0000;
    sregs.ds.selector = 0x2000;
    vcpu.set_sregs(&sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
    let regs = kvm_bindings::kvm_regs { rip: 0x1000, rflags: 2, ..Default::default() };
    vcpu.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;
    let mut conv = RipConvention::default();
    for _ in 0..3 {
        let kind = match vcpu.run().map_err(kvm_err("KVM_RUN"))? {
            VcpuExit::IoOut(..) => 0,
            VcpuExit::MmioWrite(..) => 1,
            VcpuExit::Hlt => 2,
            _ => return Err(CreateVmError::Config("unexpected exit while probing RIP reporting".into())),
        };
        let rip = vcpu.get_regs().map_err(kvm_err("KVM_GET_REGS"))?.rip;
        match kind {
            0 => conv.io_after = rip == 0x1002,
            1 => conv.mmio_after = rip == 0x1005,
            _ => break,
        }
    }
    Ok(conv)
}

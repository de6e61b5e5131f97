//! KVM itself: `/dev/kvm`, the VM and its vCPU with vmrr's capability set-up, guest memory
//! slots, vCPU state, CPUID, and the host facts measured at start.

pub mod caps;
pub mod cpuid;
pub mod dirty;
pub mod entry;
pub mod irqchip;
pub mod memory;
pub mod probe;
pub mod system;
pub mod vcpu_state;
pub mod vm;
mod written;
pub mod xsave;

pub use crate::sys::slots::VmSlots;
pub use system::{KvmError, open_kvm};
pub use vm::{CreateVmError, EmptyVm, Vm, VmConfig};

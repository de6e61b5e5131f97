//! All of the engine's `unsafe` code, each piece wrapped in a small safe function or type.
//!
//! - [`run_map`]: a read-only mapping of a vCPU's `kvm_run` region, so exits are parsed
//!   from bytes at the ABI's fixed offsets without unions or pointer arithmetic elsewhere.
//! - [`memfd`]: anonymous memory files backing guest RAM.
//! - [`region`]: registering host memory with KVM (`KVM_SET_USER_MEMORY_REGION2`, or the
//!   v1 ioctl where the host lacks it).
//! - [`kick`]: interrupting `KVM_RUN` with a signal (watchdogs).
//! - [`mm`]: populated ranges of files, copy-on-write overlays, discarding private pages.
//! - [`vcpu_state`]: the `KVM_SET_XSAVE` wrapper.
//! - [`vcpu_ioctl`]: vCPU ioctls kvm-ioctls does not wrap on x86 (`KVM_INTERRUPT`).

pub mod kick;
pub mod memfd;
pub mod mm;
pub mod region;
pub mod run_map;
pub mod vcpu_ioctl;
pub mod vcpu_state;

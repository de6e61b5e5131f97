//! All of the engine's `unsafe` code, each piece owned by a small safe function or type.
//!
//! - [`run_page`]: a mapping of a vCPU's `kvm_run` page, so exits are parsed from bytes at
//!   the ABI's offsets without unions or pointer arithmetic elsewhere.
//! - [`memfd`]: anonymous memory files backing guest RAM.
//! - [`slots`]: registering host memory with KVM (`KVM_SET_USER_MEMORY_REGION2`, or the
//!   v1 ioctl where the host lacks it).
//! - [`kick`]: interrupting `KVM_RUN` with a signal (watchdogs).
//! - [`mapping`]: populated ranges of files, copy-on-write overlays, discarding private
//!   pages.
//! - [`vcpu_state`]: the `KVM_SET_XSAVE` wrapper.
//! - [`vcpu_ioctl`]: vCPU ioctls kvm-ioctls does not wrap on x86 (`KVM_INTERRUPT`).
//! - [`tsc`]: the time-stamp counter (the recorder's per-exit clock).
//! - [`thread`]: lowering a helper thread's priority (the snapshot writer).
//! - [`uffd`]: userfaultfd write-protection of guest memory (background checkpoints).
//! - [`stop`]: dying of a caught signal after cleaning up.
//! - [`dirty_ring`]: KVM's dirty ring: enabling, mapping a vCPU's ring, harvesting, reset.
//! - [`vm_handle`]: a second handle on a VM (the APs' threads raise interrupt lines).

// The one room where the crate's `#![deny(unsafe_code)]` is lifted.
#![allow(unsafe_code)]

pub mod dirty_ring;
pub mod kick;
pub mod mapping;
pub mod memfd;
pub mod run_page;
pub mod slots;
pub mod stop;
pub mod thread;
pub mod tsc;
pub mod uffd;
pub mod vcpu_ioctl;
pub mod vcpu_state;
pub mod vm_handle;

//! One `kvm_run` exit: decoded from the vCPU's `kvm_run` page into a trace record body,
//! and where the host leaves RIP at it.

pub mod view;

pub use view::{RipConvention, RunView};

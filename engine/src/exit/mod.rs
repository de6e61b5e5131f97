//! One `kvm_run` exit: decoded from the vCPU's `kvm_run` page into a trace record body,
//! and where the host leaves RIP at it.

pub mod answer;
pub mod view;

pub use crate::sys::run_page::off as offsets;
pub use view::{RipConvention, RunView};

//! One `kvm_run` exit, as pure byte logic over the vCPU's `kvm_run` page: decoded once
//! into an [`Exit`] (a trace record body and register sample), answered
//! ([`answer`]: the reply written into the page and the decoded exit), and where the host
//! leaves RIP at it.

pub mod answer;
mod decoded;
pub mod view;

pub use crate::sys::run_page::off as offsets;
pub use decoded::Exit;
pub use view::{RipConvention, RunView};

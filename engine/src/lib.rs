//! # vmrr-engine
//!
//! Runs guests on KVM and records every `kvm_run` exit through `vmrr-format`.
//!
//! - [`vm`]: a VM with memfd-backed memory slots registered with
//!   `KVM_SET_USER_MEMORY_REGION2` (the v1 ioctl where the host lacks it), emulation
//!   failures reported with instruction bytes, userspace MSR handling, synced registers.
//! - [`boot`]: real-mode and long-mode (ring 0 or 3) start-up state.
//! - [`devices`]: the bus and the devices; every nondeterministic input arrives by exit.
//! - [`guests`]: built-in guests assembled with iced-x86, and flat images.
//! - [`machine`]: the run loop, interrupt injection at exit boundaries, fatal-exit reports.
//! - [`recorder`]: recording, usable from any VMM's own vCPU loop.
//!
//! All `unsafe` code is in the private `sys` module.
//!
//! ```no_run
//! use vmrr_engine::{guests, machine::Machine, vm::{Vm, VmConfig}, devices::console::Console};
//!
//! let vm = Vm::new(VmConfig::default())?;
//! let mut m = Machine::new(vm, Console::capture_only(), Console::capture_only())?;
//! let image = guests::builtin("hello", &guests::GuestParams { iterations: None, mem_bytes: 128 << 20 })?;
//! m.boot(&image)?;
//! let summary = m.run()?;
//! assert_eq!(m.serial.captured(), guests::HELLO_TEXT.as_bytes());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod checkpoint;
pub mod devices;
pub mod disasm;
pub mod error;
pub mod exit;
pub mod guests;
pub mod kvm;
pub mod machine;
pub mod persist;
pub mod record;
pub mod session;
pub mod snapshot;
mod sys;
#[cfg(feature = "testing")]
pub mod testing;

pub use record::{Recorder, RecorderError};

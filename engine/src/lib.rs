//! # vmrr-engine
//!
//! Runs guests on KVM, records every `kvm_run` exit through `vmrr-format`, snapshots them,
//! and gives replay a narrow entry to drive a guest from a trace.
//!
//! Rooms, each importing only from those listed before it:
//! - [`persist`], [`disasm`], [`page`], and the private `sys` (all `unsafe` code, with safe
//!   owners: the crate denies `unsafe` everywhere else);
//! - [`exit`]: a `kvm_run` exit decoded into a trace record body, and answered;
//! - [`devices`]: the bus and the devices; every nondeterministic input arrives by exit;
//! - [`kvm`]: the VM, memory slots (`KVM_SET_USER_MEMORY_REGION2`), vCPU state, CPUID,
//!   the host facts measured at start;
//! - [`guests`]: built-in guests assembled with iced-x86, flat images, firmware, boot state;
//! - [`record`]: the recorder any VMM embeds in its vCPU loop, and the trace's prelude;
//! - [`machine`]: the run loop, the replay entry, fatal-exit reports;
//! - [`snapshot`]: capture, restore (new VM, over a kept machine, in place), chains;
//! - [`session`]: a run described by a configuration, and how replay rebuilds it;
//! - [`checkpoint`]: checkpoints while recording, and the flight recorder;
//! - [`recording`]: one recording from start to close (the mirror of `vmrr_replay::replay`);
//! - [`embed`]: recording a VM another VMM runs (snapshots through its memory and vCPU fd,
//!   the guest-memory writes of its devices), so vmrr replays it without that VMM.
//!
//! ```no_run
//! use vmrr_engine::{guests, machine::Machine, kvm::{Vm, VmConfig}, devices::console::Console};
//!
//! let vm = Vm::new(VmConfig::default())?;
//! let mut m = Machine::new(vm, Console::capture_only(), Console::capture_only())?;
//! let image = guests::builtin("hello", &guests::GuestParams { iterations: None, mem_bytes: 128 << 20, vcpus: 1 })?;
//! m.boot(&image)?;
//! let summary = m.run()?;
//! assert_eq!(m.serial().captured(), guests::HELLO_TEXT.as_bytes());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(unsafe_code)]

pub mod checkpoint;
pub mod devices;
pub mod disasm;
pub mod embed;
pub mod exit;
pub mod guests;
pub mod kvm;
pub mod machine;
pub mod page;
pub mod persist;
pub mod record;
pub mod recording;
pub mod session;
pub mod snapshot;
mod sys;
#[cfg(feature = "testing")]
pub mod testing;

pub use record::{Recorder, RecorderError, RecorderOptions};
pub use vm_memory::GuestAddress;

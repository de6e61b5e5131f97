//! # vmrr-replay
//!
//! Deterministic replay of vmrr traces on KVM: restore the recorded guest from a snapshot
//! (or rebuild it from the trace's description), run it, check each exit it makes against
//! the trace, and answer each exit from the trace, so no device, file or clock of the
//! recording host is needed. The first mismatch stops the replay with a divergence report;
//! a recorded emulation failure, internal error or triple fault that happens again is
//! `reproduced`.
//!
//! Bundles (one checksummed file holding a trace and its snapshots) are a file format:
//! see `vmrr_format::bundle`; [`source`] opens one for replay.
//!
//! ```no_run
//! use vmrr_replay::{Options, replay, source};
//!
//! let src = source::open("run.vmrr".as_ref(), &Default::default())?;
//! let report = replay(&src, &Options::default())?;
//! println!("{}", report.human());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

pub mod debugger;
mod error;
pub mod explain;
mod failure_point;
pub mod gdb;
mod hosts;
pub mod matching;
mod options;
pub mod recorded;
mod replayer;
pub mod report;
mod run;
pub mod segment;
pub mod source;
mod start;
pub mod symbols;
pub mod verdict;

pub use error::{ReplayError, replay_feature_refusal};
pub use options::{DEFAULT_EXPLAIN_STEPS, Options, StartFrom};
pub use replayer::{Event, Executed, Replayer, Stop};
pub use report::{Outcome, Report};
pub use run::{replay, replay_segment};
pub use verdict::Verdict;

//! What a replay is asked to do: where to start, where to stop, what to check.

use std::path::PathBuf;
use std::time::Duration;

use vmrr_engine::devices::console::Console;

/// Instructions the search for a divergence's cause single-steps at most, by default
/// (about 15 to 60 s on a host where a step costs 15 to 60 us).
pub const DEFAULT_EXPLAIN_STEPS: u64 = 1_000_000;

/// Where to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// With `--goto`, the nearest checkpoint at or before it; without, the first (initial)
    /// snapshot; without snapshots, a guest rebuilt from the trace.
    #[default]
    Auto,
    /// Rebuild the guest from the trace's description (image, built-in, firmware),
    /// ignoring snapshots.
    Rebuild,
    /// A given checkpoint.
    Checkpoint(u64),
}

/// Replay settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Stop after the record with this sequence number.
    pub goto: Option<u64>,
    /// With `goto`: write a full snapshot of the replayed machine into this directory.
    pub snapshot_at: Option<PathBuf>,
    /// Where to start.
    pub start: StartFrom,
    /// Refuse to run when this host lacks a CPU feature the recorded guest saw.
    pub strict_cpu: bool,
    /// Where the replayed guest's serial output goes.
    pub serial: Console,
    /// The flat image a rebuilt guest runs (a bundle carries its own; the path a trace
    /// names is never opened).
    pub image: Option<PathBuf>,
    /// The firmware a rebuilt guest runs (as for `image`).
    pub firmware: Option<PathBuf>,
    /// The kernel a rebuilt guest boots (as for `image`; checked against the SHA-256 the
    /// trace recorded).
    pub kernel: Option<PathBuf>,
    /// The initramfs a rebuilt guest boots with (likewise).
    pub initrd: Option<PathBuf>,
    /// Largest guest memory a snapshot, or a rebuilt guest, may have.
    pub max_mem: u64,
    /// Replace an existing `snapshot_at` directory (a vmrr snapshot directory only).
    pub replace_output: bool,
    /// Give up when no exit happens for this long (a diverged guest may spin forever).
    pub stall: Duration,
    /// Show progress on stderr when it is a terminal.
    pub progress: bool,
    /// Search for the cause of a divergence by single-stepping at most this many
    /// instructions (`None`: report the divergence without searching).
    pub explain_steps: Option<u64>,
    /// Restore and run the failure-point snapshot of a trace that ended in a failure.
    pub failure_point: bool,
    /// A kernel's symbols (`--system-map`): reports and gdb name addresses by them.
    pub system_map: Option<std::sync::Arc<crate::symbols::SymbolMap>>,
    /// Replay the recorded path even when the recording says it cannot be deterministic
    /// (by default such a trace goes straight to its failure point, when it has one).
    pub force_path: bool,
    /// Log the replayed machine's dirty pages (a debugging session's checkpoints are then
    /// incremental).
    pub dirty_log: bool,
    /// Check the replayed machine against every checkpoint it passes (memory pages, vCPU
    /// and device state; see [`crate::segment`]); a difference is a divergence there.
    pub verify_checkpoints: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            goto: None,
            snapshot_at: None,
            start: StartFrom::Auto,
            strict_cpu: false,
            serial: Console::capture_only(),
            image: None,
            firmware: None,
            kernel: None,
            initrd: None,
            max_mem: vmrr_format::bundle::DEFAULT_MAX_MEM,
            replace_output: false,
            stall: Duration::from_secs(60),
            progress: false,
            explain_steps: Some(DEFAULT_EXPLAIN_STEPS),
            failure_point: true,
            force_path: false,
            system_map: None,
            dirty_log: false,
            verify_checkpoints: false,
        }
    }
}

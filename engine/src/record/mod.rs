//! Recording: the recorder any VMM embeds in its vCPU loop, its per-exit clock, and the
//! prelude every trace starts with.

pub mod clock;
mod out;
pub mod prelude;
pub mod recorder;

pub use clock::{ExitClock, TimeSource};
pub use recorder::{Recorder, RecorderError, RecorderOptions};

/// A recording that has started: what its snapshots must carry.
#[derive(Debug, Clone)]
pub struct Recording {
    /// The trace's id.
    pub trace_id: [u8; 16],
    /// The run's annotations.
    pub annotations: Vec<(String, String)>,
}

//! Recording: the recorder any VMM embeds in its vCPU loop.

pub mod recorder;

pub use recorder::{Recorder, RecorderError};

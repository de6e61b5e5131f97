//! Host time for devices: monotonic since the VM started, and realtime.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Host clocks.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Clock { start: Instant::now() }
    }
}

impl Clock {
    /// Nanoseconds since the clock was created (monotonic).
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Host realtime, nanoseconds since the Unix epoch.
    pub fn realtime_ns(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(0))
            .unwrap_or(0)
    }
}

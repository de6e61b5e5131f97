//! Where exit-handling time goes: per-exit timing aggregated like `perf kvm stat report`,
//! from a trace that can be kept, compared and shipped. No KVM needed: a VMM's own tools
//! can use it on traces its embedded recorder wrote.
//!
//! - [`Profiler`]: one pass over the records, into [`Table`]s by kind, port, MMIO address
//!   and MSR: count, share, handler time (exit to the next `KVM_RUN`) and guest time
//!   (time in `KVM_RUN` before the exit) as [`Histogram`]s with exact percentiles of the
//!   stored durations; [`profile_json`] is `vmrr profile --json`.
//! - [`compare_tables`]: two runs side by side with a block-bootstrap noise test.
//! - [`rate_svg`], [`latency_svg`]: pictures; [`write_timeline`]: Chrome trace-event JSON
//!   for Perfetto.
//!
//! ```
//! use vmrr_format::profile::{By, ProfileOptions, Profiler};
//! use vmrr_format::{Body, Direction, Io, Record, Timing};
//!
//! let mut p = Profiler::new(&ProfileOptions { by: vec![By::Port], ..Default::default() });
//! for seq in 0..3 {
//!     let io = Io { direction: Direction::Out, size: 1, port: 0x3f8, count: 1, data: b"x" };
//!     let t = Timing::from_ns((seq > 0).then_some(1_500), 40_000);
//!     p.observe(&Record::new(seq, 0, Body::Io(io)).with_timing(t));
//! }
//! let prof = p.finish();
//! let serial = &prof.table(By::Port).unwrap().rows()[0];
//! assert_eq!(serial.key.to_string(), "0x3f8:out");
//! assert_eq!(serial.handler.quantile_ns(0.5), Some(1_504)); // 1.5 us, as stored (time code)
//! ```

mod axis;
pub mod blocks;
mod compare;
mod histogram;
mod key;
mod profiler;
mod rate;
mod report;
pub mod svg;
mod timeline;

pub use axis::{Axes, MAX_AXES, Placed};
pub use compare::{
    CompareRow, DEFAULT_NOISE_FLOOR, MIN_BLOCKS, RESAMPLES, Verdict, bootstrap_ratio_ci, compare_tables,
};
pub use histogram::Histogram;
pub use key::{By, Key};
pub use profiler::{DEFAULT_MAX_KEYS, Profile, ProfileOptions, Profiler, Row, Summary, Table};
pub use rate::{MAX_BINS, MAX_SERIES, RateSeries, Series};
pub use report::{Dist, RowReport, profile_json, table_report};
pub use svg::{latency_svg, rate_svg};
pub use timeline::{Marker, TimelineError, TimelineOptions, TimelineSummary, write_timeline};

use crate::error::ReadError;
use crate::reader::TraceReader;

/// What a trace's damage did to a pass over it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Damage {
    /// Damaged regions skipped.
    pub regions: u64,
    /// The first problem (a damaged index included), as the reader describes it.
    pub first: Option<String>,
}

impl Damage {
    pub(crate) fn start(reader: &TraceReader) -> Self {
        let first = reader
            .index_damage()
            .map(|e| ReadError::Invalid { path: reader.name().to_string(), error: e.clone() }.to_string());
        Damage { regions: 0, first }
    }

    pub(crate) fn add(&mut self, e: &ReadError) {
        self.regions += 1;
        if self.first.is_none() {
            self.first = Some(e.to_string());
        }
    }
}

/// Profiles every readable record of `reader` (from where it stands); returns the profile
/// and what damage was skipped.
///
/// # Errors
/// An I/O error reading the trace.
pub fn profile_trace(
    reader: &mut TraceReader,
    opts: &ProfileOptions,
) -> Result<(Profile, Damage), ReadError> {
    let mut p = Profiler::new(opts);
    let mut damage = Damage::start(reader);
    while let Some(item) = reader.next_record() {
        match item {
            Ok(rec) => p.observe(&rec),
            Err(e @ ReadError::Invalid { .. }) => damage.add(&e),
            Err(e) => return Err(e),
        }
    }
    Ok((p.finish(), damage))
}

//! Where exit-handling time goes: per-exit timing aggregated like `perf kvm stat report`,
//! from a trace that can be kept, compared and shipped. No KVM needed: a VMM's own tools
//! can use it on traces its embedded recorder wrote.
//!
//! - [`Profiler`]: one pass over the records, into [`Table`]s by kind, port, MMIO address,
//!   MSR and vCPU: count, share, handler time (exit to the next `KVM_RUN`) and guest time
//!   (time in `KVM_RUN` before the exit) as [`histogram::Histogram`]s with exact percentiles of the
//!   stored durations; [`profile_json`] is `vmrr profile --json`.
//! - [`compare_tables`]: two runs side by side with a block-bootstrap noise test.
//! - [`rate_svg`], [`latency_svg`]: pictures; [`write_timeline`]: Chrome trace-event JSON
//!   for Perfetto.
//!
//! The exits' instants come from [`vmrr_format::axis`], the format's time-axis rule, one
//! axis per vCPU; [`thread`] tells vCPUs from device threads (format 1.2).
//! This room is the CLI's own (`vmrr profile`, `vmrr timeline`, the bench's pictures):
//! the format crate keeps only the format.

pub mod blocks;
mod compare;
mod histogram;
mod key;
mod profiler;
mod rate;
mod report;
pub mod svg;
pub mod thread;
mod timeline;

pub use compare::{CompareRow, Verdict, compare_tables};
pub use key::By;
pub use profiler::{Profile, ProfileOptions, Profiler, Row, Table};
pub use report::{Dist, profile_json};
pub use svg::{latency_svg, rate_svg};
pub use timeline::{Marker, TimelineError, TimelineOptions, write_timeline};

use vmrr_format::ReadError;
use vmrr_format::TraceReader;

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

#[cfg(test)]
mod tests {
    use super::*;
    use vmrr_format::{Body, Direction, Io, Record, Timing};

    #[test]
    fn a_serial_port_profile() {
        let mut p = Profiler::new(&ProfileOptions { by: vec![By::Port], ..Default::default() });
        for seq in 0..3 {
            let io = Io { direction: Direction::Out, size: 1, port: 0x3f8, count: 1, data: b"x" };
            let t = Timing::from_ns((seq > 0).then_some(1_500), 40_000);
            p.observe(&Record::new(seq, 0, Body::Io(io)).with_timing(t));
        }
        let prof = p.finish();
        let serial = &prof.table(By::Port).expect("by port").rows()[0];
        assert_eq!(serial.key.to_string(), "0x3f8:out");
        assert_eq!(serial.handler.quantile_ns(0.5), Some(1_504)); // 1.5 us, as stored (time code)
    }
}

//! Host time for the guest by port I/O: a deliberately nondeterministic input. Replay
//! answers these reads from the trace.

use crate::devices::device::{Device, DeviceCtx};

/// Host realtime in nanoseconds: low half at offset 0 (latching the high half), high half
/// at offset 4.
#[derive(Debug, Default)]
pub struct ClockPort {
    latched_high: u32,
}

/// Clock port state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClockState {
    /// The latched high half.
    pub latched_high: u32,
}

impl crate::persist::Persist for ClockPort {
    type State = ClockState;
    type ConstructorArgs = ();
    type Error = crate::persist::DeviceRestoreError;
    fn save(&self, _now: u64) -> ClockState {
        ClockState { latched_high: self.latched_high }
    }
    fn restore(_: (), s: &ClockState, _now: u64) -> Result<Self, Self::Error> {
        Ok(ClockPort { latched_high: s.latched_high })
    }
}

impl Device for ClockPort {
    fn name(&self) -> &'static str {
        "clock"
    }
    fn read(&mut self, offset: u64, data: &mut [u8], ctx: &mut DeviceCtx<'_>) {
        let v = if offset < 4 {
            let now = ctx.clock.realtime_ns();
            self.latched_high = u32::try_from(now >> 32).unwrap_or(0);
            u32::try_from(now & 0xffff_ffff).unwrap_or(0)
        } else {
            self.latched_high
        };
        for (d, s) in data.iter_mut().zip(v.to_le_bytes().iter().chain(std::iter::repeat(&0))) {
            *d = *s;
        }
    }
    fn write(&mut self, _offset: u64, _data: &[u8], _ctx: &mut DeviceCtx<'_>) {}
    fn deadline(&self) -> Option<u64> {
        None
    }
    fn tick(&mut self, _now: u64, _ctx: &mut DeviceCtx<'_>) {}
}

//! Sinks: accept writes, count them, answer reads with zero (or the last value written).

use crate::devices::device::{Device, DeviceCtx};

/// A sink device.
#[derive(Debug)]
pub struct Sink {
    name: &'static str,
    /// Writes seen.
    pub writes: u64,
    /// Last byte written (the POST port answers reads with it).
    pub last: u8,
    echo: bool,
}

/// Names a sink may have (a snapshot names its sinks by these).
pub const SINK_NAMES: &[&str] = &["post", "storm", "mmio-sink", "port92"];

/// Sink state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SinkState {
    /// Name (one of [`SINK_NAMES`]).
    pub name: String,
    /// Writes seen.
    pub writes: u64,
    /// Last byte written.
    pub last: u8,
    /// Reads return the last byte.
    pub echo: bool,
}

impl crate::persist::Persist for Sink {
    type State = SinkState;
    type ConstructorArgs = ();
    type Error = crate::persist::DeviceRestoreError;
    fn save(&self, _now: u64) -> SinkState {
        SinkState { name: self.name.to_string(), writes: self.writes, last: self.last, echo: self.echo }
    }
    fn restore(_: (), s: &SinkState, _now: u64) -> Result<Self, Self::Error> {
        let name = SINK_NAMES.iter().copied().find(|n| *n == s.name).ok_or(
            crate::persist::DeviceRestoreError::Invalid {
                device: "sink",
                field: "name",
                value: s.name.len() as u64,
            },
        )?;
        Ok(Sink { name, writes: s.writes, last: s.last, echo: s.echo })
    }
}

impl Sink {
    /// A sink whose reads return zero.
    pub fn new(name: &'static str) -> Self {
        Sink { name, writes: 0, last: 0, echo: false }
    }
    /// A sink whose reads return the last byte written (the POST port).
    pub fn echoing(name: &'static str) -> Self {
        Sink { name, writes: 0, last: 0, echo: true }
    }
}

impl Device for Sink {
    fn name(&self) -> &'static str {
        self.name
    }
    fn read(&mut self, _offset: u64, data: &mut [u8], _ctx: &mut DeviceCtx<'_>) {
        data.fill(if self.echo { self.last } else { 0 });
    }
    fn write(&mut self, _offset: u64, data: &[u8], _ctx: &mut DeviceCtx<'_>) {
        self.writes += 1;
        if let Some(&b) = data.first() {
            self.last = b;
        }
    }
    fn deadline(&self) -> Option<u64> {
        None
    }
    fn tick(&mut self, _now: u64, _ctx: &mut DeviceCtx<'_>) {}
}

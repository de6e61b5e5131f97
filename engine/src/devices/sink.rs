//! Sinks: accept writes, count them, answer reads with zero (or the last value written).

use super::{Device, DeviceCtx};

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

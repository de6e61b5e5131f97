//! The QEMU debug console at port 0x402 (SeaBIOS logs here): every byte written is output.

use crate::devices::console::Console;
use crate::devices::device::{Device, DeviceCtx};

/// The QEMU debug console at 0x402: every byte written is output.
pub struct DebugCon {
    console: Console,
}

impl DebugCon {
    /// A debug console writing to `console`.
    pub fn new(console: Console) -> Self {
        DebugCon { console }
    }
}

impl Device for DebugCon {
    fn name(&self) -> &'static str {
        "debugcon"
    }
    fn read(&mut self, _offset: u64, data: &mut [u8], _ctx: &mut DeviceCtx<'_>) {
        // QEMU answers 0xe9 so guests can detect the port.
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = 0xe9;
        }
    }
    fn write(&mut self, _offset: u64, data: &[u8], _ctx: &mut DeviceCtx<'_>) {
        for &b in data {
            self.console.put(b);
        }
    }
    fn deadline(&self) -> Option<u64> {
        None
    }
    fn tick(&mut self, _now: u64, _ctx: &mut DeviceCtx<'_>) {}
}

//! The QEMU debug console at port 0x402 (SeaBIOS logs here): every byte written is output.

use crate::devices::console::Console;
use crate::devices::device::{Device, DeviceCtx, reply_byte};
use crate::persist::{DeviceRestoreError, Persist};

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
        reply_byte(data, 0xe9);
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

impl Persist for DebugCon {
    /// Nothing: output goes to the console it is restored with.
    type State = ();
    type ConstructorArgs = Console;
    type Error = DeviceRestoreError;
    fn save(&self, _now: u64) {}
    fn restore(console: Console, (): &(), _now: u64) -> Result<Self, DeviceRestoreError> {
        Ok(DebugCon::new(console))
    }
}

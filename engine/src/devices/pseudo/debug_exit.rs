//! The debug-exit port: a write ends the run with the guest's status.

use crate::devices::device::{Device, DeviceCtx, StopRequest};
use crate::persist::{DeviceRestoreError, Persist};

/// Debug-exit device.
#[derive(Debug, Default)]
pub struct DebugExit;

impl Device for DebugExit {
    fn name(&self) -> &'static str {
        "debug-exit"
    }
    fn read(&mut self, _offset: u64, data: &mut [u8], _ctx: &mut DeviceCtx<'_>) {
        data.fill(0);
    }
    fn write(&mut self, _offset: u64, data: &[u8], ctx: &mut DeviceCtx<'_>) {
        let mut v = [0u8; 8];
        let n = data.len().min(8);
        v[..n].copy_from_slice(&data[..n]);
        *ctx.stop = Some(StopRequest::GuestExit(u64::from_le_bytes(v)));
    }
    fn deadline(&self) -> Option<u64> {
        None
    }
    fn tick(&mut self, _now: u64, _ctx: &mut DeviceCtx<'_>) {}
}

impl Persist for DebugExit {
    /// Nothing: a write ends the run at once.
    type State = ();
    type ConstructorArgs = ();
    type Error = DeviceRestoreError;
    fn save(&self, _now: u64) {}
    fn restore((): (), (): &(), _now: u64) -> Result<Self, DeviceRestoreError> {
        Ok(DebugExit)
    }
}

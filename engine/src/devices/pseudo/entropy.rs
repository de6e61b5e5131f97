//! Host randomness for the guest: a deliberately nondeterministic input. Replay answers
//! these reads from the trace.

use std::io::Read;

use crate::devices::device::{Device, DeviceCtx};
use crate::persist::{DeviceRestoreError, Persist};

/// Each read returns fresh host random bytes (`/dev/urandom`, opened at the first read).
pub struct Entropy {
    urandom: Option<std::fs::File>,
    opened: bool,
    fallback: u64,
}

impl Default for Entropy {
    fn default() -> Self {
        Entropy { urandom: None, opened: false, fallback: 0x9e37_79b9_7f4a_7c15 }
    }
}

impl Device for Entropy {
    fn name(&self) -> &'static str {
        "entropy"
    }
    fn read(&mut self, _offset: u64, data: &mut [u8], ctx: &mut DeviceCtx<'_>) {
        if !self.opened {
            self.opened = true;
            self.urandom = std::fs::File::open("/dev/urandom").ok();
        }
        let ok = self.urandom.as_mut().is_some_and(|f| f.read_exact(data).is_ok());
        if !ok {
            // splitmix64 seeded from the clock: still differs from run to run.
            self.fallback = self.fallback.wrapping_add(ctx.clock.realtime_ns() | 1);
            let mut z = self.fallback;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            for (d, s) in data.iter_mut().zip(z.to_le_bytes().iter().cycle()) {
                *d = *s;
            }
        }
    }
    fn write(&mut self, _offset: u64, _data: &[u8], _ctx: &mut DeviceCtx<'_>) {}
    fn deadline(&self) -> Option<u64> {
        None
    }
    fn tick(&mut self, _now: u64, _ctx: &mut DeviceCtx<'_>) {}
}

impl Persist for Entropy {
    /// Nothing: every read is fresh host randomness (replay answers from the trace).
    type State = ();
    type ConstructorArgs = ();
    type Error = DeviceRestoreError;
    fn save(&self, _now: u64) {}
    fn restore((): (), (): &(), _now: u64) -> Result<Self, DeviceRestoreError> {
        Ok(Entropy::default())
    }
}

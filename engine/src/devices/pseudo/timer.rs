//! An interval timer: raises its vector at the first exit after each host-time deadline
//! (or, while the guest halts, when the engine wakes it at the deadline).

use serde::{Deserialize, Serialize};

use crate::devices::device::{Device, DeviceCtx};

/// Timer state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerState {
    /// Period in microseconds; 0 when stopped.
    pub period_us: u32,
    /// Vector raised.
    pub vector: u8,
    /// Next deadline (monotonic ns of the VM's clock), when running.
    pub deadline: Option<u64>,
    /// Ticks raised.
    pub ticks: u64,
}

/// The interval timer.
#[derive(Debug)]
pub struct Timer {
    /// Its registers and deadline.
    pub state: TimerState,
}

impl Default for Timer {
    fn default() -> Self {
        Timer { state: TimerState { period_us: 0, vector: 0x20, deadline: None, ticks: 0 } }
    }
}

impl Device for Timer {
    fn name(&self) -> &'static str {
        "timer"
    }
    fn read(&mut self, offset: u64, data: &mut [u8], _ctx: &mut DeviceCtx<'_>) {
        let v = if offset < 4 { self.state.period_us } else { u32::from(self.state.vector) };
        for (d, s) in data.iter_mut().zip(v.to_le_bytes().iter().chain(std::iter::repeat(&0))) {
            *d = *s;
        }
    }
    fn write(&mut self, offset: u64, data: &[u8], ctx: &mut DeviceCtx<'_>) {
        let mut v = [0u8; 4];
        let n = data.len().min(4);
        v[..n].copy_from_slice(&data[..n]);
        let v = u32::from_le_bytes(v);
        if offset < 4 {
            self.state.period_us = v;
            self.state.deadline = (v != 0).then(|| ctx.clock.now_ns() + u64::from(v) * 1000);
        } else {
            self.state.vector = u8::try_from(v & 0xff).unwrap_or(0x20);
        }
    }
    fn deadline(&self) -> Option<u64> {
        self.state.deadline
    }
    fn tick(&mut self, now: u64, ctx: &mut DeviceCtx<'_>) {
        let Some(d) = self.state.deadline else { return };
        if now < d {
            return;
        }
        ctx.irq.raise_vector(self.state.vector);
        self.state.ticks += 1;
        let period = u64::from(self.state.period_us) * 1000;
        // Missed periods collapse into one tick; the next deadline is in the future.
        let mut next = d + period;
        if next <= now {
            next = now + period;
        }
        self.state.deadline = Some(next);
    }
}

impl crate::persist::Persist for Timer {
    type State = TimerState;
    type ConstructorArgs = ();
    type Error = crate::persist::DeviceRestoreError;
    fn save(&self, now: u64) -> TimerState {
        TimerState {
            deadline: self.state.deadline.map(|d| crate::persist::to_relative(d, now)),
            ..self.state
        }
    }
    fn restore(_: (), s: &TimerState, now: u64) -> Result<Self, Self::Error> {
        Ok(Timer {
            state: TimerState { deadline: s.deadline.map(|d| crate::persist::to_absolute(d, now)), ..*s },
        })
    }
}

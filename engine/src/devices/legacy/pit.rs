//! An 8254 programmable interval timer (ports 0x40-0x43) and port 0x61 (its channel-2
//! gate and output), counting host time at 1.193182 MHz. Channel 0 raises ISA IRQ 0.
//!
//! Every value the guest reads comes from an exit, so the trace holds it: replay needs
//! no host clock. Modelled: modes 0, 2 and 3 (1, 4 and 5 count like mode 0), lo/hi/lohi
//! access, counter latch and read-back latch commands.

use serde::{Deserialize, Serialize};

use crate::devices::device::{Device, DeviceCtx, reply_byte};

/// Input clock in Hz.
pub const PIT_HZ: u64 = 1_193_182;

/// One channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    /// Mode 0-5.
    pub mode: u8,
    /// Access: 1 lo, 2 hi, 3 lo then hi.
    pub access: u8,
    /// Reload value (0 means 65536).
    pub reload: u16,
    /// Monotonic ns when counting started (`None`: not loaded, or gate low).
    pub start_ns: Option<u64>,
    /// Latched count.
    pub latch: Option<u16>,
    /// Next read of a lo/hi counter returns the high byte.
    pub read_high: bool,
    /// Next write of a lo/hi counter is the high byte.
    pub write_high: bool,
    /// Low byte written, waiting for the high byte.
    pub write_low: u8,
    /// Gate input (channel 2: port 0x61 bit 0; others always high).
    pub gate: bool,
}

impl Channel {
    fn period_ticks(&self) -> u64 {
        if self.reload == 0 { 65536 } else { u64::from(self.reload) }
    }

    fn ticks(&self, now: u64) -> Option<u64> {
        let s = self.start_ns?;
        Some(
            u64::try_from(u128::from(now.saturating_sub(s)) * u128::from(PIT_HZ) / 1_000_000_000)
                .unwrap_or(u64::MAX),
        )
    }

    /// The counter value at `now`.
    pub fn count(&self, now: u64) -> u16 {
        let p = self.period_ticks();
        let Some(t) = self.ticks(now) else { return self.reload };
        let v = match self.mode {
            2 => p - t % p,
            3 => {
                // Counts down by two each tick, reloading each half period.
                let half = (p / 2).max(1);
                p - 2 * (t % half)
            }
            _ => {
                if t < p {
                    p - t
                } else {
                    // After terminal count the counter wraps and keeps counting.
                    65536 - (t - p) % 65536
                }
            }
        };
        u16::try_from(v & 0xffff).unwrap_or(0)
    }

    /// The output pin at `now`.
    pub fn output(&self, now: u64) -> bool {
        let p = self.period_ticks();
        let Some(t) = self.ticks(now) else { return self.mode != 0 };
        match self.mode {
            2 => t % p != p - 1,
            3 => t % p < p.div_ceil(2),
            _ => t >= p,
        }
    }

    /// When the next rising edge of the output happens (IRQ 0 for channel 0).
    pub fn next_edge(&self, now: u64) -> Option<u64> {
        let s = self.start_ns?;
        let p = self.period_ticks();
        let ns = |ticks: u64| {
            s + u64::try_from(u128::from(ticks) * 1_000_000_000 / u128::from(PIT_HZ)).unwrap_or(u64::MAX)
        };
        match self.mode {
            2 | 3 => {
                let t = self.ticks(now)?;
                Some(ns((t / p + 1) * p))
            }
            _ => {
                let at = ns(p);
                (at > now).then_some(at)
            }
        }
    }
}

/// The PIT's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PitState {
    /// Channels 0-2.
    pub channels: [Channel; 3],
    /// Port 0x61 bits 0-3 as written.
    pub port61: u8,
    /// Next IRQ 0 edge.
    pub irq0_at: Option<u64>,
    /// Refresh-toggle bit (port 0x61 bit 4) flips on every read.
    pub refresh: bool,
}

/// The PIT device: ports 0x40-0x43, aliased at 0x61 (offset 0x21).
#[derive(Debug)]
pub struct Pit {
    /// Its three channels and port B (the snapshot state).
    pub state: PitState,
}

impl Default for Pit {
    fn default() -> Self {
        let mut state = PitState::default();
        state.channels[0].gate = true;
        state.channels[1].gate = true;
        Pit { state }
    }
}

impl Pit {
    fn control(&mut self, v: u8, now: u64) {
        let sel = usize::from(v >> 6);
        if sel == 3 {
            // Read-back: bit 5 clear = latch counts of the channels in bits 1-3.
            if v & 0x20 == 0 {
                for i in 0..3 {
                    if v & (2 << i) != 0 {
                        let c = &mut self.state.channels[i];
                        c.latch = Some(c.count(now));
                        c.read_high = false;
                    }
                }
            }
            return;
        }
        let c = &mut self.state.channels[sel];
        let access = (v >> 4) & 3;
        if access == 0 {
            c.latch = Some(c.count(now));
            c.read_high = false;
            return;
        }
        c.access = access;
        c.mode = match (v >> 1) & 7 {
            6 => 2,
            7 => 3,
            m => m,
        };
        c.start_ns = None;
        c.read_high = false;
        c.write_high = false;
        if sel == 0 {
            self.state.irq0_at = None;
        }
    }

    fn write_counter(&mut self, i: usize, v: u8, now: u64) {
        let c = &mut self.state.channels[i];
        let loaded = match c.access {
            1 => Some(u16::from(v)),
            2 => Some(u16::from(v) << 8),
            _ => {
                if c.write_high {
                    c.write_high = false;
                    Some(u16::from(c.write_low) | (u16::from(v) << 8))
                } else {
                    c.write_low = v;
                    c.write_high = true;
                    None
                }
            }
        };
        if let Some(r) = loaded {
            c.reload = r;
            c.start_ns = c.gate.then_some(now);
            if i == 0 {
                self.state.irq0_at = c.next_edge(now);
            }
        }
    }

    fn read_counter(&mut self, i: usize, now: u64) -> u8 {
        let c = &mut self.state.channels[i];
        let value = c.latch.unwrap_or_else(|| c.count(now));
        let [lo, hi] = value.to_le_bytes();
        match c.access {
            1 => {
                c.latch = None;
                lo
            }
            2 => {
                c.latch = None;
                hi
            }
            _ => {
                if c.read_high {
                    c.read_high = false;
                    c.latch = None;
                    hi
                } else {
                    c.read_high = true;
                    lo
                }
            }
        }
    }
}

impl Device for Pit {
    fn name(&self) -> &'static str {
        "pit"
    }
    fn read(&mut self, offset: u64, data: &mut [u8], ctx: &mut DeviceCtx<'_>) {
        let now = ctx.clock.now_ns();
        let v = match offset {
            0..=2 => self.read_counter(usize::try_from(offset).unwrap_or(0), now),
            0x21 => {
                self.state.refresh = !self.state.refresh;
                let out2 = self.state.channels[2].output(now);
                (self.state.port61 & 0x0f) | (u8::from(self.state.refresh) << 4) | (u8::from(out2) << 5)
            }
            _ => 0xff,
        };
        reply_byte(data, v);
    }

    fn write(&mut self, offset: u64, data: &[u8], ctx: &mut DeviceCtx<'_>) {
        let Some(&v) = data.first() else { return };
        let now = ctx.clock.now_ns();
        match offset {
            0..=2 => self.write_counter(usize::try_from(offset).unwrap_or(0), v, now),
            3 => self.control(v, now),
            0x21 => {
                let gate = v & 1 != 0;
                let c = &mut self.state.channels[2];
                if gate && !c.gate {
                    c.start_ns = Some(now); // a rising gate restarts the count
                } else if !gate {
                    c.start_ns = None;
                }
                c.gate = gate;
                self.state.port61 = v & 0x0f;
            }
            _ => {}
        }
    }

    fn deadline(&self) -> Option<u64> {
        self.state.irq0_at
    }

    fn tick(&mut self, now: u64, ctx: &mut DeviceCtx<'_>) {
        if self.state.irq0_at.is_some_and(|d| d <= now) {
            ctx.irq.raise_irq(0);
            self.state.irq0_at = self.state.channels[0].next_edge(now);
        }
    }
}

impl crate::persist::Persist for Pit {
    type State = PitState;
    type ConstructorArgs = ();
    type Error = crate::persist::DeviceRestoreError;
    fn save(&self, now: u64) -> PitState {
        use crate::persist::to_relative;
        let mut s = self.state;
        for c in &mut s.channels {
            c.start_ns = c.start_ns.map(|t| to_relative(t, now));
        }
        s.irq0_at = s.irq0_at.map(|t| to_relative(t, now));
        s
    }
    fn restore(_: (), s: &PitState, now: u64) -> Result<Self, Self::Error> {
        use crate::persist::to_absolute;
        let mut state = *s;
        for (i, c) in state.channels.iter_mut().enumerate() {
            if c.mode > 5 || c.access > 3 {
                return Err(crate::persist::DeviceRestoreError::Invalid {
                    device: "pit",
                    field: "channel mode",
                    value: i as u64,
                });
            }
            c.start_ns = c.start_ns.map(|t| to_absolute(t, now));
        }
        state.irq0_at = state.irq0_at.map(|t| to_absolute(t, now));
        Ok(Pit { state })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode2_counts_down_and_reloads() {
        let c =
            Channel { mode: 2, access: 3, reload: 1000, start_ns: Some(0), gate: true, ..Default::default() };
        assert_eq!(c.count(0), 1000);
        // 500 ticks later (419 us)
        let t = 500 * 1_000_000_000 / PIT_HZ + 1;
        assert_eq!(c.count(t), 500);
        let period = 1000 * 1_000_000_000 / PIT_HZ;
        assert!(c.next_edge(t).is_some_and(|e| e >= period && e <= period + 1));
    }

    #[test]
    fn mode0_terminal_count() {
        let c =
            Channel { mode: 0, access: 3, reload: 100, start_ns: Some(0), gate: true, ..Default::default() };
        assert!(!c.output(0));
        assert!(c.output(200 * 1_000_000_000 / PIT_HZ));
    }
}

//! CMOS NVRAM and RTC (ports 0x70 index, 0x71 data): the memory size for firmware, and the
//! host's wall-clock time (a recorded, nondeterministic input).

use serde::{Deserialize, Serialize};
use vmrr_format::date::civil_from_days;

use crate::devices::device::{Device, DeviceCtx, reply_byte};

/// CMOS state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CmosState {
    /// Selected register.
    pub index: u8,
    /// The 128 bytes of NVRAM (time registers are computed on read).
    pub ram: Vec<u8>,
}

/// The CMOS device.
#[derive(Debug)]
pub struct Cmos {
    /// The index register and NVRAM (the snapshot state).
    pub state: CmosState,
}

impl Cmos {
    /// NVRAM describing `low` bytes of RAM below the MMIO hole and `high` bytes above 4
    /// GiB, the way QEMU does for SeaBIOS: base memory 640 KiB, extended memory (1-64 MiB)
    /// in KiB, memory above 16 MiB (below the hole) in 64 KiB units, memory above 4 GiB in
    /// 64 KiB units, one CPU, boot from hard disk.
    pub fn new(low: u64, high: u64) -> Self {
        let mut ram = vec![0u8; 128];
        let ext_kib = (low.saturating_sub(1 << 20) >> 10).min(0xfc00);
        let ext2 = (low.saturating_sub(16 << 20) >> 16).min(0xffff);
        let high = high >> 16;
        let put16 = |ram: &mut Vec<u8>, at: usize, v: u64| {
            ram[at] = u8::try_from(v & 0xff).unwrap_or(0);
            ram[at + 1] = u8::try_from((v >> 8) & 0xff).unwrap_or(0);
        };
        ram[0x0a] = 0x26; // divider 32.768 kHz, rate 1024 Hz
        ram[0x0b] = 0x02; // 24-hour, BCD
        ram[0x0d] = 0x80; // RAM and time valid
        put16(&mut ram, 0x15, 640);
        put16(&mut ram, 0x17, ext_kib);
        put16(&mut ram, 0x30, ext_kib);
        put16(&mut ram, 0x34, ext2);
        ram[0x5b] = u8::try_from(high & 0xff).unwrap_or(0);
        ram[0x5c] = u8::try_from((high >> 8) & 0xff).unwrap_or(0);
        ram[0x5d] = u8::try_from((high >> 16) & 0xff).unwrap_or(0);
        ram[0x5f] = 0; // CPUs - 1
        ram[0x3d] = 0x02; // boot order: hard disk
        Cmos { state: CmosState { index: 0, ram } }
    }

    fn time_reg(&self, reg: u8, realtime_ns: u64) -> u8 {
        let secs = realtime_ns / 1_000_000_000;
        let days = i64::try_from(secs / 86_400).unwrap_or(0);
        let sod = secs % 86_400;
        let (y, m, d) = civil_from_days(days);
        // 1970-01-01 was a Thursday; RTC weekday 1 = Sunday.
        let wday = u64::try_from((days + 4).rem_euclid(7) + 1).unwrap_or(1);
        let v: u64 = match reg {
            0 => sod % 60,
            2 => (sod / 60) % 60,
            4 => sod / 3600,
            6 => wday,
            7 => u64::from(d),
            8 => u64::from(m),
            9 => u64::try_from(y.rem_euclid(100)).unwrap_or(0),
            0x32 => u64::try_from(y / 100).unwrap_or(20),
            _ => 0,
        };
        let v = u8::try_from(v).unwrap_or(0);
        let binary = self.state.ram.get(0x0b).is_some_and(|b| b & 0x04 != 0);
        if binary { v } else { ((v / 10) << 4) | (v % 10) }
    }
}

impl Device for Cmos {
    fn name(&self) -> &'static str {
        "cmos"
    }
    fn read(&mut self, offset: u64, data: &mut [u8], ctx: &mut DeviceCtx<'_>) {
        let v = if offset == 0 {
            0xff
        } else {
            let i = self.state.index;
            match i {
                0 | 2 | 4 | 6..=9 | 0x32 => self.time_reg(i, ctx.clock.realtime_ns()),
                0x0a => self.state.ram[0x0a] & 0x7f, // never "update in progress"
                0x0c => {
                    let v = self.state.ram[0x0c];
                    self.state.ram[0x0c] = 0;
                    v
                }
                _ => self.state.ram.get(usize::from(i)).copied().unwrap_or(0xff),
            }
        };
        reply_byte(data, v);
    }
    fn write(&mut self, offset: u64, data: &[u8], _ctx: &mut DeviceCtx<'_>) {
        let Some(&v) = data.first() else { return };
        if offset == 0 {
            self.state.index = v & 0x7f; // bit 7 masks NMI
        } else if let Some(r) = self.state.ram.get_mut(usize::from(self.state.index)) {
            *r = v;
        }
    }
    fn deadline(&self) -> Option<u64> {
        None
    }
    fn tick(&mut self, _now: u64, _ctx: &mut DeviceCtx<'_>) {}
}

impl crate::persist::Persist for Cmos {
    type State = CmosState;
    type ConstructorArgs = ();
    type Error = crate::persist::DeviceRestoreError;
    fn save(&self, _now: u64) -> CmosState {
        self.state.clone()
    }
    fn restore(_: (), s: &CmosState, _now: u64) -> Result<Self, Self::Error> {
        if s.ram.len() != 128 {
            return Err(crate::persist::DeviceRestoreError::Invalid {
                device: "cmos",
                field: "nvram length",
                value: s.ram.len() as u64,
            });
        }
        Ok(Cmos { state: s.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_registers() {
        let c = Cmos::new(128 << 20, 0);
        let ext2 = u16::from_le_bytes([c.state.ram[0x34], c.state.ram[0x35]]);
        assert_eq!(u64::from(ext2) << 16, (128 - 16) << 20);
    }
}

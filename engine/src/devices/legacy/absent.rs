//! Hardware a guest probes that the machine does not have, answered the way an empty
//! ISA bus answers: reads return all ones, writes are dropped. A named device rather than
//! the bus's unclaimed default, so profiles and reports say what the guest looked for.

use crate::devices::device::{Device, DeviceCtx};

/// Names an absent device may have (a snapshot names them by these).
pub const ABSENT_NAMES: &[&str] = &["i8042", "com2", "com3", "com4", "lpt1", "dma", "vga", "fdc", "ide"];

/// Hardware that is not there.
#[derive(Debug, Clone, Copy)]
pub struct Absent {
    name: &'static str,
}

impl Absent {
    /// An absent device named `name`, one of [`ABSENT_NAMES`] (another name becomes
    /// `"absent"`).
    pub fn new(name: &str) -> Self {
        Absent { name: ABSENT_NAMES.iter().copied().find(|n| *n == name).unwrap_or("absent") }
    }
}

impl Device for Absent {
    fn name(&self) -> &'static str {
        self.name
    }
    fn read(&mut self, _offset: u64, data: &mut [u8], _ctx: &mut DeviceCtx<'_>) {
        data.fill(0xff);
    }
    fn write(&mut self, _offset: u64, _data: &[u8], _ctx: &mut DeviceCtx<'_>) {}
    fn deadline(&self) -> Option<u64> {
        None
    }
    fn tick(&mut self, _now: u64, _ctx: &mut DeviceCtx<'_>) {}
}

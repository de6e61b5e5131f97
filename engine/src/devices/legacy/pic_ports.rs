//! The 8259 pair's I/O ports; the pair itself is [`super::pic::Pic`], held by the
//! interrupt lines where injection can reach it.

use crate::devices::device::{Device, DeviceCtx, reply_byte};
use crate::persist::{DeviceRestoreError, Persist};

/// The PIC pair's ports (0x20-0x21 and, aliased, 0xa0-0xa1: offsets 0x80-0x81). The
/// state lives in [`crate::devices::interrupts::Interrupts`], where injection can reach it.
#[derive(Debug, Default)]
pub struct PicPorts;

impl Device for PicPorts {
    fn name(&self) -> &'static str {
        "pic"
    }
    fn read(&mut self, offset: u64, data: &mut [u8], ctx: &mut DeviceCtx<'_>) {
        let pic = ctx.irq.pic_mut();
        let v = match offset {
            0 => pic.master.read_cmd(),
            1 => pic.master.imr,
            0x80 => pic.slave.read_cmd(),
            0x81 => pic.slave.imr,
            _ => 0xff,
        };
        reply_byte(data, v);
    }
    fn write(&mut self, offset: u64, data: &[u8], ctx: &mut DeviceCtx<'_>) {
        let Some(&v) = data.first() else { return };
        let pic = ctx.irq.pic_mut();
        match offset {
            0 => pic.master.write_cmd(v),
            1 => pic.master.write_data(v),
            0x80 => pic.slave.write_cmd(v),
            0x81 => pic.slave.write_data(v),
            _ => {}
        }
    }
    fn deadline(&self) -> Option<u64> {
        None
    }
    fn tick(&mut self, _now: u64, _ctx: &mut DeviceCtx<'_>) {}
}

impl Persist for PicPorts {
    /// Nothing: the pair's state is the interrupt lines'.
    type State = ();
    type ConstructorArgs = ();
    type Error = DeviceRestoreError;
    fn save(&self, _now: u64) {}
    fn restore((): (), (): &(), _now: u64) -> Result<Self, DeviceRestoreError> {
        Ok(PicPorts)
    }
}

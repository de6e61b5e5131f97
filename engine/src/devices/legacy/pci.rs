//! PCI configuration mechanism #1 (0xcf8 address, 0xcfc-0xcff data) with no devices:
//! the address register reads back, every configuration read returns all ones.

use crate::devices::device::{Device, DeviceCtx};
use crate::persist::{DeviceRestoreError, Persist};

/// The PCI host's configuration ports.
#[derive(Debug, Default)]
pub struct PciConfig {
    /// The address register.
    pub address: u32,
}

impl Device for PciConfig {
    fn name(&self) -> &'static str {
        "pci-config"
    }
    fn read(&mut self, offset: u64, data: &mut [u8], _ctx: &mut DeviceCtx<'_>) {
        if offset < 4 && data.len() == 4 {
            data.copy_from_slice(&self.address.to_le_bytes());
        } else {
            data.fill(0xff);
        }
    }
    fn write(&mut self, offset: u64, data: &[u8], _ctx: &mut DeviceCtx<'_>) {
        if offset == 0 && data.len() == 4 {
            let mut b = [0u8; 4];
            b.copy_from_slice(data);
            self.address = u32::from_le_bytes(b) & 0x80ff_fffc;
        }
    }
    fn deadline(&self) -> Option<u64> {
        None
    }
    fn tick(&mut self, _now: u64, _ctx: &mut DeviceCtx<'_>) {}
}

impl Persist for PciConfig {
    /// The address register.
    type State = u32;
    type ConstructorArgs = ();
    type Error = DeviceRestoreError;
    fn save(&self, _now: u64) -> u32 {
        self.address
    }
    fn restore((): (), address: &u32, _now: u64) -> Result<Self, DeviceRestoreError> {
        Ok(PciConfig { address: *address })
    }
}

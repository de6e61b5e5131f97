//! ACPI power management as a guest's ACPI tables describe it (fixed hardware, no SMI
//! handshake): the PM1a event block (status, enable), the PM1a control block (`SCI_EN` always
//! set; writing `SLP_EN` enters the sleep state, which for vmrr is a power-off), and a reset
//! register.
//!
//! | offset | size | register |
//! |---|---|---|
//! | 0 | 2 | `PM1_STS` (write 1 to clear; nothing is ever pending) |
//! | 2 | 2 | `PM1_EN` |
//! | 4 | 2 | `PM1_CNT` |
//! | 8 | 1 | reset: writing [`RESET_VALUE`] resets the machine |

use serde::{Deserialize, Serialize};

use crate::devices::device::{Device, DeviceCtx, StopRequest};
use crate::persist::{DeviceRestoreError, Persist};

/// Offset of the reset register from the block's base.
pub const RESET_OFFSET: u64 = 8;
/// What the guest writes to the reset register to reset.
pub const RESET_VALUE: u8 = 6;
/// Ports the block spans.
pub const LEN: u16 = 16;
/// `PM1_CNT.SCI_EN`: ACPI mode is on.
const SCI_EN: u16 = 1;
/// `PM1_CNT.SLP_EN`: enter the sleep state `SLP_TYP` names.
const SLP_EN: u16 = 1 << 13;

/// The registers (the snapshot state).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcpiPmState {
    /// `PM1_EN`.
    pub enable: u16,
    /// `PM1_CNT`, `SLP_EN` excluded.
    pub control: u16,
}

/// The ACPI PM block.
#[derive(Debug, Default)]
pub struct AcpiPm {
    /// The registers.
    pub state: AcpiPmState,
}

fn word(data: &[u8]) -> u16 {
    let lo = data.first().copied().unwrap_or(0);
    let hi = data.get(1).copied().unwrap_or(0);
    u16::from_le_bytes([lo, hi])
}

impl Device for AcpiPm {
    fn name(&self) -> &'static str {
        "acpi-pm"
    }

    fn read(&mut self, offset: u64, data: &mut [u8], _ctx: &mut DeviceCtx<'_>) {
        let v = match offset {
            2 => self.state.enable,
            4 => self.state.control | SCI_EN,
            _ => 0,
        };
        data.fill(0);
        for (d, s) in data.iter_mut().zip(v.to_le_bytes()) {
            *d = s;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8], ctx: &mut DeviceCtx<'_>) {
        match offset {
            2 => self.state.enable = word(data),
            4 => {
                let v = word(data);
                self.state.control = v & !SLP_EN;
                if v & SLP_EN != 0 {
                    *ctx.stop = Some(StopRequest::PowerOff);
                }
            }
            RESET_OFFSET if data.first() == Some(&RESET_VALUE) => *ctx.stop = Some(StopRequest::Reset),
            _ => {}
        }
    }

    fn deadline(&self) -> Option<u64> {
        None
    }

    fn tick(&mut self, _now: u64, _ctx: &mut DeviceCtx<'_>) {}
}

impl Persist for AcpiPm {
    type State = AcpiPmState;
    type ConstructorArgs = ();
    type Error = DeviceRestoreError;
    fn save(&self, _now: u64) -> AcpiPmState {
        self.state
    }
    fn restore(_: (), state: &AcpiPmState, _now: u64) -> Result<Self, DeviceRestoreError> {
        Ok(AcpiPm { state: *state })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::clock::Clock;
    use crate::devices::interrupts::Interrupts;

    #[test]
    fn slp_en_powers_off_and_the_reset_register_resets() {
        let mut pm = AcpiPm::default();
        let (mut irq, mut stop, clock) = (Interrupts::default(), None, Clock::default());
        let mut ctx = DeviceCtx { irq: &mut irq, stop: &mut stop, clock: &clock };
        let mut cnt = [0u8; 2];
        pm.read(4, &mut cnt, &mut ctx);
        assert_eq!(word(&cnt) & SCI_EN, SCI_EN, "ACPI mode is on from the start");
        pm.write(4, &(5u16 << 10).to_le_bytes(), &mut ctx);
        assert_eq!(*ctx.stop, None, "SLP_TYP alone does nothing");
        pm.write(4, &((5u16 << 10) | SLP_EN).to_le_bytes(), &mut ctx);
        assert_eq!(*ctx.stop, Some(StopRequest::PowerOff));
        *ctx.stop = None;
        pm.write(RESET_OFFSET, &[1], &mut ctx);
        assert_eq!(*ctx.stop, None);
        pm.write(RESET_OFFSET, &[RESET_VALUE], &mut ctx);
        assert_eq!(*ctx.stop, Some(StopRequest::Reset));
    }
}

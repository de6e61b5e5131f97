//! A 16550-style UART: transmit only, always ready. Output goes to a [`Console`].

use serde::{Deserialize, Serialize};

use crate::devices::console::Console;
use crate::devices::device::{Device, DeviceCtx, reply_byte};
use crate::persist::{DeviceRestoreError, Persist};

/// The UART's registers (its snapshot state).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialState {
    /// Interrupt enable.
    pub ier: u8,
    /// Line control (bit 7: divisor latch access).
    pub lcr: u8,
    /// Modem control.
    pub mcr: u8,
    /// Scratch register (no effect; guests probe for the UART with it).
    pub scr: u8,
    /// Divisor latch low.
    pub dll: u8,
    /// Divisor latch high.
    pub dlm: u8,
}

/// COM port.
pub struct Serial {
    /// Its registers (the snapshot state).
    pub state: SerialState,
    console: Console,
}

/// Line status: transmit holding register empty and transmitter empty.
const LSR_IDLE: u8 = 0x60;

impl Serial {
    /// A UART writing to `console`.
    pub fn new(console: Console) -> Self {
        Serial { state: SerialState::default(), console }
    }
}

impl Device for Serial {
    fn name(&self) -> &'static str {
        "serial"
    }
    fn read(&mut self, offset: u64, data: &mut [u8], _ctx: &mut DeviceCtx<'_>) {
        let dlab = self.state.lcr & 0x80 != 0;
        let v = match offset {
            0 if dlab => self.state.dll,
            0 => 0, // no input
            1 if dlab => self.state.dlm,
            1 => self.state.ier,
            2 => 0x01, // no interrupt pending
            3 => self.state.lcr,
            4 => self.state.mcr,
            5 => LSR_IDLE,
            6 => 0xb0, // DCD, DSR, CTS
            7 => self.state.scr,
            _ => 0xff,
        };
        reply_byte(data, v);
    }

    fn write(&mut self, offset: u64, data: &[u8], _ctx: &mut DeviceCtx<'_>) {
        let Some(&v) = data.first() else { return };
        let dlab = self.state.lcr & 0x80 != 0;
        match offset {
            0 if dlab => self.state.dll = v,
            0 => {
                // `rep outsb` to the data port sends every byte.
                for &b in data {
                    self.console.put(b);
                }
            }
            1 if dlab => self.state.dlm = v,
            1 => self.state.ier = v & 0x0f,
            3 => self.state.lcr = v,
            4 => self.state.mcr = v,
            7 => self.state.scr = v,
            _ => {}
        }
    }

    fn deadline(&self) -> Option<u64> {
        None
    }

    fn tick(&mut self, _now: u64, _ctx: &mut DeviceCtx<'_>) {}
}

impl Persist for Serial {
    type State = SerialState;
    type ConstructorArgs = Console;
    type Error = DeviceRestoreError;
    fn save(&self, _now: u64) -> SerialState {
        self.state
    }
    fn restore(console: Console, state: &SerialState, _now: u64) -> Result<Self, DeviceRestoreError> {
        Ok(Serial { state: *state, console })
    }
}

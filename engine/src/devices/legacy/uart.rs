//! A 16550A UART with its interrupt, for guests that drive a serial port with interrupts
//! (Linux's 8250 driver): rust-vmm's `vm-superio` model (what Firecracker uses), raising
//! its ISA line through the bus's interrupt lines on every interrupt it signals. Output
//! goes to a [`Console`]; there is no input.
//!
//! The simpler [`super::serial::Serial`] (transmit only, no interrupts) stays the port of
//! vmrr's built-in guests and SeaBIOS, whose recorded traces depend on its answers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use serde::{Deserialize, Serialize};

use crate::devices::console::Console;
use crate::devices::device::{Device, DeviceCtx};
use crate::persist::{DeviceRestoreError, Persist};

/// Counts the interrupts the model signals between two accesses.
#[derive(Debug, Default, Clone)]
pub struct Pending(Arc<AtomicU32>);

impl vm_superio::Trigger for Pending {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Bytes written to the UART go to the console.
pub struct ConsoleWriter(Console);

impl std::io::Write for ConsoleWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        for &c in b {
            self.0.put(c);
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The UART's registers (its snapshot state: `vm-superio`'s state as plain data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UartState {
    /// The ISA line it raises.
    pub irq: u8,
    /// Divisor latch low.
    pub dll: u8,
    /// Divisor latch high.
    pub dlm: u8,
    /// Interrupt enable.
    pub ier: u8,
    /// Interrupt identification.
    pub iir: u8,
    /// Line control.
    pub lcr: u8,
    /// Line status.
    pub lsr: u8,
    /// Modem control.
    pub mcr: u8,
    /// Modem status.
    pub msr: u8,
    /// Scratch.
    pub scr: u8,
    /// Received bytes not yet read (loopback mode only: there is no input); at most 64.
    pub rx: Vec<u8>,
}

/// Most received bytes a state may hold (the model's FIFO).
const RX_MAX: usize = 64;

type Model = vm_superio::Serial<Pending, vm_superio::serial::NoEvents, ConsoleWriter>;

/// A 16550A on an ISA line.
pub struct Uart {
    model: Model,
    pending: Pending,
    irq: u8,
}

impl Uart {
    /// A UART raising ISA line `irq`, writing to `console`.
    pub fn new(console: Console, irq: u8) -> Self {
        let pending = Pending::default();
        Uart { model: vm_superio::Serial::new(pending.clone(), ConsoleWriter(console)), pending, irq }
    }

    fn raise_pending(&self, ctx: &mut DeviceCtx<'_>) {
        if self.pending.0.swap(0, Ordering::Relaxed) > 0 {
            ctx.irq.raise_irq(self.irq);
        }
    }
}

impl Device for Uart {
    fn name(&self) -> &'static str {
        "uart"
    }

    fn read(&mut self, offset: u64, data: &mut [u8], ctx: &mut DeviceCtx<'_>) {
        data.fill(0);
        if let (Some(b), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *b = self.model.read(off);
        }
        self.raise_pending(ctx);
    }

    fn write(&mut self, offset: u64, data: &[u8], ctx: &mut DeviceCtx<'_>) {
        let Ok(off) = u8::try_from(offset) else { return };
        // `rep outsb` to the data register sends every byte; other registers take the first.
        let bytes = if off == 0 { data } else { data.get(..1).unwrap_or_default() };
        for &b in bytes {
            // The writer never fails and the trigger is infallible.
            let _ = self.model.write(off, b);
        }
        self.raise_pending(ctx);
    }

    fn deadline(&self) -> Option<u64> {
        None
    }

    fn tick(&mut self, _now: u64, _ctx: &mut DeviceCtx<'_>) {}
}

impl Persist for Uart {
    type State = UartState;
    type ConstructorArgs = Console;
    type Error = DeviceRestoreError;

    fn save(&self, _now: u64) -> UartState {
        let s = self.model.state();
        UartState {
            irq: self.irq,
            dll: s.baud_divisor_low,
            dlm: s.baud_divisor_high,
            ier: s.interrupt_enable,
            iir: s.interrupt_identification,
            lcr: s.line_control,
            lsr: s.line_status,
            mcr: s.modem_control,
            msr: s.modem_status,
            scr: s.scratch,
            rx: s.in_buffer,
        }
    }

    fn restore(console: Console, s: &UartState, _now: u64) -> Result<Self, DeviceRestoreError> {
        let invalid = |field, value: u64| DeviceRestoreError::Invalid { device: "uart", field, value };
        if s.irq > 15 {
            return Err(invalid("irq", u64::from(s.irq)));
        }
        if s.rx.len() > RX_MAX {
            return Err(invalid("rx", s.rx.len() as u64));
        }
        let state = vm_superio::serial::SerialState {
            baud_divisor_low: s.dll,
            baud_divisor_high: s.dlm,
            interrupt_enable: s.ier,
            interrupt_identification: s.iir,
            line_control: s.lcr,
            line_status: s.lsr,
            modem_control: s.mcr,
            modem_status: s.msr,
            scratch: s.scr,
            in_buffer: s.rx.clone(),
        };
        let pending = Pending::default();
        let model = vm_superio::Serial::from_state(
            &state,
            pending.clone(),
            vm_superio::serial::NoEvents,
            ConsoleWriter(console),
        )
        .map_err(|_| invalid("rx", s.rx.len() as u64))?;
        Ok(Uart { model, pending, irq: s.irq })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::clock::Clock;
    use crate::devices::interrupts::Interrupts;

    #[test]
    fn enabling_the_transmit_interrupt_raises_the_line_and_bytes_reach_the_console() {
        let console = Console::capture_only();
        let mut u = Uart::new(console.clone(), 4);
        let (mut irq, mut stop, clock) = (Interrupts::kernel_routed(), None, Clock::default());
        let mut ctx = DeviceCtx { irq: &mut irq, stop: &mut stop, clock: &clock };
        u.write(1, &[0x02], &mut ctx); // IER: THRE interrupt
        assert_eq!(ctx.irq.take_lines(), vec![4]);
        let mut iir = [0u8];
        u.read(2, &mut iir, &mut ctx);
        assert_eq!(iir[0] & 0x0f, 0x02, "THRE is the pending interrupt");
        u.write(0, b"hi", &mut ctx);
        assert_eq!(console.captured(), b"hi".to_vec());
        let restored = Uart::restore(console, &u.save(0), 0).map(|r| r.save(0));
        assert_eq!(restored.ok(), Some(u.save(0)));
    }
}

//! What a device is to the bus: a handler for reads and writes at offsets of its ranges,
//! with a deadline for timed work, and what it may touch while handling an access.

use crate::devices::clock::Clock;
use crate::devices::interrupts::Interrupts;

/// Why a device asked the run to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRequest {
    /// The guest wrote its exit status to the debug-exit port.
    GuestExit(u64),
    /// The guest powered off (ACPI sleep state S5).
    PowerOff,
    /// The guest asked for a reset (the ACPI reset register). vmrr does not reboot a
    /// guest: a second boot would bury the first one's state.
    Reset,
}

/// What a device may touch while handling an access.
pub struct DeviceCtx<'a> {
    /// Interrupt lines.
    pub irq: &'a mut Interrupts,
    /// Set to stop the run.
    pub stop: &'a mut Option<StopRequest>,
    /// Host clocks.
    pub clock: &'a Clock,
}

/// A port-I/O or MMIO device.
///
/// No method has a default body: a device that does nothing for an access says so. Its
/// saved state is its own (`Persist` beside the device); the bus's state module is the one
/// place that names every device.
pub trait Device: Send {
    /// Name, for reports.
    fn name(&self) -> &'static str;
    /// A guest read of `data.len()` bytes at `offset` from the device's base: fill `data`.
    fn read(&mut self, offset: u64, data: &mut [u8], ctx: &mut DeviceCtx<'_>);
    /// A guest write of `data` at `offset` from the device's base.
    fn write(&mut self, offset: u64, data: &[u8], ctx: &mut DeviceCtx<'_>);
    /// When `tick` must next run (monotonic ns of [`Clock::now_ns`]), if ever.
    fn deadline(&self) -> Option<u64>;
    /// Runs at the first exit at or after `deadline()`.
    fn tick(&mut self, now: u64, ctx: &mut DeviceCtx<'_>);
}

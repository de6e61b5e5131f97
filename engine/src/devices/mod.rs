//! Devices: a bus of port-I/O and MMIO handlers, and the interrupt lines between them.
//!
//! Every device input the guest could observe nondeterministically (host time, host
//! randomness, timer expiry) reaches it through an exit, so the trace holds it and replay
//! needs none of these devices' host sources.

pub mod bus;
pub mod clock;
pub mod cmos;
pub mod console;
pub mod debug_exit;
pub mod entropy;
pub mod interrupts;
pub mod pci;
pub mod pic;
pub mod pit;
pub mod serial;
pub mod sink;
pub mod timer;

pub use bus::{Bus, Device, DeviceCtx, DeviceId};
pub use clock::Clock;
pub use interrupts::Interrupts;

/// Ports and addresses of vmrr's own devices.
pub mod map {
    /// COM1 (16550).
    pub const SERIAL: u16 = 0x3f8;
    /// QEMU debug console (SeaBIOS logs here).
    pub const DEBUGCON: u16 = 0x402;
    /// Debug exit: a 1-, 2- or 4-byte write ends the run with that status.
    pub const DEBUG_EXIT: u16 = 0xf4;
    /// POST code port (writes kept, reads return the last value).
    pub const POST: u16 = 0x80;
    /// Entropy: each read returns host random bytes.
    pub const ENTROPY: u16 = 0x5a0;
    /// Clock: a 4-byte read of `CLOCK + 0` returns the low half of host realtime (ns) and
    /// latches the high half, read at `CLOCK + 4`.
    pub const CLOCK: u16 = 0x5a4;
    /// Interval timer: write the period in microseconds at `TIMER + 0` (0 stops it), the
    /// vector at `TIMER + 4` (default 0x20).
    pub const TIMER: u16 = 0x5b0;
    /// Sink for the port-I/O storm: writes are counted, reads return 0.
    pub const STORM: u16 = 0x5c0;
    /// A port nothing claims (the exit-cost floor in `vmrr bench`).
    pub const UNCLAIMED: u16 = 0x5f0;
    /// MMIO sink page for the MMIO storm: writes counted, reads return 0.
    pub const MMIO_SINK: u64 = 0xd000_0000;
    /// An MMIO address nothing claims.
    pub const MMIO_UNCLAIMED: u64 = 0xd000_1000;
}

/// Why a device asked the run to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRequest {
    /// The guest wrote its exit status to the debug-exit port.
    GuestExit(u64),
}

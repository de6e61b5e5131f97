//! Devices: a bus of port-I/O and MMIO handlers, and the interrupt lines between them.
//!
//! Every device input the guest could observe nondeterministically (host time, host
//! randomness, timer expiry) reaches it through an exit, so the trace holds it and replay
//! needs none of these devices' host sources.
//!
//! - [`device`]: what a device is to the bus; [`bus`]: ranges to devices, dispatch;
//!   [`state`]: the one module that names every device (their saved states).
//! - [`legacy`]: the PC devices firmware probes (8259, 8254, CMOS/RTC, 16550, PCI config).
//! - [`pseudo`]: vmrr's own devices (debug console and exit, entropy, clock, timer, sinks).
//! - [`interrupts`], [`clock`], [`console`]: interrupt lines, host time, console output.

pub mod bus;
pub mod clock;
pub mod console;
pub mod device;
pub mod interrupts;
pub mod legacy;
pub mod pseudo;
pub mod state;

pub use bus::{Answer, Bus, DeviceId};
pub use clock::Clock;
pub use device::{Device, DeviceCtx, StopRequest};
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
    /// The `virtqueue` guest's notify port. No bus device claims it: the machine's queue
    /// device takes writes to it in KVM, through an ioeventfd (no exit).
    pub const VIRTQUEUE_NOTIFY: u16 = 0x5100;
    /// A port nothing claims (the exit-cost floor in `vmrr bench`).
    pub const UNCLAIMED: u16 = 0x5f0;
    /// MMIO sink page for the MMIO storm: writes counted, reads return 0.
    pub const MMIO_SINK: u64 = 0xd000_0000;
    /// An MMIO address nothing claims.
    pub const MMIO_UNCLAIMED: u64 = 0xd000_1000;
    /// vmrr's clock MSR: RDMSR returns host time (ns); KVM's MSR filter sends it to
    /// userspace.
    pub const CLOCK_MSR: u32 = 0x5652_0001;
}

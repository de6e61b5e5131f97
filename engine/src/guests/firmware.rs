//! Booting unmodified firmware (SeaBIOS): the ROM at the top of the 4 GiB space, its last
//! 128 KiB shadowed into RAM at 0xe0000, and the legacy devices it probes. The vCPU starts
//! at the reset vector (KVM's reset state: CS base 0xffff0000, RIP 0xfff0).

use vm_memory::GuestAddress;

use crate::devices::console::Console;
use crate::devices::legacy::{cmos, pci, pic_ports, pit, serial};
use crate::devices::pseudo::{debug_exit, debugcon, sink};
use crate::devices::{Bus, map};
use crate::guests::LoadError;
use crate::kvm::memory::{GuestMemory, MMIO_HOLE_END, MMIO_HOLE_START};

/// Bytes of the ROM shadowed below 1 MiB.
pub const SHADOW: u64 = 128 << 10;
/// Where the shadow starts.
pub const SHADOW_BASE: u64 = 0xe_0000;

/// The legacy bus: COM1, the debug console, PIT (+0x61), PIC pair, CMOS/RTC, PCI
/// configuration with no devices, POST port, port 0x92 (A20), and the debug exit.
pub fn bus(serial_out: &Console, debugcon_out: &Console, mem_bytes: u64) -> Bus {
    let mut bus = Bus::new();
    bus.add_pio(map::SERIAL, 8, Box::new(serial::Serial::new(serial_out.clone())));
    bus.add_pio(map::DEBUGCON, 1, Box::new(debugcon::DebugCon::new(debugcon_out.clone())));
    bus.add_pio(map::DEBUG_EXIT, 4, Box::new(debug_exit::DebugExit));
    bus.add_pio(map::POST, 1, Box::new(sink::Sink::echoing("post")));
    let pit = bus.add_pio(0x40, 4, Box::new(pit::Pit::default()));
    bus.alias_pio(0x61, 1, pit);
    let pic = bus.add_pio(0x20, 2, Box::new(pic_ports::PicPorts));
    bus.alias_pio(0xa0, 2, pic);
    let low = mem_bytes.min(MMIO_HOLE_START);
    bus.add_pio(0x70, 2, Box::new(cmos::Cmos::new(low, mem_bytes - low)));
    bus.add_pio(0xcf8, 8, Box::new(pci::PciConfig::default()));
    bus.add_pio(0x92, 1, Box::new(sink::Sink::echoing("port92")));
    bus
}

/// Copies `rom` to the top of 4 GiB and its last 128 KiB to 0xe0000.
///
/// # Errors
/// The layout has no room for it (a bug: `firmware_layout` reserves both).
pub fn load(mem: &GuestMemory, rom: &[u8]) -> Result<(), LoadError> {
    let size = rom.len() as u64;
    let base = MMIO_HOLE_END - size;
    mem.write(GuestAddress(base), rom).map_err(LoadError::GuestMemory)?;
    let shadow = &rom[rom.len().saturating_sub(usize::try_from(SHADOW).unwrap_or(0))..];
    let at = 0x10_0000 - shadow.len() as u64;
    mem.write(GuestAddress(at), shadow).map_err(LoadError::GuestMemory)
}

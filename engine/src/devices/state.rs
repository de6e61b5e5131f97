//! The one module that names every device: their saved states as one enum (what a
//! snapshot's bus state holds), how each device becomes its entry, and how an entry
//! becomes a device again. Devices themselves know only their own `State` (`Persist`,
//! beside each device), so adding a device touches its own file and this one.

use serde::{Deserialize, Serialize};

use crate::devices::console::Console;
use crate::devices::device::Device;
use crate::devices::legacy::{absent, acpi_pm, cmos, pci, pic_ports, pit, serial, uart};
use crate::devices::pseudo::{clock_port, debug_exit, debugcon, entropy, sink, timer};
use crate::persist::{DeviceRestoreError, Persist};

/// The state of any device on the bus. The variants' order is the snapshot encoding's:
/// append, never reorder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceState {
    /// 16550 UART.
    Serial(serial::SerialState),
    /// Debug console (no state).
    DebugCon,
    /// Debug exit (no state).
    DebugExit,
    /// A sink.
    Sink(sink::SinkState),
    /// Entropy (no state: host randomness).
    Entropy,
    /// Clock port.
    Clock(clock_port::ClockState),
    /// Interval timer.
    Timer(timer::TimerState),
    /// 8254 PIT.
    Pit(pit::PitState),
    /// 8259 ports (the pair's state lives with the interrupt lines).
    PicPorts,
    /// CMOS/RTC.
    Cmos(cmos::CmosState),
    /// PCI configuration ports: the address register.
    PciConfig(u32),
    /// 16550A with its interrupt (Linux guests).
    Uart(uart::UartState),
    /// ACPI PM block (Linux guests).
    AcpiPm(acpi_pm::AcpiPmState),
    /// Hardware answered as absent, by name.
    Absent(String),
}

impl DeviceState {
    /// The variant's name, for reports (`vmrr snapshot info`).
    pub fn kind(&self) -> &'static str {
        match self {
            DeviceState::Serial(_) => "Serial",
            DeviceState::DebugCon => "DebugCon",
            DeviceState::DebugExit => "DebugExit",
            DeviceState::Sink(_) => "Sink",
            DeviceState::Entropy => "Entropy",
            DeviceState::Clock(_) => "Clock",
            DeviceState::Timer(_) => "Timer",
            DeviceState::Pit(_) => "Pit",
            DeviceState::PicPorts => "PicPorts",
            DeviceState::Cmos(_) => "Cmos",
            DeviceState::PciConfig(_) => "PciConfig",
            DeviceState::Uart(_) => "Uart",
            DeviceState::AcpiPm(_) => "AcpiPm",
            DeviceState::Absent(_) => "Absent",
        }
    }
}

/// A device the bus can hold: it handles accesses and says what its state is. Implemented
/// here for every device, so the bus refuses (at compile time) a device whose state a
/// snapshot could not carry.
pub trait BusDevice: Device {
    /// The device's state for a snapshot; `now` is the host clock (monotonic ns).
    fn state(&self, now: u64) -> DeviceState;
}

impl BusDevice for serial::Serial {
    fn state(&self, now: u64) -> DeviceState {
        DeviceState::Serial(Persist::save(self, now))
    }
}
impl BusDevice for debugcon::DebugCon {
    fn state(&self, _now: u64) -> DeviceState {
        DeviceState::DebugCon
    }
}
impl BusDevice for debug_exit::DebugExit {
    fn state(&self, _now: u64) -> DeviceState {
        DeviceState::DebugExit
    }
}
impl BusDevice for sink::Sink {
    fn state(&self, now: u64) -> DeviceState {
        DeviceState::Sink(Persist::save(self, now))
    }
}
impl BusDevice for entropy::Entropy {
    fn state(&self, _now: u64) -> DeviceState {
        DeviceState::Entropy
    }
}
impl BusDevice for clock_port::ClockPort {
    fn state(&self, now: u64) -> DeviceState {
        DeviceState::Clock(Persist::save(self, now))
    }
}
impl BusDevice for timer::Timer {
    fn state(&self, now: u64) -> DeviceState {
        DeviceState::Timer(Persist::save(self, now))
    }
}
impl BusDevice for pit::Pit {
    fn state(&self, now: u64) -> DeviceState {
        DeviceState::Pit(Persist::save(self, now))
    }
}
impl BusDevice for pic_ports::PicPorts {
    fn state(&self, _now: u64) -> DeviceState {
        DeviceState::PicPorts
    }
}
impl BusDevice for cmos::Cmos {
    fn state(&self, now: u64) -> DeviceState {
        DeviceState::Cmos(Persist::save(self, now))
    }
}
impl BusDevice for pci::PciConfig {
    fn state(&self, _now: u64) -> DeviceState {
        DeviceState::PciConfig(self.address)
    }
}

impl BusDevice for uart::Uart {
    fn state(&self, now: u64) -> DeviceState {
        DeviceState::Uart(Persist::save(self, now))
    }
}
impl BusDevice for acpi_pm::AcpiPm {
    fn state(&self, now: u64) -> DeviceState {
        DeviceState::AcpiPm(Persist::save(self, now))
    }
}
impl BusDevice for absent::Absent {
    fn state(&self, _now: u64) -> DeviceState {
        DeviceState::Absent(self.name().to_string())
    }
}

/// The live resources restored devices need.
#[derive(Debug, Clone)]
pub struct BusArgs {
    /// Serial console output.
    pub serial: Console,
    /// Debug console output.
    pub debugcon: Console,
}

/// Rebuilds the device a state describes; `now` is the host clock at the restore.
///
/// # Errors
/// The state is inconsistent.
pub fn restore(
    state: &DeviceState,
    args: &BusArgs,
    now: u64,
) -> Result<Box<dyn BusDevice>, DeviceRestoreError> {
    Ok(match state {
        DeviceState::Serial(s) => Box::new(serial::Serial::restore(args.serial.clone(), s, now)?),
        DeviceState::DebugCon => Box::new(debugcon::DebugCon::new(args.debugcon.clone())),
        DeviceState::DebugExit => Box::new(debug_exit::DebugExit),
        DeviceState::Sink(s) => Box::new(sink::Sink::restore((), s, now)?),
        DeviceState::Entropy => Box::new(entropy::Entropy::default()),
        DeviceState::Clock(s) => Box::new(clock_port::ClockPort::restore((), s, now)?),
        DeviceState::Timer(s) => Box::new(timer::Timer::restore((), s, now)?),
        DeviceState::Pit(s) => Box::new(pit::Pit::restore((), s, now)?),
        DeviceState::PicPorts => Box::new(pic_ports::PicPorts),
        DeviceState::Cmos(s) => Box::new(cmos::Cmos::restore((), s, now)?),
        DeviceState::PciConfig(a) => Box::new(pci::PciConfig { address: *a }),
        DeviceState::Uart(s) => Box::new(uart::Uart::restore(args.serial.clone(), s, now)?),
        DeviceState::AcpiPm(s) => Box::new(acpi_pm::AcpiPm::restore((), s, now)?),
        DeviceState::Absent(name) => {
            if !absent::ABSENT_NAMES.contains(&name.as_str()) {
                return Err(DeviceRestoreError::Invalid {
                    device: "absent",
                    field: "name",
                    value: name.len() as u64,
                });
            }
            Box::new(absent::Absent::new(name))
        }
    })
}

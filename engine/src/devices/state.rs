//! The one module that names every device: the list below gives each its saved state's
//! variant (what a snapshot's bus state holds), its type, and the live resources its
//! restore takes. Devices themselves know only their own `State` (`Persist`, beside each
//! device), so adding a device touches its own file and one line of this list.

use serde::{Deserialize, Serialize};

use crate::devices::console::Console;
use crate::devices::device::Device;
use crate::devices::legacy::{absent, acpi_pm, cmos, pci, pic_ports, pit, serial, uart};
use crate::devices::pseudo::{clock_port, debug_exit, debugcon, entropy, sink, timer};
use crate::persist::{DeviceRestoreError, Persist};

/// A device the bus can hold: it handles accesses and says what its state is. Implemented
/// by the list below for every device, so the bus refuses (at compile time) a device whose
/// state a snapshot could not carry.
pub trait BusDevice: Device {
    /// The device's state for a snapshot; `now` is the host clock (monotonic ns).
    fn state(&self, now: u64) -> DeviceState;
}

/// The live resources restored devices need.
#[derive(Debug, Clone)]
pub struct BusArgs {
    /// Serial console output.
    pub serial: Console,
    /// Debug console output.
    pub debugcon: Console,
}

/// Declares [`DeviceState`] (one variant per device, holding its `Persist::State`),
/// [`BusDevice`] for each device, and [`restore`], from one list of
/// `Variant(State) = Device, |args| its ConstructorArgs`.
macro_rules! devices {
    ($( $(#[$doc:meta])* $variant:ident($state:ty) = $dev:ty, |$args:ident| $ctor:expr; )*) => {
        /// The state of any device on the bus. The variants' order is the snapshot
        /// encoding's: append, never reorder.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        pub enum DeviceState {
            $( $(#[$doc])* $variant($state), )*
        }

        impl DeviceState {
            /// The variant's name, for reports (`vmrr snapshot info`).
            pub fn kind(&self) -> &'static str {
                match self {
                    $( DeviceState::$variant(_) => stringify!($variant), )*
                }
            }
        }

        $(
            impl BusDevice for $dev {
                fn state(&self, now: u64) -> DeviceState {
                    DeviceState::$variant(Persist::save(self, now))
                }
            }
        )*

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
                $( DeviceState::$variant(s) => {
                    let $args = args;
                    Box::new(<$dev as Persist>::restore($ctor, s, now)?)
                } )*
            })
        }
    };
}

devices! {
    /// 16550 UART.
    Serial(serial::SerialState) = serial::Serial, |a| a.serial.clone();
    /// Debug console (no state).
    DebugCon(()) = debugcon::DebugCon, |a| a.debugcon.clone();
    /// Debug exit (no state).
    DebugExit(()) = debug_exit::DebugExit, |_a| ();
    /// A sink.
    Sink(sink::SinkState) = sink::Sink, |_a| ();
    /// Entropy (no state: host randomness).
    Entropy(()) = entropy::Entropy, |_a| ();
    /// Clock port.
    Clock(clock_port::ClockState) = clock_port::ClockPort, |_a| ();
    /// Interval timer.
    Timer(timer::TimerState) = timer::Timer, |_a| ();
    /// 8254 PIT.
    Pit(pit::PitState) = pit::Pit, |_a| ();
    /// 8259 ports (the pair's state lives with the interrupt lines).
    PicPorts(()) = pic_ports::PicPorts, |_a| ();
    /// CMOS/RTC.
    Cmos(cmos::CmosState) = cmos::Cmos, |_a| ();
    /// PCI configuration ports: the address register.
    PciConfig(u32) = pci::PciConfig, |_a| ();
    /// 16550A with its interrupt (Linux guests).
    Uart(uart::UartState) = uart::Uart, |a| a.serial.clone();
    /// ACPI PM block (Linux guests).
    AcpiPm(acpi_pm::AcpiPmState) = acpi_pm::AcpiPm, |_a| ();
    /// Hardware answered as absent, by name.
    Absent(String) = absent::Absent, |_a| ();
}

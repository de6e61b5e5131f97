//! The device bus vmrr's built-in guests and flat images run with (firmware has its own:
//! [`super::firmware::bus`]).

use crate::devices::console::Console;
use crate::devices::legacy::serial;
use crate::devices::pseudo::{clock_port, debug_exit, debugcon, entropy, sink, timer};
use crate::devices::{Bus, map};

/// The standard bus: serial, debug console, debug exit, POST, entropy, clock, timer,
/// storm sinks.
pub fn standard_bus(serial_out: &Console, debugcon_out: &Console) -> Bus {
    let mut bus = Bus::new();
    bus.add_pio(map::SERIAL, 8, Box::new(serial::Serial::new(serial_out.clone())));
    bus.add_pio(map::DEBUGCON, 1, Box::new(debugcon::DebugCon::new(debugcon_out.clone())));
    bus.add_pio(map::DEBUG_EXIT, 4, Box::new(debug_exit::DebugExit));
    bus.add_pio(map::POST, 1, Box::new(sink::Sink::echoing("post")));
    bus.add_pio(map::ENTROPY, 4, Box::new(entropy::Entropy::default()));
    bus.add_pio(map::CLOCK, 8, Box::new(clock_port::ClockPort::default()));
    bus.add_pio(map::TIMER, 8, Box::new(timer::Timer::default()));
    bus.add_pio(map::STORM, 4, Box::new(sink::Sink::new("storm")));
    bus.add_mmio(map::MMIO_SINK, 0x1000, Box::new(sink::Sink::new("mmio-sink")));
    bus
}

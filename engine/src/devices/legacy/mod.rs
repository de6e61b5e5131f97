//! The PC devices firmware probes, modelled in userspace (no in-kernel irqchip or PIT).

pub mod cmos;
pub mod pci;
pub mod pic;
pub mod pic_ports;
pub mod pit;
pub mod serial;

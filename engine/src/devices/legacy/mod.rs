//! The PC devices firmware and Linux probe, modelled in userspace (the 8259 pair and the
//! 8254 here serve machines without KVM's in-kernel irqchip and PIT), and the hardware a
//! machine answers as absent.

pub mod absent;
pub mod acpi_pm;
pub mod cmos;
pub mod pci;
pub mod pic;
pub mod pic_ports;
pub mod pit;
pub mod serial;
pub mod uart;

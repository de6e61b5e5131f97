//! KVM's in-kernel interrupt controllers and timer: the 8259 pair, the IOAPIC, a local
//! APIC per vCPU, and the 8254 (`KVM_CREATE_IRQCHIP`, `KVM_CREATE_PIT2`), what Linux guests
//! and multi-vCPU machines run with. Their state for snapshots, and ISA line pulses.
//!
//! With an in-kernel irqchip, KVM delivers interrupts itself (timer ticks included) at
//! instants no exit shows: a trace of such a machine holds every exit and every line a
//! vmrr device raised, but not when KVM's own timers fired. Replay of its path is
//! therefore not deterministic; its failure point is (REPLAY.md).

use kvm_bindings::{
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_PIT_SPEAKER_DUMMY, kvm_clock_data,
    kvm_irqchip, kvm_pit_config, kvm_pit_state2,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};
use zerocopy::{FromBytes, IntoBytes};

use crate::kvm::system::KvmError;

/// Where the interrupt controllers live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum IrqchipKind {
    /// vmrr's own 8259 pair in userspace; interrupts injected at exit boundaries and
    /// recorded (built-in guests, SeaBIOS): the path replays.
    #[default]
    User,
    /// KVM's in-kernel PIC, IOAPIC, local APICs and PIT.
    Kernel,
}

impl IrqchipKind {
    /// Parses `user` or `kernel`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(IrqchipKind::User),
            "kernel" => Some(IrqchipKind::Kernel),
            _ => None,
        }
    }

    /// Its name, as `--irqchip` takes it and annotations record it.
    pub fn name(self) -> &'static str {
        match self {
            IrqchipKind::User => "user",
            IrqchipKind::Kernel => "kernel",
        }
    }
}

/// Creates the in-kernel irqchip and PIT on `fd` (before any vCPU exists).
///
/// # Errors
/// KVM refused either.
pub fn create(fd: &VmFd) -> Result<(), KvmError> {
    fd.create_irq_chip().map_err(KvmError::on("KVM_CREATE_IRQCHIP"))?;
    // The speaker port (0x61) answered in the kernel too.
    let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
    fd.create_pit2(pit).map_err(KvmError::on("KVM_CREATE_PIT2"))
}

/// Pulses ISA line / GSI `gsi` (an edge: raised, then lowered), as an edge-triggered ISA
/// device does.
///
/// # Errors
/// `KVM_IRQ_LINE` failed.
pub fn pulse(fd: &VmFd, gsi: u32) -> Result<(), KvmError> {
    fd.set_irq_line(gsi, true).map_err(KvmError::on("KVM_IRQ_LINE"))?;
    fd.set_irq_line(gsi, false).map_err(KvmError::on("KVM_IRQ_LINE"))
}

/// The VM-wide state of the in-kernel irqchip and clock, as KVM's structs' raw bytes
/// (sizes checked on restore).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IrqchipState {
    /// `kvm_irqchip` of the master 8259.
    pub pic_master: Vec<u8>,
    /// `kvm_irqchip` of the slave 8259.
    pub pic_slave: Vec<u8>,
    /// `kvm_irqchip` of the IOAPIC.
    pub ioapic: Vec<u8>,
    /// `kvm_pit_state2`.
    pub pit: Vec<u8>,
    /// `kvm_clock_data`: the KVM clock (kvmclock's base).
    pub clock: Vec<u8>,
}

/// A saved irqchip state KVM cannot take.
#[derive(Debug, thiserror::Error)]
pub enum IrqchipStateError {
    /// A field has the wrong size for this build's KVM structs.
    #[error("irqchip state field {field}: {len} bytes, this build's struct has {expected}")]
    Size {
        /// The field.
        field: &'static str,
        /// Bytes saved.
        len: usize,
        /// Bytes expected.
        expected: usize,
    },
    /// KVM refused it.
    #[error("KVM refused the saved {field}")]
    Refused {
        /// The field.
        field: &'static str,
        /// KVM's error.
        #[source]
        source: KvmError,
    },
    /// Reading it failed.
    #[error(transparent)]
    Kvm(#[from] KvmError),
}

fn chip(fd: &VmFd, id: u32, what: &'static str) -> Result<Vec<u8>, KvmError> {
    let mut c = kvm_irqchip { chip_id: id, ..Default::default() };
    fd.get_irqchip(&mut c).map_err(KvmError::on(what))?;
    Ok(c.as_bytes().to_vec())
}

fn parse<T: FromBytes>(field: &'static str, b: &[u8]) -> Result<T, IrqchipStateError> {
    T::read_from_bytes(b).map_err(|_| IrqchipStateError::Size {
        field,
        len: b.len(),
        expected: std::mem::size_of::<T>(),
    })
}

impl IrqchipState {
    /// Reads the irqchip, PIT and clock of `fd`.
    ///
    /// # Errors
    /// An ioctl failed.
    pub fn save(fd: &VmFd) -> Result<Self, KvmError> {
        Ok(IrqchipState {
            pic_master: chip(fd, KVM_IRQCHIP_PIC_MASTER, "KVM_GET_IRQCHIP (PIC master)")?,
            pic_slave: chip(fd, KVM_IRQCHIP_PIC_SLAVE, "KVM_GET_IRQCHIP (PIC slave)")?,
            ioapic: chip(fd, KVM_IRQCHIP_IOAPIC, "KVM_GET_IRQCHIP (IOAPIC)")?,
            pit: fd.get_pit2().map_err(KvmError::on("KVM_GET_PIT2"))?.as_bytes().to_vec(),
            clock: fd.get_clock().map_err(KvmError::on("KVM_GET_CLOCK"))?.as_bytes().to_vec(),
        })
    }

    /// Checks every field's size (before anything reaches KVM).
    ///
    /// # Errors
    /// [`IrqchipStateError::Size`] naming the field.
    pub fn validate(&self) -> Result<(), IrqchipStateError> {
        for (field, b) in
            [("pic_master", &self.pic_master), ("pic_slave", &self.pic_slave), ("ioapic", &self.ioapic)]
        {
            parse::<kvm_irqchip>(field, b)?;
        }
        parse::<kvm_pit_state2>("pit", &self.pit)?;
        parse::<kvm_clock_data>("clock", &self.clock)?;
        Ok(())
    }

    /// Writes the state into `fd` (which has an in-kernel irqchip and PIT).
    ///
    /// # Errors
    /// A field of the wrong size, or KVM refused one (named).
    pub fn restore(&self, fd: &VmFd) -> Result<(), IrqchipStateError> {
        let refused = |field| move |source| IrqchipStateError::Refused { field, source };
        for (field, b) in
            [("pic_master", &self.pic_master), ("pic_slave", &self.pic_slave), ("ioapic", &self.ioapic)]
        {
            let c: kvm_irqchip = parse(field, b)?;
            fd.set_irqchip(&c).map_err(KvmError::on("KVM_SET_IRQCHIP")).map_err(refused(field))?;
        }
        let pit: kvm_pit_state2 = parse("pit", &self.pit)?;
        fd.set_pit2(&pit).map_err(KvmError::on("KVM_SET_PIT2")).map_err(refused("pit"))?;
        let mut clock: kvm_clock_data = parse("clock", &self.clock)?;
        // Only the clock's value is set: KVM refuses flags it did not report as settable.
        clock.flags = 0;
        fd.set_clock(&clock).map_err(KvmError::on("KVM_SET_CLOCK")).map_err(refused("clock"))
    }
}

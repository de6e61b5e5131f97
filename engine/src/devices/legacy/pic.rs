//! A pair of 8259A programmable interrupt controllers (master at 0x20, slave at 0xa0,
//! cascaded on IRQ 2), modelled in userspace: IRQ lines raised by devices become vectors
//! the engine injects at exit boundaries.
//!
//! Supported: ICW1-ICW4 initialisation, IMR (OCW1), non-specific and specific EOI
//! (OCW2), reading IRR/ISR (OCW3), edge-triggered lines, fixed priority (IRQ 0 highest).
//! Not modelled: rotation, special mask mode, polling, level-triggered mode, AEOI is
//! honoured.

use serde::{Deserialize, Serialize};

/// One 8259A's registers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chip {
    /// Interrupt request register.
    pub irr: u8,
    /// In-service register.
    pub isr: u8,
    /// Interrupt mask register.
    pub imr: u8,
    /// Vector of IRQ 0 of this chip (ICW2).
    pub base: u8,
    /// Initialisation step: 0 done, 2..=4 waiting for that ICW.
    pub init_step: u8,
    /// ICW4 expected.
    pub need_icw4: bool,
    /// Automatic EOI.
    pub auto_eoi: bool,
    /// OCW3: reads of the even port return ISR (else IRR).
    pub read_isr: bool,
}

impl Chip {
    /// Highest-priority requested, unmasked IRQ whose priority beats every in-service one.
    fn candidate(&self) -> Option<u8> {
        let req = self.irr & !self.imr;
        for irq in 0..8u8 {
            let bit = 1u8 << irq;
            if self.isr & bit != 0 {
                return None; // a higher-or-equal priority interrupt is in service
            }
            if req & bit != 0 {
                return Some(irq);
            }
        }
        None
    }

    /// A write to the command port (ICW1 or OCW2/OCW3).
    pub fn write_cmd(&mut self, v: u8) {
        if v & 0x10 != 0 {
            // ICW1
            self.init_step = 2;
            self.need_icw4 = v & 0x01 != 0;
            self.imr = 0;
            self.isr = 0;
            self.irr = 0;
            self.read_isr = false;
        } else if v & 0x08 != 0 {
            // OCW3
            if v & 0x02 != 0 {
                self.read_isr = v & 0x01 != 0;
            }
        } else {
            // OCW2
            match v >> 5 {
                0b001 => self.eoi_highest(),
                0b011 => self.isr &= !(1 << (v & 7)),
                _ => {}
            }
        }
    }

    fn eoi_highest(&mut self) {
        if self.isr != 0 {
            self.isr &= self.isr - 1; // clears the lowest set bit: the highest priority
        }
    }

    /// A write to the data port (ICW2-ICW4 during initialisation, else the mask).
    pub fn write_data(&mut self, v: u8) {
        match self.init_step {
            2 => {
                self.base = v & 0xf8;
                self.init_step = 3;
            }
            3 => self.init_step = if self.need_icw4 { 4 } else { 0 },
            4 => {
                self.auto_eoi = v & 0x02 != 0;
                self.init_step = 0;
            }
            _ => self.imr = v,
        }
    }

    /// A read of the command port: IRR or ISR, as OCW3 selected.
    pub fn read_cmd(&self) -> u8 {
        if self.read_isr { self.isr } else { self.irr }
    }
}

/// The master/slave pair.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pic {
    /// Master (IRQ 0-7).
    pub master: Chip,
    /// Slave (IRQ 8-15, cascaded on master IRQ 2).
    pub slave: Chip,
}

impl Pic {
    /// A rising edge on ISA line `irq` (0..16).
    pub fn raise(&mut self, irq: u8) {
        if irq < 8 {
            self.master.irr |= 1 << irq;
        } else if irq < 16 {
            self.slave.irr |= 1 << (irq - 8);
        }
    }

    fn slave_pending(&self) -> bool {
        self.slave.candidate().is_some()
    }

    /// The vector the pair would deliver now, if any.
    pub fn pending(&self) -> Option<u8> {
        let mut m = self.master;
        if self.slave_pending() {
            m.irr |= 1 << 2;
        }
        let irq = m.candidate()?;
        if irq == 2 && self.slave_pending() {
            let s = self.slave.candidate()?;
            return Some(self.slave.base.wrapping_add(s));
        }
        Some(self.master.base.wrapping_add(irq))
    }

    /// Interrupt acknowledge: the vector delivered now, moving it from IRR to ISR.
    pub fn acknowledge(&mut self) -> Option<u8> {
        let v = self.pending()?;
        self.acknowledge_vector(v);
        Some(v)
    }

    /// Marks `vector` as delivered (replay: the trace says which vector was injected).
    pub fn acknowledge_vector(&mut self, vector: u8) {
        let mb = self.master.base;
        let sb = self.slave.base;
        if vector >= mb && vector < mb.wrapping_add(8) {
            let bit = 1 << (vector - mb);
            self.master.irr &= !bit;
            if !self.master.auto_eoi {
                self.master.isr |= bit;
            }
        } else if vector >= sb && vector < sb.wrapping_add(8) {
            let bit = 1 << (vector - sb);
            self.slave.irr &= !bit;
            if !self.slave.auto_eoi {
                self.slave.isr |= bit;
            }
            if self.slave.irr & !self.slave.imr == 0 {
                self.master.irr &= !(1 << 2);
            }
            if !self.master.auto_eoi {
                self.master.isr |= 1 << 2;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init(p: &mut Pic) {
        // The sequence BIOSes use: ICW1 0x11, ICW2 base, ICW3, ICW4 0x01.
        for (c, base, icw3) in [(&mut p.master, 0x08, 0x04), (&mut p.slave, 0x70, 0x02)] {
            c.write_cmd(0x11);
            c.write_data(base);
            c.write_data(icw3);
            c.write_data(0x01);
        }
    }

    #[test]
    fn vectors_priority_and_eoi() {
        let mut p = Pic::default();
        init(&mut p);
        assert_eq!(p.master.base, 0x08);
        p.raise(1);
        p.raise(0);
        assert_eq!(p.acknowledge(), Some(0x08));
        // IRQ 1 waits while IRQ 0 is in service.
        assert_eq!(p.pending(), None);
        p.master.write_cmd(0x20); // non-specific EOI
        assert_eq!(p.acknowledge(), Some(0x09));
    }

    #[test]
    fn masked_lines_wait_and_slave_cascades() {
        let mut p = Pic::default();
        init(&mut p);
        p.master.write_data(0x01); // mask IRQ 0
        p.raise(0);
        assert_eq!(p.pending(), None);
        p.raise(8);
        assert_eq!(p.acknowledge(), Some(0x70));
        assert_eq!(p.master.isr & 0x04, 0x04);
    }
}

//! Interrupt lines between devices and the vCPU: injected from userspace at exit
//! boundaries (vmrr's own 8259 pair and direct vectors), or, with KVM's in-kernel irqchip,
//! handed to KVM as ISA line pulses (`KVM_IRQ_LINE`).

use crate::devices::legacy::pic::Pic;

/// Where raised ISA lines go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Routing {
    /// vmrr's 8259 pair, injected by the run loop.
    #[default]
    User,
    /// KVM's in-kernel PIC and IOAPIC: the run loop pulses the line with `KVM_IRQ_LINE`.
    Kernel,
}

/// Interrupts waiting for injection: vectors raised directly by vmrr's own devices, and
/// ISA lines through the 8259 pair (firmware machines). The engine injects the highest
/// pending vector when the vCPU is ready and records the injection. With
/// [`Routing::Kernel`], raised lines wait in [`Self::take_lines`] instead.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interrupts {
    pending: [u64; 4],
    pic: Pic,
    routing: Routing,
    lines: Vec<u8>,
}

impl Interrupts {
    /// Lines routed to KVM's in-kernel irqchip.
    pub fn kernel_routed() -> Self {
        Interrupts { routing: Routing::Kernel, ..Self::default() }
    }

    /// Where raised lines go.
    pub fn routing(&self) -> Routing {
        self.routing
    }

    /// Sets where raised lines go (a restored bus takes its machine's).
    pub fn set_routing(&mut self, routing: Routing) {
        self.routing = routing;
    }

    /// The lines raised since the last call, in order, for KVM's irqchip (empty with
    /// [`Routing::User`]).
    pub fn take_lines(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.lines)
    }

    /// Whether lines wait for KVM's irqchip.
    pub fn has_lines(&self) -> bool {
        !self.lines.is_empty()
    }

    /// The 8259 pair.
    pub fn pic_mut(&mut self) -> &mut Pic {
        &mut self.pic
    }

    /// The 8259 pair's state.
    pub fn pic(&self) -> &Pic {
        &self.pic
    }

    /// A rising edge on ISA line `irq`: through vmrr's 8259 pair, or queued for KVM's.
    pub fn raise_irq(&mut self, irq: u8) {
        match self.routing {
            Routing::User => self.pic.raise(irq),
            Routing::Kernel => self.lines.push(irq),
        }
    }

    /// Records that `vector` was injected (replay, where the trace chose it): the 8259 pair
    /// moves it to in-service, a direct vector is cleared.
    pub fn acknowledge_vector(&mut self, vector: u8) {
        let u = usize::from(vector);
        if self.pending[u / 64] & (1u64 << (u % 64)) != 0 {
            self.pending[u / 64] &= !(1u64 << (u % 64));
        } else {
            self.pic.acknowledge_vector(vector);
        }
    }

    /// Marks `vector` pending.
    pub fn raise_vector(&mut self, vector: u8) {
        let v = usize::from(vector);
        self.pending[v / 64] |= 1u64 << (v % 64);
    }

    /// The vector to inject next: the 8259 pair's, else the highest direct vector.
    pub fn pending(&self) -> Option<u8> {
        self.pic.pending().or_else(|| self.direct())
    }

    fn direct(&self) -> Option<u8> {
        for (i, w) in self.pending.iter().enumerate().rev() {
            if *w != 0 {
                let bit = 63 - w.leading_zeros();
                return u8::try_from(i * 64 + usize::try_from(bit).unwrap_or(0)).ok();
            }
        }
        None
    }

    /// Takes the vector being injected.
    pub fn acknowledge(&mut self) -> Option<u8> {
        if let Some(v) = self.pic.acknowledge() {
            return Some(v);
        }
        let v = self.direct()?;
        let u = usize::from(v);
        self.pending[u / 64] &= !(1u64 << (u % 64));
        Some(v)
    }

    /// True when nothing can be injected.
    pub fn is_empty(&self) -> bool {
        self.pending().is_none()
    }

    /// Restores the 8259 pair.
    pub fn set_pic(&mut self, pic: Pic) {
        self.pic = pic;
    }

    /// Raw bitmap (for snapshots).
    pub fn bitmap(&self) -> [u64; 4] {
        self.pending
    }

    /// Restores the raw bitmap.
    pub fn set_bitmap(&mut self, b: [u64; 4]) {
        self.pending = b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highest_vector_first() {
        let mut i = Interrupts::default();
        assert_eq!(i.pending(), None);
        i.raise_vector(0x20);
        i.raise_vector(0x80);
        i.raise_vector(0x21);
        assert_eq!(i.acknowledge(), Some(0x80));
        assert_eq!(i.acknowledge(), Some(0x21));
        assert_eq!(i.acknowledge(), Some(0x20));
        assert!(i.is_empty());
    }
}

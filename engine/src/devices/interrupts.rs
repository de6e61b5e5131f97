//! Pending interrupts, injected from userspace at exit boundaries (no in-kernel irqchip).

/// Interrupts waiting for injection. Devices raise vectors directly; the engine injects the
/// highest pending vector when the vCPU is ready and records the injection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interrupts {
    pending: [u64; 4],
}

impl Interrupts {
    /// Marks `vector` pending.
    pub fn raise_vector(&mut self, vector: u8) {
        let v = usize::from(vector);
        self.pending[v / 64] |= 1u64 << (v % 64);
    }

    /// The highest pending vector (x86 priority order), if any.
    pub fn pending(&self) -> Option<u8> {
        for (i, w) in self.pending.iter().enumerate().rev() {
            if *w != 0 {
                let bit = 63 - w.leading_zeros();
                return u8::try_from(i * 64 + usize::try_from(bit).unwrap_or(0)).ok();
            }
        }
        None
    }

    /// Takes the highest pending vector (it is being injected).
    pub fn acknowledge(&mut self) -> Option<u8> {
        let v = self.pending()?;
        let u = usize::from(v);
        self.pending[u / 64] &= !(1u64 << (u % 64));
        Some(v)
    }

    /// True when nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.pending.iter().all(|w| *w == 0)
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

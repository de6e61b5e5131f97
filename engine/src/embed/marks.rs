//! The pages devices wrote since the last snapshot, per slot: KVM's dirty log does not see
//! writes from userspace, so an incremental checkpoint adds these to it.

use super::GuestSlot;
use crate::page::PAGE_SIZE;

/// Per slot, one bit per page written by a device since the last snapshot.
#[derive(Debug, Clone)]
pub(crate) struct PageMarks {
    slots: Vec<GuestSlot>,
    bits: Vec<Vec<u64>>,
}

impl PageMarks {
    /// No page marked in any of `slots`.
    pub(crate) fn new(slots: &[GuestSlot]) -> Self {
        let bits = slots.iter().map(|s| vec![0u64; words(s.size)]).collect();
        PageMarks { slots: slots.to_vec(), bits }
    }

    /// Marks the pages of `[gpa, gpa + len)` that lie in a slot.
    pub(crate) fn mark(&mut self, gpa: u64, len: usize) {
        let end = gpa.saturating_add(len as u64);
        for (s, bits) in self.slots.iter().zip(self.bits.iter_mut()) {
            let (lo, hi) = (gpa.max(s.gpa), end.min(s.gpa + s.size));
            if lo >= hi {
                continue;
            }
            for p in (lo - s.gpa) / PAGE_SIZE..(hi - s.gpa).div_ceil(PAGE_SIZE) {
                if let Some(w) = usize::try_from(p / 64).ok().and_then(|i| bits.get_mut(i)) {
                    *w |= 1 << (p % 64);
                }
            }
        }
    }

    /// The bitmaps, one per slot in the order given to [`Self::new`].
    pub(crate) fn bits(&self) -> &[Vec<u64>] {
        &self.bits
    }

    /// Forgets every mark (a snapshot was taken).
    pub(crate) fn clear(&mut self) {
        for b in &mut self.bits {
            b.iter_mut().for_each(|w| *w = 0);
        }
    }
}

fn words(size: u64) -> usize {
    usize::try_from((size / PAGE_SIZE).div_ceil(64)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_marks_every_page_it_touches_in_its_slot_only() {
        let slots = [
            GuestSlot { slot: 0, gpa: 0, size: 0x10_000, dirty_log: true },
            GuestSlot { slot: 1, gpa: 0x10_0000, size: 0x1000, dirty_log: true },
        ];
        let mut m = PageMarks::new(&slots);
        m.mark(0x1ff0, 0x20); // pages 1 and 2 of slot 0
        m.mark(0x8_0000, 8); // in no slot
        assert_eq!(m.bits()[0], vec![0b110]);
        assert_eq!(m.bits()[1], vec![0]);
        m.clear();
        assert_eq!(m.bits()[0], vec![0]);
    }
}

//! Pages of a slot written from userspace (a loader, a debugger's memory write, a copy back
//! from a snapshot): KVM's dirty log sees only the guest's own writes, so whatever must
//! know every page that changed (an incremental capture, a restore that remaps only what
//! differs) reads this beside it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::page::PAGE_SIZE;

/// One bit per page of a slot, set by a userspace write, cleared by [`Self::take`].
#[derive(Debug)]
pub struct WrittenPages {
    pages: u64,
    any: AtomicBool,
    bits: Vec<AtomicU64>,
}

impl WrittenPages {
    /// Tracking for a slot of `pages` pages, none written.
    pub fn new(pages: u64) -> Self {
        let words = usize::try_from(pages.div_ceil(64)).unwrap_or(0);
        WrittenPages {
            pages,
            any: AtomicBool::new(false),
            bits: (0..words).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Marks the pages overlapping bytes `[offset, offset + len)` of the slot.
    pub fn mark(&self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = offset / PAGE_SIZE;
        let last = ((offset.saturating_add(len) - 1) / PAGE_SIZE).min(self.pages.saturating_sub(1));
        for p in first..=last {
            let Some(w) = usize::try_from(p / 64).ok().and_then(|w| self.bits.get(w)) else { break };
            w.fetch_or(1 << (p % 64), Ordering::Relaxed);
        }
        self.any.store(true, Ordering::Release);
    }

    /// Takes the bitmap of written pages and clears it; `None` when nothing was written
    /// (one load, whatever the slot's size).
    pub fn take(&self) -> Option<Vec<u64>> {
        if !self.any.swap(false, Ordering::Acquire) {
            return None;
        }
        Some(self.bits.iter().map(|w| w.swap(0, Ordering::Relaxed)).collect())
    }

    /// Forgets every written page (the slot's contents were just set as a whole).
    pub fn clear(&self) {
        let _ = self.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_every_page_a_write_touches() {
        let w = WrittenPages::new(200);
        assert_eq!(w.take(), None);
        w.mark(4095, 2); // pages 0 and 1
        w.mark(130 * 4096, 4096); // page 130 only
        w.mark(199 * 4096 + 8, 0); // nothing
        let b = w.take().expect("written");
        assert_eq!(b, vec![0b11, 0, 1 << 2, 0]);
        assert_eq!(w.take(), None, "taking clears");
        // A write past the slot's last page marks what lies inside and stops.
        w.mark(199 * 4096, 3 * 4096);
        assert_eq!(w.take().expect("written")[3], 1 << 7);
    }
}

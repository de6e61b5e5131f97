//! Which guest pages the vCPUs wrote: KVM's dirty ring where the host has it, the dirty
//! log bitmap otherwise. Snapshots, background checkpoints, restores over a kept machine
//! and in-place resets ask [`DirtyLog::take`] "which pages of slot S changed since last
//! time" and do not care which of the two answers.
//!
//! - **Ring** (`KVM_CAP_DIRTY_LOG_RING_ACQ_REL`, else `KVM_CAP_DIRTY_LOG_RING`): each vCPU
//!   pushes the pages it dirties into its own ring; harvesting reads only the entries
//!   pushed since the last harvest, so it costs what was dirtied, not guest memory. The
//!   harvested pages wait in a sorted set per slot until asked for. A full ring makes the
//!   vCPU exit (`KVM_EXIT_DIRTY_RING_FULL`); the run loop harvests through
//!   [`DirtyLog::harvest`] and re-enters without counting or recording that exit.
//! - **Bitmap** (`KVM_GET_DIRTY_LOG`): one bit per page of the slot, copied out and scanned
//!   whole, so it costs guest memory.
//!
//! KVM uses one or the other for a VM: with the ring on, `KVM_GET_DIRTY_LOG` fails.

use std::sync::{Mutex, MutexGuard};

use kvm_bindings::{KVM_CAP_DIRTY_LOG_RING, KVM_CAP_DIRTY_LOG_RING_ACQ_REL};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};

use crate::kvm::memory::Slot;
use crate::kvm::system::KvmError;
use crate::sys::dirty_ring::{self, DirtyRing};

/// Ring entries per vCPU when nothing else is asked for: 65,536 (1 MiB of ring per vCPU),
/// the most this host's KVM takes. A ring holds that many pages between harvests; a
/// checkpoint of 10% of 1 GiB (26,112 pages) then never fills it.
pub const DEFAULT_RING_ENTRIES: u32 = 1 << 16;

/// Fewest ring entries KVM takes on any x86 host (its reserve plus Intel's PML buffer must
/// fit, and a ring is at least a page).
pub const MIN_RING_ENTRIES: u32 = 1 << 10;

/// The environment variable that, set to `bitmap`, makes [`DirtyTracking::Auto`] use the
/// bitmap even where the host has the ring (to run everything through the fallback).
pub const TRACKING_ENV: &str = "VMRR_DIRTY_LOG";

/// How a VM should track dirty pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DirtyTracking {
    /// The ring of [`DEFAULT_RING_ENTRIES`] (capped at the host's most) where the host has
    /// it and [`TRACKING_ENV`] is not `bitmap`; the bitmap otherwise.
    #[default]
    Auto,
    /// Always the bitmap.
    Bitmap,
    /// The ring with `entries` entries per vCPU (a power of two, at least
    /// [`MIN_RING_ENTRIES`]); the bitmap where the host has no ring.
    Ring {
        /// Entries per vCPU.
        entries: u32,
    },
}

/// What a VM tracks dirty pages with, once created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirtyMethod {
    /// `KVM_GET_DIRTY_LOG`.
    Bitmap,
    /// The dirty ring.
    Ring {
        /// Entries per vCPU.
        entries: u32,
        /// Whether through `KVM_CAP_DIRTY_LOG_RING_ACQ_REL`.
        acq_rel: bool,
    },
}

impl DirtyMethod {
    /// The `kvm.dirty_log` annotation's value: `bitmap`, or `ring:<entries>` with
    /// `:acq_rel` when through that capability.
    pub fn describe(&self) -> String {
        match self {
            DirtyMethod::Bitmap => "bitmap".into(),
            DirtyMethod::Ring { entries, acq_rel: true } => format!("ring:{entries}:acq_rel"),
            DirtyMethod::Ring { entries, acq_rel: false } => format!("ring:{entries}"),
        }
    }
}

/// The pages of one slot written since the last [`DirtyLog::take`] of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirtyPages {
    /// One bit per page of the slot (the bitmap's answer).
    Bitmap(Vec<u64>),
    /// Page indices, sorted, without repeats (the ring's answer).
    Sorted(Vec<u64>),
    /// Every page: which ones changed is not known (KVM overran the ring).
    All,
}

impl DirtyPages {
    /// Runs `(first_page, count)` of the pages, for a slot of `pages` pages (pages past it
    /// are dropped). Costs the bitmap's length, or the pages listed.
    pub fn runs(&self, pages: u64) -> Vec<(u64, u64)> {
        match self {
            DirtyPages::Bitmap(b) => crate::page::bitmap_runs(b, pages),
            DirtyPages::Sorted(list) => {
                let mut runs: Vec<(u64, u64)> = Vec::new();
                for &p in list.iter().take_while(|&&p| p < pages) {
                    match runs.last_mut() {
                        Some((f, n)) if *f + *n == p => *n += 1,
                        _ => runs.push((p, 1)),
                    }
                }
                runs
            }
            DirtyPages::All => vec![(0, pages)],
        }
    }

    /// The pages as a bitmap of a slot of `pages` pages.
    pub fn into_bitmap(self, pages: u64) -> Vec<u64> {
        match self {
            DirtyPages::Bitmap(b) => b,
            DirtyPages::Sorted(list) => {
                let words = usize::try_from(pages.div_ceil(64)).unwrap_or(0);
                let mut b = vec![0u64; words];
                for p in list {
                    if let Some(w) = usize::try_from(p / 64).ok().and_then(|w| b.get_mut(w)) {
                        *w |= 1 << (p % 64);
                    }
                }
                b
            }
            DirtyPages::All => {
                let mut b = vec![u64::MAX; usize::try_from(pages / 64).unwrap_or(0)];
                if pages % 64 != 0 {
                    b.push((1 << (pages % 64)) - 1);
                }
                b
            }
        }
    }
}

/// The rings of a VM's vCPUs and the pages harvested from them, per slot.
#[derive(Debug)]
struct Rings {
    /// One per vCPU, in index order.
    rings: Vec<DirtyRing>,
    /// Per KVM slot number (`kvm_dirty_gfn.slot`), page indices harvested and not yet
    /// taken; sorted and deduplicated when taken, or when repeats pile up. A list: a VM
    /// has a few slots, and a search of three beats hashing at every entry.
    pending: Vec<(u32, Pending)>,
    /// KVM overran a ring: pages were lost, so each slot's next answer is every page.
    /// Holds the slots answered so since the last overrun.
    overrun: Option<std::collections::HashSet<u32>>,
}

#[derive(Debug, Default)]
struct Pending {
    pages: Vec<u64>,
    /// Length after the last deduplication.
    clean: usize,
}

/// A VM's dirty-page source (see the module docs). Shared between the machine and its
/// vCPUs' run loops, which harvest a full ring.
#[derive(Debug)]
pub struct DirtyLog {
    method: DirtyMethod,
    /// A handle on the VM for `KVM_RESET_DIRTY_RINGS` (the ring only).
    vm: Option<VmFd>,
    rings: Mutex<Rings>,
}

fn io_kvm(what: &'static str) -> impl FnOnce(std::io::Error) -> KvmError {
    move |e| KvmError { what, source: kvm_ioctls::Error::new(e.raw_os_error().unwrap_or(libc::EIO)) }
}

impl DirtyLog {
    /// Decides, on a VM with no vCPU yet, how it tracks dirty pages, and turns the ring on
    /// when that is the choice. `notes` gets a line when a ring was asked for and the host
    /// has none.
    ///
    /// # Errors
    /// `KVM_ENABLE_CAP` refused the ring the host says it has.
    pub(crate) fn enable(
        kvm: &Kvm,
        vm: &VmFd,
        want: DirtyTracking,
        notes: &mut Vec<String>,
    ) -> Result<Self, KvmError> {
        let entries = match want {
            DirtyTracking::Bitmap => None,
            DirtyTracking::Auto if std::env::var(TRACKING_ENV).is_ok_and(|v| v == "bitmap") => None,
            DirtyTracking::Auto => Some(DEFAULT_RING_ENTRIES),
            DirtyTracking::Ring { entries } => Some(entries),
        };
        let bitmap = DirtyLog { method: DirtyMethod::Bitmap, vm: None, rings: Mutex::new(Rings::empty()) };
        let Some(entries) = entries else { return Ok(bitmap) };
        let max = |cap: u32| kvm.check_extension_raw(libc::c_ulong::from(cap));
        let (cap, acq_rel, max_bytes) =
            match (max(KVM_CAP_DIRTY_LOG_RING_ACQ_REL), max(KVM_CAP_DIRTY_LOG_RING)) {
                (b, _) if b > 0 => (KVM_CAP_DIRTY_LOG_RING_ACQ_REL, true, b),
                (_, b) if b > 0 => (KVM_CAP_DIRTY_LOG_RING, false, b),
                _ => {
                    if want != DirtyTracking::Auto {
                        notes.push(
                            "KVM_CAP_DIRTY_LOG_RING is absent: dirty pages come from the bitmap".into(),
                        );
                    }
                    return Ok(bitmap);
                }
            };
        let host_most = u32::try_from(max_bytes).unwrap_or(u32::MAX) / dirty_ring::ENTRY_BYTES;
        let entries = entries.min(host_most).max(MIN_RING_ENTRIES);
        if !entries.is_power_of_two() {
            notes.push(format!("a dirty ring of {entries} entries is not a power of two: using the bitmap"));
            return Ok(bitmap);
        }
        dirty_ring::enable(vm, cap, entries)
            .map_err(|source| KvmError { what: "enabling the dirty ring", source })?;
        let handle =
            crate::sys::vm_handle::duplicate(kvm, vm).map_err(io_kvm("duplicating the VM handle"))?;
        Ok(DirtyLog {
            method: DirtyMethod::Ring { entries, acq_rel },
            vm: Some(handle),
            rings: Mutex::new(Rings::empty()),
        })
    }

    /// Maps `vcpu`'s ring (call right after creating each vCPU, in index order); nothing
    /// with the bitmap.
    ///
    /// # Errors
    /// The mapping failed.
    pub(crate) fn add_vcpu(&mut self, vcpu: &VcpuFd) -> Result<(), KvmError> {
        let DirtyMethod::Ring { entries, .. } = self.method else { return Ok(()) };
        let ring = DirtyRing::map(vcpu, entries).map_err(io_kvm("mapping a vCPU's dirty ring"))?;
        self.rings.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner).rings.push(ring);
        Ok(())
    }

    /// What this VM tracks dirty pages with.
    pub fn method(&self) -> DirtyMethod {
        self.method
    }

    /// The rings. A panic while they were held (none is expected: harvesting only reads
    /// and pushes) leaves at worst extra pages pending, which only makes a later answer
    /// larger, never wrong: so a poisoned lock is taken as it is.
    fn lock(&self) -> MutexGuard<'_, Rings> {
        self.rings.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Collects every vCPU's ring into the pending sets and gives the entries back to KVM;
    /// nothing with the bitmap. Safe while vCPUs run (a page collected and written again
    /// before the reset stays in its pending set). Returns the entries collected.
    ///
    /// # Errors
    /// `KVM_RESET_DIRTY_RINGS` failed.
    pub fn harvest(&self) -> Result<u64, KvmError> {
        let Some(vm) = &self.vm else { return Ok(0) };
        let mut g = self.lock();
        let n = g.harvest();
        if n > 0 {
            dirty_ring::reset(vm).map_err(io_kvm("KVM_RESET_DIRTY_RINGS"))?;
        }
        Ok(n)
    }

    /// What a vCPU does at `KVM_EXIT_DIRTY_RING_FULL`: [`Self::harvest`]. When there was
    /// nothing to collect, KVM overran a ring (see [`DirtyRing::resync`]): the rings are
    /// brought back in step with KVM, and since pages were lost, each slot's next
    /// [`Self::take`] answers every page. Returns the entries collected or skipped (0: the
    /// ring cannot be freed, and re-entering would exit again).
    ///
    /// # Errors
    /// `KVM_RESET_DIRTY_RINGS` failed.
    pub(crate) fn ring_full(&self) -> Result<u64, KvmError> {
        let n = self.harvest()?;
        let Some(vm) = &self.vm else { return Ok(n) };
        if n > 0 {
            return Ok(n);
        }
        let mut g = self.lock();
        let skipped: u64 = g.rings.iter_mut().map(|r| u64::from(r.resync())).sum();
        g.overrun = Some(Default::default());
        let n = skipped + g.harvest();
        if n > 0 {
            dirty_ring::reset(vm).map_err(io_kvm("KVM_RESET_DIRTY_RINGS"))?;
        }
        Ok(n)
    }

    /// The pages of `slot` written by the guest since the last call for it, and forgets
    /// them: with the ring, every vCPU's ring is harvested first (the vCPUs should be
    /// parked, so nothing is written between the harvest and the answer); with the
    /// bitmap, `KVM_GET_DIRTY_LOG` on `vm`.
    ///
    /// # Errors
    /// KVM's.
    pub fn take(&self, vm: &VmFd, slot: &Slot) -> Result<DirtyPages, KvmError> {
        if self.vm.is_none() {
            return Ok(DirtyPages::Bitmap(take_bitmap(vm, slot.id(), slot.spec().size)?));
        }
        self.harvest()?;
        let mut g = self.lock();
        let id = slot.id();
        let mut p = match g.pending.iter().position(|(s, _)| *s == id) {
            Some(i) => g.pending.swap_remove(i).1.pages,
            None => Vec::new(),
        };
        if let Some(answered) = &mut g.overrun {
            if answered.insert(slot.id()) {
                return Ok(DirtyPages::All);
            }
        }
        p.sort_unstable();
        p.dedup();
        Ok(DirtyPages::Sorted(p))
    }
}

/// Reads and clears the bitmap of slot `id` of `size` bytes (`KVM_GET_DIRTY_LOG`): the
/// bitmap path, also for VMs another VMM created.
///
/// # Errors
/// The ioctl's.
pub fn take_bitmap(vm: &VmFd, id: u32, size: u64) -> Result<Vec<u64>, KvmError> {
    vm.get_dirty_log(id, usize::try_from(size).unwrap_or(0)).map_err(KvmError::on("KVM_GET_DIRTY_LOG"))
}

impl Rings {
    fn empty() -> Self {
        Rings { rings: Vec::new(), pending: Vec::new(), overrun: None }
    }

    fn harvest(&mut self) -> u64 {
        let Rings { rings, pending, overrun } = self;
        let mut n = 0u64;
        let mut full = false;
        for ring in rings.iter_mut() {
            let got = ring.harvest(|slot, page| pending_of(pending, slot).push(page));
            // KVM stops a vCPU short of a full ring (its soft limit): a whole ring's worth
            // at once means it went past, overwriting entries not yet collected.
            full |= got == ring.entries();
            n += u64::from(got);
        }
        if full {
            *overrun = Some(Default::default());
        }
        if n > 0 {
            // A page is pushed again each time it is dirtied after a reset: keep repeats
            // from piling up between takes.
            let most = rings.first().map_or(0, |r| usize::try_from(r.entries()).unwrap_or(usize::MAX));
            for (_, p) in pending.iter_mut() {
                if p.pages.len() > 2 * p.clean.max(most) {
                    p.pages.sort_unstable();
                    p.pages.dedup();
                    p.clean = p.pages.len();
                }
            }
        }
        n
    }
}

/// The pending pages of `slot`, made empty when new; the last slot used is checked first.
fn pending_of(pending: &mut Vec<(u32, Pending)>, slot: u32) -> &mut Vec<u64> {
    let i = match pending.iter().rposition(|(s, _)| *s == slot) {
        Some(i) => i,
        None => {
            pending.push((slot, Pending::default()));
            pending.len() - 1
        }
    };
    &mut pending[i].1.pages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_pages_give_runs_and_bitmaps() {
        let d = DirtyPages::Sorted(vec![0, 1, 2, 5, 64, 65, 300]);
        assert_eq!(d.runs(200), vec![(0, 3), (5, 1), (64, 2)]);
        let b = d.into_bitmap(130);
        assert_eq!(b, vec![0b100111, 0b11, 0]);
        assert_eq!(DirtyPages::Bitmap(b).runs(130), vec![(0, 3), (5, 1), (64, 2)]);
        // Unknown (an overrun ring): every page of the slot, none past it.
        assert_eq!(DirtyPages::All.runs(130), vec![(0, 130)]);
        assert_eq!(DirtyPages::All.into_bitmap(130), vec![u64::MAX, u64::MAX, 0b11]);
        assert_eq!(DirtyPages::All.into_bitmap(128), vec![u64::MAX, u64::MAX]);
    }

    #[test]
    fn describes_the_method() {
        assert_eq!(DirtyMethod::Bitmap.describe(), "bitmap");
        assert_eq!(DirtyMethod::Ring { entries: 4096, acq_rel: true }.describe(), "ring:4096:acq_rel");
    }
}

//! Capture in the background: the guest is paused only to read the dirty log, the vCPU and
//! device state, and to write-protect the pages the snapshot stores; a writer thread then
//! copies those pages into the snapshot's files while the guest runs.
//!
//! What keeps the snapshot exact is userfaultfd write-protection (`engine/src/sys/uffd.rs`):
//! a guest write (through KVM or any thread of the VMM) to a page not yet written out
//! blocks, and a fault-handler thread copies the page's old contents aside (at most
//! `budget` pages at once) before it lets the write through. When the budget is spent,
//! the handler writes that page into the snapshot file itself before letting the write
//! through: the writing vCPU waits for that one page, which is the fall-back to pausing,
//! counted as `pages_waited`. The writer takes a page's bytes from the copy set aside if
//! there is one, otherwise from the memfd (still protected, so still as of the pause),
//! and write-protection is lifted from each run of pages once it is read (one call per
//! run: each makes KVM drop its mappings of the range).
//!
//! Durability is as for a stopped-world capture: the files and the directory are synced,
//! then the temporary directory is renamed into place and its parent synced; only then is
//! the capture finished ([`InFlight::wait`]) and may a checkpoint record claim it. A crash
//! before leaves `snap-<id>.tmp`, which no reader lists as a snapshot.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vm_memory::GuestRegionMmap;
use vmrr_format::FileError;

use super::SnapshotError;
use super::capture::{
    CaptureStats, Identity, Plan, create_memory_file, finish_dir, plan, publish, scratch_for,
};
use crate::kvm::memory::Mapping;
use crate::machine::Machine;
use crate::page::{PAGE_BYTES as PAGE, PAGE_SIZE};
use crate::sys::uffd::{Fault, Uffd};

/// Pages read and written per batch by the writer.
const BATCH: u64 = 64;
/// How long the fault handler waits for a fault before looking whether it should stop.
const POLL: Duration = Duration::from_millis(50);
/// The writer thread's nice value.
const WRITER_NICE: i32 = 10;

/// Background capture could not be set up on this host or for this machine.
#[derive(Debug, thiserror::Error)]
pub enum BackgroundError {
    /// userfaultfd write-protection of shared memory is unavailable.
    #[error("userfaultfd write-protection is unavailable")]
    Unsupported(#[source] std::io::Error),
    /// A slot's memory could not be registered for write-protection.
    #[error("cannot register slot {slot} for write-protection")]
    Register {
        /// The slot's id.
        slot: u32,
        /// The kernel's refusal.
        #[source]
        source: std::io::Error,
    },
    /// A thread of the capture could not be started.
    #[error("cannot start a background-capture thread")]
    Thread(#[source] std::io::Error),
    /// The capture in flight was lost (its writer panicked or was waited for twice).
    #[error("the background capture in flight was lost")]
    Lost,
}

/// One slot's mapping, as the fault handler and the writer see it.
#[derive(Clone)]
struct SlotMap {
    base: u64,
    size: u64,
    region: Arc<GuestRegionMmap>,
    memfd: Arc<File>,
}

/// One slot of the capture in flight.
struct SlotWork {
    map: SlotMap,
    out: Arc<File>,
    path: PathBuf,
    /// One bit per page: set while the page still has to be captured (it is then
    /// write-protected and unchanged since the pause).
    pending: Vec<u64>,
    /// Non-zero pages written to `out`.
    stored: u64,
}

fn bit(bits: &[u64], p: u64) -> bool {
    usize::try_from(p / 64).ok().and_then(|w| bits.get(w)).is_some_and(|w| w & (1 << (p % 64)) != 0)
}

fn clear(bits: &mut [u64], p: u64) {
    if let Some(w) = usize::try_from(p / 64).ok().and_then(|w| bits.get_mut(w)) {
        *w &= !(1 << (p % 64));
    }
}

/// The capture in flight, shared by the writer and the fault handler.
struct Capture {
    slots: Vec<SlotWork>,
    /// Old contents of pages the guest wrote before the writer reached them.
    saved: HashMap<(usize, u64), Box<[u8]>>,
    budget_pages: u64,
    pages_saved: u64,
    pages_waited: u64,
    peak_saved: u64,
    /// The first error the fault handler met (the capture fails with it).
    error: Option<SnapshotError>,
}

#[derive(Default)]
struct Shared {
    /// The capture in flight, if any.
    capture: Mutex<Option<Capture>>,
    /// Every registered mapping (to release faults that come between captures).
    maps: Mutex<Vec<SlotMap>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking holder leaves data that is still consistent page by page: go on.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Takes snapshots in the background: owns the userfaultfd and its fault-handler thread.
pub struct Background {
    uffd: Arc<Uffd>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    handler: Option<JoinHandle<()>>,
    budget_pages: u64,
    /// Testing: writers start only when their capture is waited for.
    defer: bool,
}

/// Holds a writer back until its capture is waited for (testing: every guest write after
/// the pause then meets a page still to be written).
type Gate = Arc<(Mutex<bool>, std::sync::Condvar)>;

fn open_gate(g: &Gate) {
    *lock(&g.0) = true;
    g.1.notify_all();
}

impl std::fmt::Debug for Background {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Background").field("budget_pages", &self.budget_pages).finish_non_exhaustive()
    }
}

/// A capture whose pages are still being written.
#[derive(Debug)]
pub struct InFlight {
    writer: Option<JoinHandle<Result<CaptureStats, SnapshotError>>>,
    done: Arc<AtomicBool>,
    gate: Option<Gate>,
}

impl InFlight {
    /// True once the snapshot is durable (or the capture failed): [`Self::wait`] then
    /// returns at once.
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// Waits until the snapshot is durable and renamed into place.
    ///
    /// # Errors
    /// Writing failed (the temporary directory is removed; no snapshot claims to exist).
    pub fn wait(mut self) -> Result<CaptureStats, SnapshotError> {
        if let Some(g) = self.gate.take() {
            open_gate(&g);
        }
        let Some(h) = self.writer.take() else {
            return Err(SnapshotError::Background(BackgroundError::Lost));
        };
        h.join().unwrap_or(Err(SnapshotError::Background(BackgroundError::Lost)))
    }
}

impl Background {
    /// Opens a userfaultfd and starts the fault handler; at most `budget_bytes` of old page
    /// contents are held aside per capture.
    ///
    /// # Errors
    /// The host cannot write-protect shared memory, or the thread cannot start.
    pub fn new(budget_bytes: u64) -> Result<Self, BackgroundError> {
        // Arming a page of a memfd mapping is what a capture does: try it once first.
        crate::sys::uffd::probe().map_err(BackgroundError::Unsupported)?;
        let uffd = Arc::new(Uffd::open().map_err(BackgroundError::Unsupported)?);
        let shared = Arc::new(Shared::default());
        let stop = Arc::new(AtomicBool::new(false));
        let handler = {
            let (uffd, shared, stop) = (Arc::clone(&uffd), Arc::clone(&shared), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("vmrr-uffd".into())
                .spawn(move || handle_faults(&uffd, &shared, &stop))
                .map_err(BackgroundError::Thread)?
        };
        Ok(Background {
            uffd,
            shared,
            stop,
            handler: Some(handler),
            budget_pages: budget_bytes / PAGE_SIZE,
            defer: false,
        })
    }

    /// Testing only: each writer waits until its capture is waited for, so that every
    /// guest write between a pause and the next wait meets a page still to be written
    /// (saved within the budget, written by the fault handler beyond it).
    #[cfg(feature = "testing")]
    pub fn defer_writes(&mut self) {
        self.defer = true;
    }

    /// Whether every slot of `m` can be captured in the background (memfd-backed, mapped
    /// shared: a restored machine's private copy-on-write mappings cannot).
    pub fn supports(m: &Machine) -> bool {
        m.vm().memory().slots().iter().all(|s| s.mapping() == Mapping::Shared)
    }

    /// Registers `m`'s slots for the capture about to start. A registered mapping costs
    /// the guest an extra fault per page it first writes (the kernel maps it read-only to
    /// notice writes), so slots are registered only while a capture is in flight.
    fn register(&self, m: &Machine) -> Result<Vec<SlotMap>, BackgroundError> {
        let mut maps = lock(&self.shared.maps);
        let mut out = Vec::new();
        for slot in m.vm().memory().slots() {
            self.uffd
                .register(slot.region())
                .map_err(|source| BackgroundError::Register { slot: slot.id(), source })?;
            let map = SlotMap {
                base: slot.host_addr(),
                size: slot.spec().size,
                region: Arc::clone(slot.region()),
                memfd: Arc::clone(slot.file()),
            };
            if !maps.iter().any(|k| k.base == map.base && k.size == map.size) {
                maps.push(map.clone());
            }
            out.push(map);
        }
        Ok(out)
    }

    /// Pauses (the caller's thread is the vCPU's, so the guest is already stopped) to read
    /// what snapshot `who` needs and write-protect its pages, then starts writing it into
    /// `dir` on another thread and returns: the guest may run on.
    ///
    /// # Errors
    /// KVM, vCPU-state or file-system failures before the writer started (nothing is
    /// left behind then).
    pub fn start(
        &mut self,
        m: &mut Machine,
        dir: &Path,
        who: &Identity<'_>,
    ) -> Result<(InFlight, Duration), SnapshotError> {
        let started = Instant::now();
        if who.parent.is_some() && !m.vm().config().dirty_log {
            return Err(SnapshotError::NoDirtyLog { what: "an incremental snapshot" });
        }
        m.complete_pending_io()?;
        let maps = self.register(m).map_err(SnapshotError::Background)?;
        let (root, tmp) = scratch_for(dir)?;
        let armed = (|| {
            let Plan { state, runs } = plan(m, dir, who)?;
            let mut slots = Vec::new();
            for ((slot, map), slot_runs) in state.slots.iter().zip(&maps).zip(&runs) {
                let (out, path) = create_memory_file(&tmp, slot)?;
                let mut pending = vec![0u64; usize::try_from(slot.page_count().div_ceil(64)).unwrap_or(0)];
                for &(first, count) in slot_runs {
                    for p in first..first + count {
                        if let Some(w) = usize::try_from(p / 64).ok().and_then(|w| pending.get_mut(w)) {
                            *w |= 1 << (p % 64);
                        }
                    }
                }
                slots.push(SlotWork { map: map.clone(), out: Arc::new(out), path, pending, stored: 0 });
            }
            *lock(&self.shared.capture) = Some(Capture {
                slots,
                saved: HashMap::new(),
                budget_pages: self.budget_pages,
                pages_saved: 0,
                pages_waited: 0,
                peak_saved: 0,
                error: None,
            });
            for (map, slot_runs) in maps.iter().zip(&runs) {
                for &(first, count) in slot_runs {
                    self.uffd
                        .protect(&map.region, first * PAGE_SIZE, count * PAGE_SIZE, true)
                        .map_err(|e| FileError::on("write-protecting", Path::new("guest memory"))(e))?;
                }
            }
            Ok::<_, SnapshotError>((state, runs))
        })();
        let (state, runs) = match armed {
            Ok(v) => v,
            Err(e) => {
                self.disarm_all();
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        let pause = started.elapsed();
        let done = Arc::new(AtomicBool::new(false));
        let gate: Option<Gate> = self.defer.then(|| Arc::new((Mutex::new(false), std::sync::Condvar::new())));
        let job = Job {
            gate: gate.clone(),
            uffd: Arc::clone(&self.uffd),
            shared: Arc::clone(&self.shared),
            state,
            runs,
            tmp,
            dir: dir.to_path_buf(),
            root,
            started,
            pause,
            done: Arc::clone(&done),
        };
        let writer = std::thread::Builder::new()
            .name("vmrr-snapshot".into())
            .spawn(move || job.run())
            .map_err(|e| SnapshotError::Background(BackgroundError::Thread(e)));
        match writer {
            Ok(w) => Ok((InFlight { writer: Some(w), done, gate }, pause)),
            Err(e) => {
                self.disarm_all();
                Err(e)
            }
        }
    }

    /// Lifts write-protection from every page of the capture in flight (unregistering its
    /// slots) and drops it.
    fn disarm_all(&self) {
        if let Some(c) = lock(&self.shared.capture).take() {
            for s in &c.slots {
                let _ = self.uffd.unregister(&s.map.region);
            }
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.disarm_all();
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handler.take() {
            let _ = h.join();
        }
    }
}

/// The fault handler: for each write-protect fault, keeps the page's old contents if the
/// capture still needs them, then lets the write through.
fn handle_faults(uffd: &Uffd, shared: &Shared, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        match uffd.read_fault(POLL) {
            Ok(Some(f)) => handle_one(uffd, shared, f),
            Ok(None) => {}
            Err(e) => {
                if let Some(c) = lock(&shared.capture).as_mut() {
                    c.error.get_or_insert(SnapshotError::File(FileError::on(
                        "reading faults of",
                        Path::new("userfaultfd"),
                    )(e)));
                }
                std::thread::sleep(POLL);
            }
        }
    }
}

fn handle_one(uffd: &Uffd, shared: &Shared, f: Fault) {
    let release_region = {
        let mut guard = lock(&shared.capture);
        match guard.as_mut() {
            Some(c) => keep_old_contents(c, f.page_addr),
            None => None,
        }
    };
    let region = release_region.or_else(|| {
        lock(&shared.maps)
            .iter()
            .find(|m| f.page_addr >= m.base && f.page_addr < m.base + m.size)
            .map(|m| Arc::clone(&m.region))
    });
    if let Some(r) = region {
        // Disarming wakes the blocked writer; failing to would leave it blocked, so a
        // failure is retried once as a whole-range disarm.
        if uffd.release(&r, f.page_addr).is_err() {
            let _ = uffd.protect(&r, 0, r.size() as u64, false);
        }
    }
}

/// Under the capture's lock: when `addr`'s page is still pending, saves its bytes (within
/// the budget) or writes it into the snapshot file (over it). Returns the page's region.
fn keep_old_contents(c: &mut Capture, addr: u64) -> Option<Arc<GuestRegionMmap>> {
    let (i, s) =
        c.slots.iter_mut().enumerate().find(|(_, s)| addr >= s.map.base && addr < s.map.base + s.map.size)?;
    let p = (addr - s.map.base) / PAGE_SIZE;
    let region = Arc::clone(&s.map.region);
    if !bit(&s.pending, p) {
        return Some(region);
    }
    let mut buf = vec![0u8; PAGE].into_boxed_slice();
    if let Err(e) = s.map.memfd.read_exact_at(&mut buf, p * PAGE_SIZE) {
        c.error.get_or_insert(SnapshotError::File(FileError::on("reading", Path::new("guest memory"))(e)));
        clear(&mut s.pending, p);
        return Some(region);
    }
    clear(&mut s.pending, p);
    if (c.saved.len() as u64) < c.budget_pages {
        c.saved.insert((i, p), buf);
        c.pages_saved += 1;
        c.peak_saved = c.peak_saved.max(c.saved.len() as u64);
    } else {
        c.pages_waited += 1;
        if buf.iter().any(|&b| b != 0) {
            match s.out.write_all_at(&buf, p * PAGE_SIZE) {
                Ok(()) => s.stored += 1,
                Err(e) => {
                    c.error.get_or_insert(SnapshotError::File(FileError::on("writing", &s.path)(e)));
                }
            }
        }
    }
    Some(region)
}

/// The writer thread's work.
struct Job {
    gate: Option<Gate>,
    uffd: Arc<Uffd>,
    shared: Arc<Shared>,
    state: super::state::SnapshotState,
    runs: Vec<Vec<(u64, u64)>>,
    tmp: PathBuf,
    dir: PathBuf,
    root: PathBuf,
    started: Instant,
    pause: Duration,
    done: Arc<AtomicBool>,
}

impl Job {
    fn run(mut self) -> Result<CaptureStats, SnapshotError> {
        // The guest comes first: on a busy host the writer takes what CPU is left (the
        // budget bounds what waiting costs in memory; beyond it the guest waits per page).
        let _ = crate::sys::thread::set_current_nice(WRITER_NICE);
        if let Some(g) = &self.gate {
            let mut open = lock(&g.0);
            while !*open {
                open = g.1.wait(open).unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        }
        let r = self.write();
        // Whatever happened, no page stays protected and no capture stays in flight.
        let capture = lock(&self.shared.capture).take();
        if let Some(c) = &capture {
            for s in &c.slots {
                // Lifts any protection left and stops write-notification of the slot.
                let _ = self.uffd.unregister(&s.map.region);
            }
        }
        let r = r.and_then(|mut stats| {
            let c = capture.ok_or(SnapshotError::Background(BackgroundError::Lost))?;
            if let Some(e) = c.error {
                return Err(e);
            }
            for (slot, work) in self.state.slots.iter_mut().zip(&c.slots) {
                slot.stored_pages = work.stored;
            }
            stats.pages_written = c.slots.iter().map(|s| s.stored).sum();
            stats.pages_saved = c.pages_saved;
            stats.pages_waited = c.pages_waited;
            stats.peak_saved_pages = c.peak_saved;
            for w in &c.slots {
                w.out.sync_all().map_err(FileError::on("syncing", &w.path))?;
            }
            finish_dir(&self.tmp, &self.state)?;
            publish(&self.tmp, &self.dir, &self.root)?;
            stats.durable = self.started.elapsed();
            Ok(stats)
        });
        if r.is_err() {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
        self.done.store(true, Ordering::Release);
        r
    }

    /// Writes every pending page, batch by batch.
    fn write(&mut self) -> Result<CaptureStats, SnapshotError> {
        let mut stats = CaptureStats { pause: self.pause, background: true, ..CaptureStats::default() };
        let mut buf = vec![0u8; PAGE * usize::try_from(BATCH).unwrap_or(64)];
        for (i, runs) in self.runs.iter().enumerate() {
            for &(first, count) in runs {
                stats.pages_considered += count;
                let mut p = first;
                while p < first + count {
                    let n = (first + count - p).min(BATCH);
                    self.batch(i, p, n, &mut buf)?;
                    p += n;
                }
                // Captured: the guest may write these pages freely from now on. Lifted
                // once per run, not per batch: each call makes KVM drop its mappings of
                // the range (an MMU-notifier invalidation), which the guest pays for.
                if let Some(region) = lock(&self.shared.capture)
                    .as_ref()
                    .and_then(|c| c.slots.get(i))
                    .map(|s| Arc::clone(&s.map.region))
                {
                    let _ = self.uffd.protect(&region, first * PAGE_SIZE, count * PAGE_SIZE, false);
                }
            }
        }
        Ok(stats)
    }

    /// Captures pages `[p, p + n)` of slot `i`: reads them (taking copies set aside where
    /// the guest already wrote) and writes the non-zero ones.
    fn batch(&self, i: usize, p: u64, n: u64, buf: &mut [u8]) -> Result<(), SnapshotError> {
        let len = PAGE * usize::try_from(n).unwrap_or(0);
        let chunk = buf.get_mut(..len).ok_or(SnapshotError::Background(BackgroundError::Lost))?;
        let mut take = vec![false; usize::try_from(n).unwrap_or(0)];
        let (out, path) = {
            let mut guard = lock(&self.shared.capture);
            let c = guard.as_mut().ok_or(SnapshotError::Background(BackgroundError::Lost))?;
            let Capture { slots, saved, .. } = c;
            let s = slots.get_mut(i).ok_or(SnapshotError::Background(BackgroundError::Lost))?;
            // Pages still pending are protected, so the memfd holds them as at the pause.
            s.map
                .memfd
                .read_exact_at(chunk, p * PAGE_SIZE)
                .map_err(FileError::on("reading", Path::new("guest memory")))?;
            for (k, t) in take.iter_mut().enumerate() {
                let page = p + k as u64;
                if let Some(old) = saved.remove(&(i, page)) {
                    chunk[k * PAGE..(k + 1) * PAGE].copy_from_slice(&old);
                    *t = true;
                } else if bit(&s.pending, page) {
                    clear(&mut s.pending, page);
                    *t = true;
                }
            }
            (Arc::clone(&s.out), s.path.clone())
        };
        // Maximal runs of pages to store (taken here and not all zeros), one write each.
        let keep: Vec<bool> = take
            .iter()
            .enumerate()
            .map(|(k, t)| *t && chunk[k * PAGE..(k + 1) * PAGE].iter().any(|&b| b != 0))
            .collect();
        let mut stored = 0;
        for (start, end) in super::pages::true_runs(&keep) {
            out.write_all_at(&chunk[start * PAGE..end * PAGE], (p + start as u64) * PAGE_SIZE)
                .map_err(FileError::on("writing", &path))?;
            stored += (end - start) as u64;
        }
        if let Some(s) = lock(&self.shared.capture).as_mut().and_then(|c| c.slots.get_mut(i)) {
            s.stored += stored;
        }
        Ok(())
    }
}

//! Taking a snapshot of a paused machine.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::GuestAddress;
use vmrr_format::FileError;
use vmrr_format::layout::{STATE_FILE, memory_file_name};

use super::changed::Runs;
use super::pages::{Zeros, bitmap_runs, copy_pages};
use super::state::KernelIrqchip;
use super::state::{SlotState, SnapshotState, VmState};
use super::{SnapshotError, take_dirty_log};
use crate::kvm::irqchip::{IrqchipKind, IrqchipState};
use crate::kvm::memory::{Mapping, MemoryError, Slot, SlotKind};
use crate::kvm::vcpu_state::VcpuState;
use crate::machine::Machine;
use crate::machine::origin::{Origin, OriginLink};
use crate::page::PAGE_SIZE;
use crate::persist::Persist;

/// What a capture did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// Pages considered (all populated pages for a full snapshot, dirty pages otherwise).
    pub pages_considered: u64,
    /// Non-zero pages written.
    pub pages_written: u64,
    /// Time the guest was paused for it.
    pub pause: Duration,
    /// Time from the pause until the snapshot was durable (synced and renamed into
    /// place); equal to `pause` for a stopped-world capture.
    pub durable: Duration,
    /// True when the pages were written in the background, the guest running.
    pub background: bool,
    /// Pages the guest wrote before they were written out, whose old contents were copied
    /// aside (within the budget).
    pub pages_saved: u64,
    /// Pages the guest wrote before they were written out while the budget was spent:
    /// the writing vCPU waited until that page was written (the fall-back to pausing).
    pub pages_waited: u64,
    /// Most pages held aside at once.
    pub peak_saved_pages: u64,
}

/// Which snapshot a capture writes, and what it belongs to.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    /// Its id (its directory is normally `snap-<id>`).
    pub id: u64,
    /// The snapshot it is incremental on (`None`: a full snapshot).
    pub parent: Option<u64>,
    /// The trace it belongs to.
    pub trace_id: [u8; 16],
    /// The last trace record before it.
    pub exit_seq: Option<u64>,
    /// The run's annotations.
    pub annotations: &'a [(String, String)],
}

/// The pages of a slot that may hold data, as runs: the populated ranges of its memfd when
/// shared; every page of a private (restored) mapping.
fn populated_runs(slot: &Slot) -> Result<Vec<(u64, u64)>, SnapshotError> {
    if slot.mapping() == Mapping::Private {
        return Ok(vec![(0, slot.pages())]);
    }
    let ranges = vmrr_format::layout::populated_ranges(slot.file(), slot.spec().size)
        .map_err(FileError::on("finding populated ranges of", Path::new(&format!("slot {}", slot.id()))))?;
    Ok(ranges
        .into_iter()
        .map(|(off, len)| {
            let first = off / PAGE_SIZE;
            let last = (off + len).div_ceil(PAGE_SIZE).min(slot.pages());
            (first, last - first)
        })
        .collect())
}

/// What a stopped-world capture reads from a paused VM: vmrr's own [`Machine`], or a VM
/// another VMM runs (`crate::embed`). The capture itself (a scratch directory, the page
/// copies, the state file, publishing by rename) is [`write`], the same for both.
pub(crate) trait Source {
    /// Lets KVM finish the instruction the vCPU last exited for, so its saved registers
    /// are those after it.
    ///
    /// # Errors
    /// KVM's.
    fn complete_pending(&mut self) -> Result<(), SnapshotError>;

    /// The snapshot's state (each slot's `stored_pages` still to count) and, per slot,
    /// the runs of pages to store; reading the dirty logs clears them. `final_dir` is
    /// where the snapshot will be published.
    ///
    /// # Errors
    /// KVM's, or the vCPU state's.
    fn plan(&mut self, final_dir: &Path, who: &Identity<'_>) -> Result<Plan, SnapshotError>;

    /// Fills `buf` with guest memory from guest-physical `gpa` on.
    ///
    /// # Errors
    /// The range is not the VM's memory.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), SnapshotError>;
}

impl Source for Machine {
    fn complete_pending(&mut self) -> Result<(), SnapshotError> {
        Ok(self.complete_pending_io()?)
    }

    fn plan(&mut self, final_dir: &Path, who: &Identity<'_>) -> Result<Plan, SnapshotError> {
        plan(self, final_dir, who)
    }

    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), SnapshotError> {
        self.vm()
            .memory()
            .read(GuestAddress(gpa), buf)
            .map_err(|e| SnapshotError::Memory(MemoryError::Access(e)))
    }
}

/// Takes snapshot `who` of `m` into the directory `dir` (normally `<root>/snap-<id>`;
/// parents are found as its siblings): full when it has no parent, otherwise only the
/// pages dirtied since the parent (requires dirty logging).
///
/// # Errors
/// KVM, vCPU-state or file-system failures; the temporary directory is removed.
pub fn take(m: &mut Machine, dir: &Path, who: &Identity<'_>) -> Result<CaptureStats, SnapshotError> {
    if who.parent.is_some() && !m.vm().config().dirty_log {
        return Err(SnapshotError::NoDirtyLog { what: "an incremental snapshot" });
    }
    write(m, dir, who)
}

/// Captures snapshot `who` of the paused VM `src` into `dir`: written under `<dir>.tmp`,
/// every file synced, then renamed into place (replacing what is there) and the parent
/// directory synced. The guest stays paused throughout.
///
/// # Errors
/// KVM, vCPU-state or file-system failures; the temporary directory is removed.
pub(crate) fn write(
    src: &mut dyn Source,
    dir: &Path,
    who: &Identity<'_>,
) -> Result<CaptureStats, SnapshotError> {
    let started = Instant::now();
    src.complete_pending()?;
    let (root, tmp) = scratch_for(dir)?;
    let stats = match write_into(src, &tmp, dir, who) {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    publish(&tmp, dir, &root)?;
    let pause = started.elapsed();
    Ok(CaptureStats { pause, durable: pause, ..stats })
}

/// Takes a full snapshot `who` of `m` into `dir`, an output the user named (`vmrr replay
/// --snapshot-at`): checked first (see `vmrr_format::output`: a new path, or with
/// `replace` an existing snapshot directory), written under a unique temporary name beside
/// it and renamed into place when complete. Nothing else is removed, ever.
///
/// # Errors
/// `dir` may not be written, or KVM, vCPU-state or file-system failures; nothing is left
/// behind.
pub fn take_new(
    m: &mut Machine,
    dir: &Path,
    who: &Identity<'_>,
    replace: bool,
) -> Result<CaptureStats, SnapshotError> {
    use vmrr_format::output::{self, OutputKind};
    let started = Instant::now();
    if who.parent.is_some() {
        return Err(SnapshotError::NoDirtyLog { what: "a snapshot outside a trace's chain" });
    }
    output::check(dir, &[], replace, OutputKind::SnapshotDir)?;
    m.complete_pending_io()?;
    let parent = output::directory_of(dir);
    let scratch = vmrr_format::scratch::Scratch::dir_in(parent, &output::scratch_prefix(dir))
        .map_err(FileError::on("creating a directory in", parent))?;
    let stats = write_into(m, scratch.path(), dir, who)?;
    scratch.publish(dir, replace).map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => {
            SnapshotError::Output(vmrr_format::output::OutputError::Exists { out: dir.to_path_buf() })
        }
        _ => SnapshotError::File(FileError { what: "renaming into", path: dir.to_path_buf(), source }),
    })?;
    let pause = started.elapsed();
    Ok(CaptureStats { pause, durable: pause, ..stats })
}

/// What a capture decided while the guest is paused: the state file's contents (with
/// `stored_pages` still to count) and, per slot, the runs of pages to write.
#[derive(Debug)]
pub(crate) struct Plan {
    /// The state; each slot's `stored_pages` is filled in once its pages are written.
    pub state: SnapshotState,
    /// Per slot (same order as `state.slots`), the runs `(first_page, count)` to write.
    pub runs: Vec<Vec<(u64, u64)>>,
}

/// Reads what a snapshot needs while the guest is paused: vCPU and device state, and for
/// each slot the pages to store (reading, and so clearing, the dirty log and the
/// userspace-written pages). From here the machine's memory origin is the snapshot, to be
/// published as `final_dir`.
pub(super) fn plan(m: &mut Machine, final_dir: &Path, who: &Identity<'_>) -> Result<Plan, SnapshotError> {
    let plan = plan_of(m, who)?;
    let changed =
        plan.state.slots.iter().zip(&plan.runs).map(|(s, r)| if s.full { Vec::new() } else { r.clone() });
    captured(m, final_dir, who, changed.collect());
    Ok(plan)
}

/// After the dirty log was read for snapshot `who` (to be published as `dir`): the
/// machine's memory now equals it. Its origin becomes the parent's chain plus it (or it
/// alone, when full), or unknown when the parent is not the origin's newest snapshot. The
/// slots' mappings are not the new snapshot's files. Should the snapshot never be
/// published, the origin still says which pages it changed over its parent, which is all a
/// later restore uses of it.
fn captured(m: &mut Machine, dir: &Path, who: &Identity<'_>, changed: Vec<Runs>) {
    let link = OriginLink {
        dir: dir.to_path_buf(),
        id: who.id,
        trace_id: who.trace_id,
        exit_seq: who.exit_seq,
        changed: Arc::new(changed),
    };
    let old = m.memory_origin();
    let overlays = old.map_or(0, |o| o.overlays);
    let links = match (who.parent, old) {
        (None, _) => Some(vec![link]),
        (Some(p), Some(o))
            if o.top().is_some_and(|t| {
                t.id == p && t.trace_id == who.trace_id && t.dir.parent() == dir.parent()
            }) =>
        {
            let mut links = o.links.clone();
            links.push(link);
            Some(links)
        }
        _ => None,
    };
    m.set_memory_origin(links.map(|links| Origin { links, mapped: false, overlays }));
}

fn plan_of(m: &Machine, who: &Identity<'_>) -> Result<Plan, SnapshotError> {
    let vm = m.vm();
    let pv = crate::kvm::vcpu_state::guest_has_kvm_pv(vm.vcpu());
    let msrs = crate::kvm::vcpu_state::msr_list(vm.kvm(), vm.vcpu(), pv)?;
    // Every vCPU, in index order; the APs' threads are parked (the caller stopped them).
    let kernel = vm.irqchip() == IrqchipKind::Kernel;
    let mut vcpus = Vec::new();
    let mut lapics = Vec::new();
    vm.each_vcpu(|_, fd| -> Result<(), SnapshotError> {
        vcpus.push(VcpuState::save(fd, &msrs)?);
        if kernel {
            lapics.push(crate::kvm::vcpu_state::save_lapic(fd)?);
        }
        Ok(())
    })?;
    let kernel_irqchip = match vm.irqchip() {
        IrqchipKind::User => None,
        IrqchipKind::Kernel => Some(KernelIrqchip { chip: IrqchipState::save(vm.fd())?, lapics }),
    };
    let bus = {
        let b = m.bus();
        let now = b.clock().now_ns();
        Persist::save(&*b, now)
    };
    let dirty_log = vm.config().dirty_log;
    let mut slots = Vec::new();
    let mut all_runs = Vec::new();
    for slot in vm.memory().slots() {
        let logged = dirty_log && slot.spec().kind == SlotKind::Ram;
        // Reading the dirty log also clears it: the next snapshot sees changes since this.
        // KVM logs only the guest's writes; pages written from userspace (a debugger's
        // memory write, a device's DMA in replay) are tracked beside it.
        let user = slot.take_written();
        let dirty = match (logged, user) {
            (true, user) => {
                let mut bitmap = take_dirty_log(vm, slot)?.into_bitmap(slot.pages());
                for (w, u) in bitmap.iter_mut().zip(user.unwrap_or_default()) {
                    *w |= u;
                }
                Some(bitmap)
            }
            (false, user) => user,
        };
        let (full, pages, runs) = match (who.parent, dirty) {
            (Some(_), Some(bitmap)) => {
                let runs = bitmap_runs(&bitmap, slot.pages());
                (false, bitmap, runs)
            }
            (Some(_), None) => {
                // ROM never changes: an incremental snapshot stores none of it.
                let words = usize::try_from(slot.pages().div_ceil(64)).unwrap_or(0);
                (false, vec![0u64; words], Vec::new())
            }
            (None, _) => (true, Vec::new(), populated_runs(slot)?),
        };
        slots.push(SlotState {
            id: slot.id(),
            gpa: slot.spec().gpa.0,
            size: slot.spec().size,
            kind: slot.spec().kind,
            flags: slot.flags() & !kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES,
            file: memory_file_name(slot.id()),
            full,
            pages,
            stored_pages: 0,
        });
        all_runs.push(runs);
    }
    let config = vm.config();
    let state = SnapshotState {
        id: who.id,
        parent: who.parent,
        trace_id: who.trace_id,
        exit_seq: who.exit_seq,
        exits: m.exits(),
        interrupts: m.interrupts(),
        created_unix_ns: m.bus().clock().realtime_ns(),
        vm: VmState {
            mem_bytes: config.mem_bytes,
            cpuid: config.cpuid.name().to_string(),
            rom_size: config.rom_size,
        },
        slots,
        vcpus,
        bus,
        annotations: who.annotations.to_vec(),
        kernel_irqchip,
    };
    Ok(Plan { state, runs: all_runs })
}

/// Creates slot `i`'s memory file in `dir`, sized as the slot (sparse).
pub(super) fn create_memory_file(
    dir: &Path,
    slot: &SlotState,
) -> Result<(File, std::path::PathBuf), SnapshotError> {
    let path = dir.join(&slot.file);
    let out = File::create(&path).map_err(FileError::on("creating", &path))?;
    out.set_len(slot.size).map_err(FileError::on("sizing", &path))?;
    Ok((out, path))
}

/// Writes the state file of `state` into `dir` and syncs it and the directory: the last
/// step before a snapshot directory may be renamed into place.
pub(crate) fn finish_dir(dir: &Path, state: &SnapshotState) -> Result<(), SnapshotError> {
    let bytes = super::state::to_file_bytes(state)?;
    let path = dir.join(STATE_FILE);
    let f = File::create(&path).map_err(FileError::on("creating", &path))?;
    f.write_all_at(&bytes, 0).map_err(FileError::on("writing", &path))?;
    f.sync_all().map_err(FileError::on("syncing", &path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(FileError::on("syncing", dir))?;
    Ok(())
}

/// Renames the complete temporary directory `tmp` to `final_dir` (replacing what is
/// there) and syncs their parent `root`: from then on the snapshot exists.
pub(super) fn publish(tmp: &Path, final_dir: &Path, root: &Path) -> Result<(), SnapshotError> {
    if final_dir.exists() {
        std::fs::remove_dir_all(final_dir).map_err(FileError::on("replacing", final_dir))?;
    }
    std::fs::rename(tmp, final_dir).map_err(FileError::on("renaming", tmp))?;
    File::open(root).and_then(|d| d.sync_all()).map_err(FileError::on("syncing", root))?;
    Ok(())
}

/// Creates the empty temporary directory a snapshot into `dir` is written in:
/// `(root, tmp)`.
pub(super) fn scratch_for(dir: &Path) -> Result<(std::path::PathBuf, std::path::PathBuf), SnapshotError> {
    let root = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    let tmp = dir.with_extension("tmp");
    std::fs::create_dir_all(&root).map_err(FileError::on("creating", &root))?;
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(FileError::on("creating", &tmp))?;
    Ok((root, tmp))
}

/// Writes snapshot `who` of `src`, to be published as `final_dir`, into the directory
/// `dir`: each slot's runs of pages (zero pages left as holes, which read as zeros over a
/// parent's pages too), then the state file.
fn write_into(
    src: &mut dyn Source,
    dir: &Path,
    final_dir: &Path,
    who: &Identity<'_>,
) -> Result<CaptureStats, SnapshotError> {
    let mut stats = CaptureStats::default();
    let Plan { mut state, runs } = src.plan(final_dir, who)?;
    for (slot, runs) in state.slots.iter_mut().zip(runs) {
        let (out, path) = create_memory_file(dir, slot)?;
        let gpa = slot.gpa;
        let mut stored = 0;
        for (first, count) in runs {
            stats.pages_considered += count;
            stored += copy_pages(
                first,
                count,
                Zeros::Skip,
                |p, buf| src.read(gpa + p * PAGE_SIZE, buf),
                |p, bytes| {
                    Ok(out.write_all_at(bytes, p * PAGE_SIZE).map_err(FileError::on("writing", &path))?)
                },
            )?;
        }
        stats.pages_written += stored;
        slot.stored_pages = stored;
        out.sync_all().map_err(FileError::on("syncing", &path))?;
    }
    finish_dir(dir, &state)?;
    Ok(stats)
}

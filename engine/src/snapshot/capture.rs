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
use super::state::{SlotState, SnapshotState, VmState};
use super::{SnapshotError, codec, take_dirty_log};
use crate::kvm::memory::{Mapping, MemoryError, PAGE_SIZE, Slot, SlotKind};
use crate::kvm::vcpu_state::VcpuState;
use crate::machine::Machine;
use crate::machine::origin::{Origin, OriginLink};
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

/// Takes snapshot `who` of `m` into the directory `dir` (normally `<root>/snap-<id>`;
/// parents are found as its siblings): full when it has no parent, otherwise only the
/// pages dirtied since the parent (requires dirty logging).
///
/// # Errors
/// KVM, vCPU-state or file-system failures; the temporary directory is removed.
pub fn take(m: &mut Machine, dir: &Path, who: &Identity<'_>) -> Result<CaptureStats, SnapshotError> {
    let started = Instant::now();
    if who.parent.is_some() && !m.vm().config().dirty_log {
        return Err(SnapshotError::NoDirtyLog { what: "an incremental snapshot" });
    }
    m.complete_pending_io()?;
    let final_dir = dir.to_path_buf();
    let root = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = final_dir.with_extension("tmp");
    std::fs::create_dir_all(root).map_err(FileError::on("creating", root))?;
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(FileError::on("creating", &tmp))?;
    let (stats, changed) = match write_into(m, &tmp, who) {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(FileError::on("replacing", &final_dir))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(FileError::on("renaming", &tmp))?;
    File::open(root).and_then(|d| d.sync_all()).map_err(FileError::on("syncing", root))?;
    captured(m, &final_dir, who, changed);
    Ok(CaptureStats { pause: started.elapsed(), ..stats })
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
    let (stats, changed) = write_into(m, scratch.path(), who)?;
    scratch.publish(dir, replace).map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => {
            SnapshotError::Output(vmrr_format::output::OutputError::Exists { out: dir.to_path_buf() })
        }
        _ => SnapshotError::File(FileError { what: "renaming into", path: dir.to_path_buf(), source }),
    })?;
    captured(m, dir, who, changed);
    Ok(CaptureStats { pause: started.elapsed(), ..stats })
}

/// Writes the snapshot into `dir`; returns what it did and, per slot, the runs of pages
/// it stored as changed (none for a full snapshot).
fn write_into(
    m: &mut Machine,
    dir: &Path,
    who: &Identity<'_>,
) -> Result<(CaptureStats, Vec<Runs>), SnapshotError> {
    let mut stats = CaptureStats::default();
    let mut changed = Vec::new();
    let vm = m.vm();
    let msrs = crate::kvm::vcpu_state::msr_list(vm.kvm(), vm.vcpu(), false)?;
    let vcpu = VcpuState::save(vm.vcpu(), &msrs)?;
    let now = m.bus().clock.now_ns();
    let bus = Persist::save(m.bus(), now);
    let dirty_log = vm.config().dirty_log;
    let mut slots = Vec::new();
    for slot in vm.memory().slots() {
        let name = memory_file_name(slot.id());
        let path = dir.join(&name);
        let out = File::create(&path).map_err(FileError::on("creating", &path))?;
        out.set_len(slot.spec().size).map_err(FileError::on("sizing", &path))?;
        let logged = dirty_log && slot.spec().kind == SlotKind::Ram;
        // Reading the dirty log also clears it: the next snapshot sees changes since this.
        // KVM logs only the guest's writes; pages written from userspace (a debugger's
        // memory write, a device's DMA in replay) are tracked beside it.
        let user = slot.take_written();
        let dirty = match (logged, user) {
            (true, user) => {
                let mut bitmap = take_dirty_log(vm.fd(), slot)?;
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
        let gpa = slot.spec().gpa.0;
        let mut stored = 0;
        changed.push(if full { Vec::new() } else { runs.clone() });
        for (first, count) in runs {
            stats.pages_considered += count;
            stored += copy_pages(
                first,
                count,
                Zeros::Skip,
                |p, buf| {
                    vm.memory()
                        .read(GuestAddress(gpa + p * PAGE_SIZE), buf)
                        .map_err(|e| SnapshotError::Memory(MemoryError::Access(e)))
                },
                |p, bytes| {
                    Ok(out.write_all_at(bytes, p * PAGE_SIZE).map_err(FileError::on("writing", &path))?)
                },
            )?;
        }
        stats.pages_written += stored;
        out.sync_all().map_err(FileError::on("syncing", &path))?;
        slots.push(SlotState {
            id: slot.id(),
            gpa,
            size: slot.spec().size,
            kind: slot.spec().kind,
            flags: slot.flags() & !kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES,
            file: name,
            full,
            pages,
            stored_pages: stored,
        });
    }
    let config = vm.config();
    let state = SnapshotState {
        id: who.id,
        parent: who.parent,
        trace_id: who.trace_id,
        exit_seq: who.exit_seq,
        exits: m.exits(),
        interrupts: m.interrupts(),
        created_unix_ns: m.bus().clock.realtime_ns(),
        vm: VmState {
            mem_bytes: config.mem_bytes,
            cpuid: config.cpuid.name().to_string(),
            rom_size: config.rom_size,
        },
        slots,
        vcpus: vec![vcpu],
        bus,
        annotations: who.annotations.to_vec(),
    };
    let bytes = codec::frame(&codec::encode(&state)?);
    let path = dir.join(STATE_FILE);
    let f = File::create(&path).map_err(FileError::on("creating", &path))?;
    f.write_all_at(&bytes, 0).map_err(FileError::on("writing", &path))?;
    f.sync_all().map_err(FileError::on("syncing", &path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(FileError::on("syncing", dir))?;
    Ok((stats, changed))
}

/// After snapshot `who` was published in `dir`: the machine's memory now equals it. Its
/// origin becomes the parent's chain plus it (or it alone, when full), or unknown when
/// the parent is not the origin's newest snapshot. The slots' mappings are not the new
/// snapshot's files.
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

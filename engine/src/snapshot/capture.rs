//! Taking a snapshot of a paused machine.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::state::{SlotState, SnapshotState, VmState};
use super::{STATE_FILE, SnapshotError, codec, io_err};
use crate::kvm::memory::{Mapping, PAGE_SIZE, Slot, SlotKind};
use crate::kvm::vcpu_state::VcpuState;
use crate::machine::Machine;
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

const BUF_PAGES: u64 = 64;

fn is_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

/// Copies pages `[first, first + count)` of `slot` to `out` at their offsets, skipping zero
/// pages (they stay holes, which read as zero). Returns pages written.
fn copy_pages(
    m: &Machine,
    slot: &Slot,
    out: &File,
    path: &Path,
    first: u64,
    count: u64,
) -> Result<u64, SnapshotError> {
    let mut buf = vec![0u8; usize::try_from(BUF_PAGES * PAGE_SIZE).unwrap_or(0)];
    let mut written = 0;
    let mut p = first;
    let end = first + count;
    while p < end {
        let n = (end - p).min(BUF_PAGES);
        let len = usize::try_from(n * PAGE_SIZE).unwrap_or(0);
        let chunk = &mut buf[..len];
        m.vm.memory.read(slot.spec.gpa + p * PAGE_SIZE, chunk).ok_or_else(|| {
            SnapshotError::Unsupported(format!("slot {} page {p} is not readable", slot.id))
        })?;
        // Write maximal runs of non-zero pages.
        let pages: Vec<&[u8]> = chunk.chunks(usize::try_from(PAGE_SIZE).unwrap_or(4096)).collect();
        let mut i = 0;
        while i < pages.len() {
            if is_zero(pages[i]) {
                i += 1;
                continue;
            }
            let s = i;
            while i < pages.len() && !is_zero(pages[i]) {
                i += 1;
            }
            let from = s * pages[0].len();
            let to = i * pages[0].len();
            out.write_all_at(&chunk[from..to], (p + s as u64) * PAGE_SIZE)
                .map_err(io_err("writing", path))?;
            written += (i - s) as u64;
        }
        p += n;
    }
    Ok(written)
}

/// The pages of a slot that may hold data, as runs: the populated ranges of its memfd when
/// shared; every page of a private (restored) mapping.
fn populated_runs(slot: &Slot) -> Result<Vec<(u64, u64)>, SnapshotError> {
    if slot.mapping == Mapping::Private {
        return Ok(vec![(0, slot.pages())]);
    }
    let ranges = crate::sys::mapping::data_ranges(&slot.file, slot.spec.size)
        .map_err(io_err("finding populated ranges of", Path::new(&format!("slot {}", slot.id))))?;
    Ok(ranges
        .into_iter()
        .map(|(off, len)| {
            let first = off / PAGE_SIZE;
            let last = (off + len).div_ceil(PAGE_SIZE).min(slot.pages());
            (first, last - first)
        })
        .collect())
}

/// Takes snapshot `id` of `m` into the directory `dir` (normally `<root>/snap-<id>`, see
/// [`super::snapshot_dir`]; parents are found as its siblings): full when `parent` is
/// `None`, otherwise only the pages dirtied since the parent (requires dirty logging).
///
/// `exit_seq` is the last trace record before the snapshot; `trace_id` the trace it
/// belongs to; `annotations` describe the run.
///
/// # Errors
/// KVM, vCPU-state or file-system failures; the temporary directory is removed.
pub fn take(
    m: &mut Machine,
    dir: &Path,
    id: u64,
    parent: Option<u64>,
    trace_id: [u8; 16],
    exit_seq: Option<u64>,
    annotations: &[(String, String)],
) -> Result<CaptureStats, SnapshotError> {
    let started = Instant::now();
    if parent.is_some() && !m.vm.config.dirty_log {
        return Err(SnapshotError::Unsupported("incremental snapshots need dirty logging".into()));
    }
    m.complete_pending_io()
        .map_err(|source| SnapshotError::Kvm { what: "completing pending I/O", source })?;
    let final_dir = dir.to_path_buf();
    let root = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = final_dir.with_extension("tmp");
    std::fs::create_dir_all(root).map_err(io_err("creating", root))?;
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(io_err("creating", &tmp))?;
    let res = write_into(m, &tmp, id, parent, trace_id, exit_seq, annotations);
    let stats = match res {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(io_err("replacing", &final_dir))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(io_err("renaming", &tmp))?;
    File::open(root).and_then(|d| d.sync_all()).map_err(io_err("syncing", root))?;
    Ok(CaptureStats { pause: started.elapsed(), ..stats })
}

fn write_into(
    m: &mut Machine,
    dir: &Path,
    id: u64,
    parent: Option<u64>,
    trace_id: [u8; 16],
    exit_seq: Option<u64>,
    annotations: &[(String, String)],
) -> Result<CaptureStats, SnapshotError> {
    let mut stats = CaptureStats::default();
    let msrs = crate::kvm::vcpu_state::msr_list(&m.vm.kvm, &m.vm.vcpu, false)?;
    let vcpu = VcpuState::save(&m.vm.vcpu, &msrs)?;
    let now = m.bus.clock.now_ns();
    let bus = Persist::save(&m.bus, now);
    let mut slots = Vec::new();
    for slot in m.vm.memory.slots() {
        let name = format!("mem-{}.raw", slot.id);
        let path = dir.join(&name);
        let out = File::create(&path).map_err(io_err("creating", &path))?;
        out.set_len(slot.spec.size).map_err(io_err("sizing", &path))?;
        let logged = m.vm.config.dirty_log && slot.spec.kind == SlotKind::Ram;
        // Reading the dirty log also clears it: the next snapshot sees changes since this.
        let dirty = if logged { Some(super::take_dirty_log(&m.vm.fd, slot)?) } else { None };
        let (full, pages, runs) = match (parent, dirty) {
            (Some(_), Some(bitmap)) => {
                let runs = super::state::bitmap_runs(&bitmap, slot.pages());
                (false, bitmap, runs)
            }
            (Some(_), None) => {
                // ROM never changes: an incremental snapshot stores none of it.
                let words = usize::try_from(slot.pages().div_ceil(64)).unwrap_or(0);
                (false, vec![0u64; words], Vec::new())
            }
            (None, _) => (true, Vec::new(), populated_runs(slot)?),
        };
        let mut stored = 0;
        for (first, count) in runs {
            stats.pages_considered += count;
            stored += copy_pages(m, slot, &out, &path, first, count)?;
        }
        stats.pages_written += stored;
        out.sync_all().map_err(io_err("syncing", &path))?;
        slots.push(SlotState {
            id: slot.id,
            gpa: slot.spec.gpa,
            size: slot.spec.size,
            kind: slot.spec.kind,
            flags: slot.flags & !kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES,
            file: name,
            full,
            pages,
            stored_pages: stored,
        });
    }
    let state = SnapshotState {
        id,
        parent,
        trace_id,
        exit_seq,
        exits: m.exits(),
        interrupts: m.interrupts(),
        created_unix_ns: m.bus.clock.realtime_ns(),
        vm: VmState {
            mem_bytes: m.vm.config.mem_bytes,
            cpuid: m.vm.config.cpuid.name().to_string(),
            rom_size: m.vm.config.rom_size,
        },
        slots,
        vcpus: vec![vcpu],
        bus,
        annotations: annotations.to_vec(),
    };
    let bytes = codec::frame(&codec::encode(&state)?);
    let path = dir.join(STATE_FILE);
    let f = File::create(&path).map_err(io_err("creating", &path))?;
    f.write_all_at(&bytes, 0).map_err(io_err("writing", &path))?;
    f.sync_all().map_err(io_err("syncing", &path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("syncing", dir))?;
    Ok(stats)
}

//! Loading, validating, restoring, resetting and flattening snapshots.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::state::{SlotState, SnapshotState, bitmap_runs};
use super::{Loaded, STATE_FILE, SnapshotError, codec, io_err, snapshot_dir, take_dirty_log};
use crate::devices::bus::Bus;
use crate::devices::console::Console;
use crate::devices::state::BusArgs;
use crate::kvm::cpuid::CpuidProfile;
use crate::kvm::memory::{GuestMemory, Mapping, PAGE_SIZE, SlotSpec};
use crate::kvm::vm::{Shell, Vm, VmConfig};
use crate::machine::Machine;
use crate::persist::Persist;

/// Longest parent chain followed.
pub const MAX_CHAIN: usize = 4096;
/// Most copy-on-write overlays mapped when restoring a chain; beyond it, changed pages are
/// copied instead (the kernel limits mappings per process).
pub const MAX_OVERLAYS: usize = 16_384;

/// Reads and validates the snapshot in `dir`; `max_mem` caps the memory it may ask for.
///
/// # Errors
/// Damaged, hostile or unreadable state.
pub fn load(dir: &Path, max_mem: u64) -> Result<Loaded, SnapshotError> {
    let state: SnapshotState = codec::read(&dir.join(STATE_FILE))?;
    state.validate(max_mem).map_err(|e| SnapshotError::Invalid {
        path: dir.join(STATE_FILE).display().to_string(),
        reason: e.to_string(),
    })?;
    Ok(Loaded { dir: dir.to_path_buf(), state })
}

/// Loads `dir` and its parents (siblings `snap-<parent>`), oldest (full) first. Checks the
/// chain: same trace, same slot layout, no cycles, and every memory file present and at
/// least as large as its slot.
///
/// # Errors
/// As for [`load`], and chain or file problems.
pub fn load_chain(dir: &Path, max_mem: u64) -> Result<Vec<Loaded>, SnapshotError> {
    let root = dir.parent().unwrap_or(Path::new("."));
    let mut chain = vec![load(dir, max_mem)?];
    while let Some(parent) = chain.last().and_then(|l| l.state.parent) {
        let last = chain.last().map(|l| l.dir.join(STATE_FILE).display().to_string()).unwrap_or_default();
        let parent_at = chain.last().map(|l| l.state.parent_offset()).unwrap_or(0);
        if chain.len() >= MAX_CHAIN || chain.iter().any(|l| l.state.id == parent) {
            return Err(SnapshotError::Invalid {
                path: last,
                reason: format!("offset {parent_at:#x}: parent chain loops or exceeds {MAX_CHAIN}"),
            });
        }
        let p = load(&snapshot_dir(root, parent), max_mem)?;
        let child = chain.last().map(|l| &l.state);
        if let Some(c) = child {
            if c.trace_id != p.state.trace_id {
                return Err(SnapshotError::Invalid {
                    path: last,
                    reason: format!(
                        "offset {:#x}: parent {parent} belongs to another trace",
                        // trace_id follows id (u64) and parent (Option<u64>).
                        parent_at + 9
                    ),
                });
            }
            let layout =
                |s: &SnapshotState| s.slots.iter().map(|x| (x.id, x.gpa, x.size, x.kind)).collect::<Vec<_>>();
            if layout(c) != layout(&p.state) {
                return Err(SnapshotError::Invalid {
                    path: last,
                    reason: format!(
                        "offset {:#x}: slot layout differs from parent {parent}",
                        c.slots_offset()
                    ),
                });
            }
        }
        chain.push(p);
    }
    chain.reverse();
    for l in &chain {
        for s in &l.state.slots {
            let path = l.dir.join(&s.file);
            let md = std::fs::symlink_metadata(&path).map_err(io_err("opening", &path))?;
            if !md.file_type().is_file() {
                return Err(SnapshotError::Invalid {
                    path: path.display().to_string(),
                    reason: "offset 0x0: memory file is not a regular file".into(),
                });
            }
            if md.len() < s.size {
                return Err(SnapshotError::ShortFile {
                    path: path.display().to_string(),
                    len: md.len(),
                    need: s.size,
                });
            }
        }
    }
    Ok(chain)
}

fn open(path: &Path) -> Result<Arc<File>, SnapshotError> {
    File::open(path).map(Arc::new).map_err(io_err("opening", path))
}

/// Maps the chain's memory copy-on-write: each slot's base file, then each incremental's
/// changed runs over it.
fn build_memory(chain: &[Loaded]) -> Result<GuestMemory, SnapshotError> {
    let Some(base) = chain.first() else { return Err(SnapshotError::Unsupported("empty chain".into())) };
    let mut backed = Vec::new();
    for s in &base.state.slots {
        backed.push((
            SlotSpec { gpa: s.gpa, size: s.size, kind: s.kind },
            open(&base.dir.join(&s.file))?,
            Mapping::Private,
        ));
    }
    let mem = GuestMemory::from_backing(backed)?;
    overlay_chain(chain, &mem, false)?;
    Ok(mem)
}

/// Maps the chain over `mem`, whose slots are bound to the base snapshot's files: backs the
/// base files' holes with anonymous zero pages (or, with `remap_base`, maps the whole base
/// file when it has too many ranges for that; without it the base file must already be
/// mapped) and maps each incremental's changed runs on top.
fn overlay_chain(chain: &[Loaded], mem: &GuestMemory, remap_base: bool) -> Result<(), SnapshotError> {
    let Some(base) = chain.first() else { return Err(SnapshotError::Unsupported("empty chain".into())) };
    let mut overlays: usize =
        chain[1..].iter().flat_map(|l| l.state.slots.iter()).map(|s| s.runs().len()).sum();
    for (s, slot) in base.state.slots.iter().zip(mem.slots()) {
        let path = base.dir.join(&s.file);
        let added = map_holes_anonymous(&path, slot, MAX_OVERLAYS.saturating_sub(overlays))?;
        if added.is_none() && remap_base {
            // SAFETY: the range is exactly this slot's host mapping, owned by `mem`; the
            // caller holds the machine exclusively (no vCPU runs) and no Rust reference
            // into guest memory exists.
            unsafe { crate::sys::mapping::overlay_private(slot.host_addr(), slot.spec.size, &slot.file, 0) }
                .map_err(io_err("mapping", &path))?;
        }
        overlays += added.unwrap_or(0);
    }
    for l in &chain[1..] {
        for (i, s) in l.state.slots.iter().enumerate() {
            let path = l.dir.join(&s.file);
            let file = open(&path)?;
            let Some(slot) = mem.slots().get(i) else { continue };
            for (first, count) in s.runs() {
                let off = first * PAGE_SIZE;
                let len = count * PAGE_SIZE;
                if overlays <= MAX_OVERLAYS {
                    // SAFETY: `[host + off, host + off + len)` lies inside this slot's
                    // mapping (the run is within the slot's pages, validated against its
                    // size), which `mem` owns; no Rust reference into guest memory exists.
                    unsafe { crate::sys::mapping::overlay_private(slot.host_addr() + off, len, &file, off) }
                        .map_err(io_err("mapping", &path))?;
                } else {
                    copy_run(&file, &path, mem, s, first, count)?;
                }
            }
        }
    }
    Ok(())
}

/// Backs the holes of a base snapshot file with anonymous zero pages instead of the file:
/// the slot becomes private anonymous memory with the file's populated ranges mapped over
/// it. Reading a hole then costs nothing (the shared zero page) instead of a page-cache page
/// of zeros, and on a full tmpfs (where a read fault on a hole must allocate a page and
/// fails with SIGBUS, seen as `KVM_RUN` EFAULT) the guest still runs. Returns the mappings
/// added, or `None` (nothing done) when the file has more than `budget` populated ranges.
fn map_holes_anonymous(
    path: &Path,
    slot: &crate::kvm::memory::Slot,
    budget: usize,
) -> Result<Option<usize>, SnapshotError> {
    let ranges =
        crate::sys::mapping::data_ranges(&slot.file, slot.spec.size).map_err(io_err("scanning", path))?;
    if ranges.len() > budget {
        return Ok(None);
    }
    // SAFETY: the range is exactly this slot's mapping, owned by the guest memory; the
    // caller has exclusive use of it (memory being built, or a machine held by `&mut` whose
    // vCPU is not running) and no Rust reference into it exists.
    unsafe { crate::sys::mapping::anon_private(slot.host_addr(), slot.spec.size) }
        .map_err(io_err("mapping", path))?;
    let added = ranges.len();
    for (off, len) in ranges {
        let first = off / PAGE_SIZE * PAGE_SIZE;
        let end = (off + len).div_ceil(PAGE_SIZE).saturating_mul(PAGE_SIZE).min(slot.spec.size);
        // SAFETY: `[first, end)` is page-aligned and inside the slot's mapping (clamped to
        // its size), which the guest memory owns; no Rust reference into it exists.
        unsafe {
            crate::sys::mapping::overlay_private(slot.host_addr() + first, end - first, &slot.file, first)
        }
        .map_err(io_err("mapping", path))?;
    }
    Ok(Some(added))
}

fn copy_run(
    file: &File,
    path: &Path,
    mem: &GuestMemory,
    s: &SlotState,
    first: u64,
    count: u64,
) -> Result<(), SnapshotError> {
    let mut buf = vec![0u8; usize::try_from(64 * PAGE_SIZE).unwrap_or(0)];
    let mut p = first;
    while p < first + count {
        let n = (first + count - p).min(64);
        let b = &mut buf[..usize::try_from(n * PAGE_SIZE).unwrap_or(0)];
        file.read_exact_at(b, p * PAGE_SIZE).map_err(io_err("reading", path))?;
        mem.write(s.gpa + p * PAGE_SIZE, b).ok_or_else(|| {
            SnapshotError::Unsupported(format!("guest page {:#x} not writable", s.gpa + p * PAGE_SIZE))
        })?;
        p += n;
    }
    Ok(())
}

/// Restores the newest snapshot of `chain` into a new machine whose consoles are
/// `serial` and `debugcon`.
///
/// # Errors
/// KVM or state failures.
pub fn restore(
    chain: &[Loaded],
    serial: Console,
    debugcon: Console,
    dirty_log: bool,
) -> Result<Machine, SnapshotError> {
    restore_into(Shell::create()?, chain, serial, debugcon, dirty_log)
}

/// As [`restore`], into a [`Shell`] created ahead of time: what remains is mapping the
/// files, registering the slots, and setting vCPU and device state.
///
/// # Errors
/// KVM or state failures.
pub fn restore_into(
    shell: Shell,
    chain: &[Loaded],
    serial: Console,
    debugcon: Console,
    dirty_log: bool,
) -> Result<Machine, SnapshotError> {
    let Some(top) = chain.last() else { return Err(SnapshotError::Unsupported("empty chain".into())) };
    let st = &top.state;
    let memory = build_memory(chain)?;
    let config = VmConfig {
        mem_bytes: st.vm.mem_bytes,
        cpuid: CpuidProfile::parse(&st.vm.cpuid).unwrap_or_default(),
        dirty_log,
        rom_size: st.vm.rom_size,
    };
    let vm = Vm::from_shell(shell, config, memory, false)?;
    for v in &st.vcpus {
        v.restore(&vm.vcpu)?;
    }
    let bus = Bus::restore(BusArgs { serial: serial.clone(), debugcon: debugcon.clone() }, &st.bus, 0)?;
    let mut m = Machine::with_bus(vm, bus, serial, debugcon)
        .map_err(|e| SnapshotError::Unsupported(format!("machine: {e}")))?;
    m.set_counters(st.exits, st.interrupts);
    m.origin = Some(top.dir.clone());
    Ok(m)
}

/// Switches `m` to the newest snapshot of `chain` without touching KVM's memory slots: each
/// slot's host range is mapped copy-on-write from the chain's files at the same address
/// (`MAP_FIXED`), so the registered slots stay valid and KVM's MMU notifier drops the old
/// translations; then vCPU and device state are set. The cost is a few `mmap`s per slot and
/// the state ioctls, independent of guest memory size: this is the O(1) restore, for a host
/// that keeps a machine of the snapshot's layout (a replay or fuzzing worker). [`restore`]
/// instead creates the VM and registers its slots, which KVM does in time proportional to
/// memory on a shadow-paging host (see docs/PERFORMANCE.md).
///
/// The snapshot's slot layout must equal the machine's, and its CPUID the one the vCPU has
/// (KVM refuses a different CPUID once a vCPU has run); otherwise nothing is changed and
/// an error says why. The dirty log is cleared, so a later reset or incremental capture
/// sees only pages written after this call.
///
/// # Errors
/// Layout or CPUID mismatch, mapping failures, KVM or state failures. After a failure past
/// the layout check the machine's memory is undefined: drop it.
pub fn restore_over(m: &mut Machine, chain: &[Loaded]) -> Result<Duration, SnapshotError> {
    let t = Instant::now();
    let (Some(base), Some(top)) = (chain.first(), chain.last()) else {
        return Err(SnapshotError::Unsupported("empty chain".into()));
    };
    let have: Vec<SlotSpec> = m.vm.memory.slots().iter().map(|s| s.spec).collect();
    let want: Vec<SlotSpec> =
        base.state.slots.iter().map(|s| SlotSpec { gpa: s.gpa, size: s.size, kind: s.kind }).collect();
    if have != want || top.state.vcpus.len() != 1 {
        return Err(SnapshotError::Unsupported(format!(
            "snapshot {} has a different memory layout than the machine ({} slots vs {}); restore it into a new VM",
            top.dir.display(),
            want.len(),
            have.len()
        )));
    }
    if let Some(v) = top.state.vcpus.first() {
        v.validate()?;
        v.apply_cpuid(&m.vm.vcpu).map_err(|e| {
            SnapshotError::Unsupported(format!(
                "snapshot {} has another CPUID than the machine's vCPU, which KVM does not let change after a run ({e}); restore it into a new VM",
                top.dir.display()
            ))
        })?;
    }
    m.complete_pending_io()
        .map_err(|source| SnapshotError::Kvm { what: "completing pending I/O", source })?;
    let mut files = Vec::with_capacity(base.state.slots.len());
    for s in &base.state.slots {
        files.push(open(&base.dir.join(&s.file))?);
    }
    for (i, file) in files.into_iter().enumerate() {
        m.vm.memory.rebind(i, file);
    }
    // Every slot's whole range is mapped anew (MAP_FIXED at the registered address), once.
    overlay_chain(chain, &m.vm.memory, true)?;
    if m.vm.config.dirty_log {
        for slot in m.vm.memory.slots().iter().filter(|s| s.spec.kind == crate::kvm::memory::SlotKind::Ram) {
            // Reading the log clears it; its content (pages of the previous run) is moot.
            take_dirty_log(&m.vm.fd, slot)?;
        }
    }
    set_vcpu_and_devices(m, top)?;
    m.origin = Some(top.dir.clone());
    Ok(t.elapsed())
}

/// What an in-place reset did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResetStats {
    /// Pages dirtied since the snapshot (and reverted).
    pub dirty_pages: u64,
    /// Time taken.
    pub elapsed: Duration,
}

/// Returns `m` to the newest snapshot of `chain` in place: reverts only the pages dirtied
/// since (discarding private copies when `m` was restored from this snapshot, copying them
/// back otherwise), then vCPU and device state.
///
/// # Errors
/// The machine has no dirty logging, or a KVM/state failure.
pub fn reset(m: &mut Machine, chain: &[Loaded]) -> Result<ResetStats, SnapshotError> {
    let t = Instant::now();
    let Some(top) = chain.last() else { return Err(SnapshotError::Unsupported("empty chain".into())) };
    if !m.vm.config.dirty_log {
        return Err(SnapshotError::Unsupported("in-place reset needs dirty logging".into()));
    }
    let own = m.origin.as_deref() == Some(top.dir.as_path());
    let mut dirty_pages = 0;
    for (i, slot) in m.vm.memory.slots().iter().enumerate() {
        if slot.spec.kind != crate::kvm::memory::SlotKind::Ram {
            continue;
        }
        let bitmap = take_dirty_log(&m.vm.fd, slot)?;
        for (first, count) in bitmap_runs(&bitmap, slot.pages()) {
            dirty_pages += count;
            if own && slot.mapping == Mapping::Private {
                // SAFETY: the run lies inside this slot's private file mapping, owned by
                // the machine's guest memory; no Rust reference into it exists.
                unsafe {
                    crate::sys::mapping::discard_private(
                        slot.host_addr() + first * PAGE_SIZE,
                        count * PAGE_SIZE,
                    )
                }
                .map_err(io_err("discarding pages of", &top.dir))?;
            } else {
                for p in first..first + count {
                    let (l, s) = chain
                        .iter()
                        .rev()
                        .filter_map(|l| l.state.slots.get(i).map(|s| (l, s)))
                        .find(|(_, s)| s.has_page(p))
                        .ok_or_else(|| {
                            SnapshotError::Unsupported(format!("page {p} of slot {i} is in no snapshot"))
                        })?;
                    let path = l.dir.join(&s.file);
                    copy_run(&*open(&path)?, &path, &m.vm.memory, s, p, 1)?;
                }
            }
        }
    }
    set_vcpu_and_devices(m, top)?;
    Ok(ResetStats { dirty_pages, elapsed: t.elapsed() })
}

/// Sets `top`'s vCPU state (its CPUID is the vCPU's already), device state and exit
/// counters on a machine that keeps its VM: the last step of a reset or a restore over it.
fn set_vcpu_and_devices(m: &mut Machine, top: &Loaded) -> Result<(), SnapshotError> {
    for v in &top.state.vcpus {
        v.restore_with(&m.vm.vcpu, false)?;
    }
    m.bus =
        Bus::restore(BusArgs { serial: m.serial.clone(), debugcon: m.debugcon.clone() }, &top.state.bus, 0)?;
    m.set_counters(top.state.exits, top.state.interrupts);
    Ok(())
}

/// Writes the newest snapshot of `chain` as one full snapshot into `out` (a snapshot
/// directory): every page resolved through the chain, zero pages left as holes.
///
/// # Errors
/// File-system failures.
pub fn flatten(chain: &[Loaded], out: &Path) -> Result<(), SnapshotError> {
    let Some(top) = chain.last() else { return Err(SnapshotError::Unsupported("empty chain".into())) };
    let tmp = out.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io_err("creating", &tmp))?;
    let mut state = top.state.clone();
    state.parent = None;
    let zero = vec![0u8; usize::try_from(PAGE_SIZE).unwrap_or(4096)];
    for (i, s) in state.slots.iter_mut().enumerate() {
        let dst_path = tmp.join(&s.file);
        let dst = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&dst_path)
            .map_err(io_err("creating", &dst_path))?;
        dst.set_len(s.size).map_err(io_err("sizing", &dst_path))?;
        let mut page = vec![0u8; zero.len()];
        let mut stored = 0;
        for l in chain {
            let Some(src_slot) = l.state.slots.get(i) else { continue };
            let src_path = l.dir.join(&src_slot.file);
            let src = open(&src_path)?;
            let runs = if src_slot.full {
                crate::sys::mapping::data_ranges(&src, s.size)
                    .map_err(io_err("scanning", &src_path))?
                    .into_iter()
                    .map(|(o, n)| {
                        (o / PAGE_SIZE, (o + n).div_ceil(PAGE_SIZE).min(s.page_count()) - o / PAGE_SIZE)
                    })
                    .collect()
            } else {
                src_slot.runs()
            };
            for (first, count) in runs {
                for p in first..first + count {
                    src.read_exact_at(&mut page, p * PAGE_SIZE).map_err(io_err("reading", &src_path))?;
                    // A page changed to zero in a later snapshot must overwrite older data.
                    if page != zero || !src_slot.full {
                        dst.write_all_at(&page, p * PAGE_SIZE).map_err(io_err("writing", &dst_path))?;
                    }
                }
            }
        }
        // Count the non-zero pages of the result.
        let data = crate::sys::mapping::data_ranges(&dst, s.size).map_err(io_err("scanning", &dst_path))?;
        for (o, n) in data {
            let mut p = o / PAGE_SIZE;
            while p * PAGE_SIZE < o + n && p < s.page_count() {
                dst.read_exact_at(&mut page, p * PAGE_SIZE).map_err(io_err("reading", &dst_path))?;
                if page != zero {
                    stored += 1;
                }
                p += 1;
            }
        }
        dst.sync_all().map_err(io_err("syncing", &dst_path))?;
        s.full = true;
        s.pages = Vec::new();
        s.stored_pages = stored;
    }
    let bytes = codec::frame(&codec::encode(&state)?);
    let sp = tmp.join(STATE_FILE);
    std::fs::write(&sp, bytes).map_err(io_err("writing", &sp))?;
    File::open(&sp).and_then(|f| f.sync_all()).map_err(io_err("syncing", &sp))?;
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(io_err("replacing", out))?;
    }
    std::fs::rename(&tmp, out).map_err(io_err("renaming", &tmp))?;
    Ok(())
}

/// Folds snapshot `older` (full) into its child `newer` (incremental on it): the child's
/// changed pages are written into the older snapshot's files, its state made full, and the
/// result takes the child's directory. Afterwards `newer` is a full snapshot and `older` is
/// gone; grandchildren (whose parent is `newer`) stay valid. O(pages the child changed).
///
/// Used by the flight recorder to drop its oldest checkpoint without breaking the chain.
/// While it runs, the child's directory is the only one named for it: a crash leaves the
/// old child (whose parent is then missing, so it does not load) or the finished result.
///
/// # Errors
/// Not a full parent and its direct child, or file-system failures.
pub fn squash(older: &Path, newer: &Path) -> Result<(), SnapshotError> {
    let o = load(older, u64::MAX)?;
    let n = load(newer, u64::MAX)?;
    if o.state.parent.is_some() || n.state.parent != Some(o.state.id) {
        return Err(SnapshotError::Unsupported(format!(
            "snapshot {} is not the full parent of {}",
            o.state.id, n.state.id
        )));
    }
    let work = older.with_extension("squash");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::rename(older, &work).map_err(io_err("renaming", older))?;
    let mut state = n.state.clone();
    state.parent = None;
    for (s, os) in state.slots.iter_mut().zip(&o.state.slots) {
        let dst_path = work.join(&os.file);
        let dst =
            std::fs::OpenOptions::new().write(true).open(&dst_path).map_err(io_err("opening", &dst_path))?;
        let src_path = newer.join(&s.file);
        let src = open(&src_path)?;
        let mut buf = vec![0u8; usize::try_from(64 * PAGE_SIZE).unwrap_or(0)];
        for (first, count) in s.runs() {
            let mut p = first;
            while p < first + count {
                let k = (first + count - p).min(64);
                let b = &mut buf[..usize::try_from(k * PAGE_SIZE).unwrap_or(0)];
                src.read_exact_at(b, p * PAGE_SIZE).map_err(io_err("reading", &src_path))?;
                dst.write_all_at(b, p * PAGE_SIZE).map_err(io_err("writing", &dst_path))?;
                p += k;
            }
        }
        dst.sync_all().map_err(io_err("syncing", &dst_path))?;
        s.file = os.file.clone();
        s.full = true;
        s.pages = Vec::new();
        s.stored_pages = os.stored_pages.max(s.stored_pages);
    }
    let bytes = codec::frame(&codec::encode(&state)?);
    let tmp = work.join("state.bin.tmp");
    std::fs::write(&tmp, bytes).map_err(io_err("writing", &tmp))?;
    File::open(&tmp).and_then(|f| f.sync_all()).map_err(io_err("syncing", &tmp))?;
    std::fs::rename(&tmp, work.join(STATE_FILE)).map_err(io_err("renaming", &tmp))?;
    std::fs::remove_dir_all(newer).map_err(io_err("removing", newer))?;
    std::fs::rename(&work, newer).map_err(io_err("renaming", &work))?;
    if let Some(root) = newer.parent() {
        File::open(root).and_then(|d| d.sync_all()).map_err(io_err("syncing", root))?;
    }
    Ok(())
}

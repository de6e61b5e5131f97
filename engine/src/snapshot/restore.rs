//! Restoring snapshots: into a new VM, over a kept machine of the same layout, and in
//! place (back to the snapshot a machine came from, reverting only what it dirtied).

use std::time::{Duration, Instant};

use super::changed::{Changed, changed, is, origin_of, sources, take_written};
use super::error::RejectedField;
use super::overlay::{MAX_OVERLAYS, build_memory, copy_run, open, overlay_chain};
use super::{SnapshotError, StoredSnapshot};
use crate::devices::bus::Bus;
use crate::devices::console::Console;
use crate::devices::state::BusArgs;
use crate::kvm::cpuid::CpuidProfile;
use crate::kvm::irqchip::IrqchipKind;
use crate::kvm::memory::{Mapping, SlotSpec};
use crate::kvm::vcpu_state::VcpuStateError;
use crate::kvm::vm::{EmptyVm, Vm, VmConfig};
use crate::machine::Machine;
use crate::persist::Persist;

/// Restores the newest snapshot of `chain` into a new machine whose consoles are
/// `serial` and `debugcon`.
///
/// # Errors
/// KVM or state failures.
pub fn restore(
    chain: &[StoredSnapshot],
    serial: Console,
    debugcon: Console,
    dirty_log: bool,
) -> Result<Machine, SnapshotError> {
    let top = chain.last().ok_or(SnapshotError::EmptyChain)?;
    let vcpus = u32::try_from(top.state.vcpus.len()).unwrap_or(u32::MAX);
    host_allows(top)?;
    restore_into(EmptyVm::create_for(irqchip_of(top), vcpus)?, chain, serial, debugcon, dirty_log)
}

/// Refuses a snapshot with more vCPUs than this host's KVM creates, naming its state file
/// and field (a snapshot from a larger host, or a hostile one).
fn host_allows(top: &StoredSnapshot) -> Result<(), SnapshotError> {
    let Ok(kvm) = crate::kvm::system::open_kvm() else { return Ok(()) };
    let (n, max) = (top.state.vcpus.len(), kvm.get_max_vcpus());
    if n <= max {
        return Ok(());
    }
    Err(SnapshotError::Invalid {
        path: top.dir.join(vmrr_format::layout::STATE_FILE),
        error: crate::snapshot::state::InvalidState {
            offset: top.state.vcpu_offset(0).saturating_sub(8),
            reason: format!("field vcpus: {n} vCPUs, but this host's KVM creates at most {max}"),
        },
    })
}

/// Where a snapshot's machine has its interrupt controllers.
pub fn irqchip_of(s: &StoredSnapshot) -> IrqchipKind {
    if s.state.kernel_irqchip.is_some() { IrqchipKind::Kernel } else { IrqchipKind::User }
}

/// Sets the in-kernel irqchip's VM-wide state (PIC pair, IOAPIC, PIT, clock) from `top`,
/// when it has one.
fn restore_chip(vm: &Vm, top: &StoredSnapshot) -> Result<(), SnapshotError> {
    let Some(k) = &top.state.kernel_irqchip else { return Ok(()) };
    k.chip.restore(vm.fd()).map_err(|source| SnapshotError::Irqchip {
        path: top.dir.join(vmrr_format::layout::STATE_FILE),
        source,
    })
}

/// Vcpu `i`'s saved local APIC, when the snapshot has KVM's in-kernel irqchip.
/// Sets every vCPU of `vm` to `top`'s state, in index order (each AP's thread parked), the
/// saved CPUID too when `set_cpuid` (a new VM).
fn set_vcpus(vm: &Vm, top: &StoredSnapshot, set_cpuid: bool) -> Result<(), SnapshotError> {
    let saved = top.state.vcpus.len();
    if usize::try_from(vm.vcpu_count()).ok() != Some(saved) {
        return Err(SnapshotError::Vm(crate::kvm::CreateVmError::Vcpus(format!(
            "the snapshot holds {saved} vCPUs, the machine has {}",
            vm.vcpu_count()
        ))));
    }
    vm.each_vcpu(|i, fd| {
        let i = usize::try_from(i).unwrap_or(usize::MAX);
        match top.state.vcpus.get(i) {
            Some(v) => v.restore_with_lapic(fd, set_cpuid, lapic_of(top, i)).map_err(|e| refused(top, i, e)),
            None => Ok(()),
        }
    })
}

fn lapic_of(top: &StoredSnapshot, i: usize) -> Option<&[u8]> {
    top.state.kernel_irqchip.as_ref().and_then(|k| k.lapics.get(i)).map(Vec::as_slice)
}

/// The bus of `top`, its interrupt lines routed where the machine's irqchip is.
fn bus_of(top: &StoredSnapshot, serial: &Console, debugcon: &Console) -> Result<Bus, SnapshotError> {
    let args = BusArgs { serial: serial.clone(), debugcon: debugcon.clone() };
    let mut bus = Bus::restore(args, &top.state.bus, 0)?;
    if irqchip_of(top) == IrqchipKind::Kernel {
        bus.route_to_kernel();
    }
    Ok(bus)
}

/// As [`restore`], into an [`EmptyVm`] created ahead of time: what remains is mapping the
/// files, registering the slots, and setting vCPU and device state.
///
/// # Errors
/// KVM or state failures.
pub fn restore_into(
    empty: EmptyVm,
    chain: &[StoredSnapshot],
    serial: Console,
    debugcon: Console,
    dirty_log: bool,
) -> Result<Machine, SnapshotError> {
    let top = chain.last().ok_or(SnapshotError::EmptyChain)?;
    let st = &top.state;
    let (memory, done) = build_memory(chain)?;
    let config = VmConfig {
        mem_bytes: st.vm.mem_bytes,
        cpuid: CpuidProfile::parse(&st.vm.cpuid).unwrap_or_default(),
        dirty_log,
        rom_size: st.vm.rom_size,
        irqchip: irqchip_of(top),
        vcpus: u32::try_from(st.vcpus.len()).unwrap_or(u32::MAX),
        dirty_tracking: crate::kvm::dirty::DirtyTracking::Auto,
    };
    let vm = Vm::from_empty(empty, config, memory, false)?;
    restore_chip(&vm, top)?;
    set_vcpus(&vm, top, true)?;
    let bus = bus_of(top, &serial, &debugcon)?;
    let mut m = Machine::with_bus(vm, bus, serial, debugcon)?;
    m.set_counters(st.exits, st.interrupts);
    m.set_memory_origin(Some(origin_of(chain, !done.copied, done.overlays)));
    m.refresh_run_state()?;
    Ok(m)
}

/// What a restore over a kept machine did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreOverStats {
    /// Pages mapped anew from the snapshot's files (with `whole`, every page of every slot).
    pub pages: u64,
    /// Runs of pages mapped.
    pub runs: usize,
    /// Whether every slot was remapped whole (see [`restore_over`] for when).
    pub whole: bool,
    /// Time taken.
    pub elapsed: Duration,
}

/// How a restore over a kept machine chooses the pages it remaps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Remap {
    /// Only the pages that may differ, when the machine's memory origin tells which
    /// (else every page).
    #[default]
    Changed,
    /// Every page of every slot (the cost before differences were tracked: for
    /// comparison).
    Whole,
}

/// Switches `m` to the newest snapshot of `chain` without touching KVM's memory slots:
/// the snapshot's file pages are mapped copy-on-write over the slots' host ranges at the
/// same addresses (`MAP_FIXED`), so the registered slots stay valid and KVM's MMU notifier
/// drops the old translations; then vCPU and device state are set. For a host that keeps a
/// machine of the snapshot's layout (a replay, debugging or fuzzing worker).
///
/// Only the pages that may differ are remapped: those changed past the common ancestor
/// of the machine's memory origin (the chain it was last restored to, reset to or captured
/// as: [`Machine::memory_origin`]) and of `chain`, plus those written since (KVM's dirty
/// log and userspace writes). The cost follows those pages, not the guest's size. Every
/// slot is remapped whole instead when that set cannot be known (no origin, another full
/// snapshot, no dirty logging) or when the mappings it would add would pass
/// [`MAX_OVERLAYS`](super::MAX_OVERLAYS) since the last whole remap; and with
/// [`Remap::Whole`].
///
/// The snapshot's slot layout must equal the machine's, and its CPUID the one the vCPU has
/// (KVM refuses a different CPUID once a vCPU has run); otherwise nothing is changed and
/// an error says why. The dirty log is cleared, so a later reset or incremental capture
/// sees only pages written after this call.
///
/// # Errors
/// Layout or CPUID mismatch, mapping failures, KVM or state failures. After a failure past
/// the layout check the machine's memory is undefined: drop it.
pub fn restore_over(m: &mut Machine, chain: &[StoredSnapshot]) -> Result<RestoreOverStats, SnapshotError> {
    restore_over_with(m, chain, Remap::Changed)
}

/// [`restore_over`], choosing how pages are remapped.
///
/// # Errors
/// As for [`restore_over`].
pub fn restore_over_with(
    m: &mut Machine,
    chain: &[StoredSnapshot],
    how: Remap,
) -> Result<RestoreOverStats, SnapshotError> {
    let t = Instant::now();
    let (base, top) = same_layout(m, chain)?;
    if let Some(v) = top.state.vcpus.first() {
        v.validate()?;
        v.apply_cpuid(m.vm().vcpu())
            .map_err(|source| SnapshotError::Cpuid { dir: top.dir.clone(), source })?;
    }
    m.complete_pending_io()?;
    // Read (and cleared) whichever way the pages are remapped: a later reset or capture
    // must see only what is written after this restore.
    let written = take_written(m)?;
    let origin = m.memory_origin();
    let fits = |c: &Changed| origin.is_some_and(|o| o.overlays + c.run_count() <= MAX_OVERLAYS);
    let plan = match how {
        Remap::Changed => changed(origin, &written, chain).filter(fits),
        Remap::Whole => None,
    };
    let mut stats = RestoreOverStats::default();
    let new_origin = match (plan, origin) {
        (Some(c), Some(o)) => {
            for (i, runs) in c.runs.iter().enumerate() {
                let Some(slot) = m.memory().slots().get(i) else { continue };
                for (first, count, k) in sources(chain, i, runs)? {
                    let Some(l) = chain.get(k) else { continue };
                    let file = l.state.slots.get(i).map(|s| l.dir.join(&s.file)).unwrap_or_default();
                    slot.overlay_file(first, count, &*open(&file)?)?;
                    stats.runs += 1;
                    stats.pages += count;
                }
            }
            let (mapped, overlays) = (o.mapped, o.overlays + stats.runs);
            crate::machine::origin::Origin { links: c.links_from(o), mapped, overlays }
        }
        _ => {
            let mut files = Vec::with_capacity(base.state.slots.len());
            for s in &base.state.slots {
                files.push(open(&base.dir.join(&s.file))?);
            }
            for (i, file) in files.into_iter().enumerate() {
                m.vm_mut().memory_mut().rebind(i, file);
            }
            // Every slot's whole range is mapped anew (MAP_FIXED at the registered address), once.
            let done = overlay_chain(chain, m.memory(), true)?;
            stats.whole = true;
            stats.runs = done.overlays;
            stats.pages = m.memory().slots().iter().map(|s| s.pages()).sum();
            origin_of(chain, !done.copied, done.overlays)
        }
    };
    m.memory().clear_written();
    m.set_memory_origin(Some(new_origin));
    set_vcpu_and_devices(m, top)?;
    stats.elapsed = t.elapsed();
    Ok(stats)
}

/// The chain's oldest and newest snapshots, once checked to have `m`'s slot layout and
/// one vCPU.
///
/// # Errors
/// An empty chain, or another layout.
pub(crate) fn same_layout<'a>(
    m: &Machine,
    chain: &'a [StoredSnapshot],
) -> Result<(&'a StoredSnapshot, &'a StoredSnapshot), SnapshotError> {
    let (Some(base), Some(top)) = (chain.first(), chain.last()) else {
        return Err(SnapshotError::EmptyChain);
    };
    let have = m.memory().layout();
    let want: Vec<SlotSpec> = base
        .state
        .slots
        .iter()
        .map(|s| SlotSpec { gpa: vm_memory::GuestAddress(s.gpa), size: s.size, kind: s.kind })
        .collect();
    if have != want || top.state.vcpus.len() != 1 {
        return Err(SnapshotError::Layout {
            dir: top.dir.clone(),
            snapshot: want.len(),
            machine: have.len(),
        });
    }
    Ok((base, top))
}

/// A vCPU state KVM refused: `EINVAL` from a `KVM_SET_*` ioctl, or an MSR it does not
/// take, means the state holds a value no vCPU can have (invalid input, naming the state
/// file and the field); anything else is KVM failing.
fn refused(top: &StoredSnapshot, i: usize, e: VcpuStateError) -> SnapshotError {
    const FIELDS: &[(&str, &str)] = &[
        ("KVM_SET_CPUID2", "cpuid"),
        ("KVM_SET_MP_STATE", "mp_state"),
        ("KVM_SET_REGS", "regs"),
        ("KVM_SET_SREGS", "sregs"),
        ("KVM_SET_FPU", "fpu"),
        ("KVM_SET_XSAVE", "xsave"),
        ("KVM_SET_XCRS", "xcrs"),
        ("KVM_SET_DEBUGREGS", "debugregs"),
        ("KVM_SET_MSRS", "msrs"),
        ("KVM_SET_VCPU_EVENTS", "events"),
    ];
    let path = top.dir.join(vmrr_format::layout::STATE_FILE);
    let st = &top.state;
    match &e {
        VcpuStateError::Kvm(k) if k.source.errno() == libc::EINVAL => {
            let Some(&(ioctl, field)) = FIELDS.iter().find(|(n, _)| *n == k.what) else {
                return SnapshotError::Vcpu(e);
            };
            let offset = st.vcpu_field_offset(i, field);
            SnapshotError::Rejected(Box::new(RejectedField {
                path,
                offset,
                vcpu: i,
                field: field.into(),
                ioctl,
                source: e,
            }))
        }
        VcpuStateError::Msr { set, .. } => {
            // The list's length word and the entries before it encode as a shorter list.
            let before = st
                .vcpus
                .get(i)
                .map_or(0, |v| super::codec::encoded_len(&v.msrs.get(..*set).unwrap_or_default()));
            let offset = st.vcpu_field_offset(i, "msrs") + before;
            SnapshotError::Rejected(Box::new(RejectedField {
                path,
                offset,
                vcpu: i,
                field: format!("msrs[{set}]"),
                ioctl: "KVM_SET_MSRS",
                source: e,
            }))
        }
        _ => SnapshotError::Vcpu(e),
    }
}

/// What an in-place reset did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResetStats {
    /// Pages dirtied since the snapshot (and reverted).
    pub dirty_pages: u64,
    /// Time taken.
    pub elapsed: Duration,
}

/// Returns `m` to the newest snapshot of `chain` in place, touching only the pages that
/// differ: those written since its memory last equalled its origin (KVM's dirty log and
/// userspace writes) and, when the origin is another snapshot of the same chain family,
/// those changed past their common ancestor (as for [`restore_over`]). Where the pages'
/// underlying mapping is already the snapshot's (the machine was restored from or over it
/// and nothing was captured since), their private copies are discarded; otherwise the
/// snapshot's bytes are copied back. Then vCPU and device state.
///
/// Without a known origin, the machine is taken to have come from `chain`'s newest
/// snapshot and only the pages written since are reverted.
///
/// # Errors
/// The machine has no dirty logging, or a KVM/state failure.
pub fn reset(m: &mut Machine, chain: &[StoredSnapshot]) -> Result<ResetStats, SnapshotError> {
    let t = Instant::now();
    let top = chain.last().ok_or(SnapshotError::EmptyChain)?;
    if !m.vm().config().dirty_log {
        return Err(SnapshotError::NoDirtyLog { what: "an in-place reset" });
    }
    let written = take_written(m)?;
    let origin = m.memory_origin();
    let plan = changed(origin, &written, chain);
    let Some(o) = origin else {
        // No known origin: the machine came from `chain`'s newest snapshot (the caller's
        // word), so what was written since is what differs.
        let runs: Vec<Vec<(u64, u64)>> = written.into_iter().map(Option::unwrap_or_default).collect();
        let dirty_pages = revert(m, chain, &runs, false)?;
        m.set_memory_origin(Some(origin_of(chain, false, 0)));
        set_vcpu_and_devices(m, top)?;
        return Ok(ResetStats { dirty_pages, elapsed: t.elapsed() });
    };
    let Some(c) = plan else {
        // Memory from another full snapshot: nothing in common to keep.
        let s = restore_over_with(m, chain, Remap::Whole)?;
        return Ok(ResetStats { dirty_pages: s.pages, elapsed: t.elapsed() });
    };
    let own = o.mapped && o.top().is_some_and(|l| is(l, top));
    let overlays = o.overlays;
    let Changed { runs, links } = c;
    let dirty_pages = revert(m, chain, &runs, own)?;
    if let Some(links) = links {
        // Another snapshot than the origin: pages copied from it lie over the origin's
        // mapping, which a later discard would reveal.
        m.set_memory_origin(Some(crate::machine::origin::Origin { links, mapped: own, overlays }));
    }
    reset_vcpu_and_devices(m, top)?;
    Ok(ResetStats { dirty_pages, elapsed: t.elapsed() })
}

/// Sets pages `runs` (per slot) of `m` to `chain`'s newest bytes: discarding their private
/// copies when `own` (the underlying mapping holds those bytes), else copying from the
/// snapshot files. Returns the pages reverted.
fn revert(
    m: &Machine,
    chain: &[StoredSnapshot],
    runs: &[Vec<(u64, u64)>],
    own: bool,
) -> Result<u64, SnapshotError> {
    let mut pages = 0;
    for (i, slot_runs) in runs.iter().enumerate() {
        let Some(slot) = m.memory().slots().get(i) else { continue };
        pages += slot_runs.iter().map(|r| r.1).sum::<u64>();
        if own && slot.mapping() == Mapping::Private {
            for &(first, count) in slot_runs {
                slot.discard(first, count)?;
            }
            continue;
        }
        for (first, count, k) in sources(chain, i, slot_runs)? {
            let Some((l, s)) = chain.get(k).and_then(|l| l.state.slots.get(i).map(|s| (l, s))) else {
                continue;
            };
            let path = l.dir.join(&s.file);
            copy_run(&*open(&path)?, &path, m.memory(), s, first, count)?;
        }
    }
    m.memory().clear_written();
    Ok(pages)
}

/// As [`set_vcpu_and_devices`] for a reset, whose state KVM took before: the general
/// registers and events go through `kvm_run`'s synced registers, applied by the
/// `KVM_RUN` that refreshes the run state, two ioctls fewer. Where KVM did not apply them
/// (the bits still set after that run), they are set by ioctl.
fn reset_vcpu_and_devices(m: &mut Machine, top: &StoredSnapshot) -> Result<(), SnapshotError> {
    let [v] = top.state.vcpus.as_slice() else { return set_vcpu_and_devices(m, top) };
    if top.state.kernel_irqchip.is_some() || !m.cpu_mut().stage_synced(&v.regs, &v.events) {
        return set_vcpu_and_devices(m, top);
    }
    v.restore_unsynced(m.vm().vcpu()).map_err(|e| refused(top, 0, e))?;
    let args = BusArgs { serial: m.serial().clone(), debugcon: m.debugcon().clone() };
    m.set_bus(Bus::restore(args, &top.state.bus, 0)?);
    m.set_counters(top.state.exits, top.state.interrupts);
    m.refresh_run_state()?;
    if m.cpu_mut().synced_pending() {
        return set_vcpu_and_devices(m, top);
    }
    Ok(())
}

/// Sets `top`'s vCPU state (its CPUID is the vCPU's already), device state and exit
/// counters on a machine that keeps its VM: the last step of a reset or a restore over it.
fn set_vcpu_and_devices(m: &mut Machine, top: &StoredSnapshot) -> Result<(), SnapshotError> {
    if irqchip_of(top) != m.vm().irqchip() {
        return Err(SnapshotError::Vm(crate::kvm::CreateVmError::Irqchip {
            wanted: irqchip_of(top),
            created: m.vm().irqchip(),
        }));
    }
    restore_chip(m.vm(), top)?;
    set_vcpus(m.vm(), top, false)?;
    m.set_bus(bus_of(top, m.serial(), m.debugcon())?);
    m.set_counters(top.state.exits, top.state.interrupts);
    m.refresh_run_state()?;
    Ok(())
}

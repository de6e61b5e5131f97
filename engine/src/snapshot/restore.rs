//! Restoring snapshots: into a new VM, over a kept machine of the same layout, and in
//! place (back to the snapshot a machine came from, reverting only what it dirtied).

use std::time::{Duration, Instant};

use super::error::RejectedField;
use super::overlay::{build_memory, copy_run, open, overlay_chain};
use super::pages::bitmap_runs;
use super::{SnapshotError, StoredSnapshot, take_dirty_log};
use crate::devices::bus::Bus;
use crate::devices::console::Console;
use crate::devices::state::BusArgs;
use crate::kvm::cpuid::CpuidProfile;
use crate::kvm::memory::{Mapping, SlotKind, SlotSpec};
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
    restore_into(EmptyVm::create()?, chain, serial, debugcon, dirty_log)
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
    let memory = build_memory(chain)?;
    let config = VmConfig {
        mem_bytes: st.vm.mem_bytes,
        cpuid: CpuidProfile::parse(&st.vm.cpuid).unwrap_or_default(),
        dirty_log,
        rom_size: st.vm.rom_size,
    };
    let vm = Vm::from_empty(empty, config, memory, false)?;
    for (i, v) in st.vcpus.iter().enumerate() {
        v.restore(vm.vcpu()).map_err(|e| refused(top, i, e))?;
    }
    let bus = Bus::restore(BusArgs { serial: serial.clone(), debugcon: debugcon.clone() }, &st.bus, 0)?;
    let mut m = Machine::with_bus(vm, bus, serial, debugcon)?;
    m.set_counters(st.exits, st.interrupts);
    m.set_origin(&top.dir);
    m.refresh_run_state()?;
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
pub fn restore_over(m: &mut Machine, chain: &[StoredSnapshot]) -> Result<Duration, SnapshotError> {
    let t = Instant::now();
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
    if let Some(v) = top.state.vcpus.first() {
        v.validate()?;
        v.apply_cpuid(m.vm().vcpu())
            .map_err(|source| SnapshotError::Cpuid { dir: top.dir.clone(), source })?;
    }
    m.complete_pending_io()?;
    let mut files = Vec::with_capacity(base.state.slots.len());
    for s in &base.state.slots {
        files.push(open(&base.dir.join(&s.file))?);
    }
    for (i, file) in files.into_iter().enumerate() {
        m.vm_mut().memory_mut().rebind(i, file);
    }
    // Every slot's whole range is mapped anew (MAP_FIXED at the registered address), once.
    overlay_chain(chain, m.memory(), true)?;
    if m.vm().config().dirty_log {
        for slot in m.memory().slots().iter().filter(|s| s.spec().kind == SlotKind::Ram) {
            // Reading the log clears it; its content (pages of the previous run) is moot.
            take_dirty_log(m.vm().fd(), slot)?;
        }
    }
    set_vcpu_and_devices(m, top)?;
    m.set_origin(&top.dir);
    Ok(t.elapsed())
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

/// Returns `m` to the newest snapshot of `chain` in place: reverts only the pages dirtied
/// since (discarding private copies when `m` was restored from this snapshot, copying them
/// back otherwise), then vCPU and device state.
///
/// # Errors
/// The machine has no dirty logging, or a KVM/state failure.
pub fn reset(m: &mut Machine, chain: &[StoredSnapshot]) -> Result<ResetStats, SnapshotError> {
    let t = Instant::now();
    let top = chain.last().ok_or(SnapshotError::EmptyChain)?;
    if !m.vm().config().dirty_log {
        return Err(SnapshotError::NoDirtyLog { what: "an in-place reset" });
    }
    let own = m.origin() == Some(top.dir.as_path());
    let mut dirty_pages = 0;
    for (i, slot) in m.memory().slots().iter().enumerate() {
        if slot.spec().kind != SlotKind::Ram {
            continue;
        }
        let bitmap = take_dirty_log(m.vm().fd(), slot)?;
        for (first, count) in bitmap_runs(&bitmap, slot.pages()) {
            dirty_pages += count;
            if own && slot.mapping() == Mapping::Private {
                slot.discard(first, count)?;
                continue;
            }
            for p in first..first + count {
                let (l, s) = chain
                    .iter()
                    .rev()
                    .filter_map(|l| l.state.slots.get(i).map(|s| (l, s)))
                    .find(|(_, s)| s.has_page(p))
                    .ok_or(SnapshotError::PageMissing { slot: i, page: p })?;
                let path = l.dir.join(&s.file);
                copy_run(&*open(&path)?, &path, m.memory(), s, p, 1)?;
            }
        }
    }
    set_vcpu_and_devices(m, top)?;
    Ok(ResetStats { dirty_pages, elapsed: t.elapsed() })
}

/// Sets `top`'s vCPU state (its CPUID is the vCPU's already), device state and exit
/// counters on a machine that keeps its VM: the last step of a reset or a restore over it.
fn set_vcpu_and_devices(m: &mut Machine, top: &StoredSnapshot) -> Result<(), SnapshotError> {
    for (i, v) in top.state.vcpus.iter().enumerate() {
        v.restore_with(m.vm().vcpu(), false).map_err(|e| refused(top, i, e))?;
    }
    let args = BusArgs { serial: m.serial().clone(), debugcon: m.debugcon().clone() };
    m.set_bus(Bus::restore(args, &top.state.bus, 0)?);
    m.set_counters(top.state.exits, top.state.interrupts);
    m.refresh_run_state()?;
    Ok(())
}

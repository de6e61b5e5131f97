//! Whether a machine equals a snapshot: its memory pages, its vCPU state and its devices'
//! state. A segmented replay checks this where one segment ends and the next begins: a
//! replay from checkpoint k that reaches checkpoint k+1's position must have rebuilt
//! exactly what the recording saved there, or the next segment, which starts from the
//! saved state, would not continue the same run.
//!
//! Memory is compared where it can differ, not page by page over the whole guest: the
//! machine's memory equals its origin chain apart from the pages written since (KVM's
//! dirty log and the userspace-written pages), and the target chain shares its oldest
//! snapshots with that origin; so only the pages either chain changed past their common
//! ancestor, and the pages written since, can differ (see `changed`). Every other page is
//! the same file page on both sides. When that cannot be known (no origin, no dirty log),
//! every page is compared.
//!
//! What the trace does not determine is left out, and only that: the host clock's share
//! of the vCPU (the TSC MSRs, which KVM advances with the host's time) and of the devices
//! (a timer's or the PIT's deadline and start times, and the ticks a timer counted while
//! recording: in replay the trace, not the timer, raises interrupts).

use std::os::unix::fs::FileExt;

use super::changed::{Runs, changed, origin_of, sources, take_written};
use super::{SnapshotError, StoredSnapshot};
use crate::devices::bus::BusState;
use crate::devices::state::DeviceState;
use crate::kvm::vcpu_state::VcpuState;
use crate::machine::Machine;
use crate::machine::origin::Origin;
use crate::page::PAGE_SIZE;
use crate::persist::Persist;

/// MSRs whose values follow the host's clock, not the guest: IA32_TSC, IA32_TSC_ADJUST,
/// MPERF, APERF and IA32_TSC_DEADLINE.
pub const CLOCK_MSRS: [u32; 5] = [0x10, 0x3b, 0xe7, 0xe8, 0x6e0];

/// Differing pages listed by address, at most.
const LISTED_PAGES: usize = 8;

/// Pages read at once while comparing a run.
const BATCH_PAGES: u64 = 64;

/// What differs between a machine and a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateDiff {
    /// Pages compared byte for byte.
    pub pages_compared: u64,
    /// Pages that differ.
    pub pages_differing: u64,
    /// Guest-physical addresses of the first pages that differ (at most 8).
    pub first_pages: Vec<u64>,
    /// Whether every page was compared (the pages that could differ were not known).
    pub whole: bool,
    /// vCPU fields that differ, each as `field: machine X, snapshot Y`.
    pub vcpu: Vec<String>,
    /// Devices whose state differs, each as `device: what`.
    pub devices: Vec<String>,
}

impl StateDiff {
    /// Whether the machine equals the snapshot.
    pub fn equal(&self) -> bool {
        self.pages_differing == 0 && self.vcpu.is_empty() && self.devices.is_empty()
    }

    /// The differences in one line (`3 pages (first at 0x1000, 0x2000), vCPU regs.rax:
    /// machine 0x1, snapshot 0x2`); empty when equal.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if self.pages_differing > 0 {
            let at: Vec<String> = self.first_pages.iter().map(|a| format!("{a:#x}")).collect();
            parts.push(format!(
                "{} page{} (first at {})",
                self.pages_differing,
                if self.pages_differing == 1 { "" } else { "s" },
                at.join(", ")
            ));
        }
        if !self.vcpu.is_empty() {
            parts.push(format!("vCPU {}", self.vcpu.join("; ")));
        }
        if !self.devices.is_empty() {
            parts.push(format!("devices {}", self.devices.join("; ")));
        }
        parts.join(", ")
    }
}

/// Compares `m` with the newest snapshot of `chain`. Pending I/O is completed first (as a
/// capture does). When they are equal, the machine's memory origin becomes `chain`, so
/// the next comparison (or restore over it) again looks only at what changed; otherwise
/// it becomes unknown.
///
/// # Errors
/// The snapshot's slot layout or vCPU count differs from the machine's, a snapshot file
/// cannot be read, or KVM failed.
pub fn compare(m: &mut Machine, chain: &[StoredSnapshot]) -> Result<StateDiff, SnapshotError> {
    let (_, top) = super::restore::same_layout(m, chain)?;
    m.complete_pending_io()?;
    let mut diff = StateDiff::default();
    let written = take_written(m)?;
    let plan = changed(m.memory_origin(), &written, chain);
    diff.whole = plan.is_none();
    let runs: Vec<Runs> = match &plan {
        Some(c) => c.runs.clone(),
        None => m.memory().slots().iter().map(|s| vec![(0, s.pages())]).collect(),
    };
    for (i, runs) in runs.iter().enumerate() {
        compare_slot(m, chain, i, runs, &mut diff)?;
    }
    let overlays = m.memory_origin().map_or(super::MAX_OVERLAYS, |o| o.overlays);
    let origin = match (diff.pages_differing, plan, m.memory_origin()) {
        (0, Some(c), Some(o)) => {
            let links = c.links_from(o);
            Some(Origin { links, mapped: false, overlays })
        }
        (0, _, _) => Some(origin_of(chain, false, overlays)),
        _ => None,
    };
    m.set_memory_origin(origin);
    let vm = m.vm();
    let msrs = crate::kvm::vcpu_state::msr_list(vm.kvm(), vm.vcpu(), false)?;
    let live = VcpuState::save(vm.vcpu(), &msrs)?;
    if let Some(saved) = top.state.vcpus.first() {
        diff.vcpu = vcpu_differences(&live, saved);
    }
    let saved = {
        let b = m.bus();
        let now = b.clock().now_ns();
        Persist::save(&*b, now)
    };
    diff.devices = device_differences(&saved, &top.state.bus);
    Ok(diff)
}

/// Compares the pages `runs` of slot `i` with the chain's bytes for them.
fn compare_slot(
    m: &Machine,
    chain: &[StoredSnapshot],
    i: usize,
    runs: &[(u64, u64)],
    diff: &mut StateDiff,
) -> Result<(), SnapshotError> {
    let Some(slot) = m.memory().slots().get(i) else { return Ok(()) };
    let gpa = slot.spec().gpa.0;
    let page = usize::try_from(PAGE_SIZE).unwrap_or(4096);
    let mut theirs = Vec::new();
    let mut ours = Vec::new();
    for (first, count, k) in sources(chain, i, runs)? {
        let Some(l) = chain.get(k) else { continue };
        let Some(s) = l.state.slots.get(i) else { continue };
        let path = l.dir.join(&s.file);
        let file = super::overlay::open(&path)?;
        let mut p = first;
        while p < first + count {
            let n = (first + count - p).min(BATCH_PAGES);
            let len = usize::try_from(n).unwrap_or(1) * page;
            theirs.resize(len, 0);
            ours.resize(len, 0);
            file.read_exact_at(&mut theirs, p * PAGE_SIZE)
                .map_err(vmrr_format::FileError::on("reading", &path))?;
            m.read_phys(gpa + p * PAGE_SIZE, &mut ours)
                .map_err(|_| SnapshotError::PageMissing { slot: i, page: p })?;
            for (j, (a, b)) in ours.chunks(page).zip(theirs.chunks(page)).enumerate() {
                if a != b {
                    diff.pages_differing += 1;
                    if diff.first_pages.len() < LISTED_PAGES {
                        diff.first_pages.push(gpa + (p + j as u64) * PAGE_SIZE);
                    }
                }
            }
            diff.pages_compared += n;
            p += n;
        }
    }
    Ok(())
}

/// The fields of `live` that differ from `saved`, clock MSRs left out.
fn vcpu_differences(live: &VcpuState, saved: &VcpuState) -> Vec<String> {
    let mut out = Vec::new();
    let (a, b) = (&live.regs, &saved.regs);
    let regs = [
        ("rax", a.rax, b.rax),
        ("rbx", a.rbx, b.rbx),
        ("rcx", a.rcx, b.rcx),
        ("rdx", a.rdx, b.rdx),
        ("rsi", a.rsi, b.rsi),
        ("rdi", a.rdi, b.rdi),
        ("rsp", a.rsp, b.rsp),
        ("rbp", a.rbp, b.rbp),
        ("r8", a.r8, b.r8),
        ("r9", a.r9, b.r9),
        ("r10", a.r10, b.r10),
        ("r11", a.r11, b.r11),
        ("r12", a.r12, b.r12),
        ("r13", a.r13, b.r13),
        ("r14", a.r14, b.r14),
        ("r15", a.r15, b.r15),
        ("rip", a.rip, b.rip),
        ("rflags", a.rflags, b.rflags),
    ];
    differing(&mut out, "regs", &regs);
    let (s, t) = (&live.sregs, &saved.sregs);
    let sregs = [
        ("cr0", s.cr0, t.cr0),
        ("cr2", s.cr2, t.cr2),
        ("cr3", s.cr3, t.cr3),
        ("cr4", s.cr4, t.cr4),
        ("cr8", s.cr8, t.cr8),
        ("efer", s.efer, t.efer),
        ("apic_base", s.apic_base, t.apic_base),
    ];
    differing(&mut out, "sregs", &sregs);
    let same = |x: &dyn erased::Encode, y: &dyn erased::Encode| x.bytes() == y.bytes();
    if !same(&s, &t) && !out.iter().any(|l| l.starts_with("sregs.")) {
        out.push("sregs: segment or descriptor-table registers".into());
    }
    if live.fpu != saved.fpu {
        out.push("fpu".into());
    }
    // As architectural state: a component in its initial configuration may or may not be
    // marked so, depending on the host's task switches (kvm::xsave).
    for component in crate::kvm::xsave::differing_components(&live.xsave, &saved.xsave, &saved.cpuid) {
        out.push(format!("xsave: {component}"));
    }
    for (name, x, y) in [
        ("xcrs", &live.xcrs as &dyn erased::Encode, &saved.xcrs as &dyn erased::Encode),
        ("events", &live.events, &saved.events),
        ("mp_state", &live.mp_state, &saved.mp_state),
        ("debugregs", &live.debugregs, &saved.debugregs),
    ] {
        if !same(x, y) {
            out.push(name.into());
        }
    }
    let value = |list: &[kvm_bindings::kvm_msr_entry], index: u32| {
        list.iter().find(|e| e.index == index).map(|e| e.data)
    };
    let mut indices: Vec<u32> = live.msrs.iter().chain(&saved.msrs).map(|e| e.index).collect();
    indices.sort_unstable();
    indices.dedup();
    for index in indices.into_iter().filter(|i| !CLOCK_MSRS.contains(i)) {
        let (x, y) = (value(&live.msrs, index), value(&saved.msrs, index));
        if x != y {
            let show = |v: Option<u64>| v.map_or_else(|| "absent".to_string(), |v| format!("{v:#x}"));
            out.push(format!("msr {index:#x}: machine {}, snapshot {}", show(x), show(y)));
        }
    }
    out
}

/// Adds `group.name: machine X, snapshot Y` to `out` for each field that differs.
fn differing(out: &mut Vec<String>, group: &str, fields: &[(&str, u64, u64)]) {
    for (name, x, y) in fields {
        if x != y {
            out.push(format!("{group}.{name}: machine {x:#x}, snapshot {y:#x}"));
        }
    }
}

/// Byte images of kvm structs for comparison (they lack `PartialEq`), through the snapshot
/// codec that stores them.
mod erased {
    /// A value with a byte image.
    pub trait Encode {
        /// Its encoding (`None` when it cannot be encoded, which compares unequal to any).
        fn bytes(&self) -> Option<Vec<u8>>;
    }
    impl<T: serde::Serialize> Encode for T {
        fn bytes(&self) -> Option<Vec<u8>> {
            crate::snapshot::codec::encode(self).ok()
        }
    }
}

/// `d` without what follows the host clock.
fn without_clock(d: &DeviceState) -> DeviceState {
    match d {
        DeviceState::Timer(t) => {
            let mut t = *t;
            t.deadline = t.deadline.map(|_| 0);
            t.ticks = 0;
            DeviceState::Timer(t)
        }
        DeviceState::Pit(p) => {
            let mut p = *p;
            for c in &mut p.channels {
                c.start_ns = c.start_ns.map(|_| 0);
            }
            p.irq0_at = p.irq0_at.map(|_| 0);
            DeviceState::Pit(p)
        }
        other => other.clone(),
    }
}

/// The devices of `live` whose state differs from `saved`.
fn device_differences(live: &BusState, saved: &BusState) -> Vec<String> {
    let mut out = Vec::new();
    if live.devices.len() != saved.devices.len() {
        out.push(format!("bus: machine {} devices, snapshot {}", live.devices.len(), saved.devices.len()));
        return out;
    }
    for (a, b) in live.devices.iter().zip(&saved.devices) {
        if a.pio != b.pio || a.mmio != b.mmio {
            out.push(format!("{}: placement", a.state.kind()));
        } else if without_clock(&a.state) != without_clock(&b.state) {
            out.push(format!("{}: {:?}, snapshot {:?}", a.state.kind(), a.state, b.state));
        }
    }
    if live.pending_vectors != saved.pending_vectors {
        out.push(format!(
            "pending vectors: machine {:x?}, snapshot {:x?}",
            live.pending_vectors, saved.pending_vectors
        ));
    }
    if live.pic != saved.pic {
        out.push("8259 pair".into());
    }
    out
}

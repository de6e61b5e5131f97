//! Background checkpoints on real KVM: the guest rewrites every page a checkpoint stores
//! right after the pause, and the snapshots must still equal those a stopped-world capture
//! takes of the same run: memory as a restore sees it, byte for byte; every part of the
//! vCPU state (general, segment and control registers, FPU, XSAVE, XCRs, MSRs, pending
//! events, MP state, debug registers, CPUID, TSC rate; the TSC MSR aside, which is the
//! host's clock at each capture and only has to move forward); the devices' state; slot
//! layout; and page sets (the background set within the stopped-world one). Over the
//! budget the writing vCPU waits and the snapshot stays exact; a capture that never
//! finishes leaves no snapshot that claims to be complete.

use std::path::Path;

use vmrr_engine::checkpoint::{CaptureMode, Checkpointer, Policy};
use vmrr_engine::devices::console::Console;
use vmrr_engine::machine::{Limits, Machine};
use vmrr_engine::session::{GuestSpec, SessionConfig};
use vmrr_engine::snapshot::{self, codec, snapshot_dir};
use vmrr_engine::testing::require_kvm;

const MEM: u64 = 64 << 20;
/// Pages the guest rewrites every round (1 MiB).
const WINDOW: u64 = 256;
const EVERY: u64 = 4;
const EXITS: u64 = 30;

fn machine() -> Machine {
    SessionConfig {
        guest: GuestSpec::Builtin { name: "rewrite-window".into(), iterations: Some(WINDOW) },
        mem_bytes: MEM,
        cpuid: Default::default(),
        limits: Limits { max_exits: Some(EXITS), max_duration: None },
        dirty_log: true,
        vcpus: 1,
        irqchip: None,
    }
    .build(Console::capture_only(), Console::capture_only())
    .expect("machine")
}

/// Runs the guest to `EXITS` exits with a checkpoint every `EVERY`, captured as `mode`.
fn run(root: &Path, mode: CaptureMode, defer: bool) -> Checkpointer {
    let mut m = machine();
    let mut cp = Checkpointer::new(
        root.to_path_buf(),
        Policy { every_exits: Some(EVERY), interval: None },
        [7; 16],
        vec![],
    )
    .with_capture(mode);
    if defer {
        cp.defer_background_writes();
    }
    if matches!(mode, CaptureMode::Background { .. }) {
        assert_eq!(cp.capture_name(), "background", "{:?}", cp.capture_note());
    }
    cp.checkpoint(&mut m).expect("initial snapshot");
    m.run_with(Some(&mut cp)).expect("run");
    cp.finish(&mut m).expect("last checkpoint");
    cp
}

/// Guest memory as restoring a chain up to some snapshot gives it: per slot, each page
/// from the newest snapshot holding it.
#[derive(Default)]
struct Image(Vec<Vec<u8>>);

impl Image {
    /// Applies snapshot `id` of `root` over the image.
    fn apply(&mut self, root: &Path, id: u64) {
        let dir = snapshot_dir(root, id);
        let s = snapshot::load(&dir, u64::MAX).expect("snapshot loads");
        self.0.resize(s.state.slots.len(), Vec::new());
        for (img, slot) in self.0.iter_mut().zip(&s.state.slots) {
            let bytes = std::fs::read(dir.join(&slot.file)).unwrap();
            img.resize(bytes.len(), 0);
            for (first, count) in slot.runs() {
                let (a, b) = (
                    usize::try_from(first * 4096).unwrap(),
                    usize::try_from((first + count) * 4096).unwrap(),
                );
                img[a..b].copy_from_slice(&bytes[a..b]);
            }
        }
    }
}

/// Asserts that snapshot `id` is the same in both roots (`a` background, `b` stopped
/// world): memory as restored (`ia`, `ib` hold the chain up to `id - 1` and are brought
/// up to `id`), registers, position.
///
/// The stored page sets may differ: a stopped-world capture's dirty log can report pages
/// that were mapped writable but not changed (this host's KVM marks the guest's code page
/// on a re-fault); what a restore sees may not.
fn same_snapshot(a: &Path, b: &Path, id: u64, ia: &mut Image, ib: &mut Image) {
    let (da, db) = (snapshot_dir(a, id), snapshot_dir(b, id));
    let sa = snapshot::load(&da, u64::MAX).expect("background snapshot loads");
    let sb = snapshot::load(&db, u64::MAX).expect("stopped-world snapshot loads");
    assert_eq!(sa.state.exits, sb.state.exits, "snapshot {id}: exits");
    assert_eq!(sa.state.exit_seq, sb.state.exit_seq, "snapshot {id}: position");
    assert_eq!(sa.state.interrupts, sb.state.interrupts, "snapshot {id}: interrupts");
    assert_eq!(sa.state.vm, sb.state.vm, "snapshot {id}: vm");
    assert_eq!(sa.state.parent, sb.state.parent, "snapshot {id}: parent");
    same_vcpus(&sa.state, &sb.state, id);
    assert!(encoded(&sa.state.bus) == encoded(&sb.state.bus), "snapshot {id}: device state");
    assert_eq!(sa.state.slots.len(), sb.state.slots.len(), "snapshot {id}: slots");
    for (x, y) in sa.state.slots.iter().zip(&sb.state.slots) {
        let layout = |s: &snapshot::SlotState| (s.id, s.gpa, s.size, s.kind, s.flags, s.full, s.pages.len());
        assert_eq!(layout(x), layout(y), "snapshot {id}: slot layout");
        let extra = x.pages.iter().zip(&y.pages).position(|(p, q)| p & !q != 0);
        assert!(
            extra.is_none(),
            "snapshot {id} slot {}: stores pages the stopped world did not (word {extra:?})",
            x.id
        );
        assert!(
            x.changed_pages() > 0 || x.full,
            "snapshot {id} slot {}: the rewritten window is stored",
            x.id
        );
    }
    ia.apply(a, id);
    ib.apply(b, id);
    assert_eq!(ia.0.len(), ib.0.len());
    for (slot, (x, y)) in ia.0.iter().zip(&ib.0).enumerate() {
        let first_diff = x.chunks(4096).zip(y.chunks(4096)).position(|(p, q)| p != q);
        assert!(
            x.len() == y.len() && first_diff.is_none(),
            "snapshot {id} slot {slot}: memory differs from the stopped-world capture at page {first_diff:?}"
        );
    }
}

fn encoded<T: serde::Serialize>(v: &T) -> Vec<u8> {
    codec::encode(v).expect("encodes")
}

/// IA32_TSC: the host's time-stamp counter when the state was saved.
const MSR_IA32_TSC: u32 = 0x10;

/// Every part of the vCPU state is the same, the TSC's value aside (two runs, two moments).
fn same_vcpus(a: &snapshot::SnapshotState, b: &snapshot::SnapshotState, id: u64) {
    assert_eq!(a.vcpus.len(), b.vcpus.len(), "snapshot {id}: vCPUs");
    for (va, vb) in a.vcpus.iter().zip(&b.vcpus) {
        for (what, x, y) in [
            ("struct sizes", encoded(&va.sizes), encoded(&vb.sizes)),
            ("regs", encoded(&va.regs), encoded(&vb.regs)),
            ("sregs", encoded(&va.sregs), encoded(&vb.sregs)),
            ("fpu", encoded(&va.fpu), encoded(&vb.fpu)),
            ("xcrs", encoded(&va.xcrs), encoded(&vb.xcrs)),
            ("events", encoded(&va.events), encoded(&vb.events)),
            ("mp_state", encoded(&va.mp_state), encoded(&vb.mp_state)),
            ("debugregs", encoded(&va.debugregs), encoded(&vb.debugregs)),
            ("tsc_khz", encoded(&va.tsc_khz), encoded(&vb.tsc_khz)),
        ] {
            let at = x.iter().zip(&y).position(|(p, q)| p != q);
            assert!(
                x == y,
                "snapshot {id}: {what} differs from the stopped-world capture (lengths {} and {}, first byte {at:?}: {:02x?} against {:02x?})",
                x.len(),
                y.len(),
                at.map(|i| &x[i.saturating_sub(8)..(i + 24).min(x.len())]),
                at.map(|i| &y[i.saturating_sub(8)..(i + 24).min(y.len())]),
            );
        }
        // XSAVE as architectural state: whether a component in its initial configuration is
        // marked so depends on the host's task switches, not on the capture.
        let xsave = vmrr_engine::kvm::xsave::differing_components(&va.xsave, &vb.xsave, &va.cpuid);
        assert!(xsave.is_empty(), "snapshot {id}: xsave differs from the stopped-world capture in {xsave:?}");
        assert_eq!(cpuid_apart_from_apic_ids(va), cpuid_apart_from_apic_ids(vb), "snapshot {id}: cpuid");
        assert!(!va.msrs.is_empty(), "snapshot {id}: MSRs saved");
        assert_eq!(va.msrs.len(), vb.msrs.len(), "snapshot {id}: MSR count");
        for (m, n) in va.msrs.iter().zip(&vb.msrs) {
            assert_eq!(m.index, n.index, "snapshot {id}: MSR list");
            if m.index != MSR_IA32_TSC {
                assert_eq!(m.data, n.data, "snapshot {id}: MSR {:#x}", m.index);
            }
        }
    }
}

/// The CPUID entries with the APIC ID fields cleared (leaf 1 EBX bits 31:24, leaves 0xB
/// and 0x1F EDX). On this host they hold the APIC ID of the host CPU the process happened
/// to run on when it created the vCPU (measured: 0 or 1 from one run to the next): a
/// determinism gap in the CPUID model, not in capture, reported to be fixed there.
fn cpuid_apart_from_apic_ids(v: &vmrr_engine::kvm::vcpu_state::VcpuState) -> Vec<u8> {
    let mut entries = v.cpuid.clone();
    for e in &mut entries {
        match e.function {
            1 => e.ebx &= 0x00ff_ffff,
            0xb | 0x1f => e.edx = 0,
            _ => {}
        }
    }
    encoded(&entries)
}

/// The TSC each snapshot of `root` saved only moves forward.
fn tsc_moves_forward(root: &Path, n: usize) {
    let tsc = |id: u64| {
        let s = snapshot::load(&snapshot_dir(root, id), u64::MAX).expect("loads");
        s.state.vcpus[0]
            .msrs
            .iter()
            .find(|m| m.index == MSR_IA32_TSC)
            .map(|m| m.data)
            .expect("IA32_TSC saved")
    };
    let values: Vec<u64> = (0..n as u64).map(tsc).collect();
    assert!(values.windows(2).all(|w| w[1] > w[0]), "{values:x?}");
}

/// Compares every snapshot of both roots.
fn same_snapshots(a: &Path, b: &Path, n: usize) {
    let (mut ia, mut ib) = (Image::default(), Image::default());
    for id in 0..n as u64 {
        same_snapshot(a, b, id, &mut ia, &mut ib);
    }
}

/// The window's first page as snapshot `id` stores it: its round number.
fn round_in(root: &Path, id: u64) -> u64 {
    let dir = snapshot_dir(root, id);
    let s = snapshot::load(&dir, u64::MAX).unwrap();
    let slot = &s.state.slots[0];
    let bytes = std::fs::read(dir.join(&slot.file)).unwrap();
    let at = usize::try_from(vmrr_engine::guests::CHURN_START - slot.gpa).unwrap();
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

#[test]
fn background_snapshots_equal_stopped_world_ones_in_every_part() {
    if !require_kvm() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let stopped = d.path().join("stopped");
    let reference = run(&stopped, CaptureMode::StopWorld, false);
    let n = reference.taken.len();
    assert!(n >= 5, "{n} checkpoints");
    for (name, budget, defer) in
        [("within budget, writer held", 64 << 20, true), ("as in a recording", 64 << 20, false)]
    {
        let bg = d.path().join(name.replace([' ', ','], "-"));
        let cp = run(&bg, CaptureMode::Background { budget_bytes: budget }, defer);
        assert_eq!(cp.taken.len(), n, "{name}");
        assert!(cp.taken.iter().skip(1).all(|t| t.stats.background), "{name}");
        same_snapshots(&bg, &stopped, n);
        tsc_moves_forward(&bg, n);
        let totals = cp.background_totals();
        assert_eq!(totals.pages_waited, 0, "{name}: the budget holds a whole window");
        if defer {
            // Every page stored was rewritten before its writer ran: all were set aside.
            assert!(totals.pages_saved >= WINDOW * (n as u64 - 1), "{name}: {totals:?}");
        }
    }
    // The snapshots hold the round at the pause, not the one written right after.
    let rounds: Vec<u64> = (1..n as u64).map(|id| round_in(&stopped, id)).collect();
    assert!(rounds.windows(2).all(|w| w[1] == w[0] + EVERY), "{rounds:?}");
}

#[test]
fn over_the_budget_the_guest_waits_and_the_snapshot_stays_exact() {
    if !require_kvm() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let stopped = d.path().join("stopped");
    let reference = run(&stopped, CaptureMode::StopWorld, false);
    let bg = d.path().join("tiny");
    // Eight pages of budget for a window of 256: the rest are written by the fault
    // handler while the vCPU waits.
    let cp = run(&bg, CaptureMode::Background { budget_bytes: 8 * 4096 }, true);
    assert_eq!(cp.taken.len(), reference.taken.len());
    let totals = cp.background_totals();
    assert!(totals.pages_waited > 0, "{totals:?}");
    assert!(totals.peak_saved_pages <= 8, "{totals:?}");
    for t in cp.taken.iter().skip(1) {
        assert!(t.stats.pages_waited > 0, "checkpoint {}: {:?}", t.id, t.stats);
    }
    same_snapshots(&bg, &stopped, cp.taken.len());
}

#[test]
fn an_unfinished_capture_leaves_no_snapshot_claiming_completeness() {
    if !require_kvm() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("snaps");
    let mut m = machine();
    let mut cp = Checkpointer::new(root.clone(), Policy::default(), [7; 16], vec![])
        .with_capture(CaptureMode::Background { budget_bytes: 64 << 20 });
    assert_eq!(cp.capture_name(), "background", "{:?}", cp.capture_note());
    cp.checkpoint(&mut m).expect("initial snapshot");
    cp.defer_background_writes();
    // The writer of checkpoint 1 is held: the process "dies" before it finishes.
    let id = cp.begin(&mut m).expect("pause and arm");
    assert_eq!(id, 1);
    assert!(cp.taken.iter().all(|t| t.id != id), "not taken before it is durable");
    let dir = snapshot_dir(&root, id);
    assert!(!dir.exists(), "published before it was written");
    let tmp = dir.with_extension("tmp");
    assert!(tmp.is_dir());
    assert!(!snapshot::is_snapshot_dir(&tmp), "an unfinished directory must not read as a snapshot");
    assert!(snapshot::load(&dir, u64::MAX).is_err());
    // Dropping the checkpointer abandons the capture: the guest runs on, unprotected.
    drop(cp);
    let s = m.run().expect("the guest runs on after the capture is abandoned");
    assert_eq!(s.outcome.name(), "max_exits");
    assert!(!dir.exists());
    assert!(snapshot::check_chain(&snapshot_dir(&root, 0)).is_ok());
}

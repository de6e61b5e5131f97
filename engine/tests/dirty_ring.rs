//! Dirty-page tracking on real KVM: a guest that dirties a known set of pages yields
//! exactly those pages through KVM's dirty ring and through the bitmap fallback, and a
//! ring that fills during a run is harvested without ending the run or counting an exit.

use vmrr_engine::devices::console::Console;
use vmrr_engine::kvm::dirty::{DirtyMethod, DirtyTracking, MIN_RING_ENTRIES};
use vmrr_engine::kvm::memory::SlotKind;
use vmrr_engine::machine::{Machine, Outcome};
use vmrr_engine::session::{GuestSpec, SessionConfig};
use vmrr_engine::testing::require_kvm;

const MEM: u64 = 64 << 20;

/// The `dirty-pages` guest dirtying `n` pages per round, with dirty logging, tracked as
/// `tracking` says.
fn machine(n: u64, tracking: DirtyTracking) -> Machine {
    let cfg = SessionConfig {
        guest: GuestSpec::Builtin { name: "dirty-pages".into(), iterations: Some(n) },
        mem_bytes: MEM,
        cpuid: Default::default(),
        limits: Default::default(),
        dirty_log: true,
        vcpus: 1,
        irqchip: None,
    };
    cfg.build_tracking(Console::capture_only(), Console::capture_only(), tracking).expect("machine")
}

/// Whether this host's KVM has the dirty ring.
fn host_has_ring() -> bool {
    let kvm = vmrr_engine::kvm::open_kvm().expect("kvm");
    let has = |c: u32| kvm.check_extension_raw(libc::c_ulong::from(c)) > 0;
    has(kvm_bindings::KVM_CAP_DIRTY_LOG_RING) || has(kvm_bindings::KVM_CAP_DIRTY_LOG_RING_ACQ_REL)
}

/// The runs of RAM pages the guest dirtied since the last call.
fn dirty_runs(m: &Machine) -> Vec<(u64, u64)> {
    let mut runs = Vec::new();
    for s in m.memory().slots().iter().filter(|s| s.spec().kind == SlotKind::Ram) {
        let first = s.spec().gpa.0 / 4096;
        let d = m.vm().take_dirty(s).expect("dirty pages");
        runs.extend(d.runs(s.pages()).into_iter().map(|(p, n)| (first + p, n)));
    }
    runs
}

/// Runs the guest to its `exits`th exit (one per round) and returns the pages dirtied
/// in each round, as runs of guest-physical page numbers.
fn rounds(m: &mut Machine, rounds: u64) -> Vec<Vec<(u64, u64)>> {
    // Nothing the guest did yet: the loader's writes are userspace's, not KVM's.
    let before = dirty_runs(m);
    assert!(before.is_empty(), "no guest write before the first entry: {before:?}");
    (1..=rounds)
        .map(|r| {
            m.set_max_exits(Some(r));
            let s = m.run().expect("run");
            assert!(matches!(s.outcome, Outcome::MaxExits), "round {r}: {:?}", s.outcome);
            assert_eq!(m.exits(), r, "one exit per round, nothing else counted");
            dirty_runs(m)
        })
        .collect()
}

/// The round's own run of round 1 (its last), after the few pages the guest's start-up
/// wrote once.
fn first_round(runs: &[(u64, u64)]) -> (u64, u64) {
    let (&last, startup) = runs.split_last().expect("round 1 dirtied pages");
    assert!(startup.iter().map(|r| r.1).sum::<u64>() <= 4, "start-up writes: {startup:?}");
    assert!(startup.iter().all(|r| r.0 + r.1 < last.0), "start-up writes lie below the round's pages");
    last
}

#[test]
fn a_guest_dirtying_known_pages_yields_exactly_those_pages_through_the_ring_and_the_bitmap() {
    if !require_kvm() {
        return;
    }
    const N: u64 = 300;
    let mut seen = Vec::new();
    for tracking in [DirtyTracking::Auto, DirtyTracking::Bitmap] {
        let mut m = machine(N, tracking);
        let method = m.vm().dirty().method();
        match tracking {
            DirtyTracking::Bitmap => assert_eq!(method, DirtyMethod::Bitmap),
            _ if host_has_ring() => assert!(matches!(method, DirtyMethod::Ring { .. }), "{method:?}"),
            _ => eprintln!("this host's KVM has no dirty ring: Auto is the bitmap here"),
        }
        let got = rounds(&mut m, 3);
        // Each round writes N consecutive pages, the next round the N after them; the
        // first also holds what the guest's start-up wrote (below its pages).
        let (p0, n0) = first_round(&got[0]);
        assert_eq!(n0, N, "{method:?}: {:?}", got[0]);
        assert_eq!(got[1], vec![(p0 + N, N)], "{method:?}: round 2");
        assert_eq!(got[2], vec![(p0 + 2 * N, N)], "{method:?}: round 3");
        seen.push(got);
    }
    assert_eq!(seen[0], seen[1], "the ring and the bitmap agree page for page");
}

#[test]
fn a_full_ring_is_harvested_without_ending_the_run() {
    if !require_kvm() {
        return;
    }
    if !host_has_ring() {
        eprintln!("skipped: this host's KVM has no dirty ring (KVM_CAP_DIRTY_LOG_RING)");
        return;
    }
    // Several times the smallest ring in each round: the vCPU exits with
    // KVM_EXIT_DIRTY_RING_FULL again and again before the round's own exit.
    let n = u64::from(MIN_RING_ENTRIES) * 5 + 17;
    let mut m = machine(n, DirtyTracking::Ring { entries: MIN_RING_ENTRIES });
    let method = m.vm().dirty().method();
    assert!(matches!(method, DirtyMethod::Ring { entries: MIN_RING_ENTRIES, .. }), "{method:?}");
    let got = rounds(&mut m, 2);
    let (p0, n0) = first_round(&got[0]);
    assert_eq!(n0, n, "every page of the round, including those harvested at a full ring: {:?}", got[0]);
    assert_eq!(got[1], vec![(p0 + n, n)], "round 2");
}

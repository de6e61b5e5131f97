//! Snapshots on real KVM: restore continues exactly like the uninterrupted run; snapshot,
//! restore, snapshot is identical; an incremental chain equals a full snapshot page by
//! page; restored runs never modify the files; in-place reset; hostile state refused.

use std::path::{Path, PathBuf};

use vmrr_engine::checkpoint::{Checkpointer, Policy};
use vmrr_engine::devices::console::Console;
use vmrr_engine::kvm::memory::SlotKind;
use vmrr_engine::machine::{Machine, Outcome};
use vmrr_engine::session::{GuestSpec, SessionConfig};
use vmrr_engine::snapshot::{self, SnapshotError, codec, snapshot_dir};
use vmrr_engine::testing::require_kvm;

const MEM: u64 = 64 << 20;

fn config(guest: &str, iterations: Option<u64>) -> SessionConfig {
    SessionConfig {
        guest: GuestSpec::Builtin { name: guest.into(), iterations },
        mem_bytes: MEM,
        cpuid: Default::default(),
        limits: Default::default(),
        dirty_log: true,
        vcpus: 1,
        irqchip: None,
    }
}

fn build(guest: &str, iterations: Option<u64>) -> Machine {
    config(guest, iterations).build(Console::capture_only(), Console::capture_only()).expect("machine")
}

/// A machine for `guest` with its initial snapshot taken into `root` and a checkpointer
/// that takes one every `every` exits.
fn checkpointed(guest: &str, iterations: Option<u64>, root: &Path, every: u64) -> (Machine, Checkpointer) {
    let mut m = build(guest, iterations);
    let mut cp = Checkpointer::new(
        root.to_path_buf(),
        Policy { every_exits: Some(every), interval: None },
        [1; 16],
        vec![],
    );
    cp.checkpoint(&mut m).expect("initial snapshot");
    (m, cp)
}

/// FNV-1a over all RAM (reads through the guest mapping).
fn ram_hash(m: &Machine) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut buf = vec![0u8; 1 << 20];
    for s in m.memory().slots().iter().filter(|s| s.spec().kind == SlotKind::Ram) {
        let mut off = 0;
        while off < s.spec().size {
            let n = usize::try_from((s.spec().size - off).min(buf.len() as u64)).unwrap();
            m.memory()
                .read(vmrr_engine::GuestAddress(s.spec().gpa.0 + off), &mut buf[..n])
                .expect("readable");
            for &b in &buf[..n] {
                h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
            }
            off += n as u64;
        }
    }
    h
}

struct End {
    serial: Vec<u8>,
    outcome: String,
    rip: u64,
    rax: u64,
    ram: u64,
}

fn finish(m: &mut Machine, hook: Option<&mut Checkpointer>) -> End {
    let s = m.run_with(hook.map(|h| h as &mut dyn vmrr_engine::machine::ExitHook)).expect("run");
    let regs = m.regs().expect("regs");
    End {
        serial: m.serial().captured(),
        outcome: s.outcome.name().to_string(),
        rip: regs.rip,
        rax: regs.rax,
        ram: ram_hash(m),
    }
}

fn file_hash(p: &Path) -> u64 {
    std::fs::read(p)
        .unwrap()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// Identity of full snapshot `id` of trace `trace_id`.
fn whole(id: u64, trace_id: [u8; 16]) -> snapshot::Identity<'static> {
    snapshot::Identity { id, parent: None, trace_id, exit_seq: None, annotations: &[] }
}

#[test]
fn restored_guests_continue_exactly_like_the_uninterrupted_run() {
    if !require_kvm() {
        return;
    }
    for (guest, it, every) in
        [("memory-churn", Some(3), 90u64), ("interrupts", Some(6), 20), ("pio-storm", Some(2000), 500)]
    {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("snaps");
        let (mut m, mut cp) = checkpointed(guest, it, &root, every);
        let full = finish(&mut m, Some(&mut cp));
        assert_eq!(full.outcome, "guest_exit", "{guest}");
        assert!(cp.taken.len() >= 3, "{guest}: {} checkpoints", cp.taken.len());
        // Restore from a middle checkpoint (an incremental chain) and from the initial one.
        for t in [cp.taken[cp.taken.len() / 2], cp.taken[0]] {
            let chain = snapshot::load_chain(&snapshot_dir(&root, t.id), u64::MAX).expect("chain");
            assert_eq!(chain.len() as u64, t.id + 1);
            let mut r = snapshot::restore(&chain, Console::capture_only(), Console::capture_only(), false)
                .expect("restore");
            assert_eq!(r.exits(), t.exits);
            let cont = finish(&mut r, None);
            assert_eq!(cont.outcome, full.outcome, "{guest} from {}", t.id);
            assert!(full.serial.ends_with(&cont.serial), "{guest} from {}: serial", t.id);
            assert_eq!(
                cont.serial.is_empty(),
                guest == "pio-storm",
                "{guest} prints its result after the checkpoint"
            );
            assert_eq!((cont.rip, cont.rax), (full.rip, full.rax), "{guest} from {}: registers", t.id);
            assert_eq!(cont.ram, full.ram, "{guest} from {}: memory", t.id);
        }
    }
}

#[test]
fn snapshot_restore_snapshot_is_identical() {
    if !require_kvm() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mut m = build("memory-churn", Some(2));
    m.set_max_exits(Some(70));
    m.run().unwrap();
    snapshot::take(&mut m, &snapshot_dir(d.path(), 0), &whole(0, [2; 16])).expect("first");
    let a = snapshot::load(&snapshot_dir(d.path(), 0), u64::MAX).unwrap();
    let mut r =
        snapshot::restore(std::slice::from_ref(&a), Console::capture_only(), Console::capture_only(), false)
            .unwrap();
    let other = d.path().join("again");
    snapshot::take(&mut r, &snapshot_dir(&other, 0), &whole(0, [2; 16])).expect("second");
    let b = snapshot::load(&snapshot_dir(&other, 0), u64::MAX).unwrap();
    // Identical except the TSC, which keeps counting from the restored value.
    let (mut va, mut vb) = (a.state.vcpus[0].clone(), b.state.vcpus[0].clone());
    let tsc = |v: &mut vmrr_engine::kvm::vcpu_state::VcpuState| {
        let e = v.msrs.iter_mut().find(|e| e.index == 0x10).expect("IA32_TSC is saved");
        std::mem::take(&mut e.data)
    };
    let (ta, tb) = (tsc(&mut va), tsc(&mut vb));
    assert!(tb >= ta, "TSC went backwards: {ta:#x} -> {tb:#x}");
    assert!(va == vb, "vCPU state survives a round trip");
    assert_eq!(a.state.bus, b.state.bus);
    assert_eq!(a.state.exits, b.state.exits);
    for (sa, sb) in a.state.slots.iter().zip(&b.state.slots) {
        assert_eq!(sa.stored_pages, sb.stored_pages, "slot {}", sa.id);
        assert_eq!(
            std::fs::read(a.dir.join(&sa.file)).unwrap(),
            std::fs::read(b.dir.join(&sb.file)).unwrap(),
            "slot {} memory",
            sa.id
        );
    }
}

#[test]
fn an_incremental_chain_equals_a_full_snapshot_page_by_page() {
    if !require_kvm() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let inc = d.path().join("inc");
    let (mut m, mut cp) = checkpointed("memory-churn", Some(3), &inc, 40);
    m.set_max_exits(Some(121));
    m.run_with(Some(&mut cp)).unwrap();
    let last = *cp.taken.last().unwrap();
    assert_eq!(last.exits, 120);
    assert!(last.stats.pages_considered < MEM / 4096, "incremental capture considers only dirty pages");
    // The same guest, stopped at the same exit, snapshotted in full.
    let mut f = build("memory-churn", Some(3));
    f.set_max_exits(Some(120));
    f.run().unwrap();
    let full = d.path().join("full");
    snapshot::take(&mut f, &snapshot_dir(&full, 0), &whole(0, [3; 16])).unwrap();
    let chain = snapshot::load_chain(&snapshot_dir(&inc, last.id), u64::MAX).unwrap();
    assert!(chain.len() >= 3);
    let flat = d.path().join("flat");
    snapshot::flatten(&chain, &flat, false).unwrap();
    let fl = snapshot::load(&flat, u64::MAX).unwrap();
    let fu = snapshot::load(&snapshot_dir(&full, 0), u64::MAX).unwrap();
    assert!(fl.state.parent.is_none());
    for (a, b) in fl.state.slots.iter().zip(&fu.state.slots) {
        let (x, y) =
            (std::fs::read(fl.dir.join(&a.file)).unwrap(), std::fs::read(fu.dir.join(&b.file)).unwrap());
        assert_eq!(x.len(), y.len());
        let differing: Vec<usize> = x
            .chunks(4096)
            .zip(y.chunks(4096))
            .enumerate()
            .filter(|(_, (p, q))| p != q)
            .map(|(i, _)| i)
            .collect();
        assert!(
            differing.is_empty(),
            "slot {}: pages differ: {:?}",
            a.id,
            &differing[..differing.len().min(10)]
        );
        assert_eq!(a.stored_pages, b.stored_pages);
    }
    // And restoring the chain directly gives the same memory as restoring the full one.
    let rc = snapshot::restore(&chain, Console::capture_only(), Console::capture_only(), false).unwrap();
    let rf = snapshot::restore(&[fu], Console::capture_only(), Console::capture_only(), false).unwrap();
    assert_eq!(ram_hash(&rc), ram_hash(&rf));
}

#[test]
fn restored_runs_never_modify_the_snapshot_files() {
    if !require_kvm() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mut m = build("memory-churn", Some(2));
    snapshot::take(&mut m, &snapshot_dir(d.path(), 0), &whole(0, [4; 16])).unwrap();
    let dir = snapshot_dir(d.path(), 0);
    let files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    let before: Vec<u64> = files.iter().map(|p| file_hash(p)).collect();
    let chain = snapshot::load_chain(&dir, u64::MAX).unwrap();
    for _ in 0..2 {
        let mut r =
            snapshot::restore(&chain, Console::capture_only(), Console::capture_only(), false).unwrap();
        let h0 = ram_hash(&r);
        let end = finish(&mut r, None);
        assert_ne!(end.ram, h0, "the guest did write its memory");
    }
    let after: Vec<u64> = files.iter().map(|p| file_hash(p)).collect();
    assert_eq!(before, after);
}

#[test]
fn in_place_reset_reverts_only_dirty_pages_and_state() {
    if !require_kvm() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mut m = build("memory-churn", Some(2));
    m.set_max_exits(Some(10));
    m.run().unwrap();
    snapshot::take(&mut m, &snapshot_dir(d.path(), 0), &whole(0, [5; 16])).unwrap();
    let chain = snapshot::load_chain(&snapshot_dir(d.path(), 0), u64::MAX).unwrap();
    let mut r = snapshot::restore(&chain, Console::capture_only(), Console::capture_only(), true).unwrap();
    let h0 = ram_hash(&r);
    let regs0 = r.regs().unwrap();
    for round in 0..3 {
        r.set_max_exits(Some(r.exits() + 20));
        r.run().unwrap();
        assert_ne!(ram_hash(&r), h0, "round {round}: the guest changed memory");
        let st = snapshot::reset(&mut r, &chain).unwrap();
        assert!(
            st.dirty_pages > 0 && st.dirty_pages < 20 * 256 + 64,
            "round {round}: {} dirty pages",
            st.dirty_pages
        );
        assert_eq!(ram_hash(&r), h0, "round {round}: memory back to the snapshot");
        // Every general register (staged in kvm_run's synced registers) is the snapshot's.
        assert_eq!(r.regs().unwrap(), regs0, "round {round}: registers");
    }
    // After the last reset the guest still runs to its normal end.
    r.set_max_exits(None);
    assert!(matches!(r.run().unwrap().outcome, Outcome::GuestExit(0)));
}

#[test]
fn restore_over_switches_a_running_machine_between_snapshots() {
    if !require_kvm() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("snaps");
    let (mut m, mut cp) = checkpointed("memory-churn", Some(3), &root, 90);
    let full = finish(&mut m, Some(&mut cp));
    assert_eq!(full.outcome, "guest_exit");
    assert!(cp.taken.len() >= 3, "{} checkpoints", cp.taken.len());
    let chain_of = |id| snapshot::load_chain(&snapshot_dir(&root, id), u64::MAX).expect("chain");
    // One machine, switched without re-creating its VM or memory slots: from the initial
    // snapshot part-way, then to a middle checkpoint (an incremental chain), then back.
    let mut r = snapshot::restore(&chain_of(0), Console::capture_only(), Console::capture_only(), true)
        .expect("restore");
    let host_addrs: Vec<u64> = r.memory().slots().iter().map(|s| s.host_addr()).collect();
    r.set_max_exits(Some(40));
    r.run().unwrap();
    for t in [cp.taken[cp.taken.len() / 2], cp.taken[0], cp.taken[cp.taken.len() - 1]] {
        snapshot::restore_over(&mut r, &chain_of(t.id)).expect("restore over");
        assert_eq!(r.exits(), t.exits, "from {}", t.id);
        r.set_max_exits(None);
        let before = r.serial().captured().len();
        let cont = finish(&mut r, None);
        assert_eq!(cont.outcome, full.outcome, "from {}", t.id);
        assert!(full.serial.ends_with(&cont.serial[before..]), "from {}: serial", t.id);
        assert!(cont.serial.len() > before, "from {}: the guest printed its result", t.id);
        assert_eq!((cont.rip, cont.rax), (full.rip, full.rax), "from {}: registers", t.id);
        assert_eq!(cont.ram, full.ram, "from {}: memory", t.id);
    }
    let now: Vec<u64> = r.memory().slots().iter().map(|s| s.host_addr()).collect();
    assert_eq!(now, host_addrs, "the registered host ranges never moved");
    // After switching, an in-place reset reverts to the snapshot switched to.
    let chain = chain_of(0);
    snapshot::restore_over(&mut r, &chain).unwrap();
    let h0 = ram_hash(&r);
    r.set_max_exits(Some(r.exits() + 30));
    r.run().unwrap();
    assert_ne!(ram_hash(&r), h0);
    snapshot::reset(&mut r, &chain).unwrap();
    assert_eq!(ram_hash(&r), h0);

    // A snapshot of another layout is refused and leaves the machine as it was.
    let other = d.path().join("other");
    let mut big = config("hello", None);
    big.mem_bytes = 2 * MEM;
    let mut b = big.build(Console::capture_only(), Console::capture_only()).unwrap();
    snapshot::take(&mut b, &snapshot_dir(&other, 0), &whole(0, [3; 16])).unwrap();
    let bad = snapshot::load_chain(&snapshot_dir(&other, 0), u64::MAX).unwrap();
    let e = snapshot::restore_over(&mut r, &bad).unwrap_err();
    assert!(e.to_string().contains("memory layout"), "{e}");
    assert_eq!(ram_hash(&r), h0, "nothing changed");
    // A snapshot whose CPUID differs from the one the vCPU ran with is refused by KVM.
    let mut host = config("memory-churn", Some(3));
    host.cpuid = vmrr_engine::kvm::cpuid::CpuidProfile::Host;
    let mut h = host.build(Console::capture_only(), Console::capture_only()).unwrap();
    snapshot::take(&mut h, &snapshot_dir(&other, 1), &whole(1, [4; 16])).unwrap();
    let hc = snapshot::load_chain(&snapshot_dir(&other, 1), u64::MAX).unwrap();
    if hc[0].state.vcpus[0].cpuid != chain[0].state.vcpus[0].cpuid {
        let e = snapshot::restore_over(&mut r, &hc).unwrap_err();
        assert!(e.to_string().contains("another CPUID"), "{e}");
        assert_eq!(ram_hash(&r), h0, "nothing changed");
        eprintln!("CPUID mismatch refused: {e}");
    } else {
        eprintln!("host and deterministic CPUID are equal on this host: mismatch case not exercised");
    }
    r.set_max_exits(None);
    assert!(matches!(r.run().unwrap().outcome, Outcome::GuestExit(0)));
}

/// Writes a modified copy of a valid snapshot and returns the load error: `edit` changes
/// the state (re-encoded with a valid CRC), then `damage` changes files on disk.
fn hostile(
    base: &Path,
    edit: impl FnOnce(&mut snapshot::SnapshotState),
    damage: impl FnOnce(&Path),
) -> SnapshotError {
    let d = tempfile::tempdir().unwrap();
    let dir = snapshot_dir(d.path(), 0);
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(base).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    let mut st: snapshot::SnapshotState = codec::read(&dir.join("state.bin")).unwrap();
    edit(&mut st);
    std::fs::write(dir.join("state.bin"), codec::frame(&codec::encode(&st).unwrap())).unwrap();
    damage(&dir);
    match snapshot::load_chain(&dir, 1 << 40) {
        Ok(_) => panic!("a hostile snapshot was accepted"),
        Err(e) => e,
    }
}

#[test]
fn hostile_snapshots_are_refused_before_kvm() {
    if !require_kvm() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mut m = build("hello-long", None);
    snapshot::take(&mut m, &snapshot_dir(d.path(), 0), &whole(0, [6; 16])).unwrap();
    let base = snapshot_dir(d.path(), 0);
    let msg = |e: SnapshotError| e.to_string();
    // Error offsets point at the fields: check them against the encoded bytes.
    let st: snapshot::SnapshotState = codec::read(&base.join("state.bin")).unwrap();
    let bytes = std::fs::read(base.join("state.bin")).unwrap();
    for (i, sl) in st.slots.iter().enumerate() {
        let at = usize::try_from(st.slot_offset(i)).unwrap();
        assert_eq!(bytes[at..at + 4], sl.id.to_le_bytes(), "slot {i} id");
        assert_eq!(bytes[at + 4..at + 12], sl.gpa.to_le_bytes(), "slot {i} gpa");
        assert_eq!(bytes[at + 12..at + 20], sl.size.to_le_bytes(), "slot {i} size");
    }
    let tail = codec::encoded_len(&st.bus) + codec::encoded_len(&st.annotations);
    assert_eq!(st.vcpu_offset(st.vcpus.len()) + tail, u64::try_from(bytes.len()).unwrap() - 8);
    let e = hostile(
        &base,
        |_| {},
        |dir| {
            let f = std::fs::OpenOptions::new().write(true).open(dir.join("mem-0.raw")).unwrap();
            f.set_len(4096).unwrap();
        },
    );
    assert!(matches!(e, SnapshotError::ShortFile { .. }), "{e}");
    let e = hostile(
        &base,
        |s| {
            let mut extra = s.slots[0].clone();
            extra.id = 9;
            extra.gpa = 0x1000;
            extra.size = 0x2000;
            s.slots.push(extra);
        },
        |_| {},
    );
    assert!(msg(e).contains("overlap"));
    let e = hostile(&base, |s| s.slots[0].gpa = 0x123, |_| {});
    let t = msg(e);
    assert!(t.contains("page-aligned") && t.contains(&format!("offset {:#x}", st.slot_offset(0) + 4)), "{t}");
    let e = hostile(&base, |s| s.slots[0].size = 1 << 60, |_| {});
    let t = msg(e);
    assert!(t.contains("physical address space") || t.contains("limit"), "{t}");
    let e = hostile(&base, |s| s.vcpus.extend(std::iter::repeat_n(s.vcpus[0].clone(), 8)), |_| {});
    assert!(msg(e).contains("vCPU count 9 over the limit of 8"));
    let e = hostile(&base, |s| s.vcpus.push(s.vcpus[0].clone()), |_| {});
    let t = msg(e);
    assert!(t.contains("2 vCPUs without KVM's in-kernel irqchip (field kernel_irqchip)"), "{t}");
    let e = hostile(&base, |s| s.slots[0].file = "../../etc/passwd".into(), |_| {});
    assert!(msg(e).contains("not a plain file name"));
    let e = hostile(
        &base,
        |_| {},
        |dir| {
            let p = dir.join("state.bin");
            let mut b = std::fs::read(&p).unwrap();
            b[40] ^= 0x55;
            std::fs::write(&p, b).unwrap();
        },
    );
    assert!(matches!(e, SnapshotError::Codec(codec::CodecError::Checksum { .. })), "{e}");
    let e = hostile(
        &base,
        |_| {},
        |dir| {
            let p = dir.join("state.bin");
            let mut b = std::fs::read(&p).unwrap();
            b[8] = 9; // major 9
            std::fs::write(&p, b).unwrap();
        },
    );
    let t = msg(e);
    assert!(t.contains("9.0") && t.contains("not readable"), "{t}");
    // A memory cap below the snapshot's memory.
    let l = snapshot::load(&base, 16 << 20).expect_err("too much memory");
    assert!(l.to_string().contains("--max-mem-mib"));
}

/// Memory hash and registers of a fresh restore of `chain`: what a switch to it must give.
fn reference(chain: &[snapshot::StoredSnapshot]) -> (u64, u64) {
    let r =
        snapshot::restore(chain, Console::capture_only(), Console::capture_only(), false).expect("restore");
    (ram_hash(&r), r.regs().expect("regs").rip)
}

#[test]
fn going_back_remaps_only_the_pages_that_differ() {
    if !require_kvm() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("snaps");
    let (mut m, mut cp) = checkpointed("memory-churn", Some(3), &root, 90);
    assert_eq!(finish(&mut m, Some(&mut cp)).outcome, "guest_exit");
    assert!(cp.taken.len() >= 3, "{} checkpoints", cp.taken.len());
    let chain_of = |id| snapshot::load_chain(&snapshot_dir(&root, id), u64::MAX).expect("chain");
    let (first, mid, last) = (cp.taken[0], cp.taken[cp.taken.len() / 2], cp.taken[cp.taken.len() - 1]);
    let total: u64 = m.memory().slots().iter().map(|s| s.pages()).sum();

    // A branch: from the middle checkpoint, run on and capture a sibling of its child.
    let mut r = snapshot::restore(&chain_of(mid.id), Console::capture_only(), Console::capture_only(), true)
        .expect("restore");
    r.set_max_exits(Some(r.exits() + 40));
    r.run().unwrap();
    let branch = snapshot::Identity {
        id: 100,
        parent: Some(mid.id),
        trace_id: [1; 16],
        exit_seq: None,
        annotations: &[],
    };
    snapshot::take(&mut r, &snapshot_dir(&root, 100), &branch).expect("branch capture");
    assert_eq!(snapshot::load_chain(&snapshot_dir(&root, 100), u64::MAX).unwrap().len() as u64, mid.id + 2);

    // Switching between chains that share their oldest snapshots remaps only what differs,
    // and each switch gives exactly the memory and registers of a fresh restore.
    for id in [last.id, first.id, 100, mid.id, last.id, 100] {
        let chain = chain_of(id);
        let want = reference(&chain);
        // The guest runs a little first: its writes must be undone too.
        r.set_max_exits(Some(r.exits() + 5));
        r.run().unwrap();
        let s = snapshot::restore_over(&mut r, &chain).expect("restore over");
        assert!(!s.whole, "to {id}: remapped whole");
        // memory-churn rewrites most of its memory between checkpoints: what differs is
        // most pages, yet not one page more than the machine has.
        assert!(s.pages > 0 && s.pages <= total, "to {id}: {} of {total} pages", s.pages);
        assert_eq!((ram_hash(&r), r.regs().unwrap().rip), want, "to {id}");
    }

    // A page written from userspace (a debugger's memory write) differs too.
    let chain = chain_of(mid.id);
    let want = reference(&chain);
    snapshot::restore_over(&mut r, &chain).unwrap();
    let at = vmrr_engine::GuestAddress(MEM - 4096);
    r.memory().write(at, b"not in any snapshot").unwrap();
    assert_ne!(ram_hash(&r), want.0);
    let s = snapshot::restore_over(&mut r, &chain).unwrap();
    assert_eq!(s.pages, 1, "only the written page");
    assert_eq!(ram_hash(&r), want.0);

    // A capture in between moves the origin: a reset afterwards still reverts every page
    // written since the snapshot it goes back to, not only those since the capture.
    r.set_max_exits(Some(r.exits() + 30));
    r.run().unwrap();
    let again = snapshot::Identity {
        id: 101,
        parent: Some(mid.id),
        trace_id: [1; 16],
        exit_seq: None,
        annotations: &[],
    };
    snapshot::take(&mut r, &snapshot_dir(&root, 101), &again).unwrap();
    r.set_max_exits(Some(r.exits() + 30));
    r.run().unwrap();
    snapshot::reset(&mut r, &chain).unwrap();
    assert_eq!(ram_hash(&r), want.0, "reset after a capture");

    // Remapping every page gives the same memory.
    for (id, how) in [(last.id, snapshot::Remap::Whole), (first.id, snapshot::Remap::Changed)] {
        let chain = chain_of(id);
        let s = snapshot::restore_over_with(&mut r, &chain, how).unwrap();
        assert_eq!(s.whole, how == snapshot::Remap::Whole);
        assert_eq!(ram_hash(&r), reference(&chain).0, "to {id} ({how:?})");
    }
    // The switched machine still runs the guest to its normal end.
    r.set_max_exits(None);
    assert!(matches!(r.run().unwrap().outcome, Outcome::GuestExit(0)));
}

//! Machines with several vCPUs on real KVM: a snapshot holds every vCPU, each local APIC,
//! the PIC pair, the IOAPIC and the PIT, and a restore into a fresh VM gives them back
//! byte for byte; hostile multi-vCPU states are refused naming the state file, the vCPU
//! and the field.

use std::path::Path;

use vmrr_engine::devices::console::Console;
use vmrr_engine::kvm::irqchip::IrqchipKind;
use vmrr_engine::machine::Machine;
use vmrr_engine::session::{GuestSpec, SessionConfig};
use vmrr_engine::snapshot::{self, SnapshotError, snapshot_dir};
use vmrr_engine::testing::require_kvm;

fn build(guest: &str, vcpus: u32, max_exits: Option<u64>) -> Machine {
    let cfg = SessionConfig {
        guest: GuestSpec::Builtin { name: guest.into(), iterations: None },
        mem_bytes: 64 << 20,
        cpuid: Default::default(),
        limits: vmrr_engine::machine::Limits { max_exits, max_duration: None },
        dirty_log: false,
        vcpus,
        irqchip: Some(IrqchipKind::Kernel),
    };
    cfg.build(Console::capture_only(), Console::capture_only()).expect("machine")
}

fn whole(trace_id: [u8; 16]) -> snapshot::Identity<'static> {
    snapshot::Identity { id: 0, parent: None, trace_id, exit_seq: None, annotations: &[] }
}

/// The IA32_TSC value of a vCPU state, taken out (it keeps counting across a restore).
fn take_tsc(v: &mut vmrr_engine::kvm::vcpu_state::VcpuState) -> u64 {
    let e = v.msrs.iter_mut().find(|e| e.index == 0x10).expect("IA32_TSC is saved");
    std::mem::take(&mut e.data)
}

#[test]
fn every_vcpu_and_the_irqchip_round_trip_through_a_fresh_vm() {
    if !require_kvm() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mut m = build("hello-long", 4, Some(20));
    m.run().expect("run");
    snapshot::take(&mut m, &snapshot_dir(d.path(), 0), &whole([3; 16])).expect("first");
    let a = snapshot::load(&snapshot_dir(d.path(), 0), u64::MAX).unwrap();
    assert_eq!(a.state.vcpus.len(), 4, "every vCPU is in the snapshot");
    let ka = a.state.kernel_irqchip.clone().expect("the in-kernel irqchip is in the snapshot");
    assert_eq!(ka.lapics.len(), 4, "one local APIC per vCPU");
    let mut r =
        snapshot::restore(std::slice::from_ref(&a), Console::capture_only(), Console::capture_only(), false)
            .expect("restore into a fresh VM");
    assert_eq!(r.vcpu_count(), 4);
    let other = d.path().join("again");
    snapshot::take(&mut r, &snapshot_dir(&other, 0), &whole([3; 16])).expect("second");
    let b = snapshot::load(&snapshot_dir(&other, 0), u64::MAX).unwrap();
    let kb = b.state.kernel_irqchip.clone().expect("irqchip");
    for (i, (va, vb)) in a.state.vcpus.iter().zip(&b.state.vcpus).enumerate() {
        let (mut va, mut vb) = (va.clone(), vb.clone());
        let (ta, tb) = (take_tsc(&mut va), take_tsc(&mut vb));
        assert!(tb >= ta, "vCPU {i}: TSC went backwards");
        assert!(
            va == vb,
            "vCPU {i}: registers, segments, XSAVE, XCRs, debug registers, MSRs, MP state and events round-trip"
        );
        assert_eq!(ka.lapics[i], kb.lapics[i], "vCPU {i}: local APIC, byte for byte");
    }
    // The APs never started: KVM holds them waiting for INIT/SIPI, and so does the restore.
    for v in &b.state.vcpus[1..] {
        assert_eq!(v.mp_state.mp_state, kvm_bindings::KVM_MP_STATE_UNINITIALIZED, "an AP before INIT");
    }
    assert_eq!(ka.chip.pic_master, kb.chip.pic_master, "master 8259, byte for byte");
    assert_eq!(ka.chip.pic_slave, kb.chip.pic_slave, "slave 8259, byte for byte");
    assert_eq!(ka.chip.ioapic, kb.chip.ioapic, "IOAPIC, byte for byte");
    // The PIT byte for byte, but for each channel's `count_load_time`: the host's clock
    // when its count was loaded, which a restore moves to the new host time.
    assert_eq!(without_load_times(&ka.chip.pit), without_load_times(&kb.chip.pit), "PIT, byte for byte");
}

/// `kvm_pit_state2` bytes with each channel's `count_load_time` (offset 16 of its 24
/// bytes) zeroed.
fn without_load_times(pit: &[u8]) -> Vec<u8> {
    let mut b = pit.to_vec();
    for c in 0..3 {
        if let Some(t) = b.get_mut(c * 24 + 16..c * 24 + 24) {
            t.fill(0);
        }
    }
    b
}

fn hostile(base: &Path, edit: impl FnOnce(&mut snapshot::SnapshotState)) -> SnapshotError {
    let d = tempfile::tempdir().unwrap();
    let dir = snapshot_dir(d.path(), 0);
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(base).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    let mut st = snapshot::state::read_file(&dir.join("state.bin")).unwrap();
    edit(&mut st);
    std::fs::write(dir.join("state.bin"), snapshot::state::to_file_bytes(&st).unwrap()).unwrap();
    match snapshot::load_chain(&dir, 1 << 40) {
        Ok(chain) => {
            match snapshot::restore(&chain, Console::capture_only(), Console::capture_only(), false) {
                Ok(_) => panic!("a hostile snapshot was restored"),
                Err(e) => e,
            }
        }
        Err(e) => e,
    }
}

#[test]
fn hostile_multi_vcpu_states_name_the_file_the_vcpu_and_the_field() {
    if !require_kvm() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mut m = build("hello-long", 2, Some(5));
    m.run().expect("run");
    snapshot::take(&mut m, &snapshot_dir(d.path(), 0), &whole([4; 16])).expect("snapshot");
    let base = snapshot_dir(d.path(), 0);
    let msg = |e: SnapshotError| e.to_string();
    let e = msg(hostile(&base, |s| {
        if let Some(k) = s.kernel_irqchip.as_mut() {
            k.lapics[1].truncate(100);
        }
    }));
    assert!(e.contains("state.bin") && e.contains("vCPU 1: field kernel_irqchip.lapics[1]"), "{e}");
    let e = msg(hostile(&base, |s| {
        if let Some(k) = s.kernel_irqchip.as_mut() {
            k.lapics.pop();
        }
    }));
    assert!(e.contains("1 local APIC states for 2 vCPUs (field kernel_irqchip.lapics)"), "{e}");
    let e = msg(hostile(&base, |s| s.kernel_irqchip = None));
    assert!(e.contains("state.bin") && e.contains("2 vCPUs without KVM's in-kernel irqchip"), "{e}");
    let e = msg(hostile(&base, |s| {
        if let Some(k) = s.kernel_irqchip.as_mut() {
            k.chip.ioapic.truncate(3);
        }
    }));
    assert!(e.contains("state.bin") && e.to_lowercase().contains("ioapic"), "{e}");
}

//! A VMM vmrr did not write, with several vCPU threads and a device thread
//! (examples/smp_vmm.rs: rust-vmm parts, KVM's irqchip and PIT, an ioeventfd-notified
//! queue completing through an irqfd), records through `Embedded::start_smp`; vmrr then
//! reproduces its AP's failure with nothing of that VMM. Device threads' guest writes are
//! records of the device thread.

mod common;
use common::*;

use std::path::Path;

use kvm_ioctls::{Kvm, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmrr_engine::embed::{
    DEVICE_THREAD_BASE, EmbedError, EmbedOptions, Embedded, SmpParts, VmParts, end_reason, slots_of,
};
use vmrr_format::{Body, TraceReader};

/// Runs the example VMM, recording into `trace`; returns its console output.
fn record_smp(trace: &Path) -> String {
    let bin = Path::new(env!("CARGO_BIN_EXE_vmrr")).with_file_name("examples").join("smp_vmm");
    // `cargo test` builds the examples; `cargo test --test smp_vmm` alone does not
    // rebuild it: run `cargo build --release --example smp_vmm` first then.
    assert!(bin.exists(), "{} missing: cargo test builds the examples", bin.display());
    let o = std::process::Command::new(&bin).arg(trace).output().expect("runs the example VMM");
    assert!(o.status.success(), "smp_vmm failed: {}", stderr(&o));
    assert!(stderr(&o).contains("vCPU 1 failed at record"), "{}", stderr(&o));
    stdout(&o)
}

/// A guest_write record: `(vcpu, gpa, data)`.
type Write = (u32, u64, Vec<u8>);
/// An annotation record: `(vcpu, key, value)`.
type Note = (u32, String, String);

/// Every guest_write record and every annotation, in order.
/// What [`writes_and_notes`] lists an irqfd interrupt as.
const IRQFD: &str = "irq_line via irqfd";

fn writes_and_notes(trace: &Path) -> (Vec<Write>, Vec<Note>) {
    let mut r = TraceReader::open(trace).unwrap();
    let (mut writes, mut notes) = (Vec::new(), Vec::new());
    while let Some(rec) = r.next_record() {
        let rec = rec.unwrap();
        match rec.body {
            Body::GuestWrite(w) => writes.push((rec.vcpu, w.gpa, w.data.to_vec())),
            Body::Annotation(a) => notes.push((rec.vcpu, a.key.to_string(), a.value.to_string())),
            // An interrupt a device thread raised through an irqfd (format 1.2 IRQ_LINE).
            Body::IrqLine(l)
                if l.via == vmrr_format::IRQ_VIA_IRQFD && l.level == vmrr_format::IRQ_LEVEL_PULSE =>
            {
                notes.push((rec.vcpu, IRQFD.to_string(), l.gsi.to_string()))
            }
            _ => {}
        }
    }
    (writes, notes)
}

fn note<'a>(notes: &'a [Note], key: &str) -> Option<&'a str> {
    notes.iter().rev().find(|n| n.1 == key).map(|n| n.2.as_str())
}

#[test]
fn an_smp_vmm_failure_reproduces_on_its_ap_without_that_vmm() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let trace = at(&d, "s.vmrr");
    let console = record_smp(&trace);
    for k in 0..3 {
        assert!(
            console.contains(&format!("bsp: device served request {k} on thread 0x80000000")),
            "{console}"
        );
    }
    assert!(console.contains("ap: now popcnt rax, [rdi] on MMIO"), "{console}");

    // The trace says what machine it was and which vCPU failed; the device thread's
    // writes and interrupts are its own records.
    let (writes, notes) = writes_and_notes(&trace);
    assert_eq!(note(&notes, "vmrr.vcpus"), Some("2"));
    assert_eq!(note(&notes, "vmrr.irqchip"), Some("kernel"));
    assert_eq!(note(&notes, "vmrr.recorder"), Some("embedded"));
    assert_eq!(note(&notes, "failure.vcpu"), Some("1"));
    assert_eq!(writes.len(), 3, "one per request: {writes:?}");
    for (k, (vcpu, gpa, data)) in writes.iter().enumerate() {
        assert_eq!(*vcpu, DEVICE_THREAD_BASE);
        assert_eq!(*gpa, 0xa000);
        assert!(data.starts_with(format!("device served request {k}").as_bytes()), "{data:?}");
    }
    let irqs: Vec<_> = notes.iter().filter(|n| n.1 == IRQFD).collect();
    assert_eq!(irqs.len(), 3, "{irqs:?}");
    assert!(irqs.iter().all(|n| n.0 == DEVICE_THREAD_BASE && n.2 == "20"), "{irqs:?}");
    let failed_at: u64 = note(&notes, "failure.seq").unwrap().parse().unwrap();
    let mut r = TraceReader::open(&trace).unwrap();
    r.seek_seq(failed_at).unwrap();
    let rec = r.next_record().unwrap().unwrap();
    assert_eq!((rec.seq, rec.vcpu), (failed_at, 1));
    assert!(matches!(rec.body, Body::InternalError(_)), "{:?}", rec.body);

    // Packed, moved where nothing of the VMM or its recording is, and replayed: the
    // failure point restores both vCPUs and the irqchip, runs the AP, and it fails again.
    let bundle = at(&d, "s.vmrrb");
    let o = vmrr(&["pack", s(&trace), "-o", s(&bundle)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let elsewhere = tmp();
    let moved = at(&elsewhere, "s.vmrrb");
    std::fs::copy(&bundle, &moved).unwrap();
    drop(d);
    let (code, rep) = replay_json(&moved, &[]);
    assert_eq!(code, Some(0), "{rep}");
    assert_eq!(rep["outcome"], "reproduced", "{rep}");
    assert_eq!(rep["failure_point"]["vcpu"], 1, "{rep}");
    assert_eq!(rep["failure_point"]["vcpus"], 2, "{rep}");
}

/// A VM with KVM's irqchip and PIT, `n` vCPUs and 1 MiB of memory at 0 (slot 0).
fn vm(n: u64) -> (Kvm, kvm_ioctls::VmFd, Vec<VcpuFd>, GuestMemoryMmap) {
    let kvm = Kvm::new().unwrap();
    let vm = kvm.create_vm().unwrap();
    vm.set_tss_address(0xfffb_d000).unwrap();
    vm.create_irq_chip().unwrap();
    vm.create_pit2(kvm_bindings::kvm_pit_config::default()).unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let host = mem.get_host_address(GuestAddress(0)).unwrap();
    let region = kvm_bindings::kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: 1 << 20,
        userspace_addr: host as u64,
    };
    // SAFETY: `host` is the start of `mem`'s one 1 MiB region; the caller keeps `mem`
    // alive as long as the VM.
    unsafe { vm.set_user_memory_region(region).unwrap() };
    let vcpus = (0..n).map(|i| vm.create_vcpu(i).unwrap()).collect();
    (kvm, vm, vcpus, mem)
}

#[test]
fn device_thread_writes_are_records_of_that_device_thread() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let trace = at(&d, "dev.vmrr");
    let (kvm, vm, vcpus, mem) = vm(2);
    let refs: Vec<&VcpuFd> = vcpus.iter().collect();
    let parts = SmpParts { kvm: &kvm, vm: &vm, vcpus: &refs };
    let (mut rec, handles) =
        Embedded::start_smp(parts, &mem, &slots_of(&mem), &trace, EmbedOptions::default()).unwrap();
    assert_eq!(handles.iter().map(|h| h.index()).collect::<Vec<_>>(), vec![0, 1]);
    let (first, second) = (rec.device_thread().unwrap(), rec.device_thread().unwrap());
    assert_eq!((first.id(), second.id()), (DEVICE_THREAD_BASE, DEVICE_THREAD_BASE + 1));
    // Two device threads write, one through its memory and one explicitly.
    std::thread::scope(|sc| {
        sc.spawn(|| {
            let m = first.memory();
            m.write_slice(b"disk block", GuestAddress(0x4000)).unwrap();
            m.write_obj(0x1122_3344u32, GuestAddress(0x5000)).unwrap();
        });
        sc.spawn(|| {
            mem.write_slice(b"packet", GuestAddress(0x6000)).unwrap();
            second.record_guest_write(0x6000, b"packet").unwrap();
            // Interrupts through an irqfd: each one an IRQ_LINE record of this thread.
            for _ in 0..300 {
                second.record_irqfd(21).unwrap();
            }
        });
    });
    // A checkpoint needs every vCPU.
    let one = [refs[0]];
    let short = SmpParts { kvm: &kvm, vm: &vm, vcpus: &one };
    assert!(matches!(rec.checkpoint_smp(short), Err(EmbedError::VcpuCount { expected: 2, got: 1 })));
    let parts = SmpParts { kvm: &kvm, vm: &vm, vcpus: &refs };
    rec.finish_smp(parts, end_reason::STOPPED, 0, None).unwrap();

    let (writes, notes) = writes_and_notes(&trace);
    let mut by_first: Vec<_> = writes.iter().filter(|w| w.0 == DEVICE_THREAD_BASE).collect();
    by_first.sort_by_key(|w| w.1);
    assert_eq!(
        by_first.iter().map(|w| (w.1, w.2.clone())).collect::<Vec<_>>(),
        vec![(0x4000, b"disk block".to_vec()), (0x5000, 0x1122_3344u32.to_le_bytes().to_vec())]
    );
    let by_second: Vec<_> = writes.iter().filter(|w| w.0 == DEVICE_THREAD_BASE + 1).collect();
    assert_eq!(by_second.len(), 1);
    assert_eq!((by_second[0].1, by_second[0].2.as_slice()), (0x6000, &b"packet"[..]));
    assert_eq!(writes.len(), 3, "{writes:?}");
    assert_eq!(note(&notes, "vmrr.vcpus"), Some("2"));
    assert_eq!(note(&notes, "failure.vcpu"), None, "no failure named");
    let irqs = notes.iter().filter(|n| n.1 == IRQFD).collect::<Vec<_>>();
    assert_eq!(irqs.len(), 300);
    assert!(irqs.iter().all(|n| n.0 == DEVICE_THREAD_BASE + 1 && n.2 == "21"));

    // Both snapshots hold every vCPU, each local APIC and the irqchip; the final one the
    // device threads' bytes.
    let snaps = vmrr_engine::snapshot::dir_for_trace(&trace);
    for id in [0, 1] {
        let dir = vmrr_engine::snapshot::snapshot_dir(&snaps, id);
        let st = vmrr_engine::snapshot::load(&dir, 1 << 30).unwrap().state;
        assert_eq!(st.vcpus.len(), 2, "snapshot {id}");
        let k = st.kernel_irqchip.as_ref().expect("the in-kernel irqchip is saved");
        assert_eq!(k.lapics.len(), 2, "snapshot {id}");
    }
    let flat = at(&d, "flat");
    let final_dir = vmrr_engine::snapshot::snapshot_dir(&snaps, 1);
    let o = vmrr(&["snapshot", "flatten", s(&final_dir), s(&flat)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let image = std::fs::read(flat.join("mem-0.raw")).unwrap();
    assert_eq!(&image[0x4000..0x400a], b"disk block");
    assert_eq!(&image[0x6000..0x6006], b"packet");
}

#[test]
fn the_smp_calls_refuse_a_single_vcpu_recording() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let (kvm, vm, mut vcpus, mem) = vm(1);
    let vcpu = &mut vcpus[0];
    let parts = VmParts { kvm: &kvm, vm: &vm, vcpu };
    let mut rec =
        Embedded::start(parts, &mem, &slots_of(&mem), &at(&d, "one.vmrr"), EmbedOptions::default()).unwrap();
    assert!(matches!(rec.device_thread(), Err(EmbedError::NotSmp)));
}

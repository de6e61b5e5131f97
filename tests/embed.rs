//! A VMM with its own vCPU loop (raw kvm-ioctls, no vmrr VM type) records the same trace
//! as the engine does for the same guest.

mod common;
use common::*;

use kvm_ioctls::{Kvm, SyncReg, VcpuExit};
use vmrr_format::{TraceWriter, WriterOptions, end_reason};

/// Real mode at 0x7c00: UART poll, "ok" out, an IN from a port nobody claims, a string
/// OUT (rep outsb of 3 bytes), then the debug-exit write.
const PROGRAM: &[u8] = &[
    0xba, 0xfd, 0x03, // mov dx, 0x3fd
    0xec, // in al, dx
    0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0xb0, b'o', 0xee, // mov al,'o' ; out dx, al
    0xb0, b'k', 0xee, // mov al,'k' ; out dx, al
    0xba, 0xf0, 0x05, // mov dx, 0x5f0
    0xed, // in ax, dx (16-bit)
    0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0xbe, 0x00, 0x7d, // mov si, 0x7d00
    0xb9, 0x03, 0x00, // mov cx, 3
    0xf3, 0x6e, // rep outsb
    0xb0, 0x00, 0xe6, 0xf4, // mov al, 0 ; out 0xf4, al
    0xf4, // hlt
];

fn raw_vmm_trace(path: &std::path::Path) {
    let kvm = Kvm::new().expect("kvm");
    let vm = kvm.create_vm().expect("vm");
    vm.set_tss_address(0xfffb_d000).expect("tss");
    let mut mem = memmap2::MmapMut::map_anon(1 << 20).expect("memory");
    mem[0x7c00..0x7c00 + PROGRAM.len()].copy_from_slice(PROGRAM);
    mem[0x7d00..0x7d03].copy_from_slice(b"!\r\n");
    let region = kvm_bindings::kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: 1 << 20,
        userspace_addr: mem.as_mut_ptr() as u64,
    };
    // SAFETY: `mem` outlives the VM: both are dropped at the end of this function, the
    // mapping last.
    unsafe { vm.set_user_memory_region(region).expect("slot") };
    let mut vcpu = vm.create_vcpu(0).expect("vcpu");
    vcpu.set_sync_valid_reg(SyncReg::Register);
    let mut sregs = vcpu.get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    for s in [&mut sregs.ds, &mut sregs.es, &mut sregs.ss] {
        s.base = 0;
        s.selector = 0;
    }
    vcpu.set_sregs(&sregs).unwrap();
    vcpu.set_regs(&kvm_bindings::kvm_regs { rip: 0x7c00, rsp: 0x7000, rflags: 2, ..Default::default() })
        .unwrap();
    let w = TraceWriter::create(path, WriterOptions { timing: true, ..Default::default() }).unwrap();
    let opts = vmrr_engine::RecorderOptions { timing: true };
    let mut rec = vmrr_engine::Recorder::with_options(&kvm, &vcpu, 0, w, opts).expect("recorder");
    loop {
        // Timing: the recorder is told when the guest is entered and when it exits.
        rec.entering();
        let exit = vcpu.run().expect("run");
        rec.exited();
        let stop = match exit {
            VcpuExit::IoIn(port, data) => {
                data.fill(if port == 0x3fd { 0x60 } else { 0xff });
                false
            }
            VcpuExit::IoOut(0xf4, _) => true,
            _ => false,
        };
        rec.record_exit().expect("record");
        if stop {
            break;
        }
    }
    rec.finish(end_reason::GUEST_EXIT, 0).expect("finish");
    drop(vcpu);
    drop(vm);
    drop(mem);
}

#[test]
fn an_embedding_vmm_records_the_same_exits_as_the_engine() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let raw = at(&d, "raw.vmrr");
    raw_vmm_trace(&raw);
    let img = at(&d, "prog.bin");
    let mut image = PROGRAM.to_vec();
    image.resize(0x100, 0);
    image.extend_from_slice(b"!\r\n");
    std::fs::write(&img, &image).unwrap();
    let eng = at(&d, "engine.vmrr");
    let o = vmrr(
        &[
            &["record"][..],
            &image_args(&img, "0x7c00", "real"),
            &["-o", s(&eng), "--serial", "none", "--timing"],
        ]
        .concat(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // Both carry timing on every exit, announced in the header.
    for p in [&raw, &eng] {
        assert!(vmrr_format::TraceReader::open(p).unwrap().header().has_timing());
        assert!(exits(&records(p)).iter().all(|r| r.json["timing"]["guest_ns"].is_u64()), "{}", p.display());
    }
    let strip = |p: &std::path::Path| -> Vec<(serde_json::Value, Option<u64>)> {
        exits(&records(p))
            .into_iter()
            .map(|r| {
                let mut j = r.json.clone();
                j.as_object_mut().unwrap().remove("seq");
                j.as_object_mut().unwrap().remove("regs");
                j.as_object_mut().unwrap().remove("timing");
                (j, r.rip)
            })
            .collect()
    };
    let (a, b) = (strip(&raw), strip(&eng));
    assert_eq!(a, b, "same exits, same replies, same RIPs");
    // The string OUT's three bytes are all recorded (hosts differ in how many exits a
    // `rep outsb` takes: VMX usually one with count 3, some hosts one per byte).
    let after_in: String = a
        .iter()
        .skip_while(|(j, _)| j["port"] != 0x5f0)
        .filter(|(j, _)| j["port"] == 0x3f8)
        .map(|(j, _)| j["data"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(after_in, "210d0a");
    // The unclaimed 16-bit IN was answered with ones, in both.
    assert!(a.iter().any(|(j, _)| j["port"] == 0x5f0 && j["data"] == "ffff"));
    assert_eq!(a.last().unwrap().0["port"], 0xf4);
}

#[test]
fn timing_needs_a_writer_that_announces_it() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let kvm = Kvm::new().expect("kvm");
    let vm = kvm.create_vm().expect("vm");
    let vcpu = vm.create_vcpu(0).expect("vcpu");
    let w = TraceWriter::create(&at(&d, "t.vmrr"), WriterOptions::default()).unwrap();
    let opts = vmrr_engine::RecorderOptions { timing: true };
    let err = vmrr_engine::Recorder::with_options(&kvm, &vcpu, 0, w, opts).unwrap_err();
    assert!(matches!(err, vmrr_engine::RecorderError::TimingUndeclared), "{err}");
}

/// The embedding example (`examples/embed.rs`, built by `cargo test` with the tests)
/// records with timing; `vmrr profile` names its costliest handler with percentiles.
#[test]
fn profiling_the_embedding_example_names_its_costliest_handler() {
    if !require_kvm() {
        return;
    }
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_vmrr")).with_file_name("examples").join("embed");
    assert!(bin.exists(), "{} missing: cargo test builds the examples", bin.display());
    let d = tmp();
    let trace = at(&d, "embed.vmrr");
    let o = std::process::Command::new(&bin).arg(&trace).output().expect("runs the example");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = vmrr(&["profile", s(&trace), "--json", "--top", "0"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let p: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // 200 rounds of: IN 0x3fd, OUT 0x3f8 twice, IN 0x5f0; then HLT.
    assert_eq!(p["summary"]["exits"], 801);
    assert_eq!(p["summary"]["timed_exits"], 801);
    assert_eq!(p["by_port"]["0x3f8:out"]["count"], 400);
    let dev = &p["costliest"]["device"];
    assert!(["0x3f8:out", "0x3fd:in", "0x5f0:in"].contains(&dev["key"].as_str().unwrap()), "{dev}");
    let h = &dev["handler_ns"];
    let n = |k: &str| h[k].as_u64().unwrap();
    assert!(n("min") <= n("p50") && n("p50") <= n("p99") && n("p99") <= n("max"), "{h}");
    // Every exit but the last has its handler time (the last has no re-entry).
    assert_eq!(p["summary"]["handler_samples"], 800);
    let o = vmrr(&["profile", s(&trace), "--by", "port"]);
    let text = stdout(&o);
    assert!(text.lines().any(|l| l.starts_with("costliest device: port ") && l.contains(" p99 ")), "{text}");
}

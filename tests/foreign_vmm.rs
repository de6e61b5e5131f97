//! A VMM vmrr did not write (examples/foreign_vmm.rs: rust-vmm parts, a DMA block device,
//! vm-superio's serial) records through `vmrr_engine::embed`; vmrr then replays the
//! recording with nothing of that VMM: same console, same final memory. Without one of its
//! `guest_write` records the replay diverges where the guest first used the missing data.

mod common;
use common::*;

use std::path::{Path, PathBuf};

use vmrr_format::{Body, TraceReader, TraceWriter, WriterOptions, kind};

/// Runs the example VMM, recording into `trace`; returns its console output.
fn record_foreign(trace: &Path) -> String {
    let bin = Path::new(env!("CARGO_BIN_EXE_vmrr")).with_file_name("examples").join("foreign_vmm");
    // `cargo test` builds the examples; `cargo test --test foreign_vmm` alone does not
    // rebuild it: run `cargo build --release --example foreign_vmm` first then.
    assert!(bin.exists(), "{} missing: cargo test builds the examples", bin.display());
    let o = std::process::Command::new(&bin).arg(trace).output().expect("runs the example VMM");
    assert!(o.status.success(), "foreign_vmm failed: {}", stderr(&o));
    stdout(&o)
}

/// Guest memory as the snapshot `dir` (and its parents) holds it: one full image of slot 0.
fn memory_of(d: &tempfile::TempDir, dir: &Path, name: &str) -> Vec<u8> {
    let flat = at(d, name);
    let o = vmrr(&["snapshot", "flatten", s(dir), s(&flat)]);
    assert!(o.status.success(), "flatten {}: {}", dir.display(), stderr(&o));
    let mut mem = std::fs::read(flat.join("mem-0.raw")).expect("slot 0 of the flattened snapshot");
    mem.resize(1 << 20, 0);
    mem
}

/// The `(seq, byte)` of every console write (OUT to 0x3f8) of a trace, in order.
fn console_writes(trace: &Path) -> Vec<(u64, u8)> {
    let mut r = TraceReader::open(trace).unwrap();
    let mut out = Vec::new();
    while let Some(rec) = r.next_record() {
        let rec = rec.unwrap();
        if let Body::Io(io) = rec.body {
            if io.port == 0x3f8 && io.data.len() == 1 {
                out.push((rec.seq, io.data[0]));
            }
        }
    }
    out
}

#[test]
fn a_foreign_vmm_recording_replays_without_that_vmm() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let trace = at(&d, "f.vmrr");
    let console = record_foreign(&trace);
    let sums: Vec<&str> = console.trim_end().split(' ').collect();
    assert_eq!(sums.len(), 4, "four block checksums: {console:?}");
    assert!(sums.iter().all(|x| x.len() == 4 && x.bytes().all(|b| b.is_ascii_hexdigit())), "{console:?}");

    // The trace: format 1.1, guest writes counted.
    let st = summary(&vmrr(&["stats", s(&trace), "--json"]));
    assert_eq!(st["format_version"], "1.1");
    assert_eq!(st["by_kind"]["guest_write"], 4, "one per block: {st}");
    assert_eq!(st["by_kind"]["interrupt"], 4, "{st}");
    // Each block is asked for with interrupts off: the VMM requests a window and
    // withdraws it when it injects, both recorded (replayed below).
    assert_eq!(st["by_kind"]["interrupt_window"], 8, "{st}");
    // Its snapshots read like vmrr's own.
    let snaps = vmrr_engine::snapshot::dir_for_trace(&trace);
    let info = vmrr(&["snapshot", "info", s(&snaps.join("snap-000002"))]);
    assert!(info.status.success(), "{}", stderr(&info));
    assert!(stdout(&info).contains("incremental on 1"), "{}", stdout(&info));

    // Packed and replayed with nothing of the VMM: the same console...
    let bundle = at(&d, "b.vmrrb");
    let o = vmrr(&["pack", s(&trace), "-o", s(&bundle)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let serial = at(&d, "serial.txt");
    let (code, rep) = replay_json(&bundle, &["--serial", s(&serial)]);
    assert_eq!(code, Some(0), "{rep}");
    assert_eq!(rep["outcome"], "completed", "{rep}");
    assert_eq!(rep["start"]["snapshot"], 0, "{rep}");
    assert_eq!(std::fs::read_to_string(&serial).unwrap(), console);

    // ... and the same final memory: the replayed machine after the last exit against the
    // VMM's own memory in the final snapshot.
    let last_exit = console_writes(&trace).last().map(|w| w.0).unwrap() + 1; // the HLT
    let replayed = at(&d, "replayed-end");
    let (code, rep) = replay_json(&bundle, &["--snapshot-at", &last_exit.to_string(), s(&replayed)]);
    assert!(matches!(code, Some(0)), "{rep}");
    let want = memory_of(&d, &snaps.join("snap-000002"), "recorded-flat");
    let got = memory_of(&d, &replayed, "replayed-flat");
    let first_diff = want.iter().zip(&got).position(|(a, b)| a != b);
    assert_eq!(first_diff, None, "final memory differs at {first_diff:#x?}");
    assert_eq!(&got[0x8000..0x8010], &want[0x8000..0x8010]);
    assert!(got[0x8000..0x9000].iter().any(|&b| b != 0), "the last block is in memory");
}

/// Copies `src` without its `nth` guest_write record: the records after it move down one
/// sequence number (a gap would read as a damaged trace), checkpoints' `exit_seq` with them.
/// The snapshots are kept beside the copy; replay starts from snapshot 0, before the cut.
fn drop_guest_write(src: &Path, dst: &Path, nth: usize) -> u64 {
    let mut r = TraceReader::open(src).unwrap();
    let opts =
        WriterOptions { trace_id: Some(r.header().trace_id), guest_writes: true, ..Default::default() };
    let mut w = TraceWriter::create(dst, opts).unwrap();
    let (mut seen, mut dropped) = (0, None);
    while let Some(rec) = r.next_record() {
        let mut rec = rec.unwrap();
        if rec.body.kind() == kind::GUEST_WRITE {
            seen += 1;
            if seen == nth + 1 {
                dropped = Some(rec.seq);
                continue;
            }
        }
        if let Some(cut) = dropped {
            rec.seq -= 1;
            if let Body::Checkpoint(c) = &mut rec.body {
                if c.exit_seq > cut {
                    c.exit_seq -= 1;
                }
            }
        }
        w.append_record(&rec).unwrap();
    }
    w.finish().unwrap();
    copy_dir(&vmrr_engine::snapshot::dir_for_trace(src), &vmrr_engine::snapshot::dir_for_trace(dst));
    dropped.expect("the trace holds that guest write")
}

#[test]
fn without_one_guest_write_the_replay_diverges_where_the_guest_used_it() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let trace = at(&d, "f.vmrr");
    record_foreign(&trace);
    let cut: PathBuf = at(&d, "cut.vmrr");
    // Block 1's data (written with an explicit record_guest_write).
    let dropped = drop_guest_write(&trace, &cut, 1);
    // Replayed, the buffer still holds block 0, so the guest prints block 0's checksum
    // where block 1's was recorded: the first console write whose digit differs is the
    // first exit that depended on the missing write.
    let writes = console_writes(&cut);
    let block0: Vec<u8> = writes.iter().take(4).map(|w| w.1).collect();
    let block1: Vec<(u64, u8)> = writes.iter().filter(|w| w.0 >= dropped).take(4).copied().collect();
    let expected = block1
        .iter()
        .zip(&block0)
        .find(|(rec, replayed)| rec.1 != **replayed)
        .map(|(rec, _)| rec.0)
        .expect("blocks 0 and 1 have different checksums");
    let (code, rep) = replay_json(&cut, &["--no-explain"]);
    assert_eq!(code, Some(1), "a divergence: {rep}");
    assert_eq!(rep["outcome"], "diverged", "{rep}");
    let div = &rep["divergence"];
    assert_eq!(
        div["seq"], expected,
        "diverges at the first exit that used the dropped write {dropped}: {rep}"
    );
    assert_eq!(div["expected"]["kind"], "io");
    assert_eq!(div["expected"]["port"], 0x3f8);
    assert!(div["seq"].as_u64().unwrap() >= dropped);
}

/// A trace with a replay-required feature this vmrr does not know: it reads (inspect,
/// stats), but replay refuses it with exit 3, naming the bit, before touching KVM.
#[test]
fn an_unknown_replay_required_feature_is_read_but_not_replayed() {
    let d = tmp();
    let mut bytes =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/guest-write-1.1.vmrr")).unwrap();
    // replay_required_features (offset 72) = bit 3, then the header CRC again.
    bytes[72..80].copy_from_slice(&(1u64 << 3).to_le_bytes());
    let size = usize::try_from(u32::from_le_bytes(bytes[12..16].try_into().unwrap())).unwrap();
    let crc = crc32c::crc32c(&bytes[..size - 4]);
    bytes[size - 4..size].copy_from_slice(&crc.to_le_bytes());
    let trace = at(&d, "future.vmrr");
    std::fs::write(&trace, &bytes).unwrap();
    let o = vmrr(&["inspect", s(&trace)]);
    assert!(o.status.success(), "inspect reads it: {}", stderr(&o));
    assert!(stdout(&o).contains("guest_write"), "{}", stdout(&o));
    let o = vmrr(&["replay", s(&trace)]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("replay requires unknown feature (replay-required bit 3)"), "{}", stderr(&o));
    // Nor is it repaired (FORMAT.md §11): exit 3, like every trace needing a feature this
    // vmrr lacks, and nothing written.
    let out = at(&d, "repaired.vmrr");
    let o = vmrr(&["verify", s(&trace), "--repair", s(&out)]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot repair"), "{}", stderr(&o));
    assert!(!out.exists());
}

/// The CPUID records of a trace, in order (the prelude has one), without the APIC ids
/// (leaf 1 EBX[31:24], leaves 0xb and 0x1f EDX): KVM_GET_SUPPORTED_CPUID reports those of
/// the host CPU the ioctl ran on.
fn recorded_cpuid(trace: &Path) -> Vec<vmrr_format::CpuidEntry> {
    let mut r = TraceReader::open(trace).unwrap();
    let mut out = Vec::new();
    while let Some(rec) = r.next_record() {
        if let Body::Cpuid(c) = rec.unwrap().body {
            out.extend(c.iter());
        }
    }
    without_apic_ids(out)
}

fn without_apic_ids(mut entries: Vec<vmrr_format::CpuidEntry>) -> Vec<vmrr_format::CpuidEntry> {
    for e in &mut entries {
        match e.function {
            1 => e.ebx &= 0x00ff_ffff,
            0xb | 0x1f => e.edx = 0,
            _ => {}
        }
    }
    entries
}

#[test]
fn a_foreign_vmm_recording_replays_on_its_own_host_without_cpu_warnings() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let trace = at(&d, "f.vmrr");
    record_foreign(&trace);
    // The trace holds the CPUID the guest was given (the deterministic profile the example
    // passes), not what KVM_GET_CPUID2 reads back.
    let kvm = kvm_ioctls::Kvm::new().expect("/dev/kvm");
    let given =
        vmrr_engine::kvm::cpuid::build(&kvm, vmrr_engine::kvm::cpuid::CpuidProfile::Deterministic, false)
            .expect("the deterministic profile");
    assert_eq!(recorded_cpuid(&trace), without_apic_ids(vmrr_engine::kvm::cpuid::to_format(&given)));
    // Replayed on the host that recorded it: nothing the guest saw is missing here...
    let (code, rep) = replay_json(&trace, &[]);
    assert_eq!(code, Some(0), "{rep}");
    assert_eq!(rep["cpu_warnings"], serde_json::json!([]), "{rep}");
    // ... so a replay that refuses a host lacking a feature accepts this one.
    let (code, rep) = replay_json(&trace, &["--strict-cpu"]);
    assert_eq!(code, Some(0), "{rep}");
    assert_eq!(rep["outcome"], "completed", "{rep}");
    let o = vmrr(&["replay", s(&trace)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stdout(&o).contains("warning"), "{}", stdout(&o));
}

/// `Embedded::start` follows vmrr's output rule: an existing trace (or its snapshots
/// directory) is refused, not replaced; the trace is unchanged.
#[test]
fn an_embedded_recording_never_replaces_a_trace() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let trace = at(&d, "f.vmrr");
    record_foreign(&trace);
    let before = std::fs::read(&trace).unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_vmrr")).with_file_name("examples").join("foreign_vmm");
    let o = std::process::Command::new(&bin).arg(&trace).output().expect("runs the example VMM");
    assert!(!o.status.success(), "a second recording into {} was refused", trace.display());
    assert!(stderr(&o).contains("Exists"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&trace).unwrap(), before, "the trace is unchanged");
    // Its snapshots directory alone is refused as well.
    std::fs::remove_file(&trace).unwrap();
    let o = std::process::Command::new(&bin).arg(&trace).output().expect("runs the example VMM");
    assert!(!o.status.success() && !trace.exists(), "{}", stderr(&o));
}

//! The trace-reading commands (`inspect`, `stats`, `verify`) end to end: output shape,
//! JSON field names, and exit codes on damaged input and bad usage.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn vmrr(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmrr")).args(args).output().expect("runs vmrr")
}

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

#[test]
fn inspect_json_uses_kvm_field_names() {
    let out = vmrr(&["inspect", s(&data("spec-example.vmrr")), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let recs = json_lines(&out);
    assert_eq!(recs.len(), 4);
    let io = &recs[1];
    assert_eq!(io["seq"], 1);
    assert_eq!(io["vcpu"], 0);
    assert_eq!(io["kind"], "io");
    assert_eq!(io["direction"], "out");
    assert_eq!(io["port"], 0x3f8);
    assert_eq!(io["size"], 1);
    assert_eq!(io["count"], 1);
    assert_eq!(io["data"], "48");
    assert_eq!(io["regs"]["rip"], 0x7c05);
    assert_eq!(recs[3]["kind"], "end_of_run");
    assert_eq!(recs[3]["reason"], "hlt");
}

#[test]
fn inspect_from_and_count_select_a_window() {
    let out = vmrr(&["inspect", s(&data("serial-1.0.vmrr")), "--from", "1000", "--count", "3", "--json"]);
    assert!(out.status.success());
    let seqs: Vec<u64> = json_lines(&out).iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1000, 1001, 1002]);
    let text = vmrr(&["inspect", s(&data("serial-1.0.vmrr")), "--count", "2"]);
    let t = String::from_utf8_lossy(&text.stdout);
    assert!(t.lines().nth(1).unwrap().contains("io") && t.contains("port=0x3fd"), "{t}");
}

#[test]
fn stats_json_has_the_documented_fields() {
    let out = vmrr(&["stats", s(&data("serial-1.0.vmrr")), "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["format_version"], "1.0");
    assert_eq!(v["records"], 5202);
    assert_eq!(v["exits"], 5200);
    assert_eq!(v["by_kind"]["io"], 5200);
    assert_eq!(v["vcpus"], 1);
    assert!(v["chunks"].as_u64().unwrap() >= 1);
    assert!(v["compressed_bytes"].as_u64().unwrap() < v["bytes"].as_u64().unwrap() / 10);
}

#[test]
fn verify_reports_damage_with_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("damaged.vmrr");
    let mut b = std::fs::read(data("serial-1.0.vmrr")).unwrap();
    // Flip a byte inside the first chunk's payload.
    let hs = usize::try_from(u32::from_le_bytes(b[12..16].try_into().unwrap())).unwrap();
    b[hs + 40 + 100] ^= 0xff;
    std::fs::write(&p, &b).unwrap();
    let ok = vmrr(&["verify", s(&data("serial-1.0.vmrr")), "--json"]);
    assert_eq!(ok.status.code(), Some(0));
    let out = vmrr(&["verify", s(&p), "--json"]);
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert!(v["records_readable"].as_u64().unwrap() > 0, "the intact chunk still reads");
    let d = &v["damaged_chunks"][0];
    assert_eq!(d["offset"].as_u64().unwrap(), u64::try_from(hs + 40).unwrap());
    assert!(d["reason"].as_str().unwrap().contains("checksum"));
    // Human output names file, offset and reason.
    let human = vmrr(&["verify", s(&p)]);
    let err = String::from_utf8_lossy(&human.stderr);
    assert!(
        err.contains("damaged.vmrr") && err.contains(&format!("{:#x}", hs + 40)) && err.contains("checksum"),
        "{err}"
    );
}

#[test]
fn invalid_input_exits_3_and_usage_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.vmrr");
    std::fs::write(&junk, b"this is not a trace at all, just text").unwrap();
    let out = vmrr(&["stats", s(&junk)]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("junk.vmrr") && err.contains("offset 0x0") && err.contains("magic"), "{err}");
    assert_eq!(vmrr(&["stats", s(&dir.path().join("missing.vmrr"))]).status.code(), Some(2));
    assert_eq!(vmrr(&["inspect", "--count", "x", "f"]).status.code(), Some(2));
    assert_eq!(vmrr(&["no-such-command"]).status.code(), Some(2));
}

#[test]
fn future_minor_trace_reads_through_the_cli() {
    let out = vmrr(&["inspect", s(&data("future-minor-1.3.vmrr")), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let recs = json_lines(&out);
    assert_eq!(recs.len(), 4);
    assert_eq!(recs[1]["kind"], "unknown_event");
    assert!(recs[0]["unknown"]["tail"].as_str().unwrap().len() == 32);
}

#[test]
fn verify_calls_a_trace_without_index_intact_and_says_so() {
    // A writer that died right after a chunk leaves no index: valid (FORMAT.md §2).
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("unfinished.vmrr");
    let b = std::fs::read(data("serial-1.0.vmrr")).unwrap();
    let n = b.len();
    let index_offset = usize::try_from(u64::from_le_bytes(b[n - 24..n - 16].try_into().unwrap())).unwrap();
    std::fs::write(&p, &b[..index_offset]).unwrap();
    let out = vmrr(&["verify", s(&p), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["index"], "missing");
    assert_eq!(v["damaged_chunks"].as_array().map(Vec::len), Some(0));
    let human = vmrr(&["verify", s(&p)]);
    assert_eq!(human.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&human.stdout).contains("no index"), "{human:?}");
}

#[test]
fn inspect_prints_values_it_does_not_know_raw() {
    use vmrr_format::{Body, EndOfRun, Interrupt, Record, TraceWriter, WriterOptions};
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("newer-values.vmrr");
    let mut w = TraceWriter::create(&p, WriterOptions::default()).unwrap();
    for (seq, body) in [
        Body::Interrupt(Interrupt { vector: 0x20, source: 7 }),
        Body::Interrupt(Interrupt { vector: 0, source: 1 }),
        Body::EndOfRun(EndOfRun { reason: 13, exits: 0, status: 0 }),
    ]
    .into_iter()
    .enumerate()
    {
        w.append_record(&Record::new(u64::try_from(seq).unwrap(), 0, body)).unwrap();
    }
    w.finish().unwrap();
    let text = vmrr(&["inspect", s(&p)]);
    assert!(text.status.success(), "{}", String::from_utf8_lossy(&text.stderr));
    let t = String::from_utf8_lossy(&text.stdout);
    assert!(t.contains("source=7 (unknown)"), "{t}");
    assert!(t.contains(" nmi"), "{t}");
    assert!(t.contains("reason=13 (unknown)"), "{t}");
    let recs = json_lines(&vmrr(&["inspect", s(&p), "--json"]));
    assert_eq!(recs[0]["source"], "unknown");
    assert_eq!(recs[0]["source_code"], 7);
    assert_eq!(recs[1]["source"], "nmi");
    assert_eq!(recs[2]["reason"], "unknown");
    assert_eq!(recs[2]["reason_code"], 13);
}

/// FORMAT.md §5.2: `sample_flags` bits this version does not define are kept; `inspect`
/// prints them (JSON `sample_flags`, the whole word) rather than dropping them.
#[test]
fn inspect_keeps_sample_flags_it_does_not_know() {
    use vmrr_format::{Body, RegsSample, TraceWriter, WriterOptions};
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sample-flags.vmrr");
    let mut w = TraceWriter::create(&p, WriterOptions::default()).unwrap();
    let regs = RegsSample { rip: 0x1000, rsp: 0x2000, rflags: 2, flags: RegsSample::RIP_AFTER_INSN | 1 << 5 };
    w.append(0, Body::Hlt, Some(regs)).unwrap();
    w.finish().unwrap();
    let recs = json_lines(&vmrr(&["inspect", s(&p), "--json"]));
    assert_eq!(recs[0]["regs"]["sample_flags"], 0x21);
    assert_eq!(recs[0]["regs"]["rip_after_insn"], true);
    let text = vmrr(&["inspect", s(&p)]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("sample_flags=0x21"), "{text:?}");
}

/// FORMAT.md §3.2: a file of another major version is refused as such (exit 3), whatever
/// its header holds after the first 20 bytes: here a 2.0 header of 8 KiB whose checksum
/// a 1.x reader could not even locate.
#[test]
fn a_major_2_file_is_a_newer_version_not_a_corrupt_one() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("v2.vmrr");
    let mut b = b"VMRRTRC\0".to_vec();
    b.extend_from_slice(&0x0a0b_0c0du32.to_le_bytes());
    b.extend_from_slice(&8192u32.to_le_bytes());
    b.extend_from_slice(&[2, 0, 0, 0]);
    b.resize(8192 + 64, 0x5a);
    std::fs::write(&p, &b).unwrap();
    for cmd in ["inspect", "stats", "verify"] {
        let out = vmrr(&[cmd, s(&p)]);
        assert_eq!(out.status.code(), Some(3), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("v2.vmrr")
                && err.contains("format version 2.0 is not readable: this reader supports major version 1"),
            "{cmd}: {err}"
        );
    }
}

/// FORMAT.md §3: an unknown required bit without a descriptor is refused by number, in the
/// words the spec gives.
#[test]
fn an_unnamed_required_bit_is_refused_by_number() {
    let spec =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/FORMAT.md")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("unnamed.vmrr");
    let mut h = vmrr_format::FileHeader::new(1, [3; 16], &[]);
    h.incompat_features |= 1 << 5;
    std::fs::write(&p, h.encode()).unwrap();
    let out = vmrr(&["inspect", s(&p)]);
    assert_eq!(out.status.code(), Some(3));
    let expect = format!(
        "trace requires unknown feature (required bit 5); this reader implements format {}.{}: upgrade vmrr",
        vmrr_format::VERSION_MAJOR,
        vmrr_format::VERSION_MINOR
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains(&expect), "{out:?}");
    assert!(spec.contains(&format!("`{expect}`")), "FORMAT.md §3 words the refusal as the tool does");
}

/// FORMAT.md §8.7: every reading command prints what reads and exits 3 when anything it
/// read was damaged, a trailer or index failing its own checks included; a file without
/// an index (unfinished) is not damaged.
#[test]
fn every_reader_exits_3_on_a_damaged_index_and_0_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let b = std::fs::read(data("timing-1.0.vmrr")).unwrap();
    let n = b.len();
    let index_offset = usize::try_from(u64::from_le_bytes(b[n - 24..n - 16].try_into().unwrap())).unwrap();
    let mut bad = b.clone();
    bad[index_offset + 30] ^= 0x40; // inside the first entry: the index CRC fails
    let damaged = dir.path().join("damaged-index.vmrr");
    std::fs::write(&damaged, &bad).unwrap();
    let unfinished = dir.path().join("unfinished.vmrr");
    std::fs::write(&unfinished, &b[..index_offset]).unwrap();
    for (i, (file, code)) in [(&damaged, 3), (&unfinished, 0)].into_iter().enumerate() {
        let out = dir.path().join(format!("timeline-{i}.json"));
        for args in [
            vec!["inspect", s(file)],
            vec!["stats", s(file)],
            vec!["verify", s(file)],
            vec!["profile", s(file)],
            vec!["timeline", s(file), "-o", s(&out)],
        ] {
            let o = vmrr(&args);
            assert_eq!(o.status.code(), Some(code), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
            if matches!(args[0], "inspect" | "stats" | "profile") {
                assert!(!o.stdout.is_empty(), "{args:?} printed what reads");
            }
            if code == 3 {
                let err = String::from_utf8_lossy(&o.stderr);
                assert!(err.contains("damaged-index.vmrr") && err.contains("index"), "{args:?}: {err}");
            }
        }
    }
}

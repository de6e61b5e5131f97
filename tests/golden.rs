//! Golden files in `tests/data/`: traces written by earlier versions (and by a hand-built
//! "future" writer) that this and every later version must keep reading, with the same
//! content. Regenerate only deliberately: `cargo test --test golden -- --ignored regenerate`.

use std::path::PathBuf;

use vmrr_format::*;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

/// The text of docs/FORMAT.md between the line starting with `from` and the next line
/// starting with `to`.
fn spec_section(from: &str, to: &str) -> String {
    let spec = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/FORMAT.md"))
        .expect("docs/FORMAT.md");
    let start =
        spec.lines().position(|l| l.starts_with(from)).unwrap_or_else(|| panic!("no '{from}' in FORMAT.md"));
    spec.lines().skip(start + 1).take_while(|l| !l.starts_with(to)).collect::<Vec<_>>().join("\n")
}

/// The bytes of the first fenced block of `section` written as hex: `xxd -g 1` lines
/// (`OFFSET: bytes  text`, offsets checked to follow each other) or lines of hex bytes
/// followed by a comment. The spec is the reference: the golden files must be these bytes.
fn spec_bytes(section: &str) -> Vec<u8> {
    let block = section.split("```").nth(1).expect("a fenced block in the section");
    let mut bytes = Vec::new();
    for line in block.lines().filter(|l| !l.trim().is_empty()) {
        let rest = match line.split_once(": ") {
            Some((off, rest)) if off.len() == 8 && off.bytes().all(|b| b.is_ascii_hexdigit()) => {
                assert_eq!(usize::from_str_radix(off, 16).unwrap(), bytes.len(), "xxd offset of '{line}'");
                rest
            }
            _ => line,
        };
        // Hex byte tokens up to the first that is not one (the text or comment after them).
        for tok in rest.split(' ').filter(|t| !t.is_empty()) {
            match (tok.len(), u8::from_str_radix(tok, 16)) {
                (2, Ok(b)) => bytes.push(b),
                _ => break,
            }
        }
    }
    assert!(!bytes.is_empty(), "no hex bytes in the block");
    bytes
}

const SPEC_TRACE_ID: [u8; 16] = *b"vmrr-spec-exampl";
const SPEC_CREATED: u64 = 1_795_392_000_000_000_000; // 2026-11-23T00:00:00Z

/// The records of the spec's worked example (docs/FORMAT.md §10).
fn write_spec_example(w: &mut TraceWriter) {
    w.append(0, Body::Annotation(Annotation { key: "guest", value: "hello" }), None).unwrap();
    let io = Io { direction: Direction::Out, size: 1, port: 0x3f8, count: 1, data: b"H" };
    let regs = RegsSample { rip: 0x7c05, rsp: 0x7000, rflags: 0x2, flags: RegsSample::RIP_AFTER_INSN };
    w.append(0, Body::Io(io), Some(regs)).unwrap();
    w.append(0, Body::Hlt, None).unwrap();
    w.append(0, Body::EndOfRun(EndOfRun { reason: end_reason::HLT, exits: 2, status: 0 }), None).unwrap();
}

/// The records of the spec's 1.1 worked example (docs/FORMAT.md §10.1): the guest asks a
/// device for data (OUT 0x510), the device writes "hello" at 0x8000, the run ends.
fn write_guest_write_example(w: &mut TraceWriter) {
    let io = Io { direction: Direction::Out, size: 1, port: 0x510, count: 1, data: &[1] };
    w.append(0, Body::Io(io), None).unwrap();
    w.append_guest_write(0, 0x8000, b"hello").unwrap();
    w.append(0, Body::EndOfRun(EndOfRun { reason: end_reason::HLT, exits: 1, status: 0 }), None).unwrap();
}

/// The records of the spec's 1.2 worked example (docs/FORMAT.md §10.2): vCPU 0 writes to
/// a device's port, device thread 0 pulses GSI 5 through an irqfd, vCPU 1 halts, and vCPU
/// 0 ends the run. Appended through one stream per thread, in that order.
fn irq_line_options() -> WriterOptions {
    WriterOptions { irq_lines: true, threads: true, trace_id: Some(*b"vmrr-irq-line-12"), ..spec_options() }
}

/// Writes §10.2's records through a [`SharedTrace`], one stream per thread.
fn write_irq_line_example(w: TraceWriter) -> WriterSummary {
    let shared = w.into_shared();
    let (mut vcpu0, mut vcpu1, mut dev) = (shared.stream(), shared.stream(), shared.stream());
    let io = Io { direction: Direction::Out, size: 1, port: 0x510, count: 1, data: &[1] };
    vcpu0.append(0, Body::Io(io), None).unwrap();
    let line = IrqLine { gsi: 5, level: IRQ_LEVEL_PULSE, via: IRQ_VIA_IRQFD };
    dev.append_irq_line(DEVICE_THREAD_BASE, line).unwrap();
    vcpu1.append(1, Body::Hlt, None).unwrap();
    vcpu0.append(0, Body::EndOfRun(EndOfRun { reason: end_reason::HLT, exits: 2, status: 0 }), None).unwrap();
    shared.finish().unwrap()
}

fn guest_write_options() -> WriterOptions {
    WriterOptions { guest_writes: true, trace_id: Some(*b"vmrr-guest-write"), ..spec_options() }
}

fn spec_options() -> WriterOptions {
    WriterOptions {
        zstd_level: None,
        trace_id: Some(SPEC_TRACE_ID),
        created_unix_ns: Some(SPEC_CREATED),
        sync: SyncMode::Never,
        ..Default::default()
    }
}

/// A serial console session: LSR poll (in 0x3fd) then THR write (out 0x3f8) per byte.
fn write_serial_sample(w: &mut TraceWriter) {
    w.append(0, Body::Annotation(Annotation { key: "guest", value: "golden-serial" }), None).unwrap();
    let text = "vmrr golden sample: the quick brown fox jumps over the lazy dog.\n".repeat(40);
    let mut rip = 0x1_0000u64;
    for b in text.bytes() {
        let lsr = [0x60u8];
        let poll = Io { direction: Direction::In, size: 1, port: 0x3fd, count: 1, data: &lsr };
        let r = RegsSample { rip: rip + 2, rsp: 0x8000, rflags: 0x202, flags: 1 };
        w.append(0, Body::Io(poll), Some(r)).unwrap();
        let c = [b];
        let out = Io { direction: Direction::Out, size: 1, port: 0x3f8, count: 1, data: &c };
        let r = RegsSample { rip: rip + 9, rsp: 0x8000, rflags: 0x202, flags: 1 };
        w.append(0, Body::Io(out), Some(r)).unwrap();
        rip = 0x1_0000 + (rip + 1) % 3;
    }
    w.append(0, Body::EndOfRun(EndOfRun { reason: end_reason::GUEST_EXIT, exits: 5200, status: 0 }), None)
        .unwrap();
}

/// A timed serial exchange (docs/FORMAT.md §5.4): LSR poll, THR write, twice, then HLT;
/// every exit carries the timing payload (the first without a previous handler).
fn write_timing_sample(w: &mut TraceWriter) {
    w.append(0, Body::Annotation(Annotation { key: "guest", value: "golden-timing" }), None).unwrap();
    let lsr = [0x60u8];
    let mut rip = 0x7c03u64;
    for (i, c) in [b'o', b'k'].into_iter().enumerate() {
        let handler = (i > 0).then_some(1_337);
        let poll = Io { direction: Direction::In, size: 1, port: 0x3fd, count: 1, data: &lsr };
        let r = RegsSample { rip, rsp: 0x7000, rflags: 0x2, flags: RegsSample::RIP_AFTER_INSN };
        w.append_timed(0, Body::Io(poll), Some(r), Timing::from_ns(handler, 40_000)).unwrap();
        let data = [c];
        let out = Io { direction: Direction::Out, size: 1, port: 0x3f8, count: 1, data: &data };
        let r = RegsSample { rip: rip + 5, rsp: 0x7000, rflags: 0x2, flags: RegsSample::RIP_AFTER_INSN };
        w.append_timed(0, Body::Io(out), Some(r), Timing::from_ns(Some(950), 2_100)).unwrap();
        rip += 6;
    }
    w.append_timed(0, Body::Hlt, None, Timing::from_ns(Some(1_000), 1_000_000)).unwrap();
    w.append(0, Body::EndOfRun(EndOfRun { reason: end_reason::HLT, exits: 5, status: 0 }), None).unwrap();
}

/// Hand-built bytes from a "format 1.3 writer": an optional feature this version does not
/// know, an IO record with an extra optional payload (flag bit 4), an event kind this
/// version does not know, and a checkpoint with a longer body.
fn future_minor_bytes() -> Vec<u8> {
    fn rec(kind: u16, body_size: u16, seq: u64, flags: u32, rest: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&u32::try_from(24 + rest.len()).unwrap().to_le_bytes());
        v.extend_from_slice(&kind.to_le_bytes());
        v.extend_from_slice(&body_size.to_le_bytes());
        v.extend_from_slice(&seq.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&flags.to_le_bytes());
        v.extend_from_slice(rest);
        v
    }
    let le = |w: &[u64]| w.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let mut payload = Vec::new();
    let mut io = vec![1u8, 1, 0xf8, 0x03, 1, 0, 0, 0, b'F', 0, 0, 0, 0, 0, 0, 0];
    io.extend_from_slice(&le(&[0xabcd_0000_0000_0001, 0x0102_0304]));
    payload.extend(rec(2, 8, 0, 1 << 4, &io));
    payload.extend(rec(0x8042, 16, 1, 0, &le(&[7, 8])));
    payload.extend(rec(0x8002, 32, 2, 0, &le(&[1, 1, 1, 0x5555])));
    payload.extend(rec(0x8004, 24, 3, 0, &le(&[1, 2, 0])));
    // Header, format 1.3, optional feature bit 5 "exit-timing" (introduced 1.3).
    let mut h = Vec::new();
    h.extend_from_slice(b"VMRRTRC\0");
    h.extend_from_slice(&0x0a0b_0c0du32.to_le_bytes());
    h.extend_from_slice(&(72u32 + 24 * 2 + 8).to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&3u16.to_le_bytes());
    h.extend_from_slice(&[0; 4]);
    h.extend_from_slice(&(1u64 | 1 << 5).to_le_bytes());
    h.extend_from_slice(&0u64.to_le_bytes());
    h.extend_from_slice(&SPEC_CREATED.to_le_bytes());
    h.extend_from_slice(b"future-minor-1.3");
    h.extend_from_slice(&72u32.to_le_bytes());
    h.extend_from_slice(&2u32.to_le_bytes());
    for (bit, name) in [(0u8, "chunk-index"), (5, "exit-timing")] {
        h.extend_from_slice(&[bit, 0]);
        h.extend_from_slice(&1u16.to_le_bytes());
        h.extend_from_slice(&(if bit == 0 { 0u16 } else { 3 }).to_le_bytes());
        h.extend_from_slice(&[0, 0]);
        let mut n = [0u8; 16];
        n[..name.len()].copy_from_slice(name.as_bytes());
        h.extend_from_slice(&n);
    }
    h.extend_from_slice(&[0; 4]);
    let crc = crc32c::crc32c(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    // One uncompressed chunk, no index (the file also tests scanning).
    let mut c = Vec::new();
    c.extend_from_slice(b"VCHK");
    c.extend_from_slice(&40u16.to_le_bytes());
    c.extend_from_slice(&[0, 0]);
    let n = u32::try_from(payload.len()).unwrap();
    c.extend_from_slice(&n.to_le_bytes());
    c.extend_from_slice(&n.to_le_bytes());
    c.extend_from_slice(&0u64.to_le_bytes());
    c.extend_from_slice(&4u32.to_le_bytes());
    c.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    c.extend_from_slice(&[0; 4]);
    let crc = crc32c::crc32c(&c);
    c.extend_from_slice(&crc.to_le_bytes());
    h.extend(c);
    h.extend(payload);
    h
}

#[test]
#[ignore = "regenerates the golden files; run deliberately"]
fn regenerate() {
    let mut w = TraceWriter::create(&data("spec-example.vmrr"), spec_options()).unwrap();
    write_spec_example(&mut w);
    w.finish().unwrap();
    let opts = WriterOptions {
        zstd_level: Some(3),
        trace_id: Some(*b"golden-serial-01"),
        created_unix_ns: Some(SPEC_CREATED),
        ..spec_options()
    };
    let mut w = TraceWriter::create(&data("serial-1.0.vmrr"), opts).unwrap();
    write_serial_sample(&mut w);
    w.finish().unwrap();
    std::fs::write(data("future-minor-1.3.vmrr"), future_minor_bytes()).unwrap();
    let opts = WriterOptions { timing: true, trace_id: Some(*b"golden-timing-01"), ..spec_options() };
    let mut w = TraceWriter::create(&data("timing-1.0.vmrr"), opts).unwrap();
    write_timing_sample(&mut w);
    w.finish().unwrap();
}

#[test]
#[ignore = "writes the 1.1 golden file; run deliberately"]
fn regenerate_1_1() {
    let mut w = TraceWriter::create(&data("guest-write-1.1.vmrr"), guest_write_options()).unwrap();
    write_guest_write_example(&mut w);
    w.finish().unwrap();
}

#[test]
#[ignore = "writes the 1.2 golden file; run deliberately"]
fn regenerate_1_2() {
    write_irq_line_example(TraceWriter::create(&data("irq-line-1.2.vmrr"), irq_line_options()).unwrap());
}

/// The 1.2 golden file: what this writer writes, byte for byte, for records appended by
/// several threads with an IRQ line; FORMAT.md §10.2 documents these bytes; it reads back
/// (device thread named); a 1.1 reader reads it and a 1.1 replayer refuses it naming
/// `irq-line`, as §11 promises.
#[test]
fn irq_line_golden_is_1_2_a_1_1_reader_reads_and_a_1_1_replayer_refuses() {
    let golden = std::fs::read(data("irq-line-1.2.vmrr")).expect("golden file");
    let sink = MemorySink::default();
    write_irq_line_example(TraceWriter::with_sink(sink.clone(), "mem".into(), irq_line_options()).unwrap());
    assert_eq!(spec_bytes(&spec_section("### 10.2", "What differs")), golden, "FORMAT.md §10.2's dump");
    assert_eq!(sink.bytes(), golden, "writer output drifted from docs/FORMAT.md §10.2");

    let mut r = TraceReader::open(&data("irq-line-1.2.vmrr")).unwrap();
    let h = r.header().clone();
    assert_eq!((h.version_major, h.version_minor), (1, 2));
    assert!(h.has_irq_lines() && h.has_threads() && !h.has_guest_writes());
    assert_eq!(h.incompat_features, 0);
    assert!(h.unknown_replay_required().is_empty(), "this version knows both features");
    let mut seen = Vec::new();
    while let Some(rec) = r.next_record() {
        let rec = rec.unwrap();
        if let Body::IrqLine(l) = rec.body {
            assert_eq!((l.gsi, l.level, l.via), (5, IRQ_LEVEL_PULSE, IRQ_VIA_IRQFD));
            assert_eq!(Appender::of(rec.vcpu), Appender::Device(0));
            let j = describe::record_json(&rec);
            assert_eq!(
                j.to_string(),
                r#"{"device":0,"gsi":5,"kind":"irq_line","level":"pulse","seq":1,"vcpu":2147483648,"via":"irqfd"}"#
            );
            assert!(
                describe::record_line(&rec).contains("device0 irq_line"),
                "{}",
                describe::record_line(&rec)
            );
        }
        seen.push((rec.seq, rec.vcpu, kind::name(rec.body.kind())));
    }
    assert_eq!(
        seen,
        [(0, 0, "io"), (1, DEVICE_THREAD_BASE, "irq_line"), (2, 1, "hlt"), (3, 0, "end_of_run")]
    );

    // A 1.1 reader reads it: the header decodes, the replay-required word included...
    let h11 = header::FileHeader::decode_as(&golden, (1, 1)).expect("a 1.1 reader reads a 1.2 file");
    assert_eq!(h11.replay_required_features, 0b11);
    // ...and a 1.1 replayer refuses it, naming the lowest feature it lacks.
    assert_eq!(
        vmrr_replay::replay_feature_refusal(&h11, (1, 1)).as_deref(),
        Some(
            "replay requires feature 'irq-line' (replay-required bit 0, introduced in format 1.2); this replayer implements format 1.1: upgrade vmrr"
        )
    );
    let named: Vec<_> =
        h11.unknown_replay_required_as((1, 1)).iter().map(|(b, d)| (*b, d.map(|d| d.name.clone()))).collect();
    assert_eq!(named, [(0, Some("irq-line".to_string())), (1, Some("threads".to_string()))]);
    assert_eq!(vmrr_replay::replay_feature_refusal(&h11, (VERSION_MAJOR, VERSION_MINOR)), None);
    // A 1.0 reader refuses it as an invalid header: class 2 is newer than it (§3).
    let err = header::FileHeader::decode_as(&golden, (1, 0)).expect_err("a 1.0 reader refuses it");
    assert!(matches!(err.reason, Reason::InvalidValue { field: "feature class", value: 2 }), "{err}");
    // Every older golden file keeps its version and bytes under this writer (tested above
    // byte for byte): none of them is stamped 1.2.
    for f in ["spec-example.vmrr", "serial-1.0.vmrr", "timing-1.0.vmrr", "guest-write-1.1.vmrr"] {
        let bytes = std::fs::read(data(f)).unwrap();
        assert!(header::FileHeader::decode(&bytes).unwrap().version_minor <= 1, "{f}");
    }
}

/// The 1.1 golden file: what this writer writes for a trace with guest writes, byte for
/// byte; it reads back; and a 1.0 reader (this crate's header decoder restricted to 1.0)
/// refuses it, naming the feature and the version that introduced it.
#[test]
fn guest_write_golden_is_1_1_and_a_1_0_reader_refuses_it_by_name() {
    let golden = std::fs::read(data("guest-write-1.1.vmrr")).expect("golden file");
    let sink = MemorySink::default();
    let mut w = TraceWriter::with_sink(sink.clone(), "mem".into(), guest_write_options()).unwrap();
    write_guest_write_example(&mut w);
    w.finish().unwrap();
    assert_eq!(spec_bytes(&spec_section("### 10.1", "What differs")), golden, "FORMAT.md §10.1's dump");
    assert_eq!(sink.bytes(), golden, "writer output drifted from docs/FORMAT.md §10.1");

    let mut r = TraceReader::open(&data("guest-write-1.1.vmrr")).unwrap();
    let h = r.header().clone();
    assert_eq!((h.version_major, h.version_minor), (1, 1));
    assert!(h.has_guest_writes());
    assert_eq!(h.replay_required_features, 0);
    let mut seen = Vec::new();
    while let Some(rec) = r.next_record() {
        let rec = rec.unwrap();
        if let Body::GuestWrite(g) = rec.body {
            assert_eq!((g.gpa, g.data), (0x8000, &b"hello"[..]));
            let j = describe::record_json(&rec);
            assert_eq!(
                (j["kind"].as_str(), j["gpa"].as_u64(), j["len"].as_u64()),
                (Some("guest_write"), Some(0x8000), Some(5))
            );
            assert_eq!(j["data"], "68656c6c6f");
        }
        seen.push(kind::name(rec.body.kind()));
    }
    assert_eq!(seen, ["io", "guest_write", "end_of_run"]);

    let err = header::FileHeader::decode_as(&golden, (1, 0)).expect_err("a 1.0 reader refuses it");
    assert_eq!(
        err.reason.to_string(),
        "trace requires feature 'guest-write' (required bit 2, introduced in format 1.1); this reader implements format 1.0: upgrade vmrr"
    );
    // Every 1.0 golden file still reads as 1.0 under the same restriction.
    for f in ["spec-example.vmrr", "serial-1.0.vmrr", "timing-1.0.vmrr"] {
        let bytes = std::fs::read(data(f)).unwrap();
        let h = header::FileHeader::decode_as(&bytes, (1, 0)).unwrap();
        assert_eq!((h.version_major, h.version_minor), (1, 0), "{f}");
    }
}

#[test]
fn spec_example_is_byte_exact_and_reads() {
    let golden = std::fs::read(data("spec-example.vmrr")).expect("golden file");
    // This version's writer still produces exactly the bytes the spec documents.
    let sink = MemorySink::default();
    let mut w = TraceWriter::with_sink(sink.clone(), "mem".into(), spec_options()).unwrap();
    write_spec_example(&mut w);
    w.finish().unwrap();
    assert_eq!(
        spec_bytes(&spec_section("## 10. Worked example", "Read it as follows")),
        golden,
        "FORMAT.md §10's dump"
    );
    assert_eq!(sink.bytes(), golden, "writer output drifted from docs/FORMAT.md §10");
    assert_eq!(golden.len(), 424);

    let mut r = TraceReader::open(&data("spec-example.vmrr")).unwrap();
    assert_eq!(r.header().trace_id, SPEC_TRACE_ID);
    let mut kinds = Vec::new();
    while let Some(rec) = r.next_record() {
        let rec = rec.unwrap();
        if let Body::Io(io) = rec.body {
            assert_eq!((io.port, io.data), (0x3f8, &b"H"[..]));
            assert_eq!(rec.regs.unwrap().rip, 0x7c05);
        }
        kinds.push(kind::name(rec.body.kind()));
    }
    assert_eq!(kinds, ["annotation", "io", "hlt", "end_of_run"]);
}

#[test]
fn serial_golden_reads_forever() {
    let mut r = TraceReader::open(&data("serial-1.0.vmrr")).unwrap();
    let rep = verify(&mut r).unwrap();
    assert!(rep.ok, "{rep:?}");
    assert_eq!(rep.records_readable, 2 + 2 * 2600);
    r.rewind();
    let mut text = Vec::new();
    while let Some(rec) = r.next_record() {
        if let Body::Io(io) = rec.unwrap().body {
            if io.port == 0x3f8 {
                text.extend_from_slice(io.data);
            }
        }
    }
    assert!(text.starts_with(b"vmrr golden sample: the quick brown fox"));
    assert_eq!(text.len(), 2600);
}

#[test]
fn future_minor_golden_reads_known_parts() {
    assert_eq!(std::fs::read(data("future-minor-1.3.vmrr")).unwrap(), future_minor_bytes());
    let mut r = TraceReader::open(&data("future-minor-1.3.vmrr")).unwrap();
    assert_eq!((r.header().version_major, r.header().version_minor), (1, 3));
    assert!(r.index().is_none());
    let a = r.next_record().unwrap().unwrap();
    let Body::Io(io) = a.body else { panic!("io") };
    assert_eq!(io.data, b"F");
    assert_eq!(a.unknown.flags, 1 << 4);
    assert_eq!(a.unknown.tail.len(), 16);
    let b = r.next_record().unwrap().unwrap();
    assert!(matches!(b.body, Body::Unknown { kind: 0x8042, .. }));
    let c = r.next_record().unwrap().unwrap();
    assert_eq!(c.body, Body::Checkpoint(Checkpoint { snapshot_id: 1, exit_seq: 1, exits: 1 }));
    assert_eq!(c.unknown.body.len(), 8);
    let d = r.next_record().unwrap().unwrap();
    assert!(matches!(d.body, Body::EndOfRun(EndOfRun { reason: 1, exits: 2, .. })));
    assert!(r.next_record().is_none());
}

/// The record of docs/FORMAT.md §5.4's worked example: the THR write of 'o' with its
/// register sample and timing payload, as the spec shows it.
fn timed_record() -> Vec<u8> {
    let bytes = spec_bytes(&spec_section("**Worked example.**", "## 6."));
    assert_eq!(bytes.len(), 80);
    bytes
}

#[test]
fn timing_golden_reads_with_the_documented_payload() {
    // The worked example's bytes, both ways.
    let io = Io { direction: Direction::Out, size: 1, port: 0x3f8, count: 1, data: b"o" };
    let regs = RegsSample { rip: 0x7c08, rsp: 0x7000, rflags: 0x2, flags: RegsSample::RIP_AFTER_INSN };
    let t = Timing::from_ns(Some(950), 2_100);
    assert_eq!((t.prev_handler, t.guest), (0x137, 0x182));
    assert_eq!((t.prev_handler_ns(), t.guest_ns()), (Some(952), 2_112));
    let rec = Record::new(0, 0, Body::Io(io)).with_regs(regs).with_timing(t);
    let mut bytes = Vec::new();
    encode(&rec, &mut bytes).unwrap();
    let spec = timed_record();
    assert_eq!(bytes, spec);
    assert_eq!(decode(&spec).unwrap().0, rec);

    // The golden file: written by this writer, read with the same content forever.
    let sink = MemorySink::default();
    let opts = WriterOptions { timing: true, trace_id: Some(*b"golden-timing-01"), ..spec_options() };
    let mut w = TraceWriter::with_sink(sink.clone(), "mem".into(), opts).unwrap();
    write_timing_sample(&mut w);
    w.finish().unwrap();
    assert_eq!(sink.bytes(), std::fs::read(data("timing-1.0.vmrr")).unwrap());
    let mut r = TraceReader::open(&data("timing-1.0.vmrr")).unwrap();
    assert!(r.header().has_timing());
    let f = r.header().features.iter().find(|f| f.name == "timing").expect("named in the feature table");
    assert_eq!((f.bit, f.class, f.introduced), (1, features::FeatureClass::Optional, (1, 0)));
    let mut seen = Vec::new();
    while let Some(rec) = r.next_record() {
        let rec = rec.unwrap();
        if let Some(t) = rec.timing {
            seen.push((t.prev_handler_ns(), t.guest_ns()));
        }
        if rec.seq == 2 {
            let mut raw = Vec::new();
            encode(&rec, &mut raw).unwrap();
            raw[8..16].copy_from_slice(&0u64.to_le_bytes());
            assert_eq!(raw, spec);
        }
    }
    assert_eq!(
        seen,
        [
            (None, 39_936),
            (Some(952), 2_112),
            (Some(1_344), 39_936),
            (Some(952), 2_112),
            (Some(1_000), 999_424)
        ]
    );
}

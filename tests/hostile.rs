//! Hostile input: every file of the crafted corpus in `tests/data/hostile/` (described in
//! its README) is refused with exit 3 and a message naming the file, the offset and the
//! reason, while peak memory stays small whatever sizes the file claims, and with KVM
//! locked away (`VMRR_DENY_KVM=1`): nothing reaches KVM unvalidated.
//!
//! The corpus is regenerated (it needs KVM, for the base snapshot) with
//! `cargo test --release --test hostile -- --ignored generate_corpus`.

mod common;
use common::*;

use std::path::{Path, PathBuf};

use vmrr_engine::snapshot::{SnapshotState, codec};
use vmrr_format::bundle::{Entry, Manifest, Storage};
use vmrr_format::chunk::{CHUNK_HEADER_SIZE, CODEC_NONE, CODEC_ZSTD, ChunkHeader};
use vmrr_format::header::{FeatureDesc, FileHeader};
use vmrr_format::{features, kind};

fn corpus(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/hostile").join(rel)
}

/// Peak memory allowed for refusing any file of the corpus, KiB. The files claim up to a
/// tebibyte; refusing them takes what the binary needs to start plus a few buffers.
const RSS_LIMIT_KIB: u64 = 64 * 1024;

// ---------------------------------------------------------------------------------------
// The checks.

/// Runs `vmrr args` without KVM and with a private, empty `$TMPDIR`; expects exit `code`,
/// a line naming `file` and every one of `reason` (and a byte offset when `offset`), peak
/// memory under the limit, and nothing left in `$TMPDIR`.
fn refused_with(code: i32, args: &[&str], file: &str, reason: &[&str], offset: bool) -> Measured {
    let scratch = tmp();
    let m = MeasuredChild::spawn_with(args, &[("VMRR_DENY_KVM", "1"), ("TMPDIR", s(scratch.path()))]).wait();
    let what = format!("vmrr {}", args.join(" "));
    assert_eq!(m.code, Some(code), "{what}: exit {code} expected: {}", m.stderr);
    // One line (an error on stderr, or `verify`'s damage report on stdout) says it all.
    let out = format!("{}{}", String::from_utf8_lossy(&m.stdout), m.stderr);
    let said = out.lines().any(|l| {
        l.contains(file) && (!offset || l.contains("offset 0x")) && reason.iter().all(|r| l.contains(r))
    });
    assert!(said, "{what}: a line names {file}, an offset and {reason:?}:\n{out}");
    assert!(m.max_rss_kib < RSS_LIMIT_KIB, "{what}: peak memory {} KiB", m.max_rss_kib);
    let left: Vec<_> = std::fs::read_dir(scratch.path()).unwrap().flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "{what}: left in $TMPDIR: {left:?}");
    m
}

/// Runs `vmrr args` without KVM; expects exit 3 and a message naming `file`, an offset and
/// every one of `reason`.
fn refused(args: &[&str], file: &str, reason: &[&str]) {
    refused_with(3, args, file, reason, true);
}

/// (file, reason words) for the crafted traces.
const TRACES: &[(&str, &[&str])] = &[
    ("record-size-4gib.vmrr", &["record size", "4294967288"]),
    ("ndata-beyond-record.vmrr", &["ndata"]),
    ("io-count-beyond-record.vmrr", &["count"]),
    ("nonzero-padding.vmrr", &["padding"]),
    ("chunk-raw-size-4gib.vmrr", &["raw_size"]),
    ("chunk-count-lies.vmrr", &["record"]),
    ("zstd-chunk-bomb.vmrr", &["decompression failed"]),
    ("future-major-2.0.vmrr", &["2.0"]),
    ("unknown-required-feature.vmrr", &["quantum-zip"]),
    ("header-size-huge.vmrr", &["header_size"]),
    ("index-claims-1tib.vmrr", &["trailer index_size", "1099511627776"]),
];

#[test]
fn hostile_traces_are_refused() {
    for (file, reason) in TRACES {
        let p = corpus(&format!("trace/{file}"));
        refused(&["verify", s(&p)], file, reason);
        refused(&["stats", s(&p)], file, reason);
        refused(&["replay", s(&p)], file, reason);
    }
}

/// (case directory, reason words, extra arguments) for the crafted snapshots.
const SNAPSHOTS: &[(&str, &[&str], &[&str])] = &[
    ("overlapping-slots", &["overlap"], &[]),
    ("misaligned-slot", &["page-aligned"], &[]),
    ("slot-beyond-phys", &["52-bit physical address space"], &[]),
    ("short-memory-file", &["memory file ends here"], &[]),
    ("nonsense-valid-crc", &["state"], &[]),
    ("two-vcpus", &["2 vCPUs without KVM's in-kernel irqchip"], &[]),
    ("file-name-escape", &["not a plain file name"], &[]),
    ("future-major-2.0", &["2.0", "not readable"], &[]),
    ("payload-claims-1gib", &["payload"], &[]),
    ("rip-not-canonical", &["vCPU 0", "regs.rip", "0x800000001000 is not canonical"], &[]),
    ("annotations-over-cap", &["state does not decode", "over the limit of 4096"], &[]),
    ("devices-over-cap", &["state does not decode", "over the limit of 64"], &[]),
    // The valid base snapshot, refused only because it asks for more memory than allowed.
    ("base", &["--max-mem-mib"], &["--max-mem-mib", "1"]),
];

#[test]
fn hostile_snapshots_are_refused() {
    let d = tmp();
    for (case, reason, extra) in SNAPSHOTS {
        let dir = corpus(&format!("snapshot/{case}/snap-000000"));
        let mut args = vec!["snapshot", "info", s(&dir)];
        args.extend_from_slice(extra);
        let file = if *case == "short-memory-file" { "mem-0.raw" } else { "state.bin" };
        refused(&args, file, reason);
        // The same snapshot beside a valid trace: replay refuses it before KVM.
        let trace = at(&d, &format!("{case}.vmrr"));
        std::fs::copy(corpus("snapshot/base.vmrr"), &trace).unwrap();
        let snaps = vmrr_engine::snapshot::dir_for_trace(&trace);
        copy_dir(&corpus(&format!("snapshot/{case}")), &snaps);
        let mut args = vec!["replay", s(&trace)];
        args.extend_from_slice(extra);
        refused(&args, file, reason);
    }
}

#[test]
fn the_base_snapshot_is_valid_so_each_case_fails_for_its_own_reason() {
    let o = vmrr(&["snapshot", "info", s(&corpus("snapshot/base/snap-000000"))]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let trace = at(&d, "base.vmrr");
    std::fs::copy(corpus("snapshot/base.vmrr"), &trace).unwrap();
    copy_dir(&corpus("snapshot/base"), &vmrr_engine::snapshot::dir_for_trace(&trace));
    let o = vmrr(&["replay", s(&trace), "--json"]);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["outcome"], "completed", "{r}");
}

const BUNDLES: &[(&str, &[&str])] = &[
    ("name-dotdot.vmrrb", &["\"../escape.vmrr\"", "not part of a bundle's layout"]),
    ("name-absolute.vmrrb", &["\"/tmp/vmrr-escape\"", "not part of a bundle's layout"]),
    ("name-nested-dotdot.vmrrb", &["not part of a bundle's layout"]),
    ("future-major-2.0.vmrrb", &["2.0", "not readable"]),
    ("memory-over-limit.vmrrb", &["65536 MiB", "--max-mem-mib"]),
    ("zstd-bomb.vmrrb", &["manifest says 1000"]),
    ("extents-overflow.vmrrb", &["extents do not fit"]),
    ("entry-outside-file.vmrrb", &["outside the file"]),
    ("checksum-mismatch.vmrrb", &["checksum mismatch"]),
    ("duplicate-entry.vmrrb", &["appears twice"]),
    ("manifest-claims-1tib.vmrrb", &["manifest"]),
    ("trace-claims-1tib.vmrrb", &["--max-extract-mib", "limit of 32768 MiB", "1048576 MiB"]),
    ("trace-zeros-8gib.vmrrb", &["entry \"trace.vmrr\"", "not a trace", "bad file magic"]),
    ("memory-files-total-20gib.vmrrb", &["snapshot 0's memory files", "--max-mem-mib"]),
    ("snapshot-not-listed.vmrrb", &["snapshot 7, which the manifest does not list"]),
    (
        "trace-damaged-inside.vmrrb",
        &["trace-damaged-inside.vmrrb, entry trace.vmrr: at offset 0x50", "record size", "4294967288"],
    ),
    (
        "state-invalid-inside.vmrrb",
        &["state-invalid-inside.vmrrb, entry snapshots/snap-000000/state.bin: offset 0x", "regs.rip"],
    ),
    ("manifest-annotations-over-cap.vmrrb", &["manifest: more than 4096 elements, over the limit of 4096"]),
];

#[test]
fn hostile_bundles_are_refused() {
    for (file, reason) in BUNDLES {
        let p = corpus(&format!("bundle/{file}"));
        let m = refused_with(3, &["replay", s(&p)], file, reason, true);
        assert!(!m.stderr.contains("vmrr-bundle-"), "no temporary path is named: {}", m.stderr);
    }
    // --max-mem-mib caps what a valid bundle may ask for (its guest has 2 MiB).
    let p = corpus("bundle/valid.vmrrb");
    refused(&["replay", s(&p), "--max-mem-mib", "1"], "valid.vmrrb", &["2 MiB", "--max-mem-mib"]);
    // --max-extract-mib caps what extraction writes: the 8 GiB of zeros, and 2 GiB of
    // memory pages (within --max-mem-mib), refused before a byte is written.
    refused(
        &["replay", s(&corpus("bundle/trace-zeros-8gib.vmrrb")), "--max-extract-mib", "4096"],
        "trace-zeros-8gib.vmrrb",
        &["limit of 4096 MiB (--max-extract-mib)", "8192 MiB"],
    );
    refused(
        &["replay", s(&corpus("bundle/memory-pages-2gib.vmrrb")), "--max-extract-mib", "1024"],
        "memory-pages-2gib.vmrrb",
        &["limit of 1024 MiB (--max-extract-mib)", "mem-0.raw"],
    );
}

/// Valid traces holding more than a reader keeps: 1 GiB of annotations, 2,000,000
/// checkpoint records. `verify`, `stats` and `inspect` stream them in bounded memory;
/// `replay` and `pack`, which keep them, refuse the trace naming the cap (and `pack`
/// writes nothing).
#[test]
fn what_a_reader_keeps_is_capped() {
    let cases: [(&str, &[&str]); 2] = [
        ("annotations-1gib.vmrr", &["annotation bytes", "over the cap of 1048576 bytes"]),
        ("checkpoints-2m.vmrr", &["checkpoint records", "over the cap of 100000"]),
    ];
    for (file, what) in cases {
        let p = corpus(&format!("trace/{file}"));
        for args in [vec!["verify", s(&p)], vec!["stats", s(&p)], vec!["inspect", s(&p)]] {
            let m = MeasuredChild::spawn_quiet(&args).wait();
            assert_eq!(m.code, Some(0), "vmrr {args:?}: {}", m.stderr);
            assert!(m.max_rss_kib < RSS_LIMIT_KIB, "vmrr {args:?}: peak memory {} KiB", m.max_rss_kib);
        }
        refused_with(3, &["replay", s(&p)], file, what, false);
        let d = tmp();
        let out = at(&d, "b.vmrrb");
        refused_with(3, &["pack", s(&p), "-o", s(&out)], file, what, false);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0, "pack wrote nothing");
    }
}

/// A trace whose guest description names a host file (`/etc/shadow`, `/dev/zero`): replay
/// never opens it, and says which flag gives the image (exit 2, before KVM).
#[test]
fn a_trace_naming_a_host_file_never_makes_replay_open_it() {
    for (file, named) in [("names-etc-shadow.vmrr", "/etc/shadow"), ("names-dev-zero.vmrr", "/dev/zero")] {
        let p = corpus(&format!("trace/{file}"));
        for extra in [&[][..], &["--rebuild"][..]] {
            let mut args = vec!["replay", s(&p)];
            args.extend_from_slice(extra);
            let m =
                refused_with(2, &args, "--image FILE", &[named, "never opens a path a trace names"], false);
            assert!(m.max_rss_kib < 16 * 1024, "nothing was read: {} KiB", m.max_rss_kib);
        }
    }
    // --max-mem-mib applies to a rebuilt guest too (its 2 MiB), before anything is read.
    let d = tmp();
    let img = at(&d, "img.bin");
    std::fs::write(&img, [0xf4u8; 16]).unwrap();
    let p = corpus("trace/names-etc-shadow.vmrr");
    refused_with(
        3,
        &["replay", s(&p), "--image", s(&img), "--max-mem-mib", "1"],
        "names-etc-shadow.vmrr",
        &["2 MiB of memory, over the limit of 1 MiB (--max-mem-mib)"],
        false,
    );
    // The user's own --image that is not a regular file is refused as such.
    let p = corpus("trace/names-dev-zero.vmrr");
    refused(
        &["replay", s(&p), "--image", "/dev/zero"],
        "/dev/zero",
        &["character device", "not a regular file"],
    );
}

#[test]
fn unpacking_never_follows_a_symlink() {
    // The bundle format has no link entries and its names cannot leave the target
    // directory; a symlink already in the target (planted by someone else) is refused,
    // not followed.
    let d = tmp();
    let target = at(&d, "target");
    let elsewhere = at(&d, "elsewhere");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, target.join("snapshots")).unwrap();
    let e = vmrr_format::bundle::unpack(&corpus("bundle/valid.vmrrb"), &target, &Default::default(), None)
        .expect_err("a planted symlink is refused");
    assert!(e.to_string().contains("snapshots"), "{e}");
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0, "nothing was written through it");
    // And the same bundle unpacks into a clean directory.
    let clean = at(&d, "clean");
    std::fs::create_dir_all(&clean).unwrap();
    vmrr_format::bundle::unpack(&corpus("bundle/valid.vmrrb"), &clean, &Default::default(), None).unwrap();
}

// ---------------------------------------------------------------------------------------
// The generator.

/// A record: `body` is the fixed body (`body_size` bytes) and what follows it.
fn record(kind: u16, body_size: u16, body: &[u8], seq: u64, size_override: Option<u32>) -> Vec<u8> {
    let size = u32::try_from(24 + body.len()).unwrap();
    let mut r = Vec::new();
    r.extend_from_slice(&size_override.unwrap_or(size).to_le_bytes());
    r.extend_from_slice(&kind.to_le_bytes());
    r.extend_from_slice(&body_size.to_le_bytes());
    r.extend_from_slice(&seq.to_le_bytes());
    r.extend_from_slice(&0u32.to_le_bytes()); // vcpu
    r.extend_from_slice(&0u32.to_le_bytes()); // flags
    r.extend_from_slice(body);
    r
}

fn chunk(codec: u8, payload: &[u8], raw_size: u32, first_seq: u64, count: u32) -> Vec<u8> {
    let h = ChunkHeader {
        header_size: u16::try_from(CHUNK_HEADER_SIZE).unwrap(),
        codec,
        stored_size: u32::try_from(payload.len()).unwrap(),
        raw_size,
        first_seq,
        record_count: count,
        payload_crc32c: crc32c::crc32c(payload),
        flags: 0,
    };
    let mut out = Vec::new();
    h.encode(&mut out);
    out.extend_from_slice(payload);
    while out.len() % 8 != 0 {
        out.push(0);
    }
    out
}

fn header(feats: &[features::Feature]) -> FileHeader {
    FileHeader::new(1_700_000_000_000_000_000, [0x42; 16], feats)
}

/// A trace: header then one stored chunk of `records`.
fn trace_of(records: &[Vec<u8>]) -> Vec<u8> {
    let mut out = header(&[]).encode();
    let payload: Vec<u8> = records.concat();
    out.extend(chunk(
        CODEC_NONE,
        &payload,
        u32::try_from(payload.len()).unwrap(),
        0,
        u32::try_from(records.len()).unwrap(),
    ));
    out
}

fn io_body(count: u32, data: &[u8]) -> Vec<u8> {
    let mut b = vec![1u8, 1];
    b.extend_from_slice(&0x3f8u16.to_le_bytes());
    b.extend_from_slice(&count.to_le_bytes());
    b.extend_from_slice(data);
    while b.len() % 8 != 0 {
        b.push(0);
    }
    b
}

fn generate_traces(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let ok = record(kind::IO, 8, &io_body(1, b"A"), 0, None);
    let w = |name: &str, bytes: Vec<u8>| std::fs::write(dir.join(name), bytes).unwrap();

    w(
        "record-size-4gib.vmrr",
        trace_of(&[ok.clone(), record(kind::IO, 8, &io_body(1, b"B"), 1, Some(0xffff_fff8))]),
    );
    let mut ie = Vec::new();
    ie.extend_from_slice(&1u32.to_le_bytes()); // suberror: emulation
    ie.extend_from_slice(&0x1000_0000u32.to_le_bytes()); // ndata: 256 M words
    w("ndata-beyond-record.vmrr", trace_of(&[ok.clone(), record(kind::INTERNAL_ERROR, 8, &ie, 1, None)]));
    w(
        "io-count-beyond-record.vmrr",
        trace_of(&[ok.clone(), record(kind::IO, 8, &io_body(0x7fff_ffff, b"xy"), 1, None)]),
    );
    let mut mmio = Vec::new();
    mmio.extend_from_slice(&0xd000_0000u64.to_le_bytes());
    mmio.extend_from_slice(&4u32.to_le_bytes());
    mmio.extend_from_slice(&[1, 0xaa, 0xbb, 0xcc]); // is_write, then padding that must be zero
    mmio.extend_from_slice(&0x1234u64.to_le_bytes());
    w("nonzero-padding.vmrr", trace_of(&[ok.clone(), record(kind::MMIO, 24, &mmio, 1, None)]));

    let mut t = header(&[]).encode();
    t.extend(chunk(CODEC_NONE, &ok, u32::MAX, 0, 1));
    w("chunk-raw-size-4gib.vmrr", t);
    let mut t = header(&[]).encode();
    t.extend(chunk(CODEC_NONE, &ok, u32::try_from(ok.len()).unwrap(), 0, 1000));
    w("chunk-count-lies.vmrr", t);
    // 64 MiB of zeros compress to a few KiB; the chunk claims 4 KiB.
    let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 19).unwrap();
    let mut t = header(&[features::ZSTD]).encode();
    t.extend(chunk(CODEC_ZSTD, &bomb, 4096, 0, 1));
    w("zstd-chunk-bomb.vmrr", t);

    let mut h = header(&[]);
    h.version_major = 2;
    let mut t = h.encode();
    t.extend(chunk(CODEC_NONE, &ok, u32::try_from(ok.len()).unwrap(), 0, 1));
    w("future-major-2.0.vmrr", t);
    let mut h = header(&[]);
    h.features.push(FeatureDesc {
        bit: 9,
        class: features::FeatureClass::Required,
        introduced: (1, 4),
        name: "quantum-zip".into(),
    });
    h.incompat_features |= 1 << 9;
    h.header_size += 24;
    let mut t = h.encode();
    t.extend(chunk(CODEC_NONE, &ok, u32::try_from(ok.len()).unwrap(), 0, 1));
    w("unknown-required-feature.vmrr", t);
    let mut t = trace_of(std::slice::from_ref(&ok));
    t[12..16].copy_from_slice(&0x7fff_fff8u32.to_le_bytes());
    w("header-size-huge.vmrr", t);
    generate_traces_claiming_more_than_they_hold(dir);
}

/// Traces whose index, annotations or checkpoints are more than any reader may keep, and
/// traces naming host files.
fn generate_traces_claiming_more_than_they_hold(dir: &Path) {
    let w = |name: &str, bytes: Vec<u8>| std::fs::write(dir.join(name), bytes).unwrap();
    // A complete trace whose trailer claims a 1 TiB index.
    let sink = vmrr_format::MemorySink::default();
    let mut wr = vmrr_format::TraceWriter::with_sink(sink.clone(), "x".into(), Default::default()).unwrap();
    for i in 0..100u8 {
        let d = [i];
        let io = vmrr_format::Io {
            direction: vmrr_format::Direction::Out,
            size: 1,
            port: 0x3f8,
            count: 1,
            data: &d,
        };
        wr.append(0, vmrr_format::Body::Io(io), None).unwrap();
    }
    wr.finish().unwrap();
    let mut t = sink.bytes();
    let n = t.len();
    t[n - 16..n - 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let c = crc32c::crc32c(&t[n - 24..n - 8]);
    t[n - 8..n - 4].copy_from_slice(&c.to_le_bytes());
    w("index-claims-1tib.vmrr", t);

    // 1 GiB of annotations (16,384 of 64 KiB) in a file of tens of KiB: every reader may
    // stream them, none may keep them.
    let big = |records: &mut dyn FnMut(&mut vmrr_format::TraceWriter)| {
        let sink = vmrr_format::MemorySink::default();
        let opts = vmrr_format::WriterOptions {
            zstd_level: Some(9),
            chunk_target: 15 << 20,
            trace_id: Some([0x42; 16]),
            created_unix_ns: Some(1_700_000_000_000_000_000),
            ..Default::default()
        };
        let mut wr = vmrr_format::TraceWriter::with_sink(sink.clone(), "x".into(), opts).unwrap();
        records(&mut wr);
        wr.finish().unwrap();
        sink.bytes()
    };
    let value = "a".repeat(vmrr_format::MAX_ANNOTATION_VALUE);
    w(
        "annotations-1gib.vmrr",
        big(&mut |wr| {
            for i in 0..16_384u32 {
                let key = format!("x.{i}");
                let a = vmrr_format::Annotation { key: &key, value: &value };
                wr.append(0, vmrr_format::Body::Annotation(a), None).unwrap();
            }
        }),
    );
    // 2,000,000 checkpoint records.
    w(
        "checkpoints-2m.vmrr",
        big(&mut |wr| {
            for _ in 0..2_000_000u64 {
                let c = vmrr_format::Checkpoint { snapshot_id: 0, exit_seq: 0, exits: 0 };
                wr.append(0, vmrr_format::Body::Checkpoint(c), None).unwrap();
            }
        }),
    );
    // Traces whose guest description names host files: replay must never open them.
    for (name, image) in [("names-etc-shadow.vmrr", "/etc/shadow"), ("names-dev-zero.vmrr", "/dev/zero")] {
        w(name, trace_naming_image(image));
    }
}

/// A trace of a flat real-mode image guest whose `vmrr.image` annotation names `image`,
/// with one serial write.
fn trace_naming_image(image: &str) -> Vec<u8> {
    let sink = vmrr_format::MemorySink::default();
    let mut wr = vmrr_format::TraceWriter::with_sink(sink.clone(), "x".into(), Default::default()).unwrap();
    for (k, v) in [
        ("vmrr.version", "0.1.0"),
        ("vmrr.mem_bytes", "2097152"),
        ("vmrr.cpuid", "deterministic"),
        ("vmrr.image", image),
        ("vmrr.load_addr", "0x1000"),
        ("vmrr.entry", "0x1000"),
        ("vmrr.mode", "real"),
    ] {
        wr.append(0, vmrr_format::Body::Annotation(vmrr_format::Annotation { key: k, value: v }), None)
            .unwrap();
    }
    let io = vmrr_format::Io {
        direction: vmrr_format::Direction::Out,
        size: 1,
        port: 0x3f8,
        count: 1,
        data: b"A",
    };
    wr.append(0, vmrr_format::Body::Io(io), None).unwrap();
    wr.finish().unwrap();
    sink.bytes()
}

fn write_state(dir: &Path, st: &SnapshotState) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("state.bin"), codec::frame(&codec::encode(st).unwrap())).unwrap();
}

fn generate_snapshots(root: &Path) {
    // The base: hello-long in 2 MiB, recorded with its initial snapshot.
    let work = tmp();
    let trace = at(&work, "base.vmrr");
    let o = vmrr(&["record", "--guest", "hello-long", "--mem-mib", "2", "-o", s(&trace), "--serial", "none"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root).unwrap();
    std::fs::copy(&trace, root.join("base.vmrr")).unwrap();
    let src = vmrr_engine::snapshot::dir_for_trace(&trace).join("snap-000000");
    let base_dir = root.join("base/snap-000000");
    copy_dir(&src, &base_dir);
    let base: SnapshotState = codec::read(&base_dir.join("state.bin")).unwrap();
    let case = |name: &str| root.join(name).join("snap-000000");

    let mut st = base.clone();
    let mut extra = st.slots[0].clone();
    extra.id = 9;
    extra.gpa = 0x1000;
    extra.size = 0x2000;
    extra.file = "mem-9.raw".into();
    st.slots.push(extra);
    write_state(&case("overlapping-slots"), &st);
    let mut st = base.clone();
    st.slots[0].gpa = 0x123;
    write_state(&case("misaligned-slot"), &st);
    let mut st = base.clone();
    st.slots[0].gpa = 1 << 52;
    write_state(&case("slot-beyond-phys"), &st);
    let mut st = base.clone();
    st.vcpus.push(st.vcpus[0].clone());
    write_state(&case("two-vcpus"), &st);
    let mut st = base.clone();
    st.slots[0].file = "../../../etc/passwd".into();
    write_state(&case("file-name-escape"), &st);
    write_state(&case("short-memory-file"), &base);
    std::fs::write(case("short-memory-file").join("mem-0.raw"), vec![0x90u8; 8192]).unwrap();

    let mut x = 0x1234_5678_9abc_def1u64;
    let nonsense: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect();
    std::fs::create_dir_all(case("nonsense-valid-crc")).unwrap();
    std::fs::write(case("nonsense-valid-crc").join("state.bin"), codec::frame(&nonsense)).unwrap();

    // Framing edits, with the CRC-64 recomputed so only the edited field is wrong.
    let reframe = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut b = codec::frame(&codec::encode(&base).unwrap());
        b.truncate(b.len() - 8);
        edit(&mut b);
        let crc = crc::Crc::<u64>::new(&crc::CRC_64_XZ).checksum(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    };
    std::fs::create_dir_all(case("future-major-2.0")).unwrap();
    std::fs::write(
        case("future-major-2.0").join("state.bin"),
        reframe(&|b| b[8..10].copy_from_slice(&2u16.to_le_bytes())),
    )
    .unwrap();
    std::fs::create_dir_all(case("payload-claims-1gib")).unwrap();
    std::fs::write(
        case("payload-claims-1gib").join("state.bin"),
        reframe(&|b| b[16..24].copy_from_slice(&(1u64 << 30).to_le_bytes())),
    )
    .unwrap();

    // A 64-bit vCPU whose RIP is not canonical (it would fault at once, or diverge).
    let mut st = base.clone();
    st.vcpus[0].regs.rip = 0x0000_8000_0000_1000;
    write_state(&case("rip-not-canonical"), &st);
    // A vCPU with CR0.PG set and CR0.PE clear: checksummed, decodes, and only KVM can
    // tell it is impossible (KVM_SET_SREGS refuses it with EINVAL).
    let mut st = base.clone();
    st.vcpus[0].sregs.cr0 = 0x8000_0000;
    write_state(&case("sregs-impossible"), &st);
    copy_file(&base_dir.join("mem-0.raw"), &case("sregs-impossible").join("mem-0.raw"));
    // Lists longer than a reader keeps, refused while decoding (their decoded form is
    // larger than their encoding).
    let mut st = base.clone();
    st.annotations = (0..5000).map(|i| (format!("k{i}"), String::new())).collect();
    write_state(&case("annotations-over-cap"), &st);
    let mut st = base.clone();
    let dev = st.bus.devices[0].clone();
    st.bus.devices = vec![dev; 65];
    write_state(&case("devices-over-cap"), &st);
    // A chain whose parent directory holds another snapshot: snap-000001 says its parent
    // is 0, and snap-000000 holds snapshot 5.
    let root_of = root.join("parent-impostor");
    let mut impostor = base.clone();
    impostor.id = 5;
    write_state(&root_of.join("snap-000000"), &impostor);
    copy_file(&base_dir.join("mem-0.raw"), &root_of.join("snap-000000/mem-0.raw"));
    let mut child = base.clone();
    child.id = 1;
    child.parent = Some(0);
    for s in &mut child.slots {
        s.full = false;
        s.pages = vec![0; usize::try_from(s.page_count().div_ceil(64)).unwrap()];
        s.stored_pages = 0;
    }
    write_state(&root_of.join("snap-000001"), &child);
    copy_file(&base_dir.join("mem-0.raw"), &root_of.join("snap-000001/mem-0.raw"));
}

fn copy_file(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(from, to).unwrap();
}

/// A bundle of bundle format `major`.0 ([`bundle_bytes`]).
fn bundle(major: u16, m: Manifest, payloads: &[Vec<u8>], fix_offsets: bool) -> Vec<u8> {
    bundle_bytes(major, 0, m, payloads, fix_offsets)
}

fn entry(name: &str, storage: Storage, size: u64) -> Entry {
    Entry { name: name.into(), size, storage, offset: 0, stored: 0, crc32c: 0 }
}

fn generate_bundles(dir: &Path, snapshot_root: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    // A valid bundle of the base snapshot's trace.
    let work = tmp();
    let trace = at(&work, "t.vmrr");
    std::fs::copy(snapshot_root.join("base.vmrr"), &trace).unwrap();
    copy_dir(&snapshot_root.join("base"), &vmrr_engine::snapshot::dir_for_trace(&trace));
    let o = vmrr(&["pack", s(&trace), "-o", s(&dir.join("valid.vmrrb")), "--force"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let trace_bytes = std::fs::read(&trace).unwrap();
    let state_bytes = std::fs::read(snapshot_root.join("base/snap-000000/state.bin")).unwrap();
    let p = BundleParts {
        dir,
        snapshot_root,
        z: zstd::bulk::compress(&trace_bytes, 3).unwrap(),
        zs: zstd::bulk::compress(&state_bytes, 3).unwrap(),
        trace_bytes,
        state_bytes,
    };
    bundles_with_bad_names_and_structure(&p);
    bundles_over_the_disk_budgets(&p);
    bundles_damaged_inside(&p);
}

/// What the hostile bundles are made of: a valid trace and snapshot state, compressed.
struct BundleParts<'a> {
    dir: &'a Path,
    snapshot_root: &'a Path,
    trace_bytes: Vec<u8>,
    /// The trace, compressed.
    z: Vec<u8>,
    state_bytes: Vec<u8>,
    /// The state, compressed.
    zs: Vec<u8>,
}

impl BundleParts<'_> {
    fn w(&self, name: &str, bytes: Vec<u8>) {
        std::fs::write(self.dir.join(name), bytes).unwrap();
    }

    fn state(&self) -> Entry {
        entry("snapshots/snap-000000/state.bin", Storage::Zstd, self.state_bytes.len() as u64)
    }

    fn man(&self, entries: Vec<Entry>) -> Manifest {
        Manifest { trace_id: "42".repeat(16), annotations: vec![], snapshots: vec![], entries, exits: None }
    }

    /// The trace alone, under entry `name`.
    fn one(&self, name: &str) -> Vec<u8> {
        bundle(
            1,
            self.man(vec![entry(name, Storage::Zstd, self.trace_bytes.len() as u64)]),
            std::slice::from_ref(&self.z),
            true,
        )
    }

    /// The trace alone, in a bundle of format `major`.
    fn good(&self, major: u16) -> Vec<u8> {
        bundle(
            major,
            self.man(vec![entry("trace.vmrr", Storage::Zstd, self.trace_bytes.len() as u64)]),
            std::slice::from_ref(&self.z),
            true,
        )
    }
}

/// Entry names escaping the directory, a future format, budgets in the manifest, offsets
/// and checksums that do not hold.
fn bundles_with_bad_names_and_structure(p: &BundleParts<'_>) {
    p.w("name-dotdot.vmrrb", p.one("../escape.vmrr"));
    p.w("name-absolute.vmrrb", p.one("/tmp/vmrr-escape"));
    p.w("name-nested-dotdot.vmrrb", p.one("snapshots/snap-000000/../../../x"));
    p.w("future-major-2.0.vmrrb", p.good(2));
    let mut m = p.man(vec![
        entry("trace.vmrr", Storage::Zstd, p.trace_bytes.len() as u64),
        p.state(),
        entry("snapshots/snap-000000/mem-0.raw", Storage::Sparse, 64 << 30),
    ]);
    m.snapshots = vec![0];
    p.w("memory-over-limit.vmrrb", bundle(1, m, &[p.z.clone(), p.zs.clone(), no_extents()], true));
    // A valid trace header, then 64 MiB of zeros: past the header check, cut at 1001 bytes.
    let hsize = usize::try_from(FileHeader::peek_size(&p.trace_bytes).unwrap()).unwrap();
    let mut bytes = p.trace_bytes[..hsize].to_vec();
    bytes.resize(64 << 20, 0);
    let bomb = zstd::bulk::compress(&bytes, 19).unwrap();
    p.w("zstd-bomb.vmrrb", bundle(1, p.man(vec![entry("trace.vmrr", Storage::Zstd, 1000)]), &[bomb], true));
    let mut m = p.man(vec![
        entry("trace.vmrr", Storage::Zstd, p.trace_bytes.len() as u64),
        p.state(),
        entry("snapshots/snap-000000/mem-0.raw", Storage::Sparse, 2 << 20),
    ]);
    m.snapshots = vec![0];
    let mut ext = (1u64 << 60).to_le_bytes().to_vec();
    ext.extend_from_slice(&[0; 64]);
    p.w("extents-overflow.vmrrb", bundle(1, m, &[p.z.clone(), p.zs.clone(), ext], true));
    let mut m = p.man(vec![entry("trace.vmrr", Storage::Zstd, p.trace_bytes.len() as u64)]);
    m.entries[0].offset = 1 << 40;
    m.entries[0].stored = p.z.len() as u64;
    p.w("entry-outside-file.vmrrb", bundle(1, m, std::slice::from_ref(&p.z), false));
    let mut b = p.good(1);
    let n = b.len();
    b[n - 10] ^= 0xff;
    p.w("checksum-mismatch.vmrrb", b);
    p.w(
        "duplicate-entry.vmrrb",
        bundle(
            1,
            p.man(vec![
                entry("trace.vmrr", Storage::Zstd, p.trace_bytes.len() as u64),
                entry("trace.vmrr", Storage::Zstd, p.trace_bytes.len() as u64),
            ]),
            &[p.z.clone(), p.z.clone()],
            true,
        ),
    );
    let mut b = p.good(1);
    b[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let c = crc32c::crc32c(&b[..28]);
    b[28..32].copy_from_slice(&c.to_le_bytes());
    p.w("manifest-claims-1tib.vmrrb", b);
}

/// Sizes claimed or really written past the disk and memory budgets; manifests over
/// their caps.
fn bundles_over_the_disk_budgets(p: &BundleParts<'_>) {
    // Disk: a trace entry claiming 1 TiB; one that really is 8 GiB of zeros (256 KiB
    // stored); five memory files of 4 GiB each (each within --max-mem-mib, together
    // not); a memory file whose one extent is 2 GiB of zero bytes to write.
    p.w(
        "trace-claims-1tib.vmrrb",
        bundle(1, p.man(vec![entry("trace.vmrr", Storage::Zstd, 1 << 40)]), std::slice::from_ref(&p.z), true),
    );
    p.w(
        "trace-zeros-8gib.vmrrb",
        bundle(1, p.man(vec![entry("trace.vmrr", Storage::Zstd, 8 << 30)]), &[zeros_frame(8 << 30)], true),
    );
    let mut entries = vec![entry("trace.vmrr", Storage::Zstd, p.trace_bytes.len() as u64), p.state()];
    let mut payloads = vec![p.z.clone(), p.zs.clone()];
    for slot in 0..5 {
        entries.push(entry(&format!("snapshots/snap-000000/mem-{slot}.raw"), Storage::Sparse, 4 << 30));
        payloads.push(no_extents());
    }
    let mut m = p.man(entries);
    m.snapshots = vec![0];
    p.w("memory-files-total-20gib.vmrrb", bundle(1, m, &payloads, true));
    let mut m = p.man(vec![
        entry("trace.vmrr", Storage::Zstd, p.trace_bytes.len() as u64),
        p.state(),
        entry("snapshots/snap-000000/mem-0.raw", Storage::Sparse, 2 << 30),
    ]);
    m.snapshots = vec![0];
    let one = zeros_extent(2 << 30);
    p.w("memory-pages-2gib.vmrrb", bundle(1, m, &[p.z.clone(), p.zs.clone(), one], true));
    // Snapshot files of a snapshot the manifest does not list.
    let m = p.man(vec![
        entry("trace.vmrr", Storage::Zstd, p.trace_bytes.len() as u64),
        entry("snapshots/snap-000007/state.bin", Storage::Zstd, p.state_bytes.len() as u64),
    ]);
    p.w("snapshot-not-listed.vmrrb", bundle(1, m, &[p.z.clone(), p.zs.clone()], true));
    // More annotations in the manifest than a reader keeps.
    let mut m = p.man(vec![entry("trace.vmrr", Storage::Zstd, p.trace_bytes.len() as u64)]);
    m.annotations = (0..5000).map(|i| (format!("k{i}"), String::new())).collect();
    p.w("manifest-annotations-over-cap.vmrrb", bundle(1, m, std::slice::from_ref(&p.z), true));
}

/// Damage inside a bundle's files: errors name the bundle and the entry.
fn bundles_damaged_inside(p: &BundleParts<'_>) {
    // Errors inside a bundle's files name the bundle and the entry, not where it was
    // extracted: a damaged trace, and a snapshot state that fails validation.
    let damaged = std::fs::read(p.dir.parent().unwrap().join("trace/record-size-4gib.vmrr")).unwrap();
    p.w(
        "trace-damaged-inside.vmrrb",
        bundle(
            1,
            p.man(vec![entry("trace.vmrr", Storage::Zstd, damaged.len() as u64)]),
            &[zstd::bulk::compress(&damaged, 3).unwrap()],
            true,
        ),
    );
    let bad_state = std::fs::read(p.snapshot_root.join("rip-not-canonical/snap-000000/state.bin")).unwrap();
    let mem = std::fs::read(p.snapshot_root.join("base/snap-000000/mem-0.raw")).unwrap();
    let mut m = p.man(vec![
        entry("trace.vmrr", Storage::Zstd, p.trace_bytes.len() as u64),
        entry("snapshots/snap-000000/state.bin", Storage::Zstd, bad_state.len() as u64),
        entry("snapshots/snap-000000/mem-0.raw", Storage::Sparse, mem.len() as u64),
    ]);
    m.snapshots = vec![0];
    p.w(
        "state-invalid-inside.vmrrb",
        bundle(
            1,
            m,
            &[p.z.clone(), zstd::bulk::compress(&bad_state, 3).unwrap(), sparse_payload(&mem)],
            true,
        ),
    );
}

fn sparse_payload(mem: &[u8]) -> Vec<u8> {
    let (mut table, mut data, mut n) = (Vec::new(), Vec::new(), 0u64);
    for (i, page) in mem.chunks(4096).enumerate() {
        if page.iter().any(|&b| b != 0) {
            table.extend_from_slice(&(i as u64 * 4096).to_le_bytes());
            table.extend_from_slice(&(page.len() as u64).to_le_bytes());
            data.extend_from_slice(page);
            n += 1;
        }
    }
    let mut p = n.to_le_bytes().to_vec();
    p.extend(table);
    p.extend(zstd::bulk::compress(&data, 3).unwrap());
    p
}

/// A sparse memory payload with no extents (every page zero).
fn no_extents() -> Vec<u8> {
    let mut p = 0u64.to_le_bytes().to_vec();
    p.extend(zstd::bulk::compress(&[], 3).unwrap());
    p
}

#[test]
#[ignore = "regenerates tests/data/hostile; needs KVM for the base snapshot"]
fn generate_corpus() {
    assert!(require_kvm(), "the base snapshot needs KVM");
    generate_traces(&corpus("trace"));
    generate_snapshots(&corpus("snapshot"));
    generate_bundles(&corpus("bundle"), &corpus("snapshot"));
}

/// A parent directory holding another snapshot than its name says is refused, naming it.
#[test]
fn a_parent_must_be_the_snapshot_its_directory_names() {
    let dir = corpus("snapshot/parent-impostor/snap-000001");
    refused(&["snapshot", "info", s(&dir)], "snap-000000/state.bin", &["holds snapshot 5, not 0"]);
    let out = tmp();
    refused(
        &["snapshot", "flatten", s(&dir), s(&at(&out, "flat"))],
        "snap-000000/state.bin",
        &["holds snapshot 5, not 0"],
    );
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0, "nothing written");
}

/// The positive control of every case in this file and in `hostile_io.rs`: a valid trace
/// under the same lock gets through validation and fails only where KVM is opened, with
/// the lock's error. A refusal under the lock therefore shows that the input was refused
/// before KVM, not that the lock refuses everything. With KVM, the same replay without the
/// lock completes.
#[test]
fn the_kvm_lock_stops_a_valid_trace_only_at_kvm() {
    let d = tmp();
    let trace = at(&d, "valid.vmrr");
    std::fs::copy(corpus("snapshot/base.vmrr"), &trace).unwrap();
    copy_dir(&corpus("snapshot/base"), &vmrr_engine::snapshot::dir_for_trace(&trace));
    let locked = refused_with(4, &["replay", s(&trace)], "/dev/kvm", &["Permission denied"], false);
    assert!(!locked.stderr.contains("offset 0x"), "nothing invalid was found: {}", locked.stderr);
    if require_kvm() {
        let (code, report) = replay_json(&trace, &[]);
        assert_eq!(code, Some(0), "{report}");
        assert_eq!(report["outcome"], "completed", "{report}");
    }
}

//! Compatibility tests built from hand-written bytes, as an independent writer would
//! produce them: a newer writer's extra optional payload and longer body, an older
//! writer's shorter body, non-zero padding, and unknown required features.

use vmrr_format::*;

/// Builds a record by hand: header fields, then `rest` (everything after the header).
fn raw_record(kind: u16, body_size: u16, seq: u64, vcpu: u32, flags: u32, rest: &[u8]) -> Vec<u8> {
    let size = u32::try_from(24 + rest.len()).unwrap();
    let mut v = Vec::new();
    v.extend_from_slice(&size.to_le_bytes());
    v.extend_from_slice(&kind.to_le_bytes());
    v.extend_from_slice(&body_size.to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend_from_slice(&vcpu.to_le_bytes());
    v.extend_from_slice(&flags.to_le_bytes());
    v.extend_from_slice(rest);
    v
}

fn le64(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

#[test]
fn future_writer_extra_flag_and_payload_is_skipped_and_kept() {
    // IO out, port 0x3f8, 1 byte 'A'; REGS payload (flag 0); then a payload for flag bit 5,
    // unknown to this reader: 16 bytes it must skip and keep.
    let mut rest = vec![1u8, 1, 0xf8, 0x03, 1, 0, 0, 0];
    rest.extend_from_slice(&[b'A', 0, 0, 0, 0, 0, 0, 0]);
    rest.extend_from_slice(&le64(&[0x1000, 0x8000, 0x2, 0]));
    rest.extend_from_slice(&le64(&[0xdead_beef, 0xfeed_face]));
    let bytes = raw_record(2, 8, 7, 0, 1 | (1 << 5), &rest);
    let (rec, size) = decode(&bytes).expect("a newer writer's record reads");
    assert_eq!(size, bytes.len());
    let Body::Io(io) = rec.body else { panic!("io expected, got {:?}", rec.body) };
    assert_eq!((io.port, io.data), (0x3f8, &b"A"[..]));
    assert_eq!(rec.regs.map(|r| r.rip), Some(0x1000));
    assert_eq!(rec.unknown.flags, 1 << 5);
    assert_eq!(rec.unknown.tail, &le64(&[0xdead_beef, 0xfeed_face])[..]);
    // Copying the record keeps the unknown payload byte for byte.
    let mut copy = Vec::new();
    encode(&rec, &mut copy).expect("re-encodes");
    assert_eq!(copy, bytes);
}

#[test]
fn future_writer_longer_body_keeps_known_fields() {
    // A checkpoint body grown from 24 to 32 bytes by a newer minor: the known fields read,
    // the extra 8 bytes are kept, and the payload after the body is still found.
    let mut rest = le64(&[5, 100, 90, 0x1234]);
    rest.extend_from_slice(&le64(&[0x2000, 0, 0, 0]));
    let bytes = raw_record(0x8002, 32, 101, 0, 1, &rest);
    let (rec, _) = decode(&bytes).expect("reads");
    assert_eq!(rec.body, Body::Checkpoint(Checkpoint { snapshot_id: 5, exit_seq: 100, exits: 90 }));
    assert_eq!(rec.unknown.body, &le64(&[0x1234])[..]);
    assert_eq!(rec.regs.map(|r| r.rip), Some(0x2000));
}

#[test]
fn older_writer_shorter_body_reads_as_zeros() {
    // An end-of-run record from an "older writer" whose body stopped after the reason word
    // (8 bytes instead of 24): exits and status read as zero.
    let bytes = raw_record(0x8004, 8, 3, 0, 0, &le64(&[1]));
    let (rec, _) = decode(&bytes).expect("reads");
    assert_eq!(rec.body, Body::EndOfRun(EndOfRun { reason: 1, exits: 0, status: 0 }));
    // And an MMIO record with no body at all reads as a zero-length read at address 0.
    let bytes = raw_record(6, 0, 4, 0, 0, &[]);
    let (rec, _) = decode(&bytes).expect("reads");
    assert_eq!(rec.body, Body::Mmio(Mmio { phys_addr: 0, len: 0, is_write: false, data: [0; 8] }));
}

#[test]
fn non_zero_padding_is_rejected() {
    // MMIO: padding bytes 13..16 of the body must be zero.
    let mut body = le64(&[0xd000_0000]);
    body.extend_from_slice(&[4, 0, 0, 0, 1, 0, 0, 0x80]);
    body.extend_from_slice(&[1, 2, 3, 4, 0, 0, 0, 0]);
    let bytes = raw_record(6, 24, 1, 0, 0, &body);
    let err = decode(&bytes).expect_err("padding rejected");
    assert_eq!(err.reason, Reason::NonZeroPadding { what: "mmio padding" });
    assert_eq!(err.offset, 24 + 15);
    // Bytes after len in the MMIO data are padding too.
    let mut body = le64(&[0xd000_0000]);
    body.extend_from_slice(&[2, 0, 0, 0, 1, 0, 0, 0]);
    body.extend_from_slice(&[1, 2, 3, 0, 0, 0, 0, 0]);
    let err = decode(&raw_record(6, 24, 1, 0, 0, &body)).expect_err("data past len rejected");
    assert_eq!(err.reason, Reason::NonZeroPadding { what: "mmio data beyond len" });
    // Padding after variable data (IO data of 1 byte padded to 8).
    let mut rest = vec![1u8, 1, 0xf8, 0x03, 1, 0, 0, 0];
    rest.extend_from_slice(&[b'A', 0, 0, 9, 0, 0, 0, 0]);
    let err = decode(&raw_record(2, 8, 1, 0, 0, &rest)).expect_err("rejected");
    assert_eq!(err.reason, Reason::NonZeroPadding { what: "variable data padding" });
}

#[test]
fn counts_beyond_the_record_are_refused() {
    // internal_error claiming ndata = 1000 in a record holding two words.
    let mut rest = vec![1u8, 0, 0, 0, 0xe8, 0x03, 0, 0];
    rest.extend_from_slice(&le64(&[1, 2]));
    let err = decode(&raw_record(17, 8, 1, 0, 0, &rest)).expect_err("refused");
    assert!(matches!(err.reason, Reason::CountExceedsRecord { count: 1000, .. }), "{:?}", err.reason);
    // IO count of 2^32-1 with size 4.
    let rest = vec![0u8, 4, 0x60, 0, 0xff, 0xff, 0xff, 0xff];
    let err = decode(&raw_record(2, 8, 1, 0, 0, &rest)).expect_err("refused");
    assert!(matches!(err.reason, Reason::CountExceedsRecord { .. }));
}

#[test]
fn unannounced_trailing_bytes_are_refused() {
    let bytes = raw_record(5, 0, 1, 0, 0, &[0u8; 8]);
    let err = decode(&bytes).expect_err("refused");
    assert!(matches!(err.reason, Reason::InvalidValue { .. }));
}

#[test]
fn unknown_kind_is_kept_whole() {
    // Flag bit 5 is unknown: nothing in the record can be located, all of it is kept.
    let bytes = raw_record(0x8123, 8, 9, 2, 1 << 5 | 3, &le64(&[42, 43]));
    let (rec, _) = decode(&bytes).expect("reads");
    assert!(matches!(rec.body, Body::Unknown { kind: 0x8123, body_size: 8, flags: 0x23, .. }));
    assert_eq!((rec.regs, rec.timing), (None, None));
    let mut copy = Vec::new();
    encode(&rec, &mut copy).expect("encodes");
    assert_eq!(copy, bytes);
    // A future structured exit reason (e.g. KVM_EXIT_NOTIFY = 37) counts as an exit.
    let notify = raw_record(37, 0, 10, 0, 0, &[]);
    let (rec, _) = decode(&notify).expect("reads");
    assert!(rec.body.is_exit());
}

fn header_bytes(
    compat: u64,
    incompat: u64,
    features: &[(u8, bool, (u16, u16), &str)],
    major: u16,
    minor: u16,
) -> Vec<u8> {
    let size = 72 + 24 * features.len() + 8;
    let mut v = Vec::new();
    v.extend_from_slice(b"VMRRTRC\0");
    v.extend_from_slice(&0x0a0b_0c0du32.to_le_bytes());
    v.extend_from_slice(&u32::try_from(size).unwrap().to_le_bytes());
    v.extend_from_slice(&major.to_le_bytes());
    v.extend_from_slice(&minor.to_le_bytes());
    v.extend_from_slice(&[0; 4]);
    v.extend_from_slice(&compat.to_le_bytes());
    v.extend_from_slice(&incompat.to_le_bytes());
    v.extend_from_slice(&0u64.to_le_bytes());
    v.extend_from_slice(&[0xab; 16]);
    v.extend_from_slice(&72u32.to_le_bytes());
    v.extend_from_slice(&u32::try_from(features.len()).unwrap().to_le_bytes());
    for (bit, req, (a, b), name) in features {
        v.push(*bit);
        v.push(u8::from(*req));
        v.extend_from_slice(&a.to_le_bytes());
        v.extend_from_slice(&b.to_le_bytes());
        v.extend_from_slice(&[0, 0]);
        let mut n = [0u8; 16];
        n[..name.len()].copy_from_slice(name.as_bytes());
        v.extend_from_slice(&n);
    }
    v.extend_from_slice(&[0; 4]);
    let crc = crc32c_of(&v);
    v.extend_from_slice(&crc.to_le_bytes());
    v
}

fn crc32c_of(b: &[u8]) -> u32 {
    // Independent bitwise CRC32C (Castagnoli, reflected 0x82F63B78), as a spec reader would write it.
    let mut crc = !0u32;
    for &byte in b {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
        }
    }
    !crc
}

#[test]
fn unknown_required_feature_is_refused_by_name_and_version() {
    let h = header_bytes(1, 1 | (1 << 7), &[(7, true, (1, 4), "seq-delta")], 1, 4);
    let err = FileHeader::decode(&h).expect_err("refused");
    let msg = err.to_string();
    assert!(msg.contains("seq-delta") && msg.contains("1.4") && msg.contains("bit 7"), "{msg}");
    // Without a descriptor the bit is still refused.
    let h = header_bytes(0, 1 << 9, &[], 1, 0);
    let err = FileHeader::decode(&h).expect_err("refused");
    assert!(matches!(err.reason, Reason::UnknownRequiredFeature { bit: 9, named: None, .. }));
}

#[test]
fn unknown_optional_feature_is_ignored() {
    let h = header_bytes(1 << 12, 0, &[(12, false, (1, 3), "fancy-hint")], 1, 3);
    let hdr = FileHeader::decode(&h).expect("optional features are ignored");
    assert_eq!(hdr.version_minor, 3);
    assert_eq!(hdr.features[0].name, "fancy-hint");
}

#[test]
fn header_reserved_must_be_zero() {
    let mut h = header_bytes(0, 0, &[], 1, 0);
    h[21] = 1;
    let n = h.len();
    let crc = crc32c_of(&h[..n - 4]);
    h[n - 4..].copy_from_slice(&crc.to_le_bytes());
    let err = FileHeader::decode(&h).expect_err("refused");
    assert!(matches!(err.reason, Reason::NonZeroPadding { .. }));
}

#[test]
fn crc_matches_independent_implementation() {
    assert_eq!(crc32c_of(b"123456789"), 0xe306_9283);
    let h = FileHeader::new(0, [0; 16], &[]).encode();
    let n = h.len();
    assert_eq!(crc32c_of(&h[..n - 4]).to_le_bytes(), h[n - 4..]);
}

/// FORMAT.md §5.2: with no unknown flag set, the unknown tail is empty, so the payloads of
/// known flags are a record's last bytes, whatever its kind: a reader finds the register
/// sample and the timing of an exit kind it does not know from the record's end.
#[test]
fn known_payloads_of_an_unknown_kind_are_found_from_its_end() {
    let timing = Timing::from_ns(Some(950), 2_100);
    // Kind 40 (a future exit), body 8, 8 bytes of variable data, REGS, TIMING.
    let mut rest = le64(&[7, 0xabcd]);
    rest.extend_from_slice(&le64(&[0x7c08, 0x7000, 2, 1]));
    rest.extend_from_slice(&timing.prev_handler.to_le_bytes());
    rest.extend_from_slice(&timing.guest.to_le_bytes());
    rest.extend_from_slice(&[0; 4]);
    let bytes = raw_record(40, 8, 11, 0, FLAG_REGS | FLAG_TIMING, &rest);
    let (rec, _) = decode(&bytes).expect("reads");
    assert!(matches!(rec.body, Body::Unknown { kind: 40, .. }));
    assert!(rec.body.is_exit());
    assert_eq!(rec.regs, Some(RegsSample { rip: 0x7c08, rsp: 0x7000, rflags: 2, flags: 1 }));
    assert_eq!(rec.timing, Some(timing));
    // A copy is still the record as read, byte for byte.
    let mut copy = Vec::new();
    encode(&rec, &mut copy).expect("encodes");
    assert_eq!(copy, bytes);
    // A repairer copies it as it is, even into a trace without the timing feature: the
    // payload is part of the bytes it does not interpret.
    let sink = MemorySink::default();
    let mut w =
        TraceWriter::with_sink(sink.clone(), "copy".into(), WriterOptions::default()).expect("writer");
    let mut copied = rec;
    copied.seq = 0;
    w.append_record(&copied).expect("copied");
    w.finish().expect("finish");
    let mut r = TraceReader::from_bytes(sink.bytes(), "copy").expect("reads");
    let back = r.next_record().expect("one record").expect("valid");
    assert_eq!((back.body, back.regs, back.timing), (rec.body, rec.regs, rec.timing));
    // Payloads the record cannot hold after its body make it invalid (rule 2).
    let short = raw_record(40, 8, 11, 0, FLAG_REGS | FLAG_TIMING, &le64(&[7, 0, 0, 0]));
    let err = decode(&short).expect_err("refused");
    assert!(
        matches!(err.reason, Reason::CountExceedsRecord { what: "payloads of known flags", .. }),
        "{err:?}"
    );
    // An invalid time code found this way is refused like any other.
    let mut bad = bytes.clone();
    let n = bad.len();
    bad[n - 6..n - 4].copy_from_slice(&0x1000u16.to_le_bytes());
    assert!(matches!(
        decode(&bad).expect_err("refused").reason,
        Reason::InvalidValue { field: "timing guest", .. }
    ));
}

/// FORMAT.md §6: RAW_EXIT carries at most the 256-byte `kvm_run` exit union.
#[test]
fn a_raw_exit_longer_than_the_exit_union_is_invalid() {
    let record = |len: u32| {
        let mut rest = 99u32.to_le_bytes().to_vec();
        rest.extend_from_slice(&len.to_le_bytes());
        rest.resize(8 + usize::try_from(len).unwrap().div_ceil(8) * 8, 0xaa);
        raw_record(0x7fff, 8, 1, 0, 0, &rest)
    };
    let full = record(256);
    let (rec, _) = decode(&full).expect("256 bytes read");
    assert!(matches!(rec.body, Body::RawExit(RawExit { exit_reason: 99, data }) if data.len() == 256));
    let err = decode(&record(264)).expect_err("264 refused");
    assert_eq!(err.offset, 28);
    assert!(matches!(err.reason, Reason::InvalidValue { value: 264, .. }), "{err:?}");
    let data = [0u8; 257];
    let mut out = Vec::new();
    assert!(
        encode(&Record::new(0, 0, Body::RawExit(RawExit { exit_reason: 99, data: &data })), &mut out)
            .is_err()
    );
}

/// FORMAT.md §6: a guest write's range `[gpa, gpa + len)` ends at a 64-bit value, so it may
/// come up to, but not include, the last byte of the address space.
#[test]
fn a_guest_write_ends_below_the_top_of_the_address_space() {
    let record = |gpa: u64, data: &[u8]| {
        let mut rest = le64(&[gpa]);
        rest.extend_from_slice(&u32::try_from(data.len()).unwrap().to_le_bytes());
        rest.extend_from_slice(&[0; 4]);
        rest.extend_from_slice(data);
        rest.resize(rest.len().div_ceil(8) * 8, 0);
        raw_record(0x8007, 16, 1, 0, 0, &rest)
    };
    let ok = record(u64::MAX - 4, b"abcd");
    let (rec, _) = decode(&ok).expect("ends at 2^64 - 1");
    assert!(
        matches!(rec.body, Body::GuestWrite(GuestWrite { gpa, data }) if gpa == u64::MAX - 4 && data == b"abcd")
    );
    let err = decode(&record(u64::MAX - 3, b"abcd")).expect_err("would end at 2^64");
    assert!(matches!(err.reason, Reason::InvalidValue { field: "guest_write gpa + len", .. }), "{err:?}");
    let empty = record(u64::MAX, b"");
    assert!(decode(&empty).is_ok(), "len 0 is valid at any gpa");
}

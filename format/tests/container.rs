//! Container-level behaviour: index and seek, torn tails, damaged chunks in the middle.

use vmrr_format::chunk::ChunkHeader;
use vmrr_format::*;

const CHUNK: usize = 4096;

/// A trace of `n` IO records spread over many small chunks; returns the bytes.
fn trace(n: u64, zstd: bool, finish: bool) -> Vec<u8> {
    let sink = MemorySink::default();
    let opts = WriterOptions {
        zstd_level: zstd.then_some(3),
        chunk_target: CHUNK,
        sync: SyncMode::Never,
        ..Default::default()
    };
    let mut w = TraceWriter::with_sink(sink.clone(), "mem".into(), opts).expect("writer");
    for i in 0..n {
        let b = [u8::try_from(i % 251).unwrap()];
        let io = Io { direction: Direction::Out, size: 1, port: 0x3f8, count: 1, data: &b };
        w.append(0, Body::Io(io), Some(RegsSample { rip: 0x1000 + (i % 7), ..Default::default() }))
            .expect("append");
    }
    if finish {
        w.finish().expect("finish");
    } else {
        w.flush().expect("flush");
        drop(w); // like a crash: no index, no trailer
    }
    sink.bytes()
}

fn read_all(bytes: Vec<u8>) -> (Vec<u64>, Vec<ReadError>) {
    let mut r = TraceReader::from_bytes(bytes, "t").expect("header intact");
    let mut seqs = Vec::new();
    let mut errs = Vec::new();
    while let Some(item) = r.next_record() {
        match item {
            Ok(rec) => seqs.push(rec.seq),
            Err(e) => errs.push(e),
        }
    }
    (seqs, errs)
}

fn chunk_offsets(bytes: &[u8]) -> Vec<(u64, ChunkHeader)> {
    let mut r = TraceReader::from_bytes(bytes.to_vec(), "t").expect("reader");
    let mut v = Vec::new();
    while let Some(c) = r.next_chunk_header().expect("io") {
        let c = c.expect("intact");
        v.push((c.offset, c.header));
    }
    v
}

#[test]
fn finished_trace_has_index_and_verifies() {
    for zstd in [false, true] {
        let bytes = trace(5000, zstd, true);
        let mut r = TraceReader::from_bytes(bytes, "t").expect("reader");
        assert!(r.index().expect("index").entries.len() > 5);
        let rep = verify(&mut r).expect("verify");
        assert!(rep.ok, "{rep:?}");
        assert_eq!(rep.records_readable, 5000);
        assert_eq!(rep.index, "ok");
    }
}

#[test]
fn seek_by_sequence_with_and_without_index() {
    for finish in [true, false] {
        let bytes = trace(5000, true, finish);
        let mut r = TraceReader::from_bytes(bytes, "t").expect("reader");
        assert_eq!(r.index().is_some(), finish);
        for target in [0u64, 1, 777, 2500, 4999] {
            r.seek_seq(target).expect("seek");
            let rec = r.next_record().expect("a record").expect("intact");
            assert_eq!(rec.seq, target);
        }
        r.seek_seq(5000).expect("seek");
        assert!(r.next_record().is_none());
    }
}

#[test]
fn torn_tail_loses_at_most_the_incomplete_chunk() {
    let full = trace(3000, true, false);
    let chunks = chunk_offsets(&full);
    let last = chunks.last().expect("chunks").0;
    // Cut in the middle of the last chunk: everything before it must read.
    let cut = usize::try_from(last).unwrap() + 30;
    let (seqs, errs) = read_all(full[..cut].to_vec());
    let before: u64 = chunks[..chunks.len() - 1].iter().map(|c| u64::from(c.1.record_count)).sum();
    assert_eq!(seqs.len() as u64, before);
    assert!(seqs.iter().enumerate().all(|(i, s)| *s == i as u64), "contiguous from 0");
    assert_eq!(errs.len(), 1, "one damage report for the torn chunk: {errs:?}");
    // Cut at every byte of the last 200: never a panic, never a wrong record.
    for cut in full.len() - 200..full.len() {
        let (seqs, _) = read_all(full[..cut].to_vec());
        assert!(seqs.len() as u64 >= before);
        assert!(seqs.iter().enumerate().all(|(i, s)| *s == i as u64));
    }
}

#[test]
fn damaged_payload_in_the_middle_is_skipped() {
    let mut bytes = trace(5000, true, true);
    let chunks = chunk_offsets(&bytes);
    let (off, h) = chunks[3];
    let victim = usize::try_from(off).unwrap() + usize::from(h.header_size) + 5;
    bytes[victim] ^= 0x40;
    let mut r = TraceReader::from_bytes(bytes.clone(), "t").expect("reader");
    let rep = verify(&mut r).expect("verify");
    assert!(!rep.ok);
    assert_eq!(rep.damaged_chunks.len(), 1);
    assert_eq!(rep.damaged_chunks[0].offset, off + u64::from(h.header_size));
    assert!(rep.damaged_chunks[0].reason.contains("checksum"), "{:?}", rep.damaged_chunks[0]);
    assert_eq!(rep.records_readable, 5000 - u64::from(h.record_count));
    assert_eq!(rep.sequence_gaps, vec![[h.first_seq, h.first_seq + u64::from(h.record_count) - 1]]);
    // Everything after the damage is read.
    let (seqs, _) = read_all(bytes);
    assert_eq!(*seqs.last().unwrap(), 4999);
}

#[test]
fn damaged_chunk_header_resyncs_to_next_chunk() {
    let mut bytes = trace(5000, false, true);
    let chunks = chunk_offsets(&bytes);
    let (off, _) = chunks[2];
    let (next_off, next_h) = chunks[3];
    // Destroy the magic and the size: the reader cannot skip by size, so it scans.
    let o = usize::try_from(off).unwrap();
    bytes[o..o + 12].copy_from_slice(&[0xff; 12]);
    let mut r = TraceReader::from_bytes(bytes, "t").expect("reader");
    let mut first_after = None;
    let mut errors = 0;
    while let Some(item) = r.next_record() {
        match item {
            Ok(rec)
                if first_after.is_none()
                    && rec.seq > chunks[1].1.first_seq + u64::from(chunks[1].1.record_count) =>
            {
                first_after = Some(rec.seq)
            }
            Ok(_) => {}
            Err(e) => {
                errors += 1;
                assert!(e.to_string().contains(&format!("{off:#x}")), "names the offset: {e}");
            }
        }
    }
    assert_eq!(errors, 1);
    assert_eq!(first_after, Some(next_h.first_seq), "resumed at chunk {next_off:#x}");
}

/// FORMAT.md §8.4: a chunk whose header is sealed (its CRC checks out) but holds an
/// unknown flag bit, an unknown codec or a non-zero reserved word is damage, skipped by its
/// size: the reader does not scan its payload for chunk magic. The damaged chunk here holds
/// a complete, valid empty chunk header in its data, which a scan would resume at.
#[test]
fn a_sealed_chunk_with_an_unknown_flag_codec_or_reserved_word_is_skipped_by_its_size() {
    // An empty chunk (no records) as a writer would seal it.
    let mut decoy = Vec::new();
    let empty = ChunkHeader {
        header_size: 40,
        codec: 0,
        stored_size: 0,
        raw_size: 0,
        first_seq: 1_000_000,
        record_count: 0,
        payload_crc32c: crc32c::crc32c(&[]),
        flags: 0,
    };
    empty.encode(&mut decoy);
    for (field, value) in [(7usize, 0x80u8), (6, 9), (32, 1)] {
        let sink = MemorySink::default();
        let opts = WriterOptions {
            zstd_level: None,
            chunk_target: 256,
            sync: SyncMode::Never,
            ..Default::default()
        };
        let mut w = TraceWriter::with_sink(sink.clone(), "mem".into(), opts).expect("writer");
        for i in 0..30u64 {
            let data: Vec<u8> = if i == 10 { decoy.clone() } else { vec![u8::try_from(i).unwrap(); 8] };
            w.append(0, Body::RawExit(RawExit { exit_reason: 99, data: &data }), None).expect("append");
        }
        w.finish().expect("finish");
        let mut bytes = sink.bytes();
        let chunks = chunk_offsets(&bytes);
        // The chunk holding the decoy, and the one after it.
        let i = chunks.iter().rposition(|(_, h)| h.first_seq <= 10).expect("chunk");
        let (off, h) = chunks[i];
        let off = usize::try_from(off).unwrap();
        bytes[off + field] = value;
        let crc = crc32c::crc32c(&bytes[off..off + 36]);
        bytes[off + 36..off + 40].copy_from_slice(&crc.to_le_bytes());
        let (seqs, errs) = read_all(bytes);
        assert_eq!(errs.len(), 1, "field {field}: one damaged chunk, nothing else: {errs:?}");
        let lost: Vec<u64> = (h.first_seq..h.first_seq + u64::from(h.record_count)).collect();
        let expect: Vec<u64> = (0..30).filter(|s| !lost.contains(s)).collect();
        assert_eq!(seqs, expect, "field {field}: resumed at the next chunk");
    }
}

#[test]
fn future_major_file_is_refused_with_a_message() {
    let mut bytes = trace(10, true, true);
    bytes[16] = 2;
    let hs = usize::from(u16::from_le_bytes([bytes[12], bytes[13]]));
    let crc = crc32c::crc32c(&bytes[..hs - 4]);
    bytes[hs - 4..hs].copy_from_slice(&crc.to_le_bytes());
    let err = TraceReader::from_bytes(bytes, "future.vmrr").err().expect("refused");
    let msg = err.to_string();
    assert!(msg.contains("future.vmrr") && msg.contains("2.0") && msg.contains("upgrade"), "{msg}");
}

#[test]
fn stats_counts_kinds() {
    let sink = MemorySink::default();
    let mut w = TraceWriter::with_sink(sink.clone(), "m".into(), WriterOptions::default()).expect("w");
    w.append(0, Body::Annotation(Annotation { key: "k", value: "v" }), None).unwrap();
    for _ in 0..10 {
        w.append(0, Body::Hlt, None).unwrap();
    }
    w.append(
        1,
        Body::Mmio(Mmio { phys_addr: 1, len: 1, is_write: true, data: [1, 0, 0, 0, 0, 0, 0, 0] }),
        None,
    )
    .unwrap();
    w.append(0, Body::EndOfRun(EndOfRun { reason: 1, exits: 11, status: 0 }), None).unwrap();
    w.finish().unwrap();
    let mut r = TraceReader::from_bytes(sink.bytes(), "m").unwrap();
    let st = stats(&mut r).unwrap();
    assert_eq!(st.records, 13);
    assert_eq!(st.exits, 11);
    assert_eq!(st.by_kind["hlt"], 10);
    assert_eq!(st.by_kind["mmio"], 1);
    assert_eq!(st.by_kind["end_of_run"], 1);
    assert_eq!(st.vcpus, 2);
    assert_eq!(st.format_version, "1.0");
}

/// Adds `by` to the little-endian integer of `width` bytes at `at` of the index block of
/// the finished trace `bytes`, then seals the index again: a lie its checksum covers.
fn edit_index(bytes: &mut [u8], edits: &[(usize, usize, u64)]) {
    let n = bytes.len();
    let ioff = usize::try_from(u64::from_le_bytes(bytes[n - 24..n - 16].try_into().unwrap())).unwrap();
    let isize_ = usize::try_from(u64::from_le_bytes(bytes[n - 16..n - 8].try_into().unwrap())).unwrap();
    for &(at, width, by) in edits {
        let field = &mut bytes[ioff + at..ioff + at + width];
        let mut v = [0u8; 8];
        v[..width].copy_from_slice(field);
        field.copy_from_slice(&(u64::from_le_bytes(v) + by).to_le_bytes()[..width]);
    }
    let crc = crc32c::crc32c(&bytes[ioff..ioff + isize_ - 4]);
    bytes[ioff + isize_ - 4..ioff + isize_].copy_from_slice(&crc.to_le_bytes());
}

/// Verifies `bytes`: the index is damaged, and every record still reads.
fn index_damaged(bytes: Vec<u8>) -> VerifyReport {
    let mut r = TraceReader::from_bytes(bytes, "t").unwrap();
    let rep = verify(&mut r).unwrap();
    assert!(!rep.ok);
    assert_eq!(rep.index, "damaged");
    assert_eq!(rep.records_readable, 3000);
    rep
}

#[test]
fn index_that_lies_is_detected() {
    let mut bytes = trace(3000, true, true);
    // The index's record_count and the first entry's count, consistently: the index then
    // disagrees with the chunks it lists.
    edit_index(&mut bytes, &[(16, 8, 1), (24 + 16, 4, 1)]);
    index_damaged(bytes);
}

#[test]
fn an_index_entry_whose_sizes_disagree_with_its_chunk_is_damage() {
    // FORMAT.md §8.5: all five fields an entry repeats from its chunk header are compared,
    // the payload sizes too: here the first entry's raw_size.
    let mut bytes = trace(3000, true, true);
    edit_index(&mut bytes, &[(24 + 20, 4, 8)]);
    let rep = index_damaged(bytes);
    assert!(rep.damaged_chunks[0].reason.contains("disagrees"), "{rep:?}");
}

#[test]
fn an_unfinished_trace_that_ends_after_a_chunk_is_intact() {
    // FORMAT.md §2 and §8.6: no index is not damage; the report says it is missing.
    let bytes = trace(3000, true, false);
    let mut r = TraceReader::from_bytes(bytes, "t").expect("reader");
    let rep = verify(&mut r).expect("verify");
    assert!(rep.ok, "{rep:?}");
    assert_eq!(rep.index, "missing");
    assert!(!rep.ended);
    assert_eq!(rep.records_readable, 3000);
    assert!(rep.damaged_chunks.is_empty() && rep.sequence_gaps.is_empty());
}

#[test]
fn a_gap_in_sequence_numbers_is_listed_but_is_not_damage() {
    // §4.1: a writer may skip numbers; verify lists the gap and calls the file intact.
    let sink = MemorySink::default();
    let opts = WriterOptions { sync: SyncMode::Never, ..Default::default() };
    let mut w = TraceWriter::with_sink(sink.clone(), "mem".into(), opts).expect("writer");
    for seq in [0u64, 1, 2, 10, 11] {
        w.append_record(&Record::new(seq, 0, Body::Hlt)).expect("append");
    }
    w.finish().expect("finish");
    let mut r = TraceReader::from_bytes(sink.bytes(), "t").expect("reader");
    let rep = verify(&mut r).expect("verify");
    assert!(rep.ok, "{rep:?}");
    assert_eq!(rep.sequence_gaps, vec![[3, 9]]);
    assert_eq!(rep.records_readable, 5);
}

/// Guest writes: a writer without `guest_writes` refuses them and stays 1.0; with it the
/// file is 1.1 and a write larger than one record is split into consecutive records that
/// read back as the same bytes at increasing addresses.
#[test]
fn guest_writes_split_read_back_and_need_the_feature() {
    use vmrr_format::{Body, MAX_GUEST_WRITE_DATA, MemorySink, TraceReader, TraceWriter, WriterOptions};
    let plain = MemorySink::default();
    let mut w = TraceWriter::with_sink(plain.clone(), "plain".into(), WriterOptions::default()).unwrap();
    assert_eq!(w.header().version_minor, 0);
    let err = w.append_guest_write(0, 0x1000, b"x").unwrap_err();
    assert!(err.to_string().contains("guest_writes"), "{err}");
    w.finish().unwrap();

    let sink = MemorySink::default();
    let opts = WriterOptions { guest_writes: true, ..Default::default() };
    let mut w = TraceWriter::with_sink(sink.clone(), "gw".into(), opts).unwrap();
    assert_eq!(w.header().version_minor, 1);
    let big: Vec<u8> = (0..MAX_GUEST_WRITE_DATA + 100).map(|i| u8::try_from(i % 251).unwrap()).collect();
    let last = w.append_guest_write(0, 0x10_0000, &big).unwrap();
    assert_eq!(last, 1, "two records");
    assert!(w.append_guest_write(0, u64::MAX - 3, b"overflow").is_err());
    w.finish().unwrap();

    let mut r = TraceReader::from_bytes(sink.bytes(), "gw").unwrap();
    let mut back = Vec::new();
    let mut addrs = Vec::new();
    while let Some(rec) = r.next_record() {
        if let Body::GuestWrite(g) = rec.unwrap().body {
            addrs.push(g.gpa);
            back.extend_from_slice(g.data);
        }
    }
    assert_eq!(addrs, [0x10_0000, 0x10_0000 + MAX_GUEST_WRITE_DATA as u64]);
    assert_eq!(back, big);
}

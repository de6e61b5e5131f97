//! Several threads appending to one trace through their own streams: every record is
//! there once, numbered 0..n without a gap, each thread's records in its order, and the
//! file is an ordinary trace any reader reads.

use std::collections::HashMap;

use vmrr_format::{Body, Direction, Io, MemorySink, TraceReader, TraceWriter, WriteError, WriterOptions};

fn io(byte: &[u8]) -> Body<'_> {
    Body::Io(Io { direction: Direction::Out, size: 1, port: 0x3f8, count: 1, data: byte })
}

/// `threads` threads append `each` records; the reader's view, per record (seq, vcpu,
/// the thread's own counter in the data byte pair).
fn run(threads: u32, each: u32, chunk_target: usize) -> Vec<(u64, u32, u32)> {
    let sink = MemorySink::default();
    let opts = WriterOptions { chunk_target, ..Default::default() };
    let w = TraceWriter::with_sink(sink.clone(), "mem".into(), opts).expect("writer");
    let shared = w.into_shared(threads as usize).expect("shared");
    std::thread::scope(|s| {
        for t in 0..threads {
            let mut stream = shared.stream();
            s.spawn(move || {
                for i in 0..each {
                    // The data byte carries the thread's counter (mod 256), checked below.
                    let b = [(i % 256) as u8];
                    stream.append(t, io(&b), None).expect("append");
                }
            });
        }
    });
    shared.finish().expect("finish");
    let mut r = TraceReader::from_bytes(sink.bytes(), "mem").expect("reader");
    let mut out = Vec::new();
    while let Some(rec) = r.next_record() {
        let rec = rec.expect("record");
        let Body::Io(io) = rec.body else { panic!("not an exit: {:?}", rec.body) };
        out.push((rec.seq, rec.vcpu, u32::from(io.data[0])));
    }
    out
}

#[test]
fn every_record_once_numbered_without_gaps_each_thread_in_order() {
    for (threads, chunk) in [(1, 4096), (2, 4096), (4, 4096), (4, 1 << 20), (8, 4096)] {
        let each = 20_000;
        let recs = run(threads, each, chunk);
        assert_eq!(recs.len(), (threads * each) as usize, "{threads} threads: every record once");
        for (i, (seq, _, _)) in recs.iter().enumerate() {
            assert_eq!(*seq, i as u64, "{threads} threads: numbers 0..n in file order");
        }
        let mut next: HashMap<u32, u32> = HashMap::new();
        for (_, vcpu, byte) in recs {
            let n = next.entry(vcpu).or_default();
            assert_eq!(byte, *n % 256, "thread {vcpu}'s records in its order");
            *n += 1;
        }
        assert_eq!(next.len(), threads as usize);
    }
}

#[test]
fn streams_alive_at_finish_are_collected_then_refused() {
    let sink = MemorySink::default();
    let w = TraceWriter::with_sink(sink.clone(), "mem".into(), WriterOptions::default()).expect("writer");
    let shared = w.into_shared(2).expect("shared");
    let mut a = shared.stream();
    let mut b = shared.stream();
    assert_eq!(a.append(0, io(b"a"), None).expect("a"), 0);
    assert_eq!(b.append(1, io(b"b"), None).expect("b"), 1);
    let summary = shared.clone().finish().expect("finish");
    assert_eq!(summary.records, 2, "both buffered records reached the file");
    assert!(matches!(a.append(0, io(b"c"), None), Err(WriteError::WriterGone { .. })));
    assert!(matches!(shared.finish(), Err(WriteError::WriterGone { .. })));
    let mut r = TraceReader::from_bytes(sink.bytes(), "mem").expect("reader");
    assert_eq!(r.next_record().expect("one").expect("ok").vcpu, 0);
    assert_eq!(r.next_record().expect("two").expect("ok").vcpu, 1);
    assert!(r.next_record().is_none());
}

#[test]
fn an_unencodable_record_takes_no_number() {
    let sink = MemorySink::default();
    let w = TraceWriter::with_sink(sink.clone(), "mem".into(), WriterOptions::default()).expect("writer");
    let shared = w.into_shared(1).expect("shared");
    let mut s = shared.stream();
    // Guest writes need the guest-write feature, which this trace does not announce.
    assert!(s.append_guest_write(0, 0x1000, b"x").is_err());
    assert_eq!(s.append(0, io(b"a"), None).expect("append"), 0, "the refused record took no number");
    shared.finish().expect("finish");
}

//! Several threads appending to one trace through a `SharedTrace`: every record lands
//! exactly once, numbered 0..n without a gap, each thread's records in its own order; a
//! finished trace refuses its live streams; a write failure reaches the appending threads.

use std::io::Write;
use std::sync::{Arc, Mutex};

use vmrr_format::*;

const THREADS: u32 = 4;
const PER_THREAD: u64 = 5_000;

fn opts() -> WriterOptions {
    WriterOptions {
        zstd_level: Some(1),
        chunk_target: 4096,
        sync: SyncMode::Never,
        threads: true,
        irq_lines: true,
        guest_writes: true,
        ..Default::default()
    }
}

/// Thread `t` appends `PER_THREAD` records under vCPU `t` (the last thread as device
/// thread 0, with guest writes and IRQ lines); each record carries its thread and its
/// index in that thread. Returns each thread's sequence numbers as `append` gave them.
fn append_concurrently(shared: &SharedTrace) -> Vec<Vec<u64>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let mut stream = shared.stream();
                s.spawn(move || {
                    let device = t == THREADS - 1;
                    let who = if device { DEVICE_THREAD_BASE } else { t };
                    let mut seqs = Vec::new();
                    for i in 0..PER_THREAD {
                        let tag = (u64::from(t) << 32) | i;
                        let seq = if device && i % 2 == 0 {
                            stream.append_guest_write(who, tag, &tag.to_le_bytes()).unwrap()
                        } else if device {
                            let line = IrqLine { gsi: t, level: IRQ_LEVEL_PULSE, via: IRQ_VIA_IRQFD };
                            // The index travels in the IRQ line's GSI's neighbour: an annotation.
                            let s1 = stream.append_irq_line(who, line).unwrap();
                            seqs.push(s1);
                            let v = tag.to_string();
                            stream
                                .append(who, Body::Annotation(Annotation { key: "tag", value: &v }), None)
                                .unwrap()
                        } else {
                            let d = [u8::try_from(i % 200).unwrap()];
                            let io =
                                Io { direction: Direction::Out, size: 1, port: 0x3f8, count: 1, data: &d };
                            stream
                                .append(
                                    who,
                                    Body::Io(io),
                                    Some(RegsSample { rip: tag, ..Default::default() }),
                                )
                                .unwrap()
                        };
                        seqs.push(seq);
                        if i % 1000 == 0 {
                            stream.poll_flush().unwrap();
                        }
                    }
                    seqs
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// The tag a record carries (thread << 32 | index), or `None` for an IRQ line.
fn tag(rec: &Record<'_>) -> Option<u64> {
    match rec.body {
        Body::Io(_) => rec.regs.map(|r| r.rip),
        Body::GuestWrite(g) => Some(g.gpa),
        Body::Annotation(a) => a.value.parse().ok(),
        _ => None,
    }
}

#[test]
fn concurrent_streams_give_every_record_once_in_a_contiguous_order() {
    let sink = MemorySink::default();
    let w = TraceWriter::with_sink(sink.clone(), "mem".into(), opts()).unwrap();
    let shared = w.into_shared();
    assert_eq!(shared.header().version_minor, 2);
    let returned = append_concurrently(&shared);
    let total: usize = returned.iter().map(Vec::len).sum();
    let summary = shared.finish().unwrap();
    assert_eq!(summary.records, u64::try_from(total).unwrap());
    assert!(summary.chunks > 1, "several chunks were written: {summary:?}");

    let mut r = TraceReader::from_bytes(sink.bytes(), "mem").unwrap();
    assert!(r.header().has_threads() && r.header().has_irq_lines());
    let mut seqs = Vec::new();
    let mut per_thread: Vec<Vec<u64>> = vec![Vec::new(); usize::try_from(THREADS).unwrap()];
    let mut by_vcpu: Vec<Vec<u64>> = vec![Vec::new(); usize::try_from(THREADS).unwrap()];
    while let Some(rec) = r.next_record() {
        let rec = rec.unwrap();
        seqs.push(rec.seq);
        let thread = match Appender::of(rec.vcpu) {
            Appender::Vcpu(v) => v,
            Appender::Device(0) => THREADS - 1,
            other => panic!("unexpected appender {other:?}"),
        };
        by_vcpu[usize::try_from(thread).unwrap()].push(rec.seq);
        if let Some(t) = tag(&rec) {
            assert_eq!(t >> 32, u64::from(thread), "record {} carries its own thread's tag", rec.seq);
            per_thread[usize::try_from(thread).unwrap()].push(t & 0xffff_ffff);
        }
    }
    let n = u64::try_from(total).unwrap();
    assert_eq!(seqs, (0..n).collect::<Vec<_>>(), "every number once, in order, no gap");
    for (t, got) in per_thread.iter().enumerate() {
        assert_eq!(got, &(0..PER_THREAD).collect::<Vec<_>>(), "thread {t}'s records in its own order");
    }
    for (t, seqs) in by_vcpu.iter().enumerate() {
        assert_eq!(seqs, &returned[t], "thread {t}: the numbers append returned are where its records are");
    }
    let report = verify(&mut TraceReader::from_bytes(sink.bytes(), "mem").unwrap()).unwrap();
    assert!(report.damaged_chunks.is_empty());
}

#[test]
fn finish_with_live_streams_refuses_their_later_appends() {
    let sink = MemorySink::default();
    let shared = TraceWriter::with_sink(sink.clone(), "mem".into(), opts()).unwrap().into_shared();
    let mut a = shared.stream();
    let mut b = shared.stream();
    a.append(0, Body::Hlt, None).unwrap();
    b.append(1, Body::Hlt, None).unwrap();
    a.append(0, Body::Hlt, None).unwrap();
    let other = shared.clone();
    assert_eq!(shared.finish().unwrap().records, 3, "the streams' records were collected");
    assert!(matches!(a.append(0, Body::Hlt, None), Err(WriteError::WriterGone { .. })));
    assert!(matches!(b.flush(), Err(WriteError::WriterGone { .. })));
    assert!(matches!(other.stream().append(2, Body::Hlt, None), Err(WriteError::WriterGone { .. })));
    assert!(matches!(other.finish(), Err(WriteError::WriterGone { .. })));
    let mut r = TraceReader::from_bytes(sink.bytes(), "mem").unwrap();
    let mut got = Vec::new();
    while let Some(rec) = r.next_record() {
        let rec = rec.unwrap();
        got.push((rec.seq, rec.vcpu));
    }
    assert_eq!(got, [(0, 0), (1, 1), (2, 0)]);
}

#[test]
fn a_refused_record_takes_no_number() {
    let o = WriterOptions { irq_lines: false, ..opts() };
    let shared = TraceWriter::with_sink(MemorySink::default(), "mem".into(), o).unwrap().into_shared();
    let mut s = shared.stream();
    let line = IrqLine { gsi: 1, level: IRQ_LEVEL_HIGH, via: IRQ_VIA_IOCTL };
    let err = s.append_irq_line(0, line).expect_err("irq-line not announced");
    assert!(err.to_string().contains("irq-line"), "{err}");
    assert!(
        s.append_timed(0, Body::Hlt, None, Timing { prev_handler: 0, guest: 0 }).is_err(),
        "timing not announced"
    );
    assert_eq!(s.append(0, Body::Hlt, None).unwrap(), 0);
    shared.sync().unwrap();
    assert_eq!(shared.finish().unwrap().records, 1);
}

/// A sink whose writes fail once `limit` bytes were written.
#[derive(Clone)]
struct FailingSink {
    written: Arc<Mutex<usize>>,
    limit: usize,
}

impl Write for FailingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut w = self.written.lock().unwrap();
        if *w + buf.len() > self.limit {
            return Err(std::io::Error::other("injected write failure"));
        }
        *w += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl TraceSink for FailingSink {
    fn sync(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        *self.written.lock().unwrap() = usize::try_from(len).unwrap();
        Ok(())
    }
    fn rewind(&mut self, pos: u64) -> std::io::Result<()> {
        self.truncate(pos)
    }
}

#[test]
fn a_write_failure_reaches_the_appending_threads_and_finish() {
    let sink = FailingSink { written: Arc::default(), limit: 16 * 1024 };
    let o = WriterOptions { zstd_level: None, ..opts() };
    let shared = TraceWriter::with_sink(sink, "failing".into(), o).unwrap().into_shared();
    let errors: Vec<Option<String>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2u32)
            .map(|t| {
                let mut stream = shared.stream();
                s.spawn(move || {
                    for i in 0..200_000u64 {
                        let d = [u8::try_from(i % 200).unwrap()];
                        let io = Io { direction: Direction::Out, size: 1, port: 0x3f8, count: 1, data: &d };
                        if let Err(e) = stream.append(t, Body::Io(io), None).and_then(|_| stream.flush()) {
                            return Some(e.to_string());
                        }
                    }
                    None
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Every thread stops on an error (the writer thread failed; its error is reported to
    // whichever thread collected first, the others see the writer gone).
    assert!(errors.iter().all(Option::is_some), "{errors:?}");
    assert!(
        errors.iter().flatten().any(|e| e.contains("cannot write trace failing")),
        "the sink's error reaches a thread: {errors:?}"
    );
    assert!(shared.sync().is_err());
    assert!(shared.finish().is_err());
}

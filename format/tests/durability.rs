//! What each `SyncMode` promises, checked against a sink that logs every write and sync.
//!
//! A host crash cannot be staged in a test, but what survives one is exactly what was
//! synced; so the tests read back the bytes that had been synced at each moment and check
//! which records they hold.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vmrr_format::*;

/// Everything the writer did to its sink, in order.
#[derive(Default)]
struct Log {
    bytes: Vec<u8>,
    /// Length of `bytes` at each sync.
    syncs: Vec<usize>,
    writes: usize,
}

#[derive(Clone, Default)]
struct LoggingSink(Arc<Mutex<Log>>);

impl Write for LoggingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut l = self.0.lock().unwrap();
        l.bytes.extend_from_slice(buf);
        l.writes += 1;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl TraceSink for LoggingSink {
    fn sync(&mut self) -> std::io::Result<()> {
        let mut l = self.0.lock().unwrap();
        let n = l.bytes.len();
        l.syncs.push(n);
        Ok(())
    }
    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        self.0.lock().unwrap().bytes.truncate(usize::try_from(len).unwrap());
        Ok(())
    }
    fn rewind(&mut self, pos: u64) -> std::io::Result<()> {
        self.truncate(pos)
    }
}

impl LoggingSink {
    /// Records readable from the bytes that were durable at the last sync.
    fn durable_records(&self) -> u64 {
        let l = self.0.lock().unwrap();
        let Some(&n) = l.syncs.last() else { return 0 };
        let Ok(mut r) = TraceReader::from_bytes(l.bytes[..n].to_vec(), "synced") else { return 0 };
        let mut k = 0;
        while let Some(Ok(_)) = r.next_record() {
            k += 1;
        }
        k
    }
    fn syncs(&self) -> usize {
        self.0.lock().unwrap().syncs.len()
    }
    fn len(&self) -> usize {
        self.0.lock().unwrap().bytes.len()
    }
}

/// Waits until `cond` holds. The conditions waited for are events the writer causes
/// (its thread noticing the flush interval, writing a chunk), not durations: the bound is
/// a hang guard only, far beyond any load.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let t = std::time::Instant::now();
    while !cond() {
        assert!(t.elapsed() < Duration::from_secs(600), "hang: {what} never happened");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn writer(sync: SyncMode, flush_interval: Duration) -> (TraceWriter, LoggingSink) {
    let sink = LoggingSink::default();
    let opts = WriterOptions { sync, chunk_target: 4096, flush_interval, ..Default::default() };
    let w = TraceWriter::with_sink(sink.clone(), "log".into(), opts).unwrap();
    (w, sink)
}

fn io(i: u64) -> [u8; 1] {
    [u8::try_from(i % 251).unwrap()]
}

fn append(w: &mut TraceWriter, i: u64) {
    let b = io(i);
    let body = Body::Io(Io { direction: Direction::Out, size: 1, port: 0x3f8, count: 1, data: &b });
    w.append(0, body, None).unwrap();
}

#[test]
fn always_makes_each_record_durable_before_append_returns() {
    let (mut w, sink) = writer(SyncMode::Always, Duration::from_secs(60));
    for i in 0..200 {
        append(&mut w, i);
        assert_eq!(sink.durable_records(), i + 1, "record {i} is durable when append returns");
    }
    let s = w.finish().unwrap();
    assert_eq!(s.chunks, 200, "one chunk per record");
}

#[test]
fn chunk_syncs_every_chunk_and_loses_at_most_the_open_one() {
    let (mut w, sink) = writer(SyncMode::Chunk, Duration::from_secs(60));
    let mut worst_gap = 0;
    for i in 0..5000 {
        append(&mut w, i);
        if i % 97 == 0 {
            w.sync().unwrap();
            assert_eq!(sink.durable_records(), i + 1, "after sync() everything is durable");
        }
        worst_gap = worst_gap.max(i + 1 - sink.durable_records().min(i + 1));
    }
    let s = w.finish().unwrap();
    assert!(s.chunks > 10, "the run spans many chunks ({})", s.chunks);
    // Each chunk is synced as it is written: at least one sync per chunk.
    assert!(sink.syncs() as u64 >= s.chunks, "{} syncs for {} chunks", sink.syncs(), s.chunks);
    // A chunk of 4 KiB holds at most ~4096/24 records of this size, plus what is queued.
    let per_chunk = 4096 / 24 + 1;
    let queued = (4 + 2) * per_chunk;
    assert!(worst_gap <= queued, "a host crash loses at most the open and queued chunks: {worst_gap}");
}

#[test]
fn never_does_not_sync_until_finish_but_still_hands_chunks_to_the_kernel() {
    let (mut w, sink) = writer(SyncMode::Never, Duration::from_millis(20));
    let header_len = sink.len();
    append(&mut w, 0);
    // The flush interval passes with the guest idle; the writer thread notices...
    wait_until("the flush interval noticed", || w.flush_due());
    assert_eq!(sink.len(), header_len, "nothing written before a record closes the chunk");
    // ...and the next record closes the chunk, which the writer thread writes (no sync).
    append(&mut w, 1);
    wait_until("the closed chunk written", || sink.len() > header_len);
    for i in 2..3000 {
        append(&mut w, i);
    }
    assert_eq!(sink.syncs(), 0, "never: no fsync during the run");
    w.finish().unwrap();
    assert!(sink.syncs() >= 1, "finish syncs");
    assert_eq!(sink.durable_records(), 3000);
}

#[test]
fn poll_flush_closes_an_idle_chunk() {
    let (mut w, sink) = writer(SyncMode::Chunk, Duration::from_millis(20));
    append(&mut w, 0);
    wait_until("the flush interval noticed", || w.flush_due());
    assert_eq!(sink.durable_records(), 0);
    // What the engine calls while the guest halts: no new record needed.
    w.poll_flush().unwrap();
    wait_until("the idle chunk written and synced", || sink.durable_records() > 0);
    assert_eq!(sink.durable_records(), 1, "the idle chunk was written and synced");
    w.finish().unwrap();
}

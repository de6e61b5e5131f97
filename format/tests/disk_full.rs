//! A disk that fills up while a trace is written: whenever it happens, the file ends with
//! complete chunks, an index and a trailer, and verifies.
//!
//! The sink models a filesystem shared with other writers (the snapshots vmrr writes next
//! to the trace, or anything else on the customer's host): space is allocated when a write
//! extends the file or when storage is reserved, freed by truncation, and the other
//! writers can take all that is left at any moment. The writer's `fallocate` reservation is
//! what keeps the index writable then; with a sink that cannot reserve, the test shows the
//! best-effort path instead.

use std::io::Write;
use std::sync::{Arc, Mutex};

use vmrr_format::*;

struct Disk {
    bytes: Vec<u8>,
    pos: usize,
    reserved_end: usize,
    total: usize,
    others: usize,
}

impl Disk {
    fn allocated(&self) -> usize {
        self.bytes.len().max(self.reserved_end)
    }
    fn free(&self) -> usize {
        self.total.saturating_sub(self.others + self.allocated())
    }
    /// Another writer takes every free byte.
    fn fill(&mut self) {
        self.others += self.free();
    }
}

#[derive(Clone)]
struct DiskSink {
    disk: Arc<Mutex<Disk>>,
    can_reserve: bool,
}

fn full() -> std::io::Error {
    std::io::ErrorKind::StorageFull.into()
}

impl Write for DiskSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut d = self.disk.lock().unwrap();
        let end = d.pos + buf.len();
        let room = d.allocated() + d.free();
        let n = if end <= room { buf.len() } else { room.saturating_sub(d.pos) };
        if n == 0 && !buf.is_empty() {
            return Err(full());
        }
        let pos = d.pos;
        if d.bytes.len() < pos + n {
            d.bytes.resize(pos + n, 0);
        }
        d.bytes[pos..pos + n].copy_from_slice(&buf[..n]);
        d.pos += n;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl TraceSink for DiskSink {
    fn sync(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        let mut d = self.disk.lock().unwrap();
        let len = usize::try_from(len).unwrap();
        d.bytes.resize(len, 0);
        d.reserved_end = d.reserved_end.min(len); // truncation frees what was reserved past it
        d.pos = len;
        Ok(())
    }
    fn rewind(&mut self, pos: u64) -> std::io::Result<()> {
        self.disk.lock().unwrap().pos = usize::try_from(pos).unwrap();
        Ok(())
    }
    fn reserve(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
        if !self.can_reserve {
            return Err(std::io::ErrorKind::Unsupported.into());
        }
        let mut d = self.disk.lock().unwrap();
        let end = usize::try_from(offset + len).unwrap();
        if end > d.allocated() && end - d.allocated() > d.free() {
            return Err(full());
        }
        d.reserved_end = d.reserved_end.max(end);
        Ok(())
    }
}

/// Writes records until the disk is full; the disk is filled by others after `fill_at`
/// records (never when `None`). Returns the file's bytes and how many appends succeeded.
fn record_until_full(total: usize, fill_at: Option<u64>, can_reserve: bool, zstd: bool) -> (Vec<u8>, u64) {
    let disk = Arc::new(Mutex::new(Disk { bytes: Vec::new(), pos: 0, reserved_end: 0, total, others: 0 }));
    let sink = DiskSink { disk: Arc::clone(&disk), can_reserve };
    let opts = WriterOptions {
        zstd_level: zstd.then_some(1),
        chunk_target: 4096,
        sync: SyncMode::Chunk,
        queue_depth: 1,
        ..Default::default()
    };
    let mut w = TraceWriter::with_sink(sink, "disk".into(), opts).unwrap();
    let mut appended = 0u64;
    for i in 0..2_000_000u64 {
        if Some(i) == fill_at {
            w.sync().unwrap();
            disk.lock().unwrap().fill();
        }
        // Incompressible data, so compressed traces fill the disk too.
        let b: Vec<u8> = (0..16u64)
            .map(|k| {
                let mut x = (i * 16 + k + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                x ^= x >> 29;
                x.to_le_bytes()[3]
            })
            .collect();
        let body = Body::Io(Io { direction: Direction::Out, size: 1, port: 0x3f8, count: 16, data: &b });
        if w.append(0, body, None).is_err() {
            break;
        }
        appended += 1;
    }
    let fin = w.finish();
    assert!(fin.is_err(), "the disk filled up, so finish reports it");
    let bytes = disk.lock().unwrap().bytes.clone();
    (bytes, appended)
}

fn check(bytes: Vec<u8>, appended: u64, what: &str) -> VerifyReport {
    let mut r = TraceReader::from_bytes(bytes, what).unwrap_or_else(|e| panic!("{what}: {e}"));
    let rep = verify(&mut r).unwrap();
    assert!(rep.ok, "{what}: the sealed trace verifies: {rep:?}");
    assert_eq!(rep.index, "ok", "{what}");
    assert!(rep.records_readable <= appended, "{what}");
    rep
}

#[test]
fn a_disk_filled_by_others_still_takes_the_index() {
    for zstd in [false, true] {
        for fill_at in [0u64, 1, 7, 150, 151, 1000, 4321, 20_000] {
            let (bytes, appended) = record_until_full(64 << 20, Some(fill_at), true, zstd);
            let rep = check(bytes, appended, &format!("fill at {fill_at}, zstd {zstd}"));
            // Everything synced before the disk filled is kept.
            assert!(rep.records_readable >= fill_at, "fill at {fill_at}: {} kept", rep.records_readable);
        }
    }
}

#[test]
fn a_small_disk_filled_by_the_trace_itself() {
    for total in [2_000usize, 4_500, 10_000, 33_333, 100_000, 250_001] {
        for zstd in [false, true] {
            let (bytes, appended) = record_until_full(total, None, true, zstd);
            assert!(bytes.len() <= total);
            let rep = check(bytes, appended, &format!("{total} bytes, zstd {zstd}"));
            if total >= 10_000 {
                assert!(rep.records_readable > 0, "{total}: something fitted");
            }
        }
    }
}

#[test]
fn without_reservation_the_file_still_reads_up_to_the_last_complete_chunk() {
    // Best effort: the index may not fit, but nothing intact is lost and no partial chunk
    // is left behind.
    for fill_at in [1u64, 150, 4321] {
        let (bytes, appended) = record_until_full(64 << 20, Some(fill_at), false, false);
        let mut r = TraceReader::from_bytes(bytes, "no-reserve").unwrap();
        let rep = verify(&mut r).unwrap();
        assert!(rep.damaged_chunks.is_empty(), "{rep:?}");
        assert!(rep.records_readable >= fill_at && rep.records_readable <= appended, "{rep:?}");
    }
}

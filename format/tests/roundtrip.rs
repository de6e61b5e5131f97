//! Round-trip property tests: every record kind, encoded then decoded, is unchanged;
//! and whole traces written then read give back the same records.

use proptest::prelude::*;
use vmrr_format::*;

/// An owned record body, so proptest can generate it; `as_body` borrows it.
#[derive(Debug, Clone)]
enum Owned {
    Io(bool, u8, u16, Vec<u8>),
    Mmio(u64, u32, bool, [u8; 8]),
    Hlt,
    Shutdown,
    IrqWindowOpen,
    Intr,
    FailEntry(u64, u32),
    Internal(u32, Vec<u64>),
    SystemEvent(u32, Vec<u64>),
    RdMsr(u32, u32, u64, u8),
    WrMsr(u32, u32, u64, u8),
    Hypercall(u64, [u64; 6], u64, u64),
    Debug(u32, u64, u64, u64),
    Raw(u32, Vec<u8>),
    Interrupt(u32, u32),
    Window(bool),
    IrqLine(u32, u32, u32),
    Checkpoint(u64, u64, u64),
    Annotation(String, String),
    End(u32, u64, u64),
    Cpuid(Vec<CpuidEntry>),
}

impl Owned {
    fn as_body(&self) -> Body<'_> {
        match self {
            Owned::Io(out, size, port, data) => Body::Io(Io {
                direction: if *out { Direction::Out } else { Direction::In },
                size: *size,
                port: *port,
                count: u32::try_from(data.len() / usize::from(*size)).unwrap(),
                data,
            }),
            Owned::Mmio(a, len, w, d) => {
                let mut data = [0u8; 8];
                let n = usize::try_from(*len).unwrap();
                data[..n].copy_from_slice(&d[..n]);
                Body::Mmio(Mmio { phys_addr: *a, len: *len, is_write: *w, data })
            }
            Owned::Hlt => Body::Hlt,
            Owned::Shutdown => Body::Shutdown,
            Owned::IrqWindowOpen => Body::IrqWindowOpen,
            Owned::Intr => Body::Intr,
            Owned::FailEntry(r, c) => {
                Body::FailEntry(FailEntry { hardware_entry_failure_reason: *r, cpu: *c })
            }
            Owned::Internal(s, d) => {
                Body::InternalError(InternalError { suberror: *s, data: Words::Native(d) })
            }
            Owned::SystemEvent(t, d) => {
                Body::SystemEvent(SystemEvent { event_type: *t, data: Words::Native(d) })
            }
            Owned::RdMsr(i, r, d, e) => Body::RdMsr(Msr { index: *i, reason: *r, data: *d, error: *e }),
            Owned::WrMsr(i, r, d, e) => Body::WrMsr(Msr { index: *i, reason: *r, data: *d, error: *e }),
            Owned::Hypercall(nr, args, ret, flags) => {
                Body::Hypercall(Hypercall { nr: *nr, args: *args, ret: *ret, flags: *flags })
            }
            Owned::Debug(e, pc, d6, d7) => {
                Body::Debug(DebugExit { exception: *e, pc: *pc, dr6: *d6, dr7: *d7 })
            }
            Owned::Raw(r, d) => Body::RawExit(RawExit { exit_reason: *r, data: d }),
            Owned::Interrupt(v, s) => Body::Interrupt(Interrupt { vector: *v, source: *s }),
            Owned::Window(r) => Body::InterruptWindow(InterruptWindow { request: u32::from(*r) }),
            Owned::IrqLine(g, l, v) => Body::IrqLine(IrqLine { gsi: *g, level: *l, via: *v }),
            Owned::Checkpoint(a, b, c) => {
                Body::Checkpoint(Checkpoint { snapshot_id: *a, exit_seq: *b, exits: *c })
            }
            Owned::Annotation(k, v) => Body::Annotation(Annotation { key: k, value: v }),
            Owned::End(r, e, s) => Body::EndOfRun(EndOfRun { reason: *r, exits: *e, status: *s }),
            Owned::Cpuid(e) => Body::Cpuid(CpuidEntries::Native(e)),
        }
    }
}

fn cpuid_entry() -> impl Strategy<Value = CpuidEntry> {
    (any::<[u32; 7]>()).prop_map(|w| CpuidEntry {
        function: w[0],
        index: w[1],
        flags: w[2],
        eax: w[3],
        ebx: w[4],
        ecx: w[5],
        edx: w[6],
    })
}

fn owned() -> impl Strategy<Value = Owned> {
    prop_oneof![
        (any::<bool>(), prop::sample::select(vec![1u8, 2, 4]), any::<u16>(), 1usize..40, any::<u8>())
            .prop_map(|(o, s, p, n, fill)| Owned::Io(
                o,
                s,
                p,
                (0..n * usize::from(s)).map(|i| fill.wrapping_add(u8::try_from(i % 256).unwrap())).collect()
            )),
        (any::<u64>(), 0u32..=8, any::<bool>(), any::<[u8; 8]>())
            .prop_map(|(a, l, w, d)| Owned::Mmio(a, l, w, d)),
        Just(Owned::Hlt),
        Just(Owned::Shutdown),
        Just(Owned::IrqWindowOpen),
        Just(Owned::Intr),
        (any::<u64>(), any::<u32>()).prop_map(|(a, b)| Owned::FailEntry(a, b)),
        (any::<u32>(), prop::collection::vec(any::<u64>(), 0..17)).prop_map(|(a, b)| Owned::Internal(a, b)),
        (any::<u32>(), prop::collection::vec(any::<u64>(), 0..17))
            .prop_map(|(a, b)| Owned::SystemEvent(a, b)),
        (any::<u32>(), any::<u32>(), any::<u64>(), any::<u8>())
            .prop_map(|(a, b, c, d)| Owned::RdMsr(a, b, c, d)),
        (any::<u32>(), any::<u32>(), any::<u64>(), any::<u8>())
            .prop_map(|(a, b, c, d)| Owned::WrMsr(a, b, c, d)),
        (any::<u64>(), any::<[u64; 6]>(), any::<u64>(), any::<u64>())
            .prop_map(|(a, b, c, d)| Owned::Hypercall(a, b, c, d)),
        (any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>())
            .prop_map(|(a, b, c, d)| Owned::Debug(a, b, c, d)),
        (any::<u32>(), prop::collection::vec(any::<u8>(), 0..=MAX_RAW_EXIT_DATA))
            .prop_map(|(a, b)| Owned::Raw(a, b)),
        (any::<u32>(), any::<u32>()).prop_map(|(a, b)| Owned::Interrupt(a, b)),
        any::<bool>().prop_map(Owned::Window),
        (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(g, l, v)| Owned::IrqLine(g, l, v)),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(a, b, c)| Owned::Checkpoint(a, b, c)),
        ("\\PC{0,40}", "\\PC{0,200}").prop_map(|(k, v)| Owned::Annotation(k, v)),
        (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(a, b, c)| Owned::End(a, b, c)),
        prop::collection::vec(cpuid_entry(), 0..64).prop_map(Owned::Cpuid),
    ]
}

fn regs() -> impl Strategy<Value = Option<RegsSample>> {
    prop::option::of(any::<[u64; 4]>().prop_map(|r| RegsSample {
        rip: r[0],
        rsp: r[1],
        rflags: r[2],
        flags: r[3],
    }))
}

fn timing() -> impl Strategy<Value = Option<Timing>> {
    let handler =
        prop_oneof![Just(vmrr_format::timing::TIME_CODE_NONE), 0u16..=vmrr_format::timing::MAX_TIME_CODE];
    prop::option::of(
        (handler, 0u16..=vmrr_format::timing::MAX_TIME_CODE)
            .prop_map(|(prev_handler, guest)| Timing { prev_handler, guest }),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn every_kind_round_trips(body in owned(), regs in regs(), timing in timing(), seq in any::<u64>(), vcpu in any::<u32>()) {
        let rec = Record { seq, vcpu, body: body.as_body(), regs, timing, unknown: Unknown::default() };
        let mut buf = Vec::new();
        let n = encode(&rec, &mut buf).expect("encodes");
        prop_assert_eq!(n, buf.len());
        prop_assert_eq!(n % 8, 0);
        let (back, size) = decode(&buf).expect("decodes");
        prop_assert_eq!(size, n);
        prop_assert_eq!(back, rec);
        // Re-encoding the decoded record gives the same bytes.
        let mut again = Vec::new();
        encode(&back, &mut again).expect("re-encodes");
        prop_assert_eq!(again, buf);
    }

    #[test]
    fn traces_round_trip(bodies in prop::collection::vec((owned(), regs()), 1..200),
                         level in prop::option::of(-1i32..4), chunk in 4096usize..20000) {
        let sink = MemorySink::default();
        let opts = WriterOptions { zstd_level: level, chunk_target: chunk, sync: SyncMode::Never, irq_lines: true, ..Default::default() };
        let mut w = TraceWriter::with_sink(sink.clone(), "mem".into(), opts).expect("writer");
        for (i, (b, r)) in bodies.iter().enumerate() {
            let seq = w.append(u32::try_from(i % 3).unwrap(), b.as_body(), *r).expect("append");
            prop_assert_eq!(seq, u64::try_from(i).unwrap());
        }
        let sum = w.finish().expect("finish");
        prop_assert_eq!(sum.records, u64::try_from(bodies.len()).unwrap());
        let mut r = TraceReader::from_bytes(sink.bytes(), "mem").expect("reader");
        prop_assert!(r.index().is_some());
        let mut i = 0usize;
        while let Some(item) = r.next_record() {
            let rec = item.expect("intact");
            let (b, regs) = &bodies[i];
            prop_assert_eq!(rec.seq, u64::try_from(i).unwrap());
            prop_assert_eq!(rec.body, b.as_body());
            prop_assert_eq!(rec.regs, *regs);
            i += 1;
        }
        prop_assert_eq!(i, bodies.len());
    }
}

//! What the trace says the next exit must be, owned (so the trace reader can move on), and
//! the rules for matching a live exit against it.
//!
//! Compared: the kind; per kind the fields that identify the exit (port, size, direction
//! and count of port I/O and the bytes an OUT wrote; MMIO address, length, direction and
//! written bytes; MSR index and written value; hypercall number and arguments; the
//! emulation failure's suberror and the bytes of the failing instruction); and the register
//! sample: RIP, RSP and the arithmetic/control flags of RFLAGS.
//!
//! Two host differences are normalised rather than special-cased:
//! - **RIP at I/O exits**: each sample says whether RIP is at or past the exiting
//!   instruction. When recording and replay hosts differ, the instruction at the "at" RIP
//!   is decoded from guest memory and its length bridges the two.
//! - **String I/O batching**: a `rep outs`/`rep ins` may exit once with `count` N (VMX
//!   usually) or N times with `count` 1 (some hosts). A recorded batch is consumed across
//!   several live exits, and consecutive recorded exits are merged for one live batch.

use vmrr_format::{Body, Direction, RegsSample, describe};

/// RFLAGS bits compared: CF, PF, AF, ZF, SF, TF, IF, DF, OF.
pub const RFLAGS_COMPARED: u64 = 0xfd5;

/// The fields of an exit that replay compares or answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// Port I/O; `data` is what an OUT wrote or what an IN must read.
    Io {
        /// Direction.
        dir: Direction,
        /// Access size.
        size: u8,
        /// Port.
        port: u16,
        /// Repetitions.
        count: u32,
        /// Bytes.
        data: Vec<u8>,
    },
    /// MMIO.
    Mmio {
        /// Address.
        addr: u64,
        /// Length.
        len: u32,
        /// Write.
        write: bool,
        /// Bytes written, or to be read.
        data: [u8; 8],
    },
    /// An MSR access.
    Msr {
        /// RDMSR (else WRMSR).
        read: bool,
        /// Index.
        index: u32,
        /// Value read or written.
        data: u64,
        /// #GP answer.
        error: u8,
    },
    /// A hypercall.
    Hypercall {
        /// Number.
        nr: u64,
        /// Arguments.
        args: [u64; 6],
        /// Return value.
        ret: u64,
    },
    /// An internal error (emulation failure included).
    Internal {
        /// Suberror.
        suberror: u32,
        /// The instruction bytes (emulation failure with bytes), else empty.
        insn: Vec<u8>,
    },
    /// A system event.
    SystemEvent {
        /// Type.
        event_type: u32,
    },
    /// A debug exit.
    Debug {
        /// Exception.
        exception: u32,
        /// PC.
        pc: u64,
    },
    /// A failed entry.
    FailEntry {
        /// Hardware reason.
        reason: u64,
    },
    /// Another exit, by reason only (HLT, shutdown, interrupt window, raw exits).
    Other {
        /// The record kind.
        kind: u16,
        /// For raw exits, the exit reason.
        reason: u32,
    },
}

impl Shape {
    /// The shape of a record's exit body (`None` for events).
    pub fn of(body: &Body<'_>) -> Option<Shape> {
        Some(match body {
            Body::Io(io) => Shape::Io {
                dir: io.direction,
                size: io.size,
                port: io.port,
                count: io.count,
                data: io.data.to_vec(),
            },
            Body::Mmio(m) => Shape::Mmio { addr: m.phys_addr, len: m.len, write: m.is_write, data: m.data },
            Body::RdMsr(m) => Shape::Msr { read: true, index: m.index, data: m.data, error: m.error },
            Body::WrMsr(m) => Shape::Msr { read: false, index: m.index, data: m.data, error: m.error },
            Body::Hypercall(h) => Shape::Hypercall { nr: h.nr, args: h.args, ret: h.ret },
            Body::InternalError(e) => Shape::Internal {
                suberror: e.suberror,
                insn: e.emulation_failure().map(|f| f.bytes().to_vec()).unwrap_or_default(),
            },
            Body::SystemEvent(e) => Shape::SystemEvent { event_type: e.event_type },
            Body::Debug(d) => Shape::Debug { exception: d.exception, pc: d.pc },
            Body::FailEntry(f) => Shape::FailEntry { reason: f.hardware_entry_failure_reason },
            Body::RawExit(r) => Shape::Other { kind: body.kind(), reason: r.exit_reason },
            b if b.is_exit() => Shape::Other { kind: b.kind(), reason: 0 },
            _ => return None,
        })
    }

    /// Lower-case kind name.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Shape::Io { .. } => "io",
            Shape::Mmio { .. } => "mmio",
            Shape::Msr { read: true, .. } => "x86_rdmsr",
            Shape::Msr { .. } => "x86_wrmsr",
            Shape::Hypercall { .. } => "hypercall",
            Shape::Internal { .. } => "internal_error",
            Shape::SystemEvent { .. } => "system_event",
            Shape::Debug { .. } => "debug",
            Shape::FailEntry { .. } => "fail_entry",
            Shape::Other { kind, .. } => vmrr_format::kind::name(*kind),
        }
    }
}

/// One recorded exit, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// Its sequence number (the first, when merged).
    pub seq: u64,
    /// What it was.
    pub shape: Shape,
    /// Its register sample.
    pub regs: Option<RegsSample>,
}

/// A live exit, owned, as replay saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actual {
    /// What it is (IN data is what replay supplied).
    pub shape: Shape,
    /// Its register sample.
    pub regs: Option<RegsSample>,
}

impl Actual {
    /// JSON in the trace's own field names.
    pub fn json(&self, seq: u64) -> serde_json::Value {
        let mut v = serde_json::json!({ "seq": seq, "kind": self.shape.kind_name() });
        let m = v.as_object_mut();
        if let Some(m) = m {
            shape_fields(&self.shape, m);
            if let Some(r) = self.regs {
                m.insert(
                    "regs".into(),
                    serde_json::json!({"rip": r.rip, "rsp": r.rsp, "rflags": r.rflags,
                                       "rip_after_insn": r.flags & RegsSample::RIP_AFTER_INSN != 0}),
                );
            }
        }
        v
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn shape_fields(s: &Shape, m: &mut serde_json::Map<String, serde_json::Value>) {
    use serde_json::json;
    let mut put = |k: &str, v: serde_json::Value| {
        m.insert(k.into(), v);
    };
    match s {
        Shape::Io { dir, size, port, count, data } => {
            put("direction", json!(dir.name()));
            put("port", json!(port));
            put("size", json!(size));
            put("count", json!(count));
            put("data", json!(hex(data)));
        }
        Shape::Mmio { addr, len, write, data } => {
            put("phys_addr", json!(addr));
            put("len", json!(len));
            put("is_write", json!(write));
            put("data", json!(hex(&data[..usize::try_from(*len).unwrap_or(8).min(8)])));
        }
        Shape::Msr { index, data, error, .. } => {
            put("index", json!(index));
            put("data", json!(data));
            put("error", json!(error));
        }
        Shape::Hypercall { nr, args, ret } => {
            put("nr", json!(nr));
            put("args", json!(args));
            put("ret", json!(ret));
        }
        Shape::Internal { suberror, insn } => {
            put("suberror", json!(suberror));
            put("insn_bytes", json!(hex(insn)));
        }
        Shape::SystemEvent { event_type } => put("type", json!(event_type)),
        Shape::Debug { exception, pc } => {
            put("exception", json!(exception));
            put("pc", json!(pc));
        }
        Shape::FailEntry { reason } => put("hardware_entry_failure_reason", json!(reason)),
        Shape::Other { reason, .. } => {
            if *reason != 0 {
                put("exit_reason", json!(reason));
            }
        }
    }
}

/// The outcome of matching a live exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It matches; the expectation is used up.
    Match,
    /// A string I/O exit consumed part of a recorded batch; the rest stays expected.
    Partial,
    /// It differs.
    Mismatch(String),
}

/// Compares everything but the register sample (see the module docs), consuming string
/// I/O partially where a batch is split.
pub fn match_shape(exp: &mut Expected, act: &Shape) -> Verdict {
    let mism =
        |what: &str, e: String, a: String| Verdict::Mismatch(format!("{what}: recorded {e}, replayed {a}"));
    match (&mut exp.shape, act) {
        (
            Shape::Io { dir, size, port, count, data },
            Shape::Io { dir: ad, size: asz, port: ap, count: ac, data: adata },
        ) => {
            if dir != ad {
                return mism("direction", dir.name().into(), ad.name().into());
            }
            if port != ap {
                return mism("port", format!("{port:#x}"), format!("{ap:#x}"));
            }
            if size != asz {
                return mism("size", size.to_string(), asz.to_string());
            }
            if *ac > *count {
                return mism("count", count.to_string(), ac.to_string());
            }
            let n = usize::from(*size) * usize::try_from(*ac).unwrap_or(0);
            if *dir == Direction::Out && data.get(..n) != Some(&adata[..n.min(adata.len())]) {
                return mism("data written", hex(data.get(..n).unwrap_or(data)), hex(adata));
            }
            if ac < count {
                data.drain(..n.min(data.len()));
                *count -= *ac;
                return Verdict::Partial;
            }
            Verdict::Match
        }
        (Shape::Mmio { addr, len, write, data }, Shape::Mmio { addr: aa, len: al, write: aw, data: ad }) => {
            if addr != aa {
                return mism("phys_addr", format!("{addr:#x}"), format!("{aa:#x}"));
            }
            if len != al || write != aw {
                return mism(
                    "access",
                    format!("{len} bytes write={write}"),
                    format!("{al} bytes write={aw}"),
                );
            }
            if *write && data != ad {
                return mism("data written", hex(data), hex(ad));
            }
            Verdict::Match
        }
        (Shape::Msr { read, index, data, .. }, Shape::Msr { read: ar, index: ai, data: ad, .. }) => {
            if read != ar || index != ai {
                return mism("msr", format!("{index:#x} read={read}"), format!("{ai:#x} read={ar}"));
            }
            if !*read && data != ad {
                return mism("value written", format!("{data:#x}"), format!("{ad:#x}"));
            }
            Verdict::Match
        }
        (Shape::Hypercall { nr, args, .. }, Shape::Hypercall { nr: an, args: aa, .. }) => {
            if nr != an || args != aa {
                return mism("hypercall", format!("{nr:#x} {args:x?}"), format!("{an:#x} {aa:x?}"));
            }
            Verdict::Match
        }
        (Shape::Internal { suberror, insn }, Shape::Internal { suberror: asub, insn: ainsn }) => {
            if suberror != asub {
                return mism("suberror", suberror.to_string(), asub.to_string());
            }
            // The fetch window past the instruction is host-specific: compare the bytes of
            // the instruction itself (its decoded length, checked by the caller) only.
            let n = crate::expect::insn_len(insn).unwrap_or(insn.len()).min(insn.len()).min(ainsn.len());
            if insn.get(..n) != ainsn.get(..n) {
                return mism("instruction bytes", hex(insn), hex(ainsn));
            }
            Verdict::Match
        }
        (Shape::SystemEvent { event_type }, Shape::SystemEvent { event_type: at }) if event_type == at => {
            Verdict::Match
        }
        (Shape::Debug { exception, pc }, Shape::Debug { exception: ae, pc: ap })
            if exception == ae && pc == ap =>
        {
            Verdict::Match
        }
        (Shape::FailEntry { reason }, Shape::FailEntry { reason: ar }) if reason == ar => Verdict::Match,
        (Shape::Other { kind, reason }, Shape::Other { kind: ak, reason: ar })
            if kind == ak && reason == ar =>
        {
            Verdict::Match
        }
        (e, a) => {
            Verdict::Mismatch(format!("recorded {}, replayed {}", describe_shape(e), describe_shape(a)))
        }
    }
}

fn describe_shape(s: &Shape) -> String {
    match s {
        Shape::Io { dir, port, .. } => format!("io {} port {port:#x}", dir.name()),
        Shape::Mmio { addr, write, .. } => {
            format!("mmio {} {addr:#x}", if *write { "write" } else { "read" })
        }
        other => other.kind_name().to_string(),
    }
}

/// Length of the instruction at the start of `bytes` in 64-bit mode (used to compare only
/// the failing instruction, not KVM's whole fetch window).
pub fn insn_len(bytes: &[u8]) -> Option<usize> {
    vmrr_engine::disasm::decode(bytes, 64, 0).map(|d| d.len)
}

/// Compares register samples. `len_at` decodes the instruction at a RIP when the two hosts
/// report RIP differently (one at, one past the exiting instruction).
pub fn match_regs(
    exp: Option<RegsSample>,
    act: Option<RegsSample>,
    len_at: &dyn Fn(u64) -> Option<usize>,
) -> Result<(), String> {
    let (Some(e), Some(a)) = (exp, act) else { return Ok(()) };
    let ea = e.flags & RegsSample::RIP_AFTER_INSN != 0;
    let aa = a.flags & RegsSample::RIP_AFTER_INSN != 0;
    let rip_ok = match (ea, aa) {
        (false, true) => len_at(e.rip).is_some_and(|n| e.rip + n as u64 == a.rip),
        (true, false) => len_at(a.rip).is_some_and(|n| a.rip + n as u64 == e.rip),
        _ => e.rip == a.rip,
    };
    if !rip_ok {
        return Err(format!(
            "rip: recorded {:#x}{}, replayed {:#x}{}",
            e.rip,
            if ea { " (past the instruction)" } else { "" },
            a.rip,
            if aa { " (past the instruction)" } else { "" }
        ));
    }
    if e.rsp != a.rsp {
        return Err(format!("rsp: recorded {:#x}, replayed {:#x}", e.rsp, a.rsp));
    }
    if e.rflags & RFLAGS_COMPARED != a.rflags & RFLAGS_COMPARED {
        return Err(format!("rflags: recorded {:#x}, replayed {:#x}", e.rflags, a.rflags));
    }
    Ok(())
}

/// JSON for a recorded record (as `vmrr inspect --json` prints it).
pub fn record_json(rec: &vmrr_format::Record<'_>) -> serde_json::Value {
    describe::record_json(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(dir: Direction, count: u32, data: &[u8]) -> Shape {
        Shape::Io { dir, size: 1, port: 0x3f8, count, data: data.to_vec() }
    }

    #[test]
    fn a_recorded_batch_is_consumed_by_split_exits() {
        let mut e = Expected { seq: 1, shape: io(Direction::Out, 3, b"abc"), regs: None };
        assert_eq!(match_shape(&mut e, &io(Direction::Out, 1, b"a")), Verdict::Partial);
        assert_eq!(match_shape(&mut e, &io(Direction::Out, 1, b"b")), Verdict::Partial);
        assert!(matches!(match_shape(&mut e, &io(Direction::Out, 1, b"x")), Verdict::Mismatch(_)));
        let mut e = Expected { seq: 1, shape: io(Direction::Out, 2, b"ab"), regs: None };
        assert_eq!(match_shape(&mut e, &io(Direction::Out, 1, b"a")), Verdict::Partial);
        assert_eq!(match_shape(&mut e, &io(Direction::Out, 1, b"b")), Verdict::Match);
    }

    #[test]
    fn rip_is_normalised_between_hosts() {
        let at = RegsSample { rip: 0x1000, rsp: 8, rflags: 2, flags: 0 };
        let past = RegsSample { rip: 0x1002, rsp: 8, rflags: 2, flags: RegsSample::RIP_AFTER_INSN };
        let len = |rip: u64| (rip == 0x1000).then_some(2);
        assert!(match_regs(Some(at), Some(past), &len).is_ok());
        assert!(match_regs(Some(past), Some(at), &len).is_ok());
        let wrong = RegsSample { rip: 0x1003, ..past };
        assert!(match_regs(Some(at), Some(wrong), &len).is_err());
        assert!(match_regs(Some(at), Some(RegsSample { rsp: 16, ..at }), &len).is_err());
    }
}

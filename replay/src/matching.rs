//! Matching a live exit against the recorded one.
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
//!   several live exits ([`IoBatch`]), and consecutive recorded exits are merged for one
//!   live batch.

use vmrr_format::describe::hex;
use vmrr_format::{Body, Direction, Io, Record, RegsSample};

/// RFLAGS bits compared: CF, PF, AF, ZF, SF, TF, IF, DF, OF.
pub const RFLAGS_COMPARED: u64 = 0xfd5;

/// Recorded port I/O still to be matched by live exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoBatch {
    /// The first record's sequence number.
    pub seq: u64,
    /// The last record's sequence number (records merged into the batch included).
    pub last_seq: u64,
    /// In or out.
    pub direction: Direction,
    /// Access size.
    pub size: u8,
    /// The port number.
    pub port: u16,
    /// The bytes not yet matched: what OUTs wrote, or what INs must read.
    pub data: Vec<u8>,
    /// The first record's register sample.
    pub regs: Option<RegsSample>,
}

impl IoBatch {
    /// The batch a recorded I/O exit starts, or `None` for another kind.
    pub fn of(rec: &Record<'_>) -> Option<IoBatch> {
        let Body::Io(io) = rec.body else { return None };
        Some(IoBatch {
            seq: rec.seq,
            last_seq: rec.seq,
            direction: io.direction,
            size: io.size,
            port: io.port,
            data: io.data.to_vec(),
            regs: rec.regs,
        })
    }

    /// Items left.
    pub fn count(&self) -> u32 {
        u32::try_from(self.data.len() / usize::from(self.size.max(1))).unwrap_or(u32::MAX)
    }

    /// The batch as an I/O body (to answer an IN with).
    pub fn body(&self) -> Body<'_> {
        Body::Io(Io {
            direction: self.direction,
            size: self.size,
            port: self.port,
            count: self.count(),
            data: &self.data,
        })
    }

    /// Appends the next recorded exit when it continues the batch (same direction, size
    /// and port); returns whether it did.
    pub fn absorb(&mut self, next: &Record<'_>) -> bool {
        match next.body {
            Body::Io(io)
                if io.direction == self.direction && io.size == self.size && io.port == self.port =>
            {
                self.data.extend_from_slice(io.data);
                self.last_seq = next.seq;
                true
            }
            _ => false,
        }
    }
}

/// What a live exit did to the recorded one it was matched against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It matches; the expectation is used up.
    Match,
    /// A string I/O exit consumed part of a recorded batch; the rest stays expected.
    Partial,
    /// It differs: what, recorded versus replayed.
    Mismatch(String),
}

fn mismatch(what: &str, recorded: String, replayed: String) -> Verdict {
    Verdict::Mismatch(format!("{what}: recorded {recorded}, replayed {replayed}"))
}

/// Matches a live exit against a recorded I/O batch, consuming what it matched.
pub fn match_io(batch: &mut IoBatch, live: &Body<'_>) -> Verdict {
    let Body::Io(io) = live else {
        return Verdict::Mismatch(format!(
            "recorded {}, replayed {}",
            describe(&batch.body()),
            describe(live)
        ));
    };
    if batch.direction != io.direction {
        return mismatch("direction", batch.direction.name().into(), io.direction.name().into());
    }
    if batch.port != io.port {
        return mismatch("port", format!("{:#x}", batch.port), format!("{:#x}", io.port));
    }
    if batch.size != io.size {
        return mismatch("size", batch.size.to_string(), io.size.to_string());
    }
    if io.count > batch.count() {
        return mismatch("count", batch.count().to_string(), io.count.to_string());
    }
    let n = usize::from(io.size) * usize::try_from(io.count).unwrap_or(0);
    let want = batch.data.get(..n).unwrap_or(&batch.data);
    if io.direction == Direction::Out && want != io.data {
        return mismatch("data written", hex(want), hex(io.data));
    }
    batch.data.drain(..n.min(batch.data.len()));
    if batch.data.is_empty() { Verdict::Match } else { Verdict::Partial }
}

/// Matches a live exit against a recorded exit other than port I/O.
pub fn match_exit(recorded: &Body<'_>, live: &Body<'_>) -> Verdict {
    match (recorded, live) {
        (Body::Mmio(e), Body::Mmio(a)) => {
            if e.phys_addr != a.phys_addr {
                return mismatch("phys_addr", format!("{:#x}", e.phys_addr), format!("{:#x}", a.phys_addr));
            }
            if e.len != a.len || e.is_write != a.is_write {
                return mismatch(
                    "access",
                    format!("{} bytes write={}", e.len, e.is_write),
                    format!("{} bytes write={}", a.len, a.is_write),
                );
            }
            if e.is_write && e.bytes() != a.bytes() {
                return mismatch("data written", hex(e.bytes()), hex(a.bytes()));
            }
            Verdict::Match
        }
        (Body::RdMsr(e), Body::RdMsr(a)) | (Body::WrMsr(e), Body::WrMsr(a)) if e.index != a.index => {
            mismatch("msr", format!("{:#x}", e.index), format!("{:#x}", a.index))
        }
        (Body::WrMsr(e), Body::WrMsr(a)) if e.data != a.data => {
            mismatch("value written", format!("{:#x}", e.data), format!("{:#x}", a.data))
        }
        (Body::RdMsr(_), Body::RdMsr(_)) | (Body::WrMsr(_), Body::WrMsr(_)) => Verdict::Match,
        (Body::Hypercall(e), Body::Hypercall(a)) => {
            if e.nr != a.nr || e.args != a.args {
                return mismatch(
                    "hypercall",
                    format!("{:#x} {:x?}", e.nr, e.args),
                    format!("{:#x} {:x?}", a.nr, a.args),
                );
            }
            Verdict::Match
        }
        (Body::InternalError(e), Body::InternalError(a)) => {
            if e.suberror != a.suberror {
                return mismatch("suberror", e.suberror.to_string(), a.suberror.to_string());
            }
            // The fetch window past the instruction is host-specific: compare the bytes of
            // the instruction itself (its decoded length) only.
            let bytes = |b: &vmrr_format::InternalError<'_>| {
                b.emulation_failure().map(|f| f.bytes().to_vec()).unwrap_or_default()
            };
            let (ei, ai) = (bytes(e), bytes(a));
            let n = insn_len(&ei).unwrap_or(ei.len()).min(ei.len()).min(ai.len());
            if ei.get(..n) != ai.get(..n) {
                return mismatch("instruction bytes", hex(&ei), hex(&ai));
            }
            Verdict::Match
        }
        (Body::SystemEvent(e), Body::SystemEvent(a)) if e.event_type == a.event_type => Verdict::Match,
        (Body::Debug(e), Body::Debug(a)) if e.exception == a.exception && e.pc == a.pc => Verdict::Match,
        (Body::FailEntry(e), Body::FailEntry(a))
            if e.hardware_entry_failure_reason == a.hardware_entry_failure_reason =>
        {
            Verdict::Match
        }
        (Body::RawExit(e), Body::RawExit(a)) if e.exit_reason == a.exit_reason => Verdict::Match,
        (e, a) if e.kind() == a.kind() && !has_fields(e) => Verdict::Match,
        (e, a) => Verdict::Mismatch(format!("recorded {}, replayed {}", describe(e), describe(a))),
    }
}

/// Exits identified by their kind alone (HLT, shutdown, interrupt window, ...).
fn has_fields(b: &Body<'_>) -> bool {
    !matches!(b, Body::Hlt | Body::Shutdown | Body::IrqWindowOpen | Body::Intr)
}

/// A short description of an exit, for a kind mismatch.
fn describe(b: &Body<'_>) -> String {
    match b {
        Body::Io(io) => format!("io {} port {:#x}", io.direction.name(), io.port),
        Body::Mmio(m) => format!("mmio {} {:#x}", if m.is_write { "write" } else { "read" }, m.phys_addr),
        other => vmrr_format::kind::name(other.kind()).to_string(),
    }
}

/// Length of the instruction at the start of `bytes` in 64-bit mode (used to compare only
/// the failing instruction, not KVM's whole fetch window).
pub fn insn_len(bytes: &[u8]) -> Option<usize> {
    vmrr_engine::disasm::decode(bytes, 64, 0).map(|d| d.len)
}

/// Compares register samples. `len_at` decodes the instruction at a RIP when the two hosts
/// report RIP differently (one at, one past the exiting instruction).
///
/// # Errors
/// What differs, recorded versus replayed.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(count: u32, data: &[u8]) -> IoBatch {
        assert_eq!(data.len(), count as usize);
        IoBatch {
            seq: 1,
            last_seq: 1,
            direction: Direction::Out,
            size: 1,
            port: 0x3f8,
            data: data.to_vec(),
            regs: None,
        }
    }

    fn out(count: u32, data: &[u8]) -> Body<'_> {
        Body::Io(Io { direction: Direction::Out, size: 1, port: 0x3f8, count, data })
    }

    #[test]
    fn a_recorded_batch_is_consumed_by_split_exits() {
        let mut e = batch(3, b"abc");
        assert_eq!(match_io(&mut e, &out(1, b"a")), Verdict::Partial);
        assert_eq!(match_io(&mut e, &out(1, b"b")), Verdict::Partial);
        assert!(matches!(match_io(&mut e, &out(1, b"x")), Verdict::Mismatch(_)));
        let mut e = batch(2, b"ab");
        assert_eq!(match_io(&mut e, &out(1, b"a")), Verdict::Partial);
        assert_eq!(match_io(&mut e, &out(1, b"b")), Verdict::Match);
    }

    #[test]
    fn recorded_exits_merge_for_one_live_batch() {
        let mut e = batch(1, b"a");
        let next = Record::new(2, 0, out(2, b"bc"));
        assert!(e.absorb(&next));
        assert_eq!(match_io(&mut e, &out(3, b"abc")), Verdict::Match);
        let other = Record::new(3, 0, Body::Hlt);
        assert!(!e.absorb(&other));
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

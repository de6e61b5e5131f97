//! Record decoder: bytes to a borrowed [`Record`], validating every size, count and pad.

use crate::bytes::{align8, all_zero, u64_from, usize_from};
use crate::cursor::{Cursor, ShortRead};
use crate::error::Reason;
use crate::kind;
use crate::record::*;

/// A record-level decode failure: the reason and the byte offset inside the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    /// Offset of the offending field from the start of the record.
    pub offset: usize,
    /// Sequence number, when the header was readable.
    pub seq: Option<u64>,
    /// What is wrong there.
    pub reason: Reason,
}

/// Reads the `size` field of the record at the start of `buf`, validating it against the
/// format's limits and the bytes available. A reader skips a record it cannot interpret by
/// this size.
///
/// # Errors
/// A truncated header, a size below 24 or above [`MAX_RECORD_SIZE`], not a multiple of 8,
/// or larger than `buf`.
pub fn record_size(buf: &[u8]) -> Result<usize, RecordError> {
    let err = |offset, reason| RecordError { offset, seq: None, reason };
    if buf.len() < RECORD_HEADER_SIZE {
        return Err(err(
            0,
            Reason::Truncated {
                what: "record header",
                need: u64_from(RECORD_HEADER_SIZE),
                have: u64_from(buf.len()),
            },
        ));
    }
    let size = usize_from(Fields { bytes: buf, base: 0, seq: None }.u32(0)?);
    if size < RECORD_HEADER_SIZE {
        return Err(err(
            0,
            Reason::TooSmall { what: "record size", size: u64_from(size), min: u64_from(RECORD_HEADER_SIZE) },
        ));
    }
    if size > MAX_RECORD_SIZE {
        return Err(err(
            0,
            Reason::TooLarge { what: "record size", size: u64_from(size), max: u64_from(MAX_RECORD_SIZE) },
        ));
    }
    if size % 8 != 0 {
        return Err(err(0, Reason::Misaligned { what: "record size", value: u64_from(size) }));
    }
    if size > buf.len() {
        return Err(err(
            0,
            Reason::Truncated { what: "record", need: u64_from(size), have: u64_from(buf.len()) },
        ));
    }
    Ok(size)
}

/// Decodes the record at the start of `buf`; returns it and its size.
///
/// Follows the format's rules: a body shorter than this version's layout reads as zeros;
/// a longer one is read for the known fields and the rest kept in [`Unknown::body`];
/// payloads of unknown flags are kept in [`Unknown::tail`]; counts are checked against the
/// record's size before use; padding and reserved fields must be zero.
///
/// # Errors
/// A [`RecordError`] with the offset of the offending field inside the record.
#[inline]
pub fn decode(buf: &[u8]) -> Result<(Record<'_>, usize), RecordError> {
    let size = record_size(buf)?;
    let rec = &buf[..size];
    let h = Fields { bytes: rec, base: 0, seq: None };
    let kind = h.u16(4)?;
    let body_len = usize::from(h.u16(6)?);
    let seq = h.u64(8)?;
    let vcpu = h.u32(16)?;
    let flags = h.u32(20)?;
    let fail = |offset: usize, reason| RecordError { offset, seq: Some(seq), reason };

    if body_len % 8 != 0 {
        return Err(fail(6, Reason::Misaligned { what: "body_size", value: u64_from(body_len) }));
    }
    let body_end = RECORD_HEADER_SIZE + body_len;
    if body_end > size {
        return Err(fail(
            6,
            Reason::CountExceedsRecord {
                what: "body_size",
                count: u64_from(body_len),
                needed: u64_from(body_len),
                available: u64_from(size - RECORD_HEADER_SIZE),
            },
        ));
    }

    let Some(known_len) = body_size(kind) else {
        let body = Body::Unknown {
            kind,
            body_size: u16::try_from(body_len).unwrap_or(u16::MAX),
            flags,
            bytes: &rec[RECORD_HEADER_SIZE..],
        };
        return Ok((Record { seq, vcpu, body, regs: None, timing: None, unknown: Unknown::default() }, size));
    };

    let written = &rec[RECORD_HEADER_SIZE..body_end];
    let unknown_body = written.get(known_len..).unwrap_or(&[]);
    // Normalise the body to exactly this version's length: a longer body is cut (its
    // extra bytes are `unknown_body`); a shorter one, from an older writer, is copied into
    // zeros (rule 3). Field reads below then never run past `b`.
    let mut short = [0u8; MAX_KNOWN_BODY];
    let b: &[u8] = if written.len() >= known_len {
        &written[..known_len]
    } else {
        short[..written.len()].copy_from_slice(written);
        &short[..known_len]
    };
    let f = Fields { bytes: b, base: RECORD_HEADER_SIZE, seq: Some(seq) };
    // Padding checks only cover the part of the body the writer actually wrote.
    let pad_zero = |from: usize, to: usize, what: &'static str| -> Result<(), RecordError> {
        let end = to.min(written.len());
        if let Some(i) = b.get(from..end).and_then(|p| p.iter().position(|&x| x != 0)) {
            return Err(fail(RECORD_HEADER_SIZE + from + i, Reason::NonZeroPadding { what }));
        }
        Ok(())
    };

    // Variable data: `(length, padded length)` starting at `body_end`.
    let mut var = Var { start: body_end, len: 0 };
    let avail = size - body_end;
    let want = |what: &'static str, count: u64, unit: u64| -> Result<usize, RecordError> {
        let needed = count.saturating_mul(unit);
        let padded = needed.checked_add(7).map(|v| v & !7).unwrap_or(u64::MAX);
        if padded > u64_from(avail) {
            return Err(fail(
                RECORD_HEADER_SIZE,
                Reason::CountExceedsRecord { what, count, needed, available: u64_from(avail) },
            ));
        }
        Ok(usize::try_from(needed).unwrap_or(usize::MAX))
    };

    let body = match kind {
        kind::IO => {
            let direction = match f.u8(0)? {
                0 => Direction::In,
                1 => Direction::Out,
                v => {
                    return Err(fail(
                        RECORD_HEADER_SIZE,
                        Reason::InvalidValue { field: "io direction", value: u64::from(v) },
                    ));
                }
            };
            let size_ = f.u8(1)?;
            let count = f.u32(4)?;
            if !(matches!(size_, 1 | 2 | 4) || (size_ == 0 && count == 0)) {
                return Err(fail(
                    RECORD_HEADER_SIZE + 1,
                    Reason::InvalidValue { field: "io size", value: u64::from(size_) },
                ));
            }
            var.len = want("io count", u64::from(count), u64::from(size_))?;
            Body::Io(Io { direction, size: size_, port: f.u16(2)?, count, data: var.bytes(rec) })
        }
        kind::MMIO => {
            let len = f.u32(8)?;
            if len > 8 {
                return Err(fail(
                    RECORD_HEADER_SIZE + 8,
                    Reason::InvalidValue { field: "mmio len", value: u64::from(len) },
                ));
            }
            let is_write = match f.u8(12)? {
                0 => false,
                1 => true,
                v => {
                    return Err(fail(
                        RECORD_HEADER_SIZE + 12,
                        Reason::InvalidValue { field: "mmio is_write", value: u64::from(v) },
                    ));
                }
            };
            pad_zero(13, 16, "mmio padding")?;
            let n = usize_from(len);
            pad_zero(16 + n, 24, "mmio data beyond len")?;
            let mut data = [0u8; 8];
            data.copy_from_slice(b.get(16..24).unwrap_or(&[0; 8]));
            Body::Mmio(Mmio { phys_addr: f.u64(0)?, len, is_write, data })
        }
        kind::HLT => Body::Hlt,
        kind::SHUTDOWN => Body::Shutdown,
        kind::IRQ_WINDOW_OPEN => Body::IrqWindowOpen,
        kind::INTR => Body::Intr,
        kind::FAIL_ENTRY => {
            pad_zero(12, 16, "fail_entry padding")?;
            Body::FailEntry(FailEntry { hardware_entry_failure_reason: f.u64(0)?, cpu: f.u32(8)? })
        }
        kind::INTERNAL_ERROR => {
            var.len = want("internal_error ndata", u64::from(f.u32(4)?), 8)?;
            Body::InternalError(InternalError { suberror: f.u32(0)?, data: Words::Le(var.bytes(rec)) })
        }
        kind::SYSTEM_EVENT => {
            var.len = want("system_event ndata", u64::from(f.u32(4)?), 8)?;
            Body::SystemEvent(SystemEvent { event_type: f.u32(0)?, data: Words::Le(var.bytes(rec)) })
        }
        kind::X86_RDMSR | kind::X86_WRMSR => {
            pad_zero(17, 24, "msr padding")?;
            let m = Msr { index: f.u32(0)?, reason: f.u32(4)?, data: f.u64(8)?, error: f.u8(16)? };
            if kind == kind::X86_RDMSR { Body::RdMsr(m) } else { Body::WrMsr(m) }
        }
        kind::HYPERCALL => {
            let mut args = [0u64; 6];
            for (i, a) in args.iter_mut().enumerate() {
                *a = f.u64(8 + 8 * i)?;
            }
            Body::Hypercall(Hypercall { nr: f.u64(0)?, args, ret: f.u64(56)?, flags: f.u64(64)? })
        }
        kind::DEBUG => {
            pad_zero(4, 8, "debug padding")?;
            Body::Debug(DebugExit { exception: f.u32(0)?, pc: f.u64(8)?, dr6: f.u64(16)?, dr7: f.u64(24)? })
        }
        kind::RAW_EXIT => {
            var.len = want("raw exit length", u64::from(f.u32(4)?), 1)?;
            Body::RawExit(RawExit { exit_reason: f.u32(0)?, data: var.bytes(rec) })
        }
        kind::INTERRUPT => Body::Interrupt(Interrupt { vector: f.u32(0)?, source: f.u32(4)? }),
        kind::INTERRUPT_WINDOW => {
            pad_zero(4, 8, "interrupt_window padding")?;
            let request = f.u32(0)?;
            if request > 1 {
                return Err(fail(
                    RECORD_HEADER_SIZE,
                    Reason::InvalidValue { field: "interrupt_window request", value: u64::from(request) },
                ));
            }
            Body::InterruptWindow(InterruptWindow { request })
        }
        kind::GUEST_WRITE => {
            pad_zero(12, 16, "guest_write reserved")?;
            let gpa = f.u64(0)?;
            var.len = want("guest_write len", u64::from(f.u32(8)?), 1)?;
            let data = var.bytes(rec);
            if gpa.checked_add(u64_from(data.len())).is_none() {
                return Err(fail(
                    RECORD_HEADER_SIZE,
                    Reason::InvalidValue { field: "guest_write gpa + len", value: gpa },
                ));
            }
            Body::GuestWrite(GuestWrite { gpa, data })
        }
        kind::CHECKPOINT => {
            Body::Checkpoint(Checkpoint { snapshot_id: f.u64(0)?, exit_seq: f.u64(8)?, exits: f.u64(16)? })
        }
        kind::ANNOTATION => {
            pad_zero(2, 4, "annotation padding")?;
            let klen = usize::from(f.u16(0)?);
            let vlen = usize_from(f.u32(4)?);
            var.len = want("annotation length", u64_from(klen) + u64_from(vlen), 1)?;
            let bytes = var.bytes(rec);
            let (k, v) = bytes.split_at(klen.min(bytes.len()));
            let key = std::str::from_utf8(k)
                .map_err(|_| fail(body_end, Reason::InvalidUtf8 { field: "annotation key" }))?;
            let value = std::str::from_utf8(v)
                .map_err(|_| fail(body_end + klen, Reason::InvalidUtf8 { field: "annotation value" }))?;
            Body::Annotation(Annotation { key, value })
        }
        kind::END_OF_RUN => {
            pad_zero(4, 8, "end_of_run padding")?;
            Body::EndOfRun(EndOfRun { reason: f.u32(0)?, exits: f.u64(8)?, status: f.u64(16)? })
        }
        kind::CPUID => {
            pad_zero(4, 8, "cpuid padding")?;
            var.len = want("cpuid entry count", u64::from(f.u32(0)?), u64_from(CPUID_ENTRY_SIZE))?;
            let bytes = var.bytes(rec);
            for (i, e) in bytes.chunks_exact(CPUID_ENTRY_SIZE).enumerate() {
                if !all_zero(&e[28..32]) {
                    return Err(fail(
                        body_end + i * CPUID_ENTRY_SIZE + 28,
                        Reason::NonZeroPadding { what: "cpuid entry padding" },
                    ));
                }
            }
            Body::Cpuid(CpuidEntries::Le(bytes))
        }
        // `body_size` knows exactly the kinds matched above; should the two tables ever
        // disagree, the record is still kept, verbatim, rather than misread.
        _ => Body::Unknown {
            kind,
            body_size: u16::try_from(body_len).unwrap_or(u16::MAX),
            flags,
            bytes: &rec[RECORD_HEADER_SIZE..],
        },
    };

    // Padding after the variable data.
    let var_end = var.start + var.len;
    let Some(mut pos) = align8(var_end) else {
        return Err(fail(0, Reason::InvalidValue { field: "record layout", value: u64_from(size) }));
    };
    if let Some(i) = rec.get(var_end..pos.min(size)).and_then(|p| p.iter().position(|&x| x != 0)) {
        return Err(fail(var_end + i, Reason::NonZeroPadding { what: "variable data padding" }));
    }

    // Optional payloads in ascending flag order.
    let mut regs = None;
    if flags & FLAG_REGS != 0 {
        let Some(p) = rec.get(pos..pos + REGS_PAYLOAD_SIZE) else {
            return Err(fail(
                20,
                Reason::CountExceedsRecord {
                    what: "regs payload",
                    count: 1,
                    needed: u64_from(REGS_PAYLOAD_SIZE),
                    available: u64_from(size.saturating_sub(pos)),
                },
            ));
        };
        let pf = Fields { bytes: p, base: pos, seq: Some(seq) };
        regs = Some(RegsSample { rip: pf.u64(0)?, rsp: pf.u64(8)?, rflags: pf.u64(16)?, flags: pf.u64(24)? });
        pos += REGS_PAYLOAD_SIZE;
    }
    let mut timing = None;
    if flags & FLAG_TIMING != 0 {
        timing = Some(decode_timing(rec, pos, seq)?);
        pos += TIMING_PAYLOAD_SIZE;
    }
    let unknown_flags = flags & !KNOWN_FLAGS;
    let tail = &rec[pos..];
    if unknown_flags == 0 && !tail.is_empty() {
        return Err(fail(
            pos,
            Reason::InvalidValue { field: "bytes not announced by any flag", value: u64_from(tail.len()) },
        ));
    }
    Ok((
        Record {
            seq,
            vcpu,
            body,
            regs,
            timing,
            unknown: Unknown { body: unknown_body, flags: unknown_flags, tail },
        },
        size,
    ))
}

/// Largest fixed body this version knows (the hypercall's).
const MAX_KNOWN_BODY: usize = 72;

/// The `FLAG_TIMING` payload at `pos` (`docs/FORMAT.md` §5.4): two time codes, then four
/// reserved zero bytes.
fn decode_timing(rec: &[u8], pos: usize, seq: u64) -> Result<Timing, RecordError> {
    let fail = |offset: usize, reason| RecordError { offset, seq: Some(seq), reason };
    let Some(p) = rec.get(pos..pos + TIMING_PAYLOAD_SIZE) else {
        return Err(fail(
            20,
            Reason::CountExceedsRecord {
                what: "timing payload",
                count: 1,
                needed: u64_from(TIMING_PAYLOAD_SIZE),
                available: u64_from(rec.len().saturating_sub(pos)),
            },
        ));
    };
    let pf = Fields { bytes: p, base: pos, seq: Some(seq) };
    let timing = Timing { prev_handler: pf.u16(0)?, guest: pf.u16(2)? };
    if !timing.is_valid() {
        let (offset, field, value) = if timing.guest > crate::timing::MAX_TIME_CODE {
            (pos + 2, "timing guest", timing.guest)
        } else {
            (pos, "timing prev_handler", timing.prev_handler)
        };
        return Err(fail(offset, Reason::InvalidValue { field, value: value.into() }));
    }
    if let Some(i) = p[4..].iter().position(|&x| x != 0) {
        return Err(fail(pos + 4 + i, Reason::NonZeroPadding { what: "timing reserved" }));
    }
    Ok(timing)
}

/// Field reads from a slice whose length was established before (the body normalised to
/// its known length, a payload cut to its size). Every offset lies inside it by
/// construction; a read that did not would still fail explicitly, as a truncated field.
struct Fields<'a> {
    bytes: &'a [u8],
    /// Offset of `bytes` in the record (for the error).
    base: usize,
    seq: Option<u64>,
}

impl Fields<'_> {
    fn short(&self, e: ShortRead) -> RecordError {
        RecordError {
            offset: self.base + e.offset,
            seq: self.seq,
            reason: Reason::Truncated {
                what: "record field",
                need: u64_from(e.need),
                have: u64_from(e.have),
            },
        }
    }
    #[inline]
    fn u8(&self, off: usize) -> Result<u8, RecordError> {
        Cursor::at(self.bytes, off).read_u8().map_err(|e| self.short(e))
    }
    #[inline]
    fn u16(&self, off: usize) -> Result<u16, RecordError> {
        Cursor::at(self.bytes, off).read_u16().map_err(|e| self.short(e))
    }
    #[inline]
    fn u32(&self, off: usize) -> Result<u32, RecordError> {
        Cursor::at(self.bytes, off).read_u32().map_err(|e| self.short(e))
    }
    #[inline]
    fn u64(&self, off: usize) -> Result<u64, RecordError> {
        Cursor::at(self.bytes, off).read_u64().map_err(|e| self.short(e))
    }
}

struct Var {
    start: usize,
    len: usize,
}

impl Var {
    fn bytes<'a>(&self, rec: &'a [u8]) -> &'a [u8] {
        rec.get(self.start..self.start + self.len).unwrap_or(&[])
    }
}

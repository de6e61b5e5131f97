//! Record decoder: bytes to a borrowed [`Record`], validating every size, count and pad.
//!
//! [`decode`] reads a record in the order of its layout (FORMAT.md §5.2), one named step
//! each: the header, the fixed body (normalised to this version's length), the kind's
//! fields and variable data, the padding after it, the payloads of known flags, and what
//! is left for unknown flags.

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
/// record's size before use; padding and reserved fields must be zero. A record of a kind
/// this version does not know is kept whole; when it sets no unknown flag, its register
/// sample and timing payload are found from its end (they are its last bytes).
///
/// # Errors
/// A [`RecordError`] with the offset of the offending field inside the record.
#[inline]
pub fn decode(buf: &[u8]) -> Result<(Record<'_>, usize), RecordError> {
    let size = record_size(buf)?;
    let rec = &buf[..size];
    let head = Head::read(rec)?;
    let Some(known_len) = body_size(head.kind) else {
        return Ok((unknown_kind(rec, &head)?, size));
    };
    let mut short = [0u8; MAX_KNOWN_BODY];
    let fixed = Fixed::new(rec, &head, known_len, &mut short);
    let (body, var) = decode_body(&head, &fixed)?;
    let pos = check_var_padding(rec, &head, var)?;
    let (regs, timing, pos) = known_payloads(rec, &head, pos)?;
    let tail = unknown_tail(rec, &head, pos)?;
    let unknown = Unknown { body: fixed.unknown_body(), flags: head.flags & !KNOWN_FLAGS, tail };
    Ok((Record { seq: head.seq, vcpu: head.vcpu, body, regs, timing, unknown }, size))
}

/// Largest fixed body this version knows (the hypercall's).
const MAX_KNOWN_BODY: usize = 72;

/// The record header's fields after `size`, with `body_size` checked.
struct Head {
    kind: u16,
    body_len: usize,
    seq: u64,
    vcpu: u32,
    flags: u32,
}

impl Head {
    fn read(rec: &[u8]) -> Result<Self, RecordError> {
        let h = Fields { bytes: rec, base: 0, seq: None };
        let head = Head {
            kind: h.u16(4)?,
            body_len: usize::from(h.u16(6)?),
            seq: h.u64(8)?,
            vcpu: h.u32(16)?,
            flags: h.u32(20)?,
        };
        if head.body_len % 8 != 0 {
            return Err(
                head.fail(6, Reason::Misaligned { what: "body_size", value: u64_from(head.body_len) })
            );
        }
        if head.body_end() > rec.len() {
            return Err(head.fail(
                6,
                Reason::CountExceedsRecord {
                    what: "body_size",
                    count: u64_from(head.body_len),
                    needed: u64_from(head.body_len),
                    available: u64_from(rec.len() - RECORD_HEADER_SIZE),
                },
            ));
        }
        Ok(head)
    }

    /// Where the fixed body ends and the variable data starts.
    fn body_end(&self) -> usize {
        RECORD_HEADER_SIZE + self.body_len
    }

    fn fail(&self, offset: usize, reason: Reason) -> RecordError {
        RecordError { offset, seq: Some(self.seq), reason }
    }
}

/// A record of a kind this version does not know: kept verbatim. With no unknown flag
/// set, the unknown tail is empty (§5.2), so the known payloads are the record's last
/// bytes and are located from its end.
fn unknown_kind<'a>(rec: &'a [u8], head: &Head) -> Result<Record<'a>, RecordError> {
    let body = Body::Unknown {
        kind: head.kind,
        body_size: u16::try_from(head.body_len).unwrap_or(u16::MAX),
        flags: head.flags,
        bytes: &rec[RECORD_HEADER_SIZE..],
    };
    let mut record = Record {
        seq: head.seq,
        vcpu: head.vcpu,
        body,
        regs: None,
        timing: None,
        unknown: Unknown::default(),
    };
    if head.flags & !KNOWN_FLAGS != 0 {
        // Payloads of unknown flags follow the known ones: nothing can be located.
        return Ok(record);
    }
    let payloads = payload_len(head.flags);
    let Some(start) = rec.len().checked_sub(payloads).filter(|&s| s >= head.body_end()) else {
        return Err(head.fail(
            20,
            Reason::CountExceedsRecord {
                what: "payloads of known flags",
                count: u64::from((head.flags & KNOWN_FLAGS).count_ones()),
                needed: u64_from(payloads),
                available: u64_from(rec.len() - head.body_end()),
            },
        ));
    };
    let (regs, timing, _) = known_payloads(rec, head, start)?;
    record.regs = regs;
    record.timing = timing;
    Ok(record)
}

/// Bytes the payloads of the known flags in `flags` take.
fn payload_len(flags: u32) -> usize {
    let regs = if flags & FLAG_REGS != 0 { REGS_PAYLOAD_SIZE } else { 0 };
    let timing = if flags & FLAG_TIMING != 0 { TIMING_PAYLOAD_SIZE } else { 0 };
    regs + timing
}

/// The fixed body as written, normalised to exactly this version's length for the kind: a
/// longer body is cut (its extra bytes are kept as unknown), a shorter one, from an older
/// writer, is copied into zeros (rule 3). Field reads then never run past it.
struct Fixed<'a, 'b> {
    rec: &'a [u8],
    /// The body bytes the writer wrote.
    written: &'a [u8],
    /// Exactly this version's length (in the record, or in a zeroed copy when shorter).
    b: &'b [u8],
    seq: u64,
    body_end: usize,
}

impl<'a, 'b> Fixed<'a, 'b> {
    fn new(rec: &'a [u8], head: &Head, known_len: usize, short: &'b mut [u8; MAX_KNOWN_BODY]) -> Self
    where
        'a: 'b,
    {
        let written = &rec[RECORD_HEADER_SIZE..head.body_end()];
        let b: &'b [u8] = if written.len() >= known_len {
            &written[..known_len]
        } else {
            short[..written.len()].copy_from_slice(written);
            &short[..known_len]
        };
        Fixed { rec, written, b, seq: head.seq, body_end: head.body_end() }
    }

    fn fields(&self) -> Fields<'b> {
        Fields { bytes: self.b, base: RECORD_HEADER_SIZE, seq: Some(self.seq) }
    }

    /// Body bytes past this version's layout.
    fn unknown_body(&self) -> &'a [u8] {
        self.written.get(self.b.len()..).unwrap_or(&[])
    }

    fn fail(&self, offset: usize, reason: Reason) -> RecordError {
        RecordError { offset, seq: Some(self.seq), reason }
    }

    fn invalid(&self, at: usize, field: &'static str, value: u64) -> RecordError {
        self.fail(RECORD_HEADER_SIZE + at, Reason::InvalidValue { field, value })
    }

    /// Padding `[from, to)` of the body must be zero where the writer wrote it.
    fn pad_zero(&self, from: usize, to: usize, what: &'static str) -> Result<(), RecordError> {
        let end = to.min(self.written.len());
        match self.b.get(from..end).and_then(|p| p.iter().position(|&x| x != 0)) {
            Some(i) => Err(self.fail(RECORD_HEADER_SIZE + from + i, Reason::NonZeroPadding { what })),
            None => Ok(()),
        }
    }

    /// `count` items of `unit` bytes of variable data, checked against the record before
    /// use: the padded length must fit between the body and the record's end.
    fn var(&self, what: &'static str, count: u64, unit: u64) -> Result<Var<'a>, RecordError> {
        let avail = self.rec.len() - self.body_end;
        let needed = count.saturating_mul(unit);
        let padded = needed.checked_add(7).map(|v| v & !7).unwrap_or(u64::MAX);
        if padded > u64_from(avail) {
            return Err(self.fail(
                RECORD_HEADER_SIZE,
                Reason::CountExceedsRecord { what, count, needed, available: u64_from(avail) },
            ));
        }
        let len = usize::try_from(needed).unwrap_or(usize::MAX);
        Ok(Var {
            start: self.body_end,
            bytes: self.rec.get(self.body_end..self.body_end + len).unwrap_or(&[]),
        })
    }

    /// No variable data.
    fn no_var(&self) -> Var<'a> {
        Var { start: self.body_end, bytes: &[] }
    }
}

/// Variable data: where it starts in the record and its bytes (before padding).
#[derive(Clone, Copy)]
struct Var<'a> {
    start: usize,
    bytes: &'a [u8],
}

/// The kind's fields and variable data (§6).
fn decode_body<'a>(head: &Head, f: &Fixed<'a, '_>) -> Result<(Body<'a>, Var<'a>), RecordError> {
    if kind::is_exit(head.kind) { exit_body(head.kind, f) } else { event_body(head.kind, f) }
}

fn exit_body<'a>(kind: u16, f: &Fixed<'a, '_>) -> Result<(Body<'a>, Var<'a>), RecordError> {
    let r = f.fields();
    let none = f.no_var();
    Ok(match kind {
        kind::IO => io(f)?,
        kind::MMIO => (mmio(f)?, none),
        kind::HLT => (Body::Hlt, none),
        kind::SHUTDOWN => (Body::Shutdown, none),
        kind::IRQ_WINDOW_OPEN => (Body::IrqWindowOpen, none),
        kind::INTR => (Body::Intr, none),
        kind::FAIL_ENTRY => {
            f.pad_zero(12, 16, "fail_entry padding")?;
            (Body::FailEntry(FailEntry { hardware_entry_failure_reason: r.u64(0)?, cpu: r.u32(8)? }), none)
        }
        kind::INTERNAL_ERROR => {
            let var = f.var("internal_error ndata", u64::from(r.u32(4)?), 8)?;
            (Body::InternalError(InternalError { suberror: r.u32(0)?, data: Words::Le(var.bytes) }), var)
        }
        kind::SYSTEM_EVENT => {
            let var = f.var("system_event ndata", u64::from(r.u32(4)?), 8)?;
            (Body::SystemEvent(SystemEvent { event_type: r.u32(0)?, data: Words::Le(var.bytes) }), var)
        }
        kind::X86_RDMSR | kind::X86_WRMSR => {
            f.pad_zero(17, 24, "msr padding")?;
            let m = Msr { index: r.u32(0)?, reason: r.u32(4)?, data: r.u64(8)?, error: r.u8(16)? };
            (if kind == kind::X86_RDMSR { Body::RdMsr(m) } else { Body::WrMsr(m) }, none)
        }
        kind::HYPERCALL => {
            let mut args = [0u64; 6];
            for (i, a) in args.iter_mut().enumerate() {
                *a = r.u64(8 + 8 * i)?;
            }
            (Body::Hypercall(Hypercall { nr: r.u64(0)?, args, ret: r.u64(56)?, flags: r.u64(64)? }), none)
        }
        kind::DEBUG => {
            f.pad_zero(4, 8, "debug padding")?;
            let d = DebugExit { exception: r.u32(0)?, pc: r.u64(8)?, dr6: r.u64(16)?, dr7: r.u64(24)? };
            (Body::Debug(d), none)
        }
        kind::RAW_EXIT => {
            let length = r.u32(4)?;
            if usize_from(length) > MAX_RAW_EXIT_DATA {
                return Err(f.invalid(
                    4,
                    "raw exit length (the kvm_run exit union is 256 bytes)",
                    length.into(),
                ));
            }
            let var = f.var("raw exit length", u64::from(length), 1)?;
            (Body::RawExit(RawExit { exit_reason: r.u32(0)?, data: var.bytes }), var)
        }
        // `body_size` knows exactly the kinds matched here and in `event_body`; should the
        // tables ever disagree, the record is still kept, verbatim, rather than misread.
        _ => (unmatched(kind, f), none),
    })
}

fn event_body<'a>(kind: u16, f: &Fixed<'a, '_>) -> Result<(Body<'a>, Var<'a>), RecordError> {
    let r = f.fields();
    let none = f.no_var();
    Ok(match kind {
        kind::INTERRUPT => (Body::Interrupt(Interrupt { vector: r.u32(0)?, source: r.u32(4)? }), none),
        kind::INTERRUPT_WINDOW => {
            f.pad_zero(4, 8, "interrupt_window padding")?;
            let request = r.u32(0)?;
            if request > 1 {
                return Err(f.invalid(0, "interrupt_window request", request.into()));
            }
            (Body::InterruptWindow(InterruptWindow { request }), none)
        }
        kind::GUEST_WRITE => guest_write(f)?,
        kind::IRQ_LINE => {
            f.pad_zero(12, 16, "irq_line reserved")?;
            (Body::IrqLine(IrqLine { gsi: r.u32(0)?, level: r.u32(4)?, via: r.u32(8)? }), none)
        }
        kind::CHECKPOINT => {
            let c = Checkpoint { snapshot_id: r.u64(0)?, exit_seq: r.u64(8)?, exits: r.u64(16)? };
            (Body::Checkpoint(c), none)
        }
        kind::ANNOTATION => annotation(f)?,
        kind::END_OF_RUN => {
            f.pad_zero(4, 8, "end_of_run padding")?;
            (Body::EndOfRun(EndOfRun { reason: r.u32(0)?, exits: r.u64(8)?, status: r.u64(16)? }), none)
        }
        kind::CPUID => cpuid(f)?,
        _ => (unmatched(kind, f), none),
    })
}

fn unmatched<'a>(kind: u16, f: &Fixed<'a, '_>) -> Body<'a> {
    Body::Unknown {
        kind,
        body_size: u16::try_from(f.written.len()).unwrap_or(u16::MAX),
        flags: u32_field(f.rec, 20),
        bytes: &f.rec[RECORD_HEADER_SIZE..],
    }
}

fn u32_field(rec: &[u8], off: usize) -> u32 {
    crate::cursor::u32_at(rec, off).unwrap_or(0)
}

fn io<'a>(f: &Fixed<'a, '_>) -> Result<(Body<'a>, Var<'a>), RecordError> {
    let r = f.fields();
    let direction = match r.u8(0)? {
        0 => Direction::In,
        1 => Direction::Out,
        v => return Err(f.invalid(0, "io direction", v.into())),
    };
    let size = r.u8(1)?;
    let count = r.u32(4)?;
    if !(matches!(size, 1 | 2 | 4) || (size == 0 && count == 0)) {
        return Err(f.invalid(1, "io size", size.into()));
    }
    let var = f.var("io count", u64::from(count), u64::from(size))?;
    Ok((Body::Io(Io { direction, size, port: r.u16(2)?, count, data: var.bytes }), var))
}

fn mmio<'a>(f: &Fixed<'a, '_>) -> Result<Body<'a>, RecordError> {
    let r = f.fields();
    let len = r.u32(8)?;
    if len > 8 {
        return Err(f.invalid(8, "mmio len", len.into()));
    }
    let is_write = match r.u8(12)? {
        0 => false,
        1 => true,
        v => return Err(f.invalid(12, "mmio is_write", v.into())),
    };
    f.pad_zero(13, 16, "mmio padding")?;
    f.pad_zero(16 + usize_from(len), 24, "mmio data beyond len")?;
    let mut data = [0u8; 8];
    data.copy_from_slice(f.b.get(16..24).unwrap_or(&[0; 8]));
    Ok(Body::Mmio(Mmio { phys_addr: r.u64(0)?, len, is_write, data }))
}

fn guest_write<'a>(f: &Fixed<'a, '_>) -> Result<(Body<'a>, Var<'a>), RecordError> {
    let r = f.fields();
    f.pad_zero(12, 16, "guest_write reserved")?;
    let gpa = r.u64(0)?;
    let var = f.var("guest_write len", u64::from(r.u32(8)?), 1)?;
    // The end of the range, `gpa + len`, is a 64-bit address (FORMAT.md §6).
    if gpa.checked_add(u64_from(var.bytes.len())).is_none() {
        return Err(f.invalid(0, "guest_write gpa + len", gpa));
    }
    Ok((Body::GuestWrite(GuestWrite { gpa, data: var.bytes }), var))
}

fn annotation<'a>(f: &Fixed<'a, '_>) -> Result<(Body<'a>, Var<'a>), RecordError> {
    let r = f.fields();
    f.pad_zero(2, 4, "annotation padding")?;
    let klen = usize::from(r.u16(0)?);
    let vlen = usize_from(r.u32(4)?);
    let var = f.var("annotation length", u64_from(klen) + u64_from(vlen), 1)?;
    let (k, v) = var.bytes.split_at(klen.min(var.bytes.len()));
    let key = std::str::from_utf8(k)
        .map_err(|_| f.fail(var.start, Reason::InvalidUtf8 { field: "annotation key" }))?;
    let value = std::str::from_utf8(v)
        .map_err(|_| f.fail(var.start + klen, Reason::InvalidUtf8 { field: "annotation value" }))?;
    Ok((Body::Annotation(Annotation { key, value }), var))
}

fn cpuid<'a>(f: &Fixed<'a, '_>) -> Result<(Body<'a>, Var<'a>), RecordError> {
    let r = f.fields();
    f.pad_zero(4, 8, "cpuid padding")?;
    let var = f.var("cpuid entry count", u64::from(r.u32(0)?), u64_from(CPUID_ENTRY_SIZE))?;
    for (i, e) in var.bytes.chunks_exact(CPUID_ENTRY_SIZE).enumerate() {
        if !all_zero(&e[28..32]) {
            let at = var.start + i * CPUID_ENTRY_SIZE + 28;
            return Err(f.fail(at, Reason::NonZeroPadding { what: "cpuid entry padding" }));
        }
    }
    Ok((Body::Cpuid(CpuidEntries::Le(var.bytes)), var))
}

/// The zero padding after the variable data; returns where the payloads start.
fn check_var_padding(rec: &[u8], head: &Head, var: Var<'_>) -> Result<usize, RecordError> {
    let var_end = var.start + var.bytes.len();
    let Some(pos) = align8(var_end) else {
        return Err(head.fail(0, Reason::InvalidValue { field: "record layout", value: u64_from(rec.len()) }));
    };
    if let Some(i) = rec.get(var_end..pos.min(rec.len())).and_then(|p| p.iter().position(|&x| x != 0)) {
        return Err(head.fail(var_end + i, Reason::NonZeroPadding { what: "variable data padding" }));
    }
    Ok(pos)
}

/// The payloads of the known flags, in ascending bit order from `pos`; returns them and
/// where they end.
fn known_payloads(
    rec: &[u8],
    head: &Head,
    mut pos: usize,
) -> Result<(Option<RegsSample>, Option<Timing>, usize), RecordError> {
    let mut regs = None;
    if head.flags & FLAG_REGS != 0 {
        let Some(p) = rec.get(pos..pos + REGS_PAYLOAD_SIZE) else {
            return Err(head.fail(
                20,
                Reason::CountExceedsRecord {
                    what: "regs payload",
                    count: 1,
                    needed: u64_from(REGS_PAYLOAD_SIZE),
                    available: u64_from(rec.len().saturating_sub(pos)),
                },
            ));
        };
        let pf = Fields { bytes: p, base: pos, seq: Some(head.seq) };
        regs = Some(RegsSample { rip: pf.u64(0)?, rsp: pf.u64(8)?, rflags: pf.u64(16)?, flags: pf.u64(24)? });
        pos += REGS_PAYLOAD_SIZE;
    }
    let mut timing = None;
    if head.flags & FLAG_TIMING != 0 {
        timing = Some(decode_timing(rec, pos, head.seq)?);
        pos += TIMING_PAYLOAD_SIZE;
    }
    Ok((regs, timing, pos))
}

/// What follows the known payloads: the payloads of unknown flags, which must be absent
/// when no unknown flag is set.
fn unknown_tail<'a>(rec: &'a [u8], head: &Head, pos: usize) -> Result<&'a [u8], RecordError> {
    let tail = &rec[pos..];
    if head.flags & !KNOWN_FLAGS == 0 && !tail.is_empty() {
        return Err(head.fail(
            pos,
            Reason::InvalidValue { field: "bytes not announced by any flag", value: u64_from(tail.len()) },
        ));
    }
    Ok(tail)
}

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

//! Record encoder: appends one record's bytes to a buffer.
//!
//! The record's size is computed first, the buffer grows once (zero-filled, which also
//! writes every padding byte), and fields are stored at fixed offsets: no per-field
//! capacity checks on the recording hot path.

use crate::bytes::u64_from;
use crate::error::WriteError;
use crate::record::*;

/// Appends `rec` to `out`, returning the number of bytes written.
///
/// The encoder writes this version's layout for known kinds and re-emits the record's
/// [`Unknown`] parts verbatim (fields appended to the body, payloads of flags this version
/// does not know), so records read from a newer writer survive a copy.
///
/// # Errors
/// [`WriteError::RecordTooLarge`] beyond [`MAX_RECORD_SIZE`], and
/// [`WriteError::Unencodable`] for values the layout cannot hold (an MMIO access longer
/// than 8 bytes, IO data whose length is not `size * count`, unaligned unknown parts, an
/// annotation beyond its limits, an invalid time code). On error `out` is left as it was.
#[inline]
pub fn encode(rec: &Record<'_>, out: &mut Vec<u8>) -> Result<usize, WriteError> {
    if rec.timing.is_some_and(|t| !t.is_valid()) {
        return Err(Bad::Layout("timing", "a time code above the largest valid one").into_error());
    }
    if rec.unknown.is_empty() {
        match &rec.body {
            Body::Io(io)
                if !io.data.is_empty()
                    && io.data.len() <= 8
                    && io.data.len() == usize::from(io.size) * usize_of(io.count) =>
            {
                let (b, d) = (io_body(io), io_data(io));
                return Ok(match (rec.regs.is_some(), rec.timing.is_some()) {
                    (true, false) => fixed::<72>(rec, &b, &d, out),
                    (false, false) => fixed::<40>(rec, &b, &d, out),
                    (true, true) => fixed::<80>(rec, &b, &d, out),
                    (false, true) => fixed::<48>(rec, &b, &d, out),
                });
            }
            Body::Mmio(m) if m.len <= 8 => {
                let b = mmio_body(m);
                return Ok(match (rec.regs.is_some(), rec.timing.is_some()) {
                    (true, false) => fixed::<80>(rec, &b, &[], out),
                    (false, false) => fixed::<48>(rec, &b, &[], out),
                    (true, true) => fixed::<88>(rec, &b, &[], out),
                    (false, true) => fixed::<56>(rec, &b, &[], out),
                });
            }
            _ => {}
        }
    }
    let plan = plan(rec).map_err(Bad::into_error)?;
    if plan.total <= SMALL {
        // The common case (an exit with a register sample is 72 bytes): build it in a
        // fixed-size zeroed slot, then append it with one copy.
        let mut slot = [0u8; SMALL];
        write(rec, &plan, &mut slot[..plan.total]);
        out.extend_from_slice(&slot[..plan.total]);
    } else {
        let start = out.len();
        out.resize(start + plan.total, 0);
        write(rec, &plan, &mut out[start..]);
    }
    Ok(plan.total)
}

fn usize_of(v: u32) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

#[inline(always)]
fn io_body(io: &Io<'_>) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0] = io.direction.raw();
    b[1] = io.size;
    b[2..4].copy_from_slice(&io.port.to_le_bytes());
    b[4..8].copy_from_slice(&io.count.to_le_bytes());
    b
}

#[inline(always)]
fn io_data(io: &Io<'_>) -> [u8; 8] {
    let mut d = [0u8; 8];
    // Port I/O moves 1, 2 or 4 bytes: constant-size copies for those.
    match io.data {
        [a] => d[0] = *a,
        [a, b] => d[..2].copy_from_slice(&[*a, *b]),
        [a, b, c, e] => d[..4].copy_from_slice(&[*a, *b, *c, *e]),
        other => {
            for (x, y) in d.iter_mut().zip(other) {
                *x = *y;
            }
        }
    }
    d
}

#[inline(always)]
fn mmio_body(m: &Mmio) -> [u8; 24] {
    let mut b = [0u8; 24];
    b[..8].copy_from_slice(&m.phys_addr.to_le_bytes());
    b[8..12].copy_from_slice(&m.len.to_le_bytes());
    b[12] = u8::from(m.is_write);
    b[16..24].copy_from_slice(&m.data);
    for x in &mut b[16 + usize_of(m.len).min(8)..] {
        *x = 0;
    }
    b
}

/// The hot path: an exit whose layout has a constant size `N` (header, a fixed body,
/// at most 8 bytes of variable data, optional register sample and timing), built with
/// constant-offset stores and appended with one fixed-size copy.
#[inline(always)]
fn fixed<const N: usize>(rec: &Record<'_>, body: &[u8], var: &[u8], out: &mut Vec<u8>) -> usize {
    let mut b = [0u8; N];
    let n = u32::try_from(N).unwrap_or(u32::MAX);
    b[0..4].copy_from_slice(&n.to_le_bytes());
    b[4..6].copy_from_slice(&rec.body.kind().to_le_bytes());
    b[6..8].copy_from_slice(&u16::try_from(body.len()).unwrap_or(0).to_le_bytes());
    b[8..16].copy_from_slice(&rec.seq.to_le_bytes());
    b[16..20].copy_from_slice(&rec.vcpu.to_le_bytes());
    let flags =
        if rec.regs.is_some() { FLAG_REGS } else { 0 } | if rec.timing.is_some() { FLAG_TIMING } else { 0 };
    b[20..24].copy_from_slice(&flags.to_le_bytes());
    let mut pos = RECORD_HEADER_SIZE;
    b[pos..pos + body.len()].copy_from_slice(body);
    pos += body.len();
    if !var.is_empty() {
        b[pos..pos + 8].copy_from_slice(&var[..8]);
        pos += 8;
    }
    if let Some(r) = rec.regs {
        b[pos..pos + 8].copy_from_slice(&r.rip.to_le_bytes());
        b[pos + 8..pos + 16].copy_from_slice(&r.rsp.to_le_bytes());
        b[pos + 16..pos + 24].copy_from_slice(&r.rflags.to_le_bytes());
        b[pos + 24..pos + 32].copy_from_slice(&r.flags.to_le_bytes());
        pos += REGS_PAYLOAD_SIZE;
    }
    if let Some(t) = rec.timing {
        b[pos..pos + 2].copy_from_slice(&t.prev_handler.to_le_bytes());
        b[pos + 2..pos + 4].copy_from_slice(&t.guest.to_le_bytes());
    }
    out.extend_from_slice(&b);
    N
}

/// Records up to this size are built on the stack.
const SMALL: usize = 128;

/// Why a record cannot be encoded; turned into a [`WriteError`] off the hot path.
enum Bad {
    IoData { len: usize, size: u8, count: u32 },
    MmioLen(u32),
    Count(&'static str, usize),
    Annotation(usize, usize),
    Layout(&'static str, &'static str),
    TooLarge(usize),
    BodyTooLarge(usize),
}

impl Bad {
    #[cold]
    fn into_error(self) -> WriteError {
        let u = |field, detail| WriteError::Unencodable { field, detail };
        match self {
            Bad::IoData { len, size, count } => {
                u("io data", format!("{len} bytes, size {size} x count {count}"))
            }
            Bad::MmioLen(l) => u("mmio len", format!("{l} > 8")),
            Bad::Count(what, n) => u(what, format!("{n} does not fit 32 bits")),
            Bad::Annotation(k, v) => u("annotation", format!("key {k} / value {v} bytes over the limits")),
            Bad::Layout(field, why) => u(field, why.to_string()),
            Bad::TooLarge(n) => {
                WriteError::RecordTooLarge { size: u64_from(n), max: u64_from(MAX_RECORD_SIZE) }
            }
            Bad::BodyTooLarge(n) => u("body_size", format!("{n} bytes of fixed body exceed 65535")),
        }
    }
}

/// Sizes of a record's parts, computed before anything is written.
struct Plan {
    total: usize,
    body_len: usize,
    known_body: usize,
    var_len: usize,
    flags: u32,
}

#[inline]
fn pad8(n: usize) -> usize {
    (n + 7) & !7
}

#[inline]
fn plan(rec: &Record<'_>) -> Result<Plan, Bad> {
    let unknown = rec.unknown;
    if let Body::Unknown { body_size, flags, bytes, .. } = &rec.body {
        if bytes.len() % 8 != 0 || usize::from(*body_size) > bytes.len() {
            return Err(Bad::Layout("unknown record", "length not a multiple of 8, or body_size beyond it"));
        }
        return finish_plan(Plan {
            total: RECORD_HEADER_SIZE + bytes.len(),
            body_len: usize::from(*body_size),
            known_body: 0,
            var_len: 0,
            flags: *flags,
        });
    }
    if unknown.body.len() % 8 != 0 || unknown.tail.len() % 8 != 0 {
        return Err(Bad::Layout("unknown parts", "length not a multiple of 8"));
    }
    if unknown.flags & KNOWN_FLAGS != 0 {
        return Err(Bad::Layout("unknown flags", "overlap flags this version knows"));
    }
    if !unknown.tail.is_empty() && unknown.flags == 0 {
        return Err(Bad::Layout("unknown tail", "present without a flag announcing it"));
    }
    let kind = rec.body.kind();
    let known_body = body_size(kind).unwrap_or(0);
    let var_len = match &rec.body {
        Body::Io(io) => {
            let expect = usize::from(io.size).saturating_mul(usize::try_from(io.count).unwrap_or(usize::MAX));
            if io.data.len() != expect {
                return Err(Bad::IoData { len: io.data.len(), size: io.size, count: io.count });
            }
            io.data.len()
        }
        Body::Mmio(m) if m.len > 8 => return Err(Bad::MmioLen(m.len)),
        Body::InternalError(InternalError { data, .. }) | Body::SystemEvent(SystemEvent { data, .. }) => {
            count_u32("ndata", data.len())?;
            data.len() * 8
        }
        Body::RawExit(r) => {
            if r.data.len() > MAX_RAW_EXIT_DATA {
                return Err(Bad::Layout("raw exit length", "longer than the 256-byte kvm_run exit union"));
            }
            r.data.len()
        }
        Body::Annotation(a) => {
            if a.key.len() > MAX_ANNOTATION_KEY || a.value.len() > MAX_ANNOTATION_VALUE {
                return Err(Bad::Annotation(a.key.len(), a.value.len()));
            }
            a.key.len() + a.value.len()
        }
        Body::Cpuid(c) => {
            count_u32("cpuid entry count", c.len())?;
            c.len() * CPUID_ENTRY_SIZE
        }
        Body::GuestWrite(g) => {
            if g.data.len() > MAX_GUEST_WRITE_DATA {
                return Err(Bad::TooLarge(RECORD_HEADER_SIZE + 16 + pad8(g.data.len())));
            }
            g.data.len()
        }
        _ => 0,
    };
    let mut flags = unknown.flags;
    let mut total = RECORD_HEADER_SIZE + known_body + unknown.body.len() + pad8(var_len);
    if rec.regs.is_some() {
        flags |= FLAG_REGS;
        total += REGS_PAYLOAD_SIZE;
    }
    if rec.timing.is_some() {
        flags |= FLAG_TIMING;
        total += TIMING_PAYLOAD_SIZE;
    }
    total += unknown.tail.len();
    finish_plan(Plan { total, body_len: known_body + unknown.body.len(), known_body, var_len, flags })
}

#[inline]
fn finish_plan(p: Plan) -> Result<Plan, Bad> {
    if p.total > MAX_RECORD_SIZE {
        return Err(Bad::TooLarge(p.total));
    }
    if p.body_len > usize::from(u16::MAX) {
        return Err(Bad::BodyTooLarge(p.body_len));
    }
    Ok(p)
}

#[inline]
fn count_u32(what: &'static str, n: usize) -> Result<u32, Bad> {
    u32::try_from(n).map_err(|_| Bad::Count(what, n))
}

/// Little-endian stores at fixed offsets into a zero-filled record slot.
struct Slot<'a>(&'a mut [u8]);

impl Slot<'_> {
    #[inline(always)]
    fn put(&mut self, off: usize, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if let Some(d) = self.0.get_mut(off..off + bytes.len()) {
            if bytes.len() <= 8 {
                // Short copies (port I/O data) inline instead of calling memcpy.
                for (a, b) in d.iter_mut().zip(bytes) {
                    *a = *b;
                }
            } else {
                d.copy_from_slice(bytes);
            }
        }
    }
    #[inline(always)]
    fn u8(&mut self, off: usize, v: u8) {
        self.put(off, &[v]);
    }
    #[inline]
    fn u16(&mut self, off: usize, v: u16) {
        self.put(off, &v.to_le_bytes());
    }
    #[inline]
    fn u32(&mut self, off: usize, v: u32) {
        self.put(off, &v.to_le_bytes());
    }
    #[inline]
    fn u64(&mut self, off: usize, v: u64) {
        self.put(off, &v.to_le_bytes());
    }
}

/// Writes `rec` into `dst`, which is exactly `plan.total` zero bytes: the header, the
/// kind's body and variable data, then (for a kind this version knows) the unknown body
/// bytes, the payloads and the unknown tail.
#[inline(always)]
fn write(rec: &Record<'_>, plan: &Plan, dst: &mut [u8]) {
    let mut s = Slot(dst);
    write_header(rec, plan, &mut s);
    if let Body::Unknown { bytes, .. } = &rec.body {
        // Opaque: re-emitted exactly as read, payloads included.
        s.put(RECORD_HEADER_SIZE, bytes);
        return;
    }
    let var = RECORD_HEADER_SIZE + plan.body_len;
    write_body(&rec.body, var, &mut s);
    s.put(RECORD_HEADER_SIZE + plan.known_body, rec.unknown.body);
    write_payloads(rec, var + pad8(plan.var_len), &mut s);
}

#[inline(always)]
fn write_header(rec: &Record<'_>, plan: &Plan, s: &mut Slot<'_>) {
    // The plan bounded every length by MAX_RECORD_SIZE (1 MiB) and body_len by u16::MAX.
    s.u32(0, u32::try_from(plan.total).unwrap_or(u32::MAX));
    s.u16(4, rec.body.kind());
    s.u16(6, u16::try_from(plan.body_len).unwrap_or(u16::MAX));
    s.u64(8, rec.seq);
    s.u32(16, rec.vcpu);
    s.u32(20, plan.flags);
}

/// The kind's fields at their offsets from the body's start, and its variable data at `var`.
#[inline(always)]
fn write_body(body: &Body<'_>, var: usize, s: &mut Slot<'_>) {
    const B: usize = RECORD_HEADER_SIZE;
    match body {
        Body::Io(io) => {
            s.u8(B, io.direction.raw());
            s.u8(B + 1, io.size);
            s.u16(B + 2, io.port);
            s.u32(B + 4, io.count);
            s.put(var, io.data);
        }
        Body::Mmio(m) => {
            s.u64(B, m.phys_addr);
            s.u32(B + 8, m.len);
            s.u8(B + 12, u8::from(m.is_write));
            s.put(B + 16, m.bytes());
        }
        Body::Hlt | Body::Shutdown | Body::IrqWindowOpen | Body::Intr => {}
        Body::FailEntry(f) => {
            s.u64(B, f.hardware_entry_failure_reason);
            s.u32(B + 8, f.cpu);
        }
        Body::InternalError(InternalError { suberror: a, data })
        | Body::SystemEvent(SystemEvent { event_type: a, data }) => {
            s.u32(B, *a);
            s.u32(B + 4, u32::try_from(data.len()).unwrap_or(u32::MAX));
            for (i, w) in data.iter().enumerate() {
                s.u64(var + 8 * i, w);
            }
        }
        Body::RdMsr(m) | Body::WrMsr(m) => {
            s.u32(B, m.index);
            s.u32(B + 4, m.reason);
            s.u64(B + 8, m.data);
            s.u8(B + 16, m.error);
        }
        Body::Hypercall(h) => {
            s.u64(B, h.nr);
            for (i, a) in h.args.iter().enumerate() {
                s.u64(B + 8 + 8 * i, *a);
            }
            s.u64(B + 56, h.ret);
            s.u64(B + 64, h.flags);
        }
        Body::Debug(d) => {
            s.u32(B, d.exception);
            s.u64(B + 8, d.pc);
            s.u64(B + 16, d.dr6);
            s.u64(B + 24, d.dr7);
        }
        Body::RawExit(r) => {
            s.u32(B, r.exit_reason);
            s.u32(B + 4, u32::try_from(r.data.len()).unwrap_or(u32::MAX));
            s.put(var, r.data);
        }
        Body::Interrupt(i) => {
            s.u32(B, i.vector);
            s.u32(B + 4, i.source);
        }
        Body::InterruptWindow(w) => s.u32(B, w.request),
        Body::IrqLine(l) => {
            s.u32(B, l.gsi);
            s.u32(B + 4, l.level);
            s.u32(B + 8, l.via);
        }
        Body::GuestWrite(g) => {
            s.u64(B, g.gpa);
            s.u32(B + 8, u32::try_from(g.data.len()).unwrap_or(u32::MAX));
            s.put(var, g.data);
        }
        Body::Checkpoint(c) => {
            s.u64(B, c.snapshot_id);
            s.u64(B + 8, c.exit_seq);
            s.u64(B + 16, c.exits);
        }
        Body::Annotation(a) => {
            s.u16(B, u16::try_from(a.key.len()).unwrap_or(u16::MAX));
            s.u32(B + 4, u32::try_from(a.value.len()).unwrap_or(u32::MAX));
            s.put(var, a.key.as_bytes());
            s.put(var + a.key.len(), a.value.as_bytes());
        }
        Body::EndOfRun(e) => {
            s.u32(B, e.reason);
            s.u64(B + 8, e.exits);
            s.u64(B + 16, e.status);
        }
        Body::Cpuid(c) => {
            s.u32(B, u32::try_from(c.len()).unwrap_or(u32::MAX));
            for (i, e) in c.iter().enumerate() {
                let o = var + i * CPUID_ENTRY_SIZE;
                for (j, w) in
                    [e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx].into_iter().enumerate()
                {
                    s.u32(o + 4 * j, w);
                }
            }
        }
        Body::Unknown { .. } => {}
    }
}

/// The payloads of the known flags from `pos`, in ascending bit order, then the unknown tail.
#[inline(always)]
fn write_payloads(rec: &Record<'_>, mut pos: usize, s: &mut Slot<'_>) {
    if let Some(r) = rec.regs {
        s.u64(pos, r.rip);
        s.u64(pos + 8, r.rsp);
        s.u64(pos + 16, r.rflags);
        s.u64(pos + 24, r.flags);
        pos += REGS_PAYLOAD_SIZE;
    }
    if let Some(t) = rec.timing {
        s.u16(pos, t.prev_handler);
        s.u16(pos + 2, t.guest);
        pos += TIMING_PAYLOAD_SIZE;
    }
    s.put(pos, rec.unknown.tail);
}

//! Human and JSON renderings of records (used by `vmrr inspect` and replay reports).
//!
//! JSON field names follow `include/uapi/linux/kvm.h`; byte strings are lower-case hex.
//! These names are a stable interface for CI scripts: fields may be added, never renamed.

use serde_json::{Map, Value, json};

use crate::kind;
use crate::record::*;

/// Lower-case hex of a byte slice: how every byte string is printed (trace ids,
/// instruction bytes, I/O data).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// JSON object for one record: `seq`, `vcpu`, `kind`, the kind's fields, `regs` when
/// sampled (with every `sample_flags` bit, known or not), and `unknown` (hex) when a newer
/// writer's parts were kept.
pub fn record_json(rec: &Record<'_>) -> Value {
    let mut m = Map::new();
    m.insert("seq".into(), json!(rec.seq));
    m.insert("vcpu".into(), json!(rec.vcpu));
    if let Appender::Device(n) = Appender::of(rec.vcpu) {
        // From format 1.2: the record was appended by device thread `n`.
        m.insert("device".into(), json!(n));
    }
    m.insert("kind".into(), json!(kind::name(rec.body.kind())));
    body_fields(&rec.body, &mut m);
    if let Some(r) = rec.regs {
        m.insert(
            "regs".into(),
            json!({"rip": r.rip, "rsp": r.rsp, "rflags": r.rflags, "sample_flags": r.flags,
                   "rip_after_insn": r.flags & RegsSample::RIP_AFTER_INSN != 0}),
        );
    }
    if let Some(t) = rec.timing {
        m.insert("timing".into(), json!({"prev_handler_ns": t.prev_handler_ns(), "guest_ns": t.guest_ns()}));
    }
    if !rec.unknown.is_empty() {
        m.insert(
            "unknown".into(),
            json!({"body": hex(rec.unknown.body), "flags": rec.unknown.flags, "tail": hex(rec.unknown.tail)}),
        );
    }
    Value::Object(m)
}

fn words(w: &Words<'_>) -> Value {
    Value::Array(w.iter().map(|v| json!(v)).collect())
}

fn body_fields(body: &Body<'_>, m: &mut Map<String, Value>) {
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    match body {
        Body::Io(io) => {
            put("direction", json!(io.direction.name()));
            put("port", json!(io.port));
            put("size", json!(io.size));
            put("count", json!(io.count));
            put("data", json!(hex(io.data)));
        }
        Body::Mmio(x) => {
            put("phys_addr", json!(x.phys_addr));
            put("len", json!(x.len));
            put("is_write", json!(x.is_write));
            put("data", json!(hex(x.bytes())));
        }
        Body::Hlt | Body::Shutdown | Body::IrqWindowOpen | Body::Intr => {}
        Body::FailEntry(f) => {
            put("hardware_entry_failure_reason", json!(f.hardware_entry_failure_reason));
            put("cpu", json!(f.cpu));
        }
        Body::InternalError(e) => {
            put("suberror", json!(e.suberror));
            put("ndata", json!(e.data.len()));
            put("data", words(&e.data));
            if let Some(ef) = e.emulation_failure() {
                put("flags", json!(ef.flags));
                if ef.has_insn_bytes {
                    put("insn_size", json!(ef.insn_size));
                    put("insn_bytes", json!(hex(ef.bytes())));
                }
            }
        }
        Body::SystemEvent(e) => {
            put("type", json!(e.event_type));
            put("ndata", json!(e.data.len()));
            put("data", words(&e.data));
        }
        Body::RdMsr(x) | Body::WrMsr(x) => {
            put("index", json!(x.index));
            put("data", json!(x.data));
            put("reason", json!(x.reason));
            put("error", json!(x.error));
        }
        Body::Hypercall(h) => {
            put("nr", json!(h.nr));
            put("args", json!(h.args));
            put("ret", json!(h.ret));
            put("flags", json!(h.flags));
        }
        Body::Debug(d) => {
            put("exception", json!(d.exception));
            put("pc", json!(d.pc));
            put("dr6", json!(d.dr6));
            put("dr7", json!(d.dr7));
        }
        Body::RawExit(r) => {
            put("exit_reason", json!(r.exit_reason));
            put("exit_name", json!(kind::kvm_exit_name(r.exit_reason)));
            put("data", json!(hex(r.data)));
        }
        Body::Interrupt(i) => {
            put("vector", json!(i.vector));
            put("source", json!(interrupt_source_name(i.source)));
            put("source_code", json!(i.source));
        }
        Body::InterruptWindow(w) => put("request", json!(w.request != 0)),
        Body::IrqLine(l) => {
            put("gsi", json!(l.gsi));
            match irq_level_name(l.level) {
                "unknown" => {
                    put("level", json!("unknown"));
                    put("level_code", json!(l.level));
                }
                name => put("level", json!(name)),
            }
            match irq_via_name(l.via) {
                "unknown" => {
                    put("via", json!("unknown"));
                    put("via_code", json!(l.via));
                }
                name => put("via", json!(name)),
            }
        }
        Body::GuestWrite(g) => {
            put("gpa", json!(g.gpa));
            put("len", json!(g.data.len()));
            put("data", json!(hex(g.data)));
        }
        Body::Checkpoint(c) => {
            put("snapshot_id", json!(c.snapshot_id));
            put("exit_seq", json!(c.exit_seq));
            put("exits", json!(c.exits));
        }
        Body::Annotation(a) => {
            put("key", json!(a.key));
            put("value", json!(a.value));
        }
        Body::EndOfRun(e) => {
            put("reason", json!(end_reason::name(e.reason)));
            put("reason_code", json!(e.reason));
            put("exits", json!(e.exits));
            put("status", json!(e.status));
        }
        Body::Cpuid(c) => {
            put("nent", json!(c.len()));
            put(
                "entries",
                Value::Array(
                    c.iter()
                        .map(|e| {
                            json!({"function": e.function, "index": e.index, "flags": e.flags,
                                   "eax": e.eax, "ebx": e.ebx, "ecx": e.ecx, "edx": e.edx})
                        })
                        .collect(),
                ),
            );
        }
        Body::Unknown { kind, body_size, flags, bytes } => {
            put("kind_number", json!(kind));
            put("body_size", json!(body_size));
            put("flags", json!(flags));
            put("bytes", json!(hex(bytes)));
        }
    }
}

/// One human-readable line for a record.
pub fn record_line(rec: &Record<'_>) -> String {
    let who = match Appender::of(rec.vcpu) {
        Appender::Vcpu(v) => format!("vcpu{v}"),
        Appender::Device(n) => format!("device{n}"),
    };
    let mut s = format!("#{:<8} {who} {:<15}", rec.seq, kind::name(rec.body.kind()));
    s.push_str(&body_text(&rec.body));
    if let Some(r) = rec.regs {
        s.push_str(&format!(" rip={:#x}", r.rip));
        if r.flags & RegsSample::RIP_AFTER_INSN != 0 {
            s.push('+');
        }
        if r.flags & !RegsSample::RIP_AFTER_INSN != 0 {
            // Bits a later version defines: shown, never dropped (FORMAT.md §5.2).
            s.push_str(&format!(" sample_flags={:#x}", r.flags));
        }
    }
    if let Some(t) = rec.timing {
        s.push_str(&format!(" guest={}", duration(t.guest_ns())));
        if let Some(h) = t.prev_handler_ns() {
            s.push_str(&format!(" prev_handler={}", duration(h)));
        }
    }
    if !rec.unknown.is_empty() {
        s.push_str(&format!(
            " [+{} unknown bytes, flags {:#x}]",
            rec.unknown.body.len() + rec.unknown.tail.len(),
            rec.unknown.flags
        ));
    }
    s
}

/// The kind-specific part of [`record_line`].
pub fn body_text(body: &Body<'_>) -> String {
    match body {
        Body::Io(io) => format!(
            " {} port={:#x} size={} count={} data={}",
            io.direction.name(),
            io.port,
            io.size,
            io.count,
            short_hex(io.data)
        ),
        Body::Mmio(x) => format!(
            " {} addr={:#x} len={} data={}",
            if x.is_write { "write" } else { "read" },
            x.phys_addr,
            x.len,
            hex(x.bytes())
        ),
        Body::Hlt | Body::Shutdown | Body::IrqWindowOpen | Body::Intr => String::new(),
        Body::FailEntry(f) => format!(" reason={:#x} cpu={}", f.hardware_entry_failure_reason, f.cpu),
        Body::InternalError(e) => match e.emulation_failure() {
            Some(ef) => format!(
                " emulation failure flags={:#x} insn_size={} insn_bytes={}",
                ef.flags,
                ef.insn_size,
                hex(ef.bytes())
            ),
            None => format!(" suberror={} ndata={}", e.suberror, e.data.len()),
        },
        Body::SystemEvent(e) => format!(" type={} ndata={}", e.event_type, e.data.len()),
        Body::RdMsr(x) => format!(" index={:#x} data={:#x} error={}", x.index, x.data, x.error),
        Body::WrMsr(x) => format!(" index={:#x} data={:#x} error={}", x.index, x.data, x.error),
        Body::Hypercall(h) => format!(" nr={:#x} ret={:#x}", h.nr, h.ret),
        Body::Debug(d) => format!(" exception={} pc={:#x}", d.exception, d.pc),
        Body::RawExit(r) => format!(" {} ({} bytes)", kind::kvm_exit_name(r.exit_reason), r.data.len()),
        Body::Interrupt(i) => match interrupt_source_name(i.source) {
            "unknown" => format!(" vector={:#x} source={} (unknown)", i.vector, i.source),
            name => format!(" vector={:#x} {name}", i.vector),
        },
        Body::InterruptWindow(w) => format!(" {}", if w.request != 0 { "requested" } else { "withdrawn" }),
        Body::IrqLine(l) => {
            let level = match irq_level_name(l.level) {
                "unknown" => format!("level={} (unknown)", l.level),
                name => name.to_string(),
            };
            let via = match irq_via_name(l.via) {
                "unknown" => format!("via={} (unknown)", l.via),
                name => format!("via {name}"),
            };
            format!(" gsi={} {level} {via}", l.gsi)
        }
        Body::GuestWrite(g) => format!(" gpa={:#x} len={} data={}", g.gpa, g.data.len(), short_hex(g.data)),
        Body::Checkpoint(c) => {
            format!(" snapshot={} after seq {} ({} exits)", c.snapshot_id, c.exit_seq, c.exits)
        }
        Body::Annotation(a) => format!(" {}={}", a.key, a.value),
        Body::EndOfRun(e) => match end_reason::name(e.reason) {
            "unknown" => format!(" reason={} (unknown) exits={} status={}", e.reason, e.exits, e.status),
            name => format!(" {name} exits={} status={}", e.exits, e.status),
        },
        Body::Cpuid(c) => format!(" {} entries", c.len()),
        Body::Unknown { kind, bytes, .. } => format!(" kind={kind:#x} ({} bytes)", bytes.len()),
    }
}

/// A duration in nanoseconds, printed with a unit that keeps three significant digits
/// (`850ns`, `41.2us`, `1.00ms`, `2.50s`).
pub fn duration(ns: u64) -> String {
    let v = ns as f64;
    let (x, unit) = match ns {
        0..1_000 => return format!("{ns}ns"),
        1_000..1_000_000 => (v / 1e3, "us"),
        1_000_000..1_000_000_000 => (v / 1e6, "ms"),
        _ => (v / 1e9, "s"),
    };
    if x >= 100.0 {
        format!("{x:.0}{unit}")
    } else if x >= 10.0 {
        format!("{x:.1}{unit}")
    } else {
        format!("{x:.2}{unit}")
    }
}

/// `external`, `nmi`, or `unknown` for a source this version does not define (the raw
/// value is printed beside it, never lost).
fn interrupt_source_name(source: u32) -> &'static str {
    match source {
        INTERRUPT_EXTERNAL => "external",
        INTERRUPT_NMI => "nmi",
        _ => "unknown",
    }
}

fn irq_level_name(level: u32) -> &'static str {
    match level {
        IRQ_LEVEL_LOW => "low",
        IRQ_LEVEL_HIGH => "high",
        IRQ_LEVEL_PULSE => "pulse",
        _ => "unknown",
    }
}

fn irq_via_name(via: u32) -> &'static str {
    match via {
        IRQ_VIA_IOCTL => "ioctl",
        IRQ_VIA_IRQFD => "irqfd",
        _ => "unknown",
    }
}

fn short_hex(b: &[u8]) -> String {
    if b.len() <= 32 { hex(b) } else { format!("{}..({} bytes)", hex(&b[..32]), b.len()) }
}

/// `n` and `noun`, in the plural unless `n` is 1: `1 exit`, `2 exits`, `0 entries`: how
/// every count in vmrr's text output is written.
pub fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        return format!("1 {noun}");
    }
    let plural = match noun.strip_suffix('y') {
        Some(stem) if !stem.ends_with(['a', 'e', 'o', 'u']) => format!("{stem}ies"),
        _ if noun.ends_with(['s', 'x']) || noun.ends_with("ch") || noun.ends_with("sh") => {
            format!("{noun}es")
        }
        _ => format!("{noun}s"),
    };
    format!("{n} {plural}")
}

#[cfg(test)]
mod count_tests {
    #[test]
    fn counts_are_singular_only_for_one() {
        use super::count;
        assert_eq!(count(1, "exit"), "1 exit");
        assert_eq!(count(0, "exit"), "0 exits");
        assert_eq!(count(2, "entry"), "2 entries");
        assert_eq!(count(3, "key"), "3 keys");
        assert_eq!(count(2, "index"), "2 indexes");
        assert_eq!(count(1, "vCPU"), "1 vCPU");
    }
}

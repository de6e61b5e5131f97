//! The divergence report: where the replayed run departed from the recorded one, what was
//! recorded and what happened (as JSON in the trace's field names, and as a sentence with
//! device names), the console text before it, the last records that matched, and the
//! registers.

use std::collections::VecDeque;

use vmrr_engine::machine::{LiveExit, Machine};
use vmrr_format::{Body, Direction, Record, RecordBuf, describe};

use crate::recorded::RecordStream;
use crate::report::{ConsoleTail, Divergence, regs_json};

/// The live exit as JSON, in the trace's own field names (`vmrr inspect --json`).
pub(super) fn live_json(seq: u64, live: &LiveExit<'_>) -> serde_json::Value {
    let mut rec = Record::new(seq, 0, live.body);
    rec.regs = live.regs;
    describe::record_json(&rec)
}

/// What a divergence is, for [`build`].
pub(super) struct Found<'a> {
    /// The record that did not match.
    pub seq: u64,
    /// What differs, in the matcher's words.
    pub reason: String,
    /// The recorded exit, when the divergence is at one.
    pub recorded: Option<Body<'a>>,
    /// The exit the guest made instead, when it made one.
    pub live: Option<LiveExit<'a>>,
}

/// Builds the report of a divergence. Reads the recorded record again (the stream's
/// position is lost: the replay is over).
pub(super) fn build(
    m: &Machine,
    records: &mut RecordStream,
    history: &VecDeque<RecordBuf>,
    found: Found<'_>,
    after_input: Option<u64>,
) -> Divergence {
    let summary = summarize(m, found.recorded.as_ref(), found.live.as_ref().map(|l| &l.body), &found.reason);
    let port = match found.recorded.or(found.live.map(|l| l.body)) {
        Some(Body::Io(io)) => Some(io.port),
        _ => None,
    };
    Divergence {
        seq: found.seq,
        summary,
        console: console(m, port),
        reason: found.reason,
        after_input,
        expected: records.records_json(&[found.seq]).pop().unwrap_or(serde_json::Value::Null),
        actual: found.live.map_or(serde_json::Value::Null, |l| live_json(found.seq, &l)),
        last_matching: history.iter().map(|r| describe::record_json(&r.record())).collect(),
        registers: m.regs().map(|r| regs_json(&r)).unwrap_or(serde_json::Value::Null),
        cause: None,
        suspects: Vec::new(),
        why_none: None,
        search: None,
    }
}

/// Bytes as a person reads them: `'2'` for printable text, hex otherwise.
fn bytes(b: &[u8]) -> String {
    if !b.is_empty() && b.iter().all(|&c| c.is_ascii_graphic() || c == b' ') {
        format!("'{}'", String::from_utf8_lossy(b))
    } else if b.iter().all(|&c| c.is_ascii_graphic() || c.is_ascii_whitespace()) && !b.is_empty() {
        format!("{:?}", String::from_utf8_lossy(b))
    } else {
        format!("0x{}", describe::hex(b))
    }
}

/// Where an access went: `debugcon 0x402`, `port 0x5f0` when nothing claims it.
fn place(m: &Machine, b: &Body<'_>) -> String {
    match b {
        Body::Io(io) => match m.device_at_port(io.port) {
            Some(d) => format!("{d} {:#x}", io.port),
            None => format!("port {:#x}", io.port),
        },
        Body::Mmio(x) => match m.device_at_mmio(x.phys_addr) {
            Some(d) => format!("{d} at {:#x}", x.phys_addr),
            None => format!("MMIO {:#x}", x.phys_addr),
        },
        other => vmrr_format::kind::name(other.kind()).to_string(),
    }
}

/// What an exit did, as a phrase: `wrote '4' to debugcon 0x402`, `halted`.
fn did(m: &Machine, b: &Body<'_>) -> String {
    match b {
        Body::Io(io) if io.direction == Direction::Out => {
            format!("wrote {} to {}", bytes(io.data), place(m, b))
        }
        Body::Io(_) => format!("read {}", place(m, b)),
        Body::Mmio(x) if x.is_write => format!("wrote {} to {}", bytes(x.bytes()), place(m, b)),
        Body::Mmio(x) => format!("read {} bytes of {}", x.len, place(m, b)),
        Body::Hlt => "halted".into(),
        Body::Shutdown => "triple-faulted".into(),
        Body::InternalError(_) => "ended in a KVM internal error".into(),
        other => format!("made a {} exit", vmrr_format::kind::name(other.kind())),
    }
}

/// The divergence as one line a person reads.
fn summarize(m: &Machine, recorded: Option<&Body<'_>>, live: Option<&Body<'_>>, reason: &str) -> String {
    match (recorded, live) {
        (Some(Body::Io(r)), Some(Body::Io(l)))
            if r.port == l.port
                && r.direction == l.direction
                && r.direction == Direction::Out
                && r.data != l.data =>
        {
            format!("{} wrote {}, recorded {}", place(m, &Body::Io(*l)), bytes(l.data), bytes(r.data))
        }
        (Some(r), Some(l)) if r.kind() == l.kind() && matches!(r, Body::Io(_) | Body::Mmio(_)) => {
            format!("the guest {} as recorded, but {reason}", did(m, l))
        }
        (Some(r), Some(l)) if r.kind() == l.kind() => format!("the guest {}: {reason}", did(m, l)),
        (Some(r), Some(l)) => format!("the guest {}; the recording has: {}", did(m, l), did(m, r)),
        _ => reason.to_string(),
    }
}

/// The last line of the console the divergence concerns (the debug console for port
/// 0x402, else the serial console), or of whichever printed.
fn console(m: &Machine, port: Option<u16>) -> Option<ConsoleTail> {
    let debugcon = port == Some(vmrr_engine::devices::map::DEBUGCON);
    let pick =
        |d: bool| if d { ("debugcon", m.debugcon().captured()) } else { ("serial", m.serial().captured()) };
    let (device, text) = {
        let first = pick(debugcon);
        if first.1.is_empty() { pick(!debugcon) } else { first }
    };
    if text.is_empty() {
        return None;
    }
    let line_start =
        text[..text.len().saturating_sub(1)].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let line = &text[line_start..];
    let line = &line[line.len().saturating_sub(160)..];
    Some(ConsoleTail { device: device.into(), text: String::from_utf8_lossy(line).into_owned() })
}

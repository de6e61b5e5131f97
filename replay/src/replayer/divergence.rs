//! The divergence report: where the replayed run departed from the recorded one, what was
//! recorded and what happened, the last records that matched, and the registers.

use std::collections::VecDeque;

use vmrr_engine::machine::{LiveExit, Machine};
use vmrr_format::{Record, RecordBuf, describe};

use crate::recorded::RecordStream;
use crate::report::{Divergence, regs_json};

/// The live exit as JSON, in the trace's own field names (`vmrr inspect --json`).
pub(super) fn live_json(seq: u64, live: &LiveExit<'_>) -> serde_json::Value {
    let mut rec = Record::new(seq, 0, live.body);
    rec.regs = live.regs;
    describe::record_json(&rec)
}

/// Builds the report of a divergence at record `seq`. Reads the recorded record again
/// (the stream's position is lost: the replay is over).
pub(super) fn build(
    m: &Machine,
    records: &mut RecordStream,
    history: &VecDeque<RecordBuf>,
    seq: u64,
    reason: String,
    actual: Option<serde_json::Value>,
    after_input: Option<u64>,
) -> Divergence {
    Divergence {
        seq,
        reason,
        after_input,
        expected: records.records_json(&[seq]).pop().unwrap_or(serde_json::Value::Null),
        actual: actual.unwrap_or(serde_json::Value::Null),
        last_matching: history.iter().map(|r| describe::record_json(&r.record())).collect(),
        registers: m.regs().map(|r| regs_json(&r)).unwrap_or(serde_json::Value::Null),
    }
}

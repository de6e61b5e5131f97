//! The report of a reproduced failure: KVM's data, the instruction decoded, what its memory
//! operand points at, the registers, and the exits that led there.

use std::collections::VecDeque;

use vmrr_engine::GuestAddress;
use vmrr_engine::machine::Machine;
use vmrr_format::RecordBuf;
use vmrr_format::describe::{hex, record_json};

use crate::report::{FailureReport, regs_json};

/// The report of the fatal exit `rec` the machine just made again, `history` the exits
/// before it.
pub(super) fn report(m: &Machine, history: &VecDeque<RecordBuf>, rec: &RecordBuf) -> FailureReport {
    let mut exits_before: Vec<serde_json::Value> = history.iter().map(|h| record_json(&h.record())).collect();
    exits_before.push(record_json(&rec.record()));
    decode(m, exits_before)
}

/// The report of the fatal exit the machine is at; `exits_before` are the records that
/// led there, as JSON, oldest first.
pub(crate) fn decode(m: &Machine, exits_before: Vec<serde_json::Value>) -> FailureReport {
    let r = m.fatal_report();
    let memory = r.memory_operand.map(|a| {
        let mut b = [0u8; 16];
        match m.memory().read(GuestAddress(a), &mut b) {
            Ok(()) => hex(&b),
            Err(_) => "mmio (no memory slot)".to_string(),
        }
    });
    FailureReport {
        exit: vmrr_format::kind::kvm_exit_name(r.exit_reason).to_string(),
        suberror: r.suberror,
        flags: r.flags,
        rip: r.rip,
        insn_bytes: hex(r.insn()),
        insn_size: r.insn_size,
        disassembly: r.disassembly.clone(),
        insn_len: r.insn_len,
        memory_operand: r.memory_operand,
        memory,
        registers: regs_json(&r.regs),
        exits_before,
        symbol: None,
        register_symbols: std::collections::BTreeMap::new(),
    }
}

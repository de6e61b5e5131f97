//! Running the failure-point snapshot: a recording that ended in a fatal exit also holds a
//! snapshot taken at that exit (the vCPU as KVM reported it, the memory as it was).
//! Restored on its own and run, it reproduces the failure at once when this host's KVM
//! still fails on that instruction, whatever happened on the way to it.

use std::time::Duration;

use vmrr_engine::devices::console::Console;
use vmrr_engine::machine::watchdog::StallWatch;
use vmrr_engine::snapshot::{self, snapshot_dir};
use vmrr_format::overview::{CheckpointMark, TraceOverview};
use vmrr_format::{Body, TraceReader};

use crate::error::ReplayError;
use crate::matching::{Verdict, match_exit, match_regs};
use crate::options::Options;
use crate::report::FailurePoint;
use crate::source::Source;

/// How long the restored guest may run without an exit before the failure point counts
/// as not reproduced (it should fail at its first instruction).
const STALL: Duration = Duration::from_secs(10);

/// Restores the failure-point snapshot `mark` and runs it to its first exit.
///
/// # Errors
/// The snapshot or the trace cannot be read, or KVM failed.
pub fn run(
    src: &Source,
    f: &TraceOverview,
    opts: &Options,
    mark: CheckpointMark,
) -> Result<FailurePoint, ReplayError> {
    let root = src.snapshots.as_ref().ok_or_else(|| {
        ReplayError::Unreplayable(format!("the failure-point snapshot {} is missing", mark.snapshot_id))
    })?;
    let chain = snapshot::load_chain(&snapshot_dir(root, mark.snapshot_id), opts.max_mem)?;
    if chain.last().is_some_and(|l| l.state.trace_id != f.trace_id) {
        return Err(ReplayError::Unreplayable(format!(
            "snapshot {} belongs to another trace",
            mark.snapshot_id
        )));
    }
    let mut m = snapshot::restore(&chain, Console::capture_only(), Console::capture_only(), false)?;
    let vcpus = m.vcpu_count();
    // The vCPU that failed (several vCPUs: `failure.vcpu`) and its fatal exit (`failure.seq`;
    // with one vCPU, the last exit).
    let note = |k: &str| f.annotations.iter().rev().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let vcpu = match note("failure.vcpu") {
        None => 0,
        Some(v) => v.parse::<u32>().ok().filter(|v| *v < vcpus).ok_or_else(|| {
            ReplayError::Unreplayable(format!(
                "annotation failure.vcpu = {v:?} names no vCPU of the failure point's {vcpus}"
            ))
        })?,
    };
    m.focus(vcpu).map_err(|e| ReplayError::Unreplayable(e.to_string()))?;
    let Some(last) = note("failure.seq").and_then(|s| s.parse::<u64>().ok()).or(f.last_exit_seq) else {
        return Err(ReplayError::Unreplayable("the trace records no exit".into()));
    };
    let mut reader = TraceReader::open(&src.trace)?;
    reader.seek_seq(last)?;
    let recorded = match reader.next_record() {
        Some(Ok(r)) if r.seq == last => vmrr_format::RecordBuf::new(&r).map_err(ReplayError::Copy)?,
        Some(Err(e)) => return Err(e.into()),
        _ => return Err(ReplayError::Unreplayable(format!("record {last} cannot be read again"))),
    };
    let recorded = recorded.record();
    let stall = StallWatch::start(STALL)
        .map_err(|source| ReplayError::Os { what: "starting the stall guard", source })?;
    let ran = loop {
        if m.run_to_exit()? {
            stall.progress();
            break true;
        }
        if stall.stalled() {
            break false;
        }
    };
    drop(stall);
    let snapshot = mark.snapshot_id;
    if !ran {
        return Ok(FailurePoint {
            snapshot,
            vcpu,
            vcpus,
            reproduced: false,
            insn_bytes_match: false,
            registers_match: false,
            detail: format!("the restored guest made no exit within {} s", STALL.as_secs()),
            failure: None,
            live_exit: None,
            system_map_warning: None,
        });
    }
    let live = m.exit();
    let same_kind = live.body.kind() == recorded.body.kind();
    let verdict = match_exit(&recorded.body, &live.body);
    let insn_bytes_match = match (&recorded.body, &live.body) {
        (Body::InternalError(_), Body::InternalError(_)) => verdict == Verdict::Match,
        _ => same_kind,
    };
    let registers_match = match_regs(recorded.regs, live.regs, &|rip| m.instruction_len_at(rip)).is_ok();
    let reproduced = same_kind && verdict == Verdict::Match;
    let detail = match &verdict {
        Verdict::Match => format!(
            "the restored guest failed again at once: {}",
            vmrr_format::kind::kvm_exit_name(u32::from(live.body.kind()))
        ),
        Verdict::Mismatch(why) => format!("the restored guest did not fail as recorded: {why}"),
        Verdict::Partial => "the restored guest made a partial string I/O exit".into(),
    };
    let failure = reproduced
        .then(|| crate::replayer::failure_report(&m, vec![vmrr_format::describe::record_json(&recorded)]));
    let live_exit = Some(vmrr_format::kind::name(live.body.kind()).to_string());
    // The failure point holds the kernel as it ran: the map must name its banner.
    let system_map_warning =
        opts.system_map.as_ref().and_then(|s| s.check_banner(|at, b| m.read_linear(at, b).is_ok()));
    Ok(FailurePoint {
        snapshot,
        vcpu,
        vcpus,
        reproduced,
        insn_bytes_match,
        registers_match,
        detail,
        failure,
        live_exit,
        system_map_warning,
    })
}

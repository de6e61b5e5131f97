//! A repro's verdict: what a corpus run reports for it, from one replay's report.
//!
//! A replay says how its path ended (`completed`, `diverged`) and whether the recorded
//! failure happened again. A team replaying its customers' repros asks one more thing:
//! when a recorded failure did not happen again, did the guest get to the failing
//! instruction and run it without failing (a KVM or VMM fix works: `no_longer_fails`), or
//! did the replay go somewhere else (`diverged`)?

use crate::report::Report;
pub use crate::report::Verdict;

/// Exit kinds that end a guest (a recorded failure of another kind is still a failure).
const FATAL_KINDS: [&str; 3] = ["internal_error", "fail_entry", "shutdown"];

/// Whether an exit of kind `kind` (as `vmrr inspect` names kinds) ends the guest.
pub fn is_fatal(kind: &str) -> bool {
    FATAL_KINDS.contains(&kind)
}

/// The verdict of `report`, a replay of a trace whose recorded run ended in a failure at
/// exit record `failed_at` (`None`: no recorded failure, or a replay stopped early with
/// `--goto`, which does not reach it).
pub fn verdict(report: &Report, failed_at: Option<u64>) -> Verdict {
    if report.outcome == crate::report::Outcome::Reproduced {
        return Verdict::Reproduced;
    }
    let Some(fatal) = failed_at else {
        return match report.divergence {
            Some(_) => Verdict::Diverged,
            None => Verdict::Completed,
        };
    };
    // The path reached the failing exit, everything before it matched, and the guest made
    // a different exit there that does not end it.
    let ran_past_on_path = report.divergence.as_ref().is_some_and(|d| {
        d.seq == fatal
            && d.actual.get("kind").and_then(|k| k.as_str()).is_some_and(|k| !FATAL_KINDS.contains(&k))
    });
    // Restored at the failing instruction, the guest ran it without a fatal exit.
    let ran_past_at_point = report
        .failure_point
        .as_ref()
        .is_some_and(|p| !p.reproduced && p.live_exit.as_deref().is_none_or(|k| !FATAL_KINDS.contains(&k)));
    if ran_past_on_path || ran_past_at_point { Verdict::NoLongerFails } else { Verdict::Diverged }
}

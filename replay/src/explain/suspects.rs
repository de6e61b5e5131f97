//! Instructions whose results bypass the trace, found while single-stepping, and what to
//! say about each.

use std::collections::BTreeMap;

use vmrr_engine::disasm::{Decoded, TIME_MSRS, Unrecorded};

use crate::report::Suspect;

/// What the recording host let the guest see.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordingHost {
    /// The recording host applied the vCPU's CPUID set to the guest's CPUID instruction
    /// (`kvm.cpuid_enforced`; `None` when the trace does not say).
    pub cpuid_enforced: Option<bool>,
}

/// Collects suspects while stepping.
#[derive(Debug, Default)]
pub struct Collector {
    found: BTreeMap<(u64, String), Suspect>,
    host: RecordingHost,
}

impl Collector {
    /// A collector for a trace recorded on `host`.
    pub fn new(host: RecordingHost) -> Self {
        Collector { found: BTreeMap::new(), host }
    }

    /// Notes that `insn` ran at `rip` at step `step`; `ecx` is ECX when it ran (the MSR an
    /// `rdmsr` read).
    pub fn saw(&mut self, rip: u64, insn: &Decoded, ecx: u32, step: u64) {
        let Some(source) = insn.unrecorded else { return };
        let why = match source {
            Unrecorded::MsrRead if !TIME_MSRS.contains(&ecx) => return,
            Unrecorded::Cpuid if self.host.cpuid_enforced != Some(false) => return,
            _ => why(source, ecx),
        };
        let e = self.found.entry((rip, insn.text.clone())).or_insert_with(|| Suspect {
            rip: format!("{rip:#x}"),
            instruction: insn.text.clone(),
            count: 0,
            why,
            source,
            last_step: step,
            symbol: None,
        });
        e.count += 1;
        e.last_step = step;
    }

    /// Whether anything was found.
    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    /// The suspects, most likely first: by kind (the TSC and random numbers before CPUID),
    /// then the one that ran last.
    pub fn into_suspects(self) -> Vec<Suspect> {
        let mut v: Vec<Suspect> = self.found.into_values().collect();
        v.sort_by_key(|s| (s.source, std::cmp::Reverse(s.last_step)));
        v
    }
}

/// What the cause adds when the recording host let the guest see a feature the
/// deterministic profile hides: said once, in the cause, with what to do about it.
fn cpuid_note(host: RecordingHost) -> &'static str {
    if host.cpuid_enforced == Some(false) {
        ", and the recording host showed it to the guest (it does not enforce CPUID masks): record and replay on a host that does (VMX/SVM), or expect this divergence"
    } else {
        ""
    }
}

/// One sentence: why this kind of instruction's result differs between runs.
fn why(source: Unrecorded, ecx: u32) -> String {
    match source {
        Unrecorded::Tsc => "the TSC does not exit under KVM, so replay reads another value".into(),
        Unrecorded::Random => "RDRAND and RDSEED do not exit under KVM, so replay gets other random numbers".into(),
        Unrecorded::TscAux => "RDPID returns IA32_TSC_AUX, which the host sets and which does not exit".into(),
        Unrecorded::Pmc => "RDPMC reads a performance counter, which does not exit".into(),
        Unrecorded::MsrRead => format!("KVM answers RDMSR of {ecx:#x} in the kernel from the host's clock"),
        Unrecorded::Cpuid => {
            "CPUID returns the host's values on a host that does not enforce the vCPU's CPUID set, as the recording host did not".into()
        }
    }
}

/// What a suspect's instruction reads, as the cause sentence names it.
pub fn reads(s: &Suspect) -> &'static str {
    match s.source {
        Unrecorded::Tsc => "read the TSC",
        Unrecorded::Random => "read a hardware random number",
        Unrecorded::TscAux => "read IA32_TSC_AUX",
        Unrecorded::Pmc => "read a performance counter",
        Unrecorded::MsrRead => "read a time MSR",
        Unrecorded::Cpuid => "ran CPUID",
    }
}

/// What the value it reads does under KVM, for the cause sentence.
pub fn bypasses(s: &Suspect, host: RecordingHost) -> String {
    match s.source {
        Unrecorded::Tsc => format!("the TSC does not exit under KVM{}", cpuid_note(host)),
        Unrecorded::Random => format!("RDRAND and RDSEED do not exit under KVM{}", cpuid_note(host)),
        Unrecorded::Cpuid => {
            "the recording host did not apply the vCPU's CPUID set, so CPUID returned that host's values"
                .into()
        }
        _ => "its result does not come through an exit".into(),
    }
}

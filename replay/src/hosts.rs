//! The recording host against this one: every difference or risk the replay should know
//! of, as one line each of the report's `notes`.

use vmrr_format::overview::TraceOverview;

/// Notes comparing the recording host (the trace's `host.*` and `kvm.*` annotations) with
/// this one.
pub fn notes(f: &TraceOverview) -> Vec<String> {
    let here = vmrr_engine::record::prelude::this_host();
    let there = |k: &str| f.annotation(k);
    let mine = |k: &str| here.iter().rev().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let mut notes = Vec::new();
    // One note for the two hosts' CPUID masks.
    match (there("kvm.cpuid_enforced") == Some("false"), mine("kvm.cpuid_enforced") == Some("false")) {
        (true, true) => notes.push(
            "recorded on a host that does not enforce CPUID masks, and replayed on one: the guest sees the host's CPUID, TSC and RDRAND, whose values no trace holds"
                .to_string(),
        ),
        (true, false) => notes.push(
            "recorded on a host that does not enforce CPUID masks: the guest could see the TSC and RDRAND, whose values no trace holds"
                .to_string(),
        ),
        (false, true) => notes.push(
            "this host does not enforce CPUID masks: the replayed guest sees this host's CPUID, not the recorded set".to_string(),
        ),
        (false, false) => {}
    }
    for (key, what) in [("host.cpu", "CPU"), ("host.kernel", "kernel")] {
        if let (Some(a), Some(b)) = (there(key), mine(key)) {
            if a != b {
                notes.push(format!("recorded on {what} {a:?}, replayed on {b:?}"));
            }
        }
    }
    for (key, what) in [("kvm.rip_after_io", "port I/O"), ("kvm.rip_after_mmio", "MMIO")] {
        if let (Some(a), Some(b)) = (there(key), mine(key)) {
            if a != b {
                let at = |v: &str| if v == "true" { "past" } else { "at" };
                notes.push(format!(
                    "the recording host reports RIP {} {what} instructions, this host {} them: replay normalises the difference",
                    at(a),
                    at(b)
                ));
            }
        }
    }
    if there("kvm.cpuid_enforced").is_none() {
        notes.push("the trace does not say whether its host enforced CPUID masks (recorded by an older vmrr or another recorder)".into());
    }
    notes
}

/// Why the recorded path cannot replay deterministically, whatever host replays it (empty
/// when nothing in the recording rules it out): each reason one sentence.
pub fn path_limits(f: &TraceOverview) -> Vec<String> {
    let mut why = Vec::new();
    if let Some(n) = f.annotation("vmrr.vcpus").filter(|n| *n != "1") {
        let pmu = match f.annotation("host.pmu") {
            Some(p) => format!("host.pmu: {p}"),
            None => "the trace does not say whether the host had one".to_string(),
        };
        why.push(format!(
            "the machine ran {n} vCPUs: what they did to shared memory between exits (locks, counters) happened at instants no exit records, and no instruction counter placed them ({pmu})"
        ));
    }
    if let Some(n) = f.annotation("vmrr.device_threads").filter(|n| *n != "0") {
        why.push(format!(
            "{n} device thread(s) wrote guest memory and raised interrupts while the vCPUs ran, at instants no exit records (an ioeventfd's doorbell does not exit, an irqfd's interrupt is delivered inside KVM)"
        ));
    }
    if f.annotation("vmrr.irqchip") == Some("kernel") {
        why.push(
            "the machine ran on KVM's in-kernel irqchip and PIT: they deliver interrupts (timer ticks) inside KVM at instants no exit records, so the guest takes them elsewhere on replay"
                .to_string(),
        );
    }
    why
}

//! What every trace says about where it was recorded: the host's kernel and CPU, KVM's
//! capabilities, and the facts vmrr measured about this host's KVM (where RIP points at
//! exits, whether CPUID masks hold). Replay compares them with its own host's, so a
//! difference becomes a note in its report. Recorded as `host.*` and `kvm.*` annotations
//! at the start of the trace, by vmrr's own machine and by any VMM that embeds the
//! recorder.

use crate::kvm::caps::HostCaps;

/// Annotations describing this host: `host.kernel`, `host.cpu`, `kvm.caps`,
/// `kvm.memory_ioctl`, and the measured `kvm.rip_after_io`, `kvm.rip_after_mmio`,
/// `kvm.cpuid_enforced`. `region2` says whether memory slots use
/// `KVM_SET_USER_MEMORY_REGION2`.
pub fn host_annotations(caps: &HostCaps, region2: bool) -> Vec<(String, String)> {
    let mut a: Vec<(String, String)> = Vec::new();
    let mut put = |k: &str, v: String| a.push((k.to_string(), v));
    put("host.kernel", read_trim("/proc/sys/kernel/osrelease"));
    put("host.cpu", cpu_model());
    put("kvm.caps", caps.describe());
    put("host.pmu", caps.describe_pmu());
    put(
        "kvm.memory_ioctl",
        if region2 { "KVM_SET_USER_MEMORY_REGION2" } else { "KVM_SET_USER_MEMORY_REGION" }.into(),
    );
    if let Ok(f) = crate::kvm::probe::host_facts() {
        put("kvm.rip_after_io", f.rip.io_after.to_string());
        put("kvm.rip_after_mmio", f.rip.mmio_after.to_string());
        put("kvm.cpuid_enforced", f.cpuid_enforced.to_string());
    }
    a
}

/// This host's annotations, as a recording on it would start with (without the memory
/// ioctl, which depends on a VM). Opens `/dev/kvm` to read the capabilities; without it,
/// only the host's kernel and CPU.
pub fn this_host() -> Vec<(String, String)> {
    match crate::kvm::system::open_kvm() {
        Ok(kvm) => {
            let mut a = host_annotations(&HostCaps::query(&kvm), true);
            a.retain(|(k, _)| k != "kvm.memory_ioctl");
            a
        }
        Err(_) => vec![
            ("host.kernel".into(), read_trim("/proc/sys/kernel/osrelease")),
            ("host.cpu".into(), cpu_model()),
        ],
    }
}

fn read_trim(p: &str) -> String {
    std::fs::read_to_string(p).map(|s| s.trim().to_string()).unwrap_or_default()
}

/// The host CPU model name (`model name` of `/proc/cpuinfo`).
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default()
}

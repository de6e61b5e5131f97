//! Smoke: every built-in guest runs to its expected outcome on real KVM.

use vmrr_engine::devices::console::Console;
use vmrr_engine::guests::{self, GuestParams};
use vmrr_engine::machine::{Machine, Outcome};
use vmrr_engine::testing::require_kvm;
use vmrr_engine::vm::{Vm, VmConfig};

fn run(name: &str, iterations: Option<u64>) -> (vmrr_engine::machine::RunSummary, String) {
    let vm = Vm::new(VmConfig::default()).expect("vm");
    let mut m = Machine::new(vm, Console::capture_only(), Console::capture_only()).expect("machine");
    let image = guests::builtin(name, &GuestParams { iterations, mem_bytes: 128 << 20 }).expect("image");
    m.boot(&image).expect("boot");
    m.limits.max_duration = Some(std::time::Duration::from_secs(60));
    let s = m.run().expect("run");
    (s, String::from_utf8_lossy(&m.serial.captured()).into_owned())
}

#[test]
fn smoke_all() {
    if !require_kvm() {
        return;
    }
    for (name, it) in [
        ("hello", None),
        ("hello-long", None),
        ("pio-storm", Some(1000)),
        ("mmio-storm", Some(1000)),
        ("entropy", None),
        ("interrupts", Some(5)),
        ("memory-churn", Some(2)),
        ("emulation-failure", None),
    ] {
        let t = std::time::Instant::now();
        let (s, out) = run(name, it);
        eprintln!(
            "{name}: {:?} exits={} irqs={} in {:?}\n{out}",
            s.outcome.name(),
            s.exits,
            s.interrupts,
            t.elapsed()
        );
        if let Some(r) = s.outcome.report() {
            eprintln!("{r}");
        }
        assert!(
            matches!(s.outcome, Outcome::GuestExit(0) | Outcome::EmulationFailure(_)),
            "{name}: {:?}",
            s.outcome.name()
        );
    }
}

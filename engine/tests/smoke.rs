//! Smoke: every built-in guest runs to its expected outcome on real KVM.

use vmrr_engine::devices::console::Console;
use vmrr_engine::guests::{self, GuestParams};
use vmrr_engine::kvm::vm::{Vm, VmConfig};
use vmrr_engine::machine::{Limits, Machine, Outcome};
use vmrr_engine::testing::require_kvm;

fn run(name: &str, iterations: Option<u64>) -> (vmrr_engine::machine::RunSummary, String) {
    let vm = Vm::new(VmConfig::default()).expect("vm");
    let mut m = Machine::new(vm, Console::capture_only(), Console::capture_only()).expect("machine");
    let image = guests::builtin(name, &GuestParams { iterations, mem_bytes: 128 << 20 }).expect("image");
    m.boot(&image).expect("boot");
    m.set_limits(Limits { max_duration: Some(std::time::Duration::from_secs(60)), ..m.limits() });
    let s = m.run().expect("run");
    (s, String::from_utf8_lossy(&m.serial().captured()).into_owned())
}

#[test]
fn every_builtin_guest_reaches_its_outcome_through_the_library_api() {
    if !require_kvm() {
        return;
    }
    let expect: [(&str, Option<u64>, &str); 8] = [
        ("hello", None, vmrr_engine::guests::HELLO_TEXT),
        ("hello-long", None, vmrr_engine::guests::HELLO_LONG_TEXT),
        ("pio-storm", Some(1000), ""),
        ("mmio-storm", Some(1000), ""),
        ("entropy", None, "entropy digest: "),
        ("interrupts", Some(3), "timer interrupts: 0000000000000003\n"),
        ("memory-churn", Some(1), "memory-churn checksum: "),
        ("emulation-failure", None, "fib(90) = 0x27f80ddaa1ba7878\n"),
    ];
    for (name, it, text) in expect {
        let (s, out) = run(name, it);
        assert!(out.starts_with(text), "{name}: {out:?}");
        match name {
            "emulation-failure" => {
                let Outcome::EmulationFailure(r) = &s.outcome else { panic!("{name}: {}", s.outcome.name()) };
                assert_eq!(r.disassembly.as_deref(), Some("popcnt rax,[rdi]"));
                assert_eq!(r.insn_len, Some(5));
                assert_eq!(r.memory_operand, Some(vmrr_engine::devices::map::MMIO_UNCLAIMED));
            }
            _ => assert!(matches!(s.outcome, Outcome::GuestExit(0)), "{name}: {}", s.outcome.name()),
        }
        if let Some(n) = it.filter(|_| name.ends_with("storm")) {
            assert_eq!(s.exits, n + 1, "{name}");
        }
        if name == "interrupts" {
            assert_eq!(s.interrupts, 3);
        }
    }
}

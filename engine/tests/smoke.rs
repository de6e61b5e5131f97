//! Smoke: every built-in guest that runs on one vCPU (the table names each) runs to its
//! expected outcome on real KVM.

use vmrr_engine::devices::console::Console;
use vmrr_engine::guests::{self, GuestParams};
use vmrr_engine::kvm::vm::{Vm, VmConfig};
use vmrr_engine::machine::{Limits, Machine, Outcome};
use vmrr_engine::testing::require_kvm;

fn run(
    name: &str,
    iterations: Option<u64>,
    max_exits: Option<u64>,
) -> (vmrr_engine::machine::RunSummary, String) {
    let vm = Vm::new(VmConfig::default()).expect("vm");
    let mut m = Machine::new(vm, Console::capture_only(), Console::capture_only()).expect("machine");
    let image =
        guests::builtin(name, &GuestParams { iterations, mem_bytes: 128 << 20, vcpus: 1 }).expect("image");
    m.boot(&image).expect("boot");
    // The time limit is a hang guard: every guest here ends on its own or at `max_exits`.
    m.set_limits(Limits { max_duration: Some(std::time::Duration::from_secs(600)), max_exits });
    let s = m.run().expect("run");
    (s, String::from_utf8_lossy(&m.serial().captured()).into_owned())
}

/// What a built-in guest does when it runs alone.
enum Ends {
    /// Exits with status 0, having printed text starting with this.
    Exits(&'static str),
    /// Fails to emulate `popcnt` on MMIO after printing text starting with this.
    EmulationFailure(&'static str),
    /// Runs forever: ended by the exit limit.
    AtTheLimit,
}

#[test]
fn every_builtin_guest_reaches_its_outcome_through_the_library_api() {
    if !require_kvm() {
        return;
    }
    let expect: [(&str, Option<u64>, Option<u64>, Ends); 14] = [
        ("hello", None, None, Ends::Exits(vmrr_engine::guests::HELLO_TEXT)),
        ("hello-long", None, None, Ends::Exits(vmrr_engine::guests::HELLO_LONG_TEXT)),
        ("pio-storm", Some(1000), None, Ends::Exits("")),
        ("mmio-storm", Some(1000), None, Ends::Exits("")),
        ("entropy", None, None, Ends::Exits("entropy digest: ")),
        ("interrupts", Some(3), None, Ends::Exits("timer interrupts: 0000000000000003\n")),
        ("memory-churn", Some(1), None, Ends::Exits("memory-churn checksum: ")),
        ("emulation-failure", None, None, Ends::EmulationFailure("fib(90) = 0x27f80ddaa1ba7878\n")),
        ("tsc", Some(2), None, Ends::Exits("tsc 0x")),
        ("tsc-fail", Some(2), None, Ends::EmulationFailure("tsc 0x")),
        ("dirty-pages", Some(16), Some(40), Ends::AtTheLimit),
        ("dirty-paced", Some(16), Some(40), Ends::AtTheLimit),
        ("rewrite-window", Some(16), Some(40), Ends::AtTheLimit),
        ("smp-counter", Some(20), None, Ends::Exits("cpu 0: 20\ntotal: 20 ok\n")),
    ];
    let mut named: Vec<&str> = expect.iter().map(|e| e.0).collect();
    // Guests that need several vCPUs are run by the multi-vCPU tests.
    // `virtqueue` needs KVM's irqchip and its queue device: tests/virtqueue.rs runs it.
    let mut builtins: Vec<&str> = guests::BUILTINS
        .iter()
        .filter(|b| b.min_vcpus == 1 && b.name != "virtqueue")
        .map(|b| b.name)
        .collect();
    named.sort_unstable();
    builtins.sort_unstable();
    assert_eq!(named, builtins, "the table covers every built-in guest");
    for (name, it, max_exits, ends) in expect {
        let (s, out) = run(name, it, max_exits);
        match ends {
            Ends::Exits(text) => {
                assert!(out.starts_with(text), "{name}: {out:?}");
                assert!(matches!(s.outcome, Outcome::GuestExit(0)), "{name}: {}", s.outcome.name());
            }
            Ends::EmulationFailure(text) => {
                assert!(out.starts_with(text), "{name}: {out:?}");
                let Outcome::EmulationFailure(r) = &s.outcome else { panic!("{name}: {}", s.outcome.name()) };
                assert_eq!(r.disassembly.as_deref(), Some("popcnt rax,[rdi]"), "{name}");
                assert_eq!(r.insn_len, Some(5), "{name}");
                assert_eq!(r.memory_operand, Some(vmrr_engine::devices::map::MMIO_UNCLAIMED), "{name}");
            }
            Ends::AtTheLimit => {
                assert!(matches!(s.outcome, Outcome::MaxExits), "{name}: {}", s.outcome.name());
                assert_eq!(Some(s.exits), max_exits, "{name}");
            }
        }
        if let Some(n) = it.filter(|_| name.ends_with("storm")) {
            assert_eq!(s.exits, n + 1, "{name}");
        }
        if name == "interrupts" {
            assert_eq!(s.interrupts, 3);
        }
        if name == "tsc" {
            assert_eq!(out.lines().count(), 2, "{name}: one line per iteration: {out:?}");
        }
    }
}

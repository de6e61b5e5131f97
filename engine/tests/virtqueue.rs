//! The `virtqueue` guest and its queue device on real KVM: every request is served by the
//! device thread (ioeventfd in, irqfd out), the events it reports come in order (each
//! round's guest write, then its interrupt), its writes are marked for snapshots, and a
//! machine without KVM's irqchip gets no queue device.

use std::sync::{Arc, Mutex};

use vmrr_engine::devices::console::Console;
use vmrr_engine::guests::virtqueue::{BUF_ADDR, GSI, NOTIFY_PORT, len_of, pattern};
use vmrr_engine::kvm::irqchip::IrqchipKind;
use vmrr_engine::machine::queue_device::{DeviceEvents, QueueDeviceError};
use vmrr_engine::machine::{Machine, Outcome};
use vmrr_engine::page::PAGE_SIZE;
use vmrr_engine::session::{ConfigError, GuestSpec, SessionConfig, SessionError};
use vmrr_engine::testing::require_kvm;

fn config(rounds: u64, vcpus: u32, irqchip: Option<IrqchipKind>) -> SessionConfig {
    SessionConfig {
        guest: GuestSpec::Builtin { name: "virtqueue".into(), iterations: Some(rounds) },
        mem_bytes: 16 << 20,
        cpuid: Default::default(),
        limits: vmrr_engine::machine::Limits { max_exits: None, max_duration: None },
        dirty_log: false,
        vcpus,
        irqchip,
    }
}

fn build(rounds: u64, vcpus: u32) -> Machine {
    config(rounds, vcpus, Some(IrqchipKind::Kernel))
        .build(Console::capture_only(), Console::capture_only())
        .expect("machine")
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Write { gpa: u64, data: Vec<u8> },
    Irq { gsi: u32 },
}

/// Keeps every event, for the test to read after the run.
struct Collect(Arc<Mutex<Vec<Event>>>);

impl DeviceEvents for Collect {
    fn guest_write(&mut self, gpa: u64, data: &[u8]) -> Result<(), vmrr_format::WriteError> {
        self.0.lock().unwrap().push(Event::Write { gpa, data: data.to_vec() });
        Ok(())
    }

    fn irq_line(&mut self, gsi: u32) -> Result<(), vmrr_format::WriteError> {
        self.0.lock().unwrap().push(Event::Irq { gsi });
        Ok(())
    }
}

fn expected(rounds: u32) -> Vec<Event> {
    (1..=rounds)
        .flat_map(|r| {
            let data = (0..len_of(r)).map(|i| pattern(r, i)).collect();
            [Event::Write { gpa: BUF_ADDR, data }, Event::Irq { gsi: GSI }]
        })
        .collect()
}

fn serial_says_every_round_ok(m: &Machine, rounds: u32) {
    let text = String::from_utf8_lossy(&m.serial().captured()).into_owned();
    let want: String = (1..=rounds).map(|r| format!("virtqueue: round {r} ok\n")).collect();
    assert_eq!(text, want);
}

#[test]
fn each_round_is_one_write_then_one_interrupt_in_order() {
    if !require_kvm() {
        return;
    }
    let rounds = 12;
    let mut m = build(u64::from(rounds), 1);
    let seen = Arc::new(Mutex::new(Vec::new()));
    assert!(m.attach_device_events(Box::new(Collect(Arc::clone(&seen)))).is_none());
    // Pages written from userspace before the run (the loader's) are not the device's.
    for s in m.memory().slots() {
        let _ = s.take_written();
    }
    let summary = m.run().expect("run");
    assert!(matches!(summary.outcome, Outcome::GuestExit(0)), "{:?}", summary.outcome);
    serial_says_every_round_ok(&m, rounds);
    assert_eq!(*seen.lock().unwrap(), expected(rounds));
    let counts = m.queue_counts().expect("the machine has a queue device");
    assert_eq!(counts.served.load(std::sync::atomic::Ordering::Relaxed), u64::from(rounds));
    assert_eq!(counts.refused.load(std::sync::atomic::Ordering::Relaxed), 0);

    // The device's writes are marked for snapshots (KVM's dirty log does not see them).
    let bits = m.memory().slots()[0].take_written().expect("the device wrote guest memory");
    let end = BUF_ADDR + u64::from((1..=rounds).map(len_of).max().unwrap_or(0));
    for page in BUF_ADDR / PAGE_SIZE..end.div_ceil(PAGE_SIZE) {
        let word = bits[usize::try_from(page / 64).unwrap()];
        assert_ne!(word & (1 << (page % 64)), 0, "page {page:#x} is marked written");
    }

    // Events go where they are attached now; the previous sink comes back.
    assert!(m.detach_device_events().is_some());
    assert!(m.detach_device_events().is_none());
}

#[test]
fn two_vcpus_the_bootstrap_processor_does_the_work() {
    if !require_kvm() {
        return;
    }
    let mut m = build(5, 2);
    let summary = m.run().expect("run");
    assert!(matches!(summary.outcome, Outcome::GuestExit(0)), "{:?}", summary.outcome);
    serial_says_every_round_ok(&m, 5);
}

#[test]
fn a_run_stopped_midway_joins_the_device_thread_and_the_next_run_serves_again() {
    if !require_kvm() {
        return;
    }
    // Ended by an exit limit partway (each round prints ~22 characters: ~44 exits); the
    // device thread is joined by then, and a second run starts a new one that serves the
    // rest.
    let mut m = build(6, 1);
    m.set_max_exits(Some(80));
    let first = m.run().expect("first run");
    assert!(matches!(first.outcome, Outcome::MaxExits), "{:?}", first.outcome);
    m.set_max_exits(None);
    let second = m.run().expect("second run");
    assert!(matches!(second.outcome, Outcome::GuestExit(0)), "{:?}", second.outcome);
    serial_says_every_round_ok(&m, 6);
}

#[test]
fn without_kvms_irqchip_there_is_no_queue_device() {
    // Refused before KVM is touched: no KVM needed.
    let e = config(1, 1, Some(IrqchipKind::User)).prepare().expect_err("refused");
    assert!(matches!(e, ConfigError::Irqchip(_)), "{e}");
    assert!(e.to_string().contains("--irqchip kernel"), "{e}");
    // Unasked, the guest gets KVM's irqchip.
    assert_eq!(config(1, 1, None).irqchip(), IrqchipKind::Kernel);
    if !require_kvm() {
        return;
    }
    let e = config(1, 1, Some(IrqchipKind::User))
        .build(Console::capture_only(), Console::capture_only())
        .expect_err("refused");
    assert!(matches!(e, SessionError::Config(ConfigError::Irqchip(_))), "{e}");
    // A machine built some other way cannot take the device either.
    let mut m = SessionConfig {
        guest: GuestSpec::Builtin { name: "hello-long".into(), iterations: None },
        ..config(1, 1, Some(IrqchipKind::User))
    }
    .build(Console::capture_only(), Console::capture_only())
    .expect("machine");
    assert!(!m.has_queue_device());
    let e = m.attach_queue_device(NOTIFY_PORT, GSI).expect_err("refused");
    assert!(matches!(e, QueueDeviceError::NeedsKernelIrqchip), "{e}");
}

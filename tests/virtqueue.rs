//! `vmrr record --guest virtqueue`: the guest's requests go to a device thread through an
//! ioeventfd and come back through an irqfd. Every round checks out, the trace has no exit
//! for the notify port, and device thread 0 records per round a `GUEST_WRITE` (the bytes
//! the guest then checked), then an `IRQ_LINE` (GSI 10 pulsed through the irqfd), in
//! order. Without KVM's irqchip the guest is refused (exit 2) naming why; its replay, which
//! has no queue device, diverges at the first notify write.

mod common;

use common::*;
use serde_json::Value;
use vmrr_engine::guests::virtqueue::{BUF_ADDR, GSI, NOTIFY_PORT, len_of, pattern};

/// Device thread 0's record-header `vcpu`.
const DEVICE_THREAD_0: u64 = 0x8000_0000;

fn inspect(trace: &std::path::Path) -> Vec<Value> {
    let o = vmrr(&["inspect", s(trace), "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    stdout(&o).lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn record(extra: &[&str]) -> Option<(tempfile::TempDir, std::path::PathBuf, std::process::Output)> {
    if !require_kvm() {
        return None;
    }
    let d = tmp();
    let out = at(&d, "vq.vmrr");
    let mut args = vec!["record", "--guest", "virtqueue", "--irqchip", "kernel", "-o", s(&out)];
    args.extend_from_slice(extra);
    let o = vmrr(&args);
    Some((d, out, o))
}

#[test]
fn every_round_is_served_without_an_exit_and_recorded_in_order() {
    let rounds = 10u32;
    let n = rounds.to_string();
    let Some((_d, trace, o)) = record(&["--iterations", &n]) else { return };
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let want: String = (1..=rounds).map(|r| format!("virtqueue: round {r} ok\n")).collect();
    assert_eq!(stdout(&o), want, "the serial console, every round ok");

    let recs = inspect(&trace);
    let port = |r: &Value| r["kind"] == "io" && r["port"] == u64::from(NOTIFY_PORT);
    assert!(!recs.iter().any(port), "no exit for the notify port: the ioeventfd took every write");
    assert!(recs.iter().any(|r| r["kind"] == "io"), "the serial output did exit");

    // Device thread 0's records: per round, the guest write (the round's pattern), then
    // the completion's IRQ_LINE (a pulse of GSI 10 through the irqfd).
    let device: Vec<&Value> = recs.iter().filter(|r| r["vcpu"] == DEVICE_THREAD_0).collect();
    assert_eq!(device.len(), 2 * usize::try_from(rounds).unwrap(), "{device:?}");
    for (r, pair) in (1..=rounds).zip(device.chunks(2)) {
        let (write, irq) = (pair[0], pair[1]);
        assert_eq!(write["kind"], "guest_write", "round {r}");
        assert_eq!(write["gpa"], BUF_ADDR, "round {r}");
        let data: Vec<u8> = (0..len_of(r)).map(|i| pattern(r, i)).collect();
        assert_eq!(write["data"].as_str(), Some(hex(&data).as_str()), "round {r}");
        assert_eq!(irq["kind"], "irq_line", "round {r}: {irq}");
        assert_eq!(irq["gsi"], GSI, "round {r}");
        assert_eq!(irq["level"], "pulse", "round {r}");
        assert_eq!(irq["via"], "irqfd", "round {r}");
        assert!(irq["seq"].as_u64() > write["seq"].as_u64(), "round {r}: the write, then the interrupt");
    }

    // In the trace's order each write comes before the serial output of the round it
    // served (the guest waited for it), and after the previous round's.
    let mut text = String::new();
    let mut rounds_seen = 0u32;
    for rec in &recs {
        if rec["vcpu"] == DEVICE_THREAD_0 && rec["kind"] == "guest_write" {
            rounds_seen += 1;
            assert_eq!(
                text,
                (1..rounds_seen).map(|r| format!("virtqueue: round {r} ok\n")).collect::<String>(),
                "what the guest printed before round {rounds_seen}'s write"
            );
        } else if rec["kind"] == "io" && rec["port"] == 0x3f8 && rec["direction"] == "out" {
            let byte = u8::from_str_radix(rec["data"].as_str().unwrap_or_default(), 16).expect("one byte");
            text.push(char::from(byte));
        }
    }
    assert_eq!(text, want);
}

#[test]
fn two_vcpus_leave_the_aps_unstarted_and_still_serve_every_round() {
    let Some((_d, trace, o)) = record(&["--iterations", "3", "--vcpus", "2"]) else { return };
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "virtqueue: round 1 ok\nvirtqueue: round 2 ok\nvirtqueue: round 3 ok\n");
    let recs = inspect(&trace);
    assert_eq!(
        recs.iter().filter(|r| r["vcpu"] == DEVICE_THREAD_0).count(),
        6,
        "a write and a line per round"
    );
    assert!(!recs.iter().any(|r| r["kind"] == "io" && r["vcpu"] == 1), "the AP never ran guest code");
}

#[test]
fn its_replay_says_first_that_its_path_cannot_replay() {
    // The device thread wrote and interrupted while the vCPU ran, at instants no exit
    // records: replay says so before any work, and the run holds no failure to reproduce
    // (REPLAY.md). `--path` is a usage error.
    let Some((_d, trace, o)) = record(&["--iterations", "1"]) else { return };
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let r = vmrr(&["replay", s(&trace)]);
    assert_eq!(r.status.code(), Some(3), "{}", stderr(&r));
    let e = stderr(&r);
    assert!(e.contains("1 device thread(s) beside its vCPU") && e.contains("no failure point"), "{e}");
    let r = vmrr(&["replay", s(&trace), "--path"]);
    assert_eq!(r.status.code(), Some(2), "{}", stderr(&r));
}

#[test]
fn vmrrs_own_irqchip_is_refused_naming_why() {
    // Refused before KVM is touched: runs without it too.
    let d = tmp();
    let out = at(&d, "vq.vmrr");
    let o = vmrr(&["record", "--guest", "virtqueue", "--irqchip", "user", "-o", s(&out)]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("virtqueue") && e.contains("--irqchip kernel") && e.contains("irqfd"), "{e}");
    assert!(!out.exists(), "refused before the trace was created");

    // The flight recorder continues one writer: a device thread's stream has no place in it.
    let o = vmrr(&["record", "--guest", "virtqueue", "--flight-recorder", "-o", s(&out)]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--flight-recorder"), "{}", stderr(&o));
}

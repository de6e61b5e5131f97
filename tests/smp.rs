//! Machines with several vCPUs, end to end on real KVM: `smp-counter` on 4 vCPUs records
//! every vCPU's exits (each thread its own) with checkpoints taken while they all run, and
//! its replay says first that the path cannot be replayed; `smp-fail` fails on an AP while
//! the others run, and its failure reproduces from the failure point, on that AP, from a
//! bundle shipped elsewhere; what cannot be asked for is refused.

mod common;
use common::*;

use std::collections::BTreeMap;

/// Exits per vCPU in a trace.
fn exits_per_vcpu(trace: &std::path::Path) -> BTreeMap<u64, u64> {
    let mut per = BTreeMap::new();
    for r in exits(&records(trace)) {
        *per.entry(r.json["vcpu"].as_u64().expect("a vCPU index")).or_default() += 1;
    }
    per
}

#[test]
fn smp_counter_on_four_vcpus_records_every_vcpu_and_says_its_path_cannot_replay() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let trace = at(&d, "counter.vmrr");
    let serial = at(&d, "counter.serial");
    let o = vmrr(&[
        "record",
        "--guest",
        "smp-counter",
        "--vcpus",
        "4",
        "--iterations",
        "500",
        "--checkpoint-interval-ms",
        "5",
        "-o",
        s(&trace),
        "--serial",
        s(&serial),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let console = std::fs::read_to_string(&serial).expect("console");
    for k in 0..4 {
        assert!(console.contains(&format!("cpu {k}: 500\n")), "vCPU {k} printed its share: {console}");
    }
    assert!(console.contains("total: 2000 ok"), "{console}");
    let sum = summary(&o);
    assert_eq!(sum["outcome"], "guest_exit", "{sum}");
    // Every vCPU's thread recorded its own exits; the file is one intact trace.
    let per = exits_per_vcpu(&trace);
    assert_eq!(per.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2, 3], "{per:?}");
    assert_eq!(per.values().sum::<u64>(), sum["exits"].as_u64().expect("exits"), "{per:?} {sum}");
    let v = vmrr(&["verify", s(&trace)]);
    assert!(v.status.success(), "{}", stdout(&v));
    let seqs: Vec<u64> = records(&trace).iter().map(|r| r.seq).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "numbers without gaps in file order");
    // Checkpoints were taken while the APs ran, each with every vCPU.
    let taken = sum["checkpoints"]["taken"].as_array().map_or(0, Vec::len);
    assert!(taken >= 1, "{sum}");
    let info = vmrr(&["snapshot", "info", s(&d.path().join("counter.vmrr.snapshots/snap-000001")), "--json"]);
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).expect("snapshot info JSON");
    assert_eq!(info["vcpus"].as_array().map(Vec::len), Some(4), "{info}");
    // The contract: several vCPUs do not replay; the replay says so before any work, and
    // there is no failure to reproduce.
    let r = vmrr(&["replay", s(&trace)]);
    assert_eq!(r.status.code(), Some(3), "{}", stderr(&r));
    let e = stderr(&r);
    assert!(e.contains("recorded on 4 vCPUs") && e.contains("no failure point to reproduce"), "{e}");
    let r = vmrr(&["replay", s(&trace), "--path"]);
    assert_eq!(r.status.code(), Some(2), "{}", stderr(&r));
}

#[test]
fn smp_fail_reproduces_on_the_ap_that_failed_from_a_bundle_elsewhere() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let trace = at(&d, "fail.vmrr");
    let o = vmrr(&[
        "record",
        "--guest",
        "smp-fail",
        "--vcpus",
        "4",
        "-o",
        s(&trace),
        "--serial",
        "none",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    let sum = summary(&o);
    assert_eq!(sum["outcome"], "emulation_failure", "{sum}");
    assert_eq!(sum["emulation_failure"]["vcpu"], 3, "the last AP failed: {sum}");
    let recorded_rip = sum["emulation_failure"]["rip"].as_u64().expect("rip");
    // The others kept running (and exiting) while it failed.
    let per = exits_per_vcpu(&trace);
    assert!((0..4).all(|k| per.get(&k).is_some_and(|n| *n > 0)), "{per:?}");
    let bundle = at(&d, "fail.vmrrb");
    let p = vmrr(&["pack", s(&trace), "-o", s(&bundle)]);
    assert!(p.status.success(), "{}", stderr(&p));
    let elsewhere = tmp();
    let shipped = elsewhere.path().join("repro.vmrrb");
    std::fs::copy(&bundle, &shipped).expect("copied");
    let (code, r) = replay_json(&shipped, &[]);
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(r["outcome"], "reproduced", "{r}");
    assert!(
        r["path_not_deterministic"][0].as_str().is_some_and(|s| s.contains("4 vCPUs")),
        "said first: {r}"
    );
    let fp = &r["failure_point"];
    assert_eq!(fp["vcpus"], 4, "{r}");
    assert_eq!(fp["vcpu"], 3, "{r}");
    assert_eq!(fp["insn_bytes_match"], true, "{r}");
    assert_eq!(fp["registers_match"], true, "{r}");
    assert_eq!(fp["failure"]["rip"].as_u64(), Some(recorded_rip), "{r}");
    assert!(fp["failure"]["disassembly"].as_str().is_some_and(|s| s.contains("popcnt")), "{r}");
}

#[test]
fn what_several_vcpus_cannot_do_is_refused_before_kvm() {
    let d = tmp();
    let out = at(&d, "x.vmrr");
    for (args, why) in [
        (vec!["--vcpus", "2", "--irqchip", "user"], "--irqchip kernel"),
        (vec!["--vcpus", "9"], "9"),
        (vec!["--vcpus", "2", "--flight-recorder"], "--flight-recorder"),
    ] {
        let mut a = vec!["record", "--guest", "hello-long", "-o", s(&out)];
        a.extend(args.iter().copied());
        let o = vmrr(&a);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(why), "{args:?}: {}", stderr(&o));
        assert!(!out.exists(), "nothing written");
    }
    // smp-fail needs an AP to fail on.
    let o = vmrr(&["record", "--guest", "smp-fail", "-o", s(&out)]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("2 to"), "{}", stderr(&o));
}

//! Replay that explains itself: a divergence names the instruction behind it, and a
//! recorded failure reproduces from its failure-point snapshot whatever happened on the
//! way to it. Against real KVM.

mod common;
use common::*;

use std::path::Path;

/// The trace's own annotation `key`.
fn annotation(trace: &Path, key: &str) -> Option<String> {
    records(trace)
        .iter()
        .find(|r| r.kind == "annotation" && r.json["key"] == key)
        .map(|r| r.json["value"].as_str().unwrap_or_default().to_string())
}

fn assert_names_rdtsc(d: &serde_json::Value) {
    let suspects = d["suspects"].as_array().expect("suspects");
    let first = &suspects[0];
    assert_eq!(first["instruction"], "rdtsc", "{d}");
    assert!(first["rip"].as_str().unwrap().starts_with("0x"), "{first}");
    assert!(first["count"].as_u64().unwrap() >= 1, "{first}");
    assert!(first["why"].as_str().unwrap().contains("TSC does not exit"), "{first}");
    assert!(d["cause"].as_str().unwrap().starts_with("the guest read the TSC at"), "{d}");
    assert!(d["why_none"].is_null());
    assert!(d["search"]["steps"].as_u64().unwrap() > 0);
}

#[test]
fn a_guest_that_reads_the_tsc_diverges_and_the_report_names_rdtsc() {
    let Some((_d, trace)) = recorded("tsc", &[]) else {
        return;
    };
    let (code, r) = replay_json(&trace, &[]);
    assert_eq!(code, Some(1), "{r}");
    assert_eq!(r["outcome"], "diverged");
    assert_eq!(r["path"], "diverged");
    let dv = &r["divergence"];
    assert_names_rdtsc(dv);
    // The suspect is the guest's own rdtsc: its RIP is inside the guest image.
    let rip =
        u64::from_str_radix(dv["suspects"][0]["rip"].as_str().unwrap().trim_start_matches("0x"), 16).unwrap();
    assert!((0x10_0000..0x10_1000).contains(&rip), "{rip:#x}");
    assert_eq!(dv["console"]["device"], "serial");
    assert!(dv["console"]["text"].as_str().unwrap().starts_with("tsc 0x"), "{dv}");
    assert!(dv["summary"].as_str().unwrap().contains("serial 0x3f"), "{dv}");
    // The host facts recorded with the trace are compared with this host's.
    let enforced = annotation(&trace, "kvm.cpuid_enforced").expect("the trace records the host fact");
    let notes: Vec<&str> = r["notes"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    assert_eq!(
        notes.iter().any(|n| n.starts_with("recorded on a host that does not enforce CPUID masks")),
        enforced == "false",
        "{notes:?}"
    );
    // The text report leads with the cause, then names the device and shows registers.
    let o = vmrr(&["replay", s(&trace)]);
    assert_eq!(o.status.code(), Some(1));
    let text = stdout(&o);
    let first = text.lines().next().unwrap();
    assert!(first.starts_with("cause: the guest read the TSC at 0x"), "{text}");
    assert!(text.contains("rdtsc") && text.contains("registers:") && text.contains("rflags"), "{text}");
    assert!(!text.contains("\"kind\""), "no raw JSON in the text report: {text}");
    // Without the search, the divergence is still reported, unexplained.
    let o = vmrr(&["replay", s(&trace), "--json", "--no-explain"]);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(r["divergence"]["cause"].is_null() && r["divergence"]["suspects"].as_array().unwrap().is_empty());
}

#[test]
fn a_failure_after_a_diverging_path_reproduces_from_the_failure_point() {
    let Some((d, trace)) = recorded("tsc-fail", &[]) else {
        return;
    };
    // The recording captured a snapshot at the failing exit: a checkpoint after it.
    let recs = records(&trace);
    let fatal = recs.iter().rposition(|r| r.kind == "internal_error").expect("the failing exit");
    assert!(
        recs[fatal..].iter().any(|r| r.kind == "checkpoint"),
        "a failure-point checkpoint follows the failure"
    );
    let (code, r) = replay_json(&trace, &[]);
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(r["outcome"], "reproduced");
    assert_eq!(r["path"], "diverged");
    assert_names_rdtsc(&r["divergence"]);
    let fp = &r["failure_point"];
    assert_eq!(fp["reproduced"], true, "{fp}");
    assert_eq!(fp["insn_bytes_match"], true);
    assert_eq!(fp["registers_match"], true);
    assert_eq!(fp["failure"]["disassembly"], "popcnt rax,[rdi]");
    assert_eq!(fp["snapshot"], recs.iter().filter(|r| r.kind == "checkpoint").count() as u64 - 1);
    // A trace whose failure reproduces on the path reports it from both.
    let ok = record_guest(&d, "emulation-failure", &[]);
    let (code, r) = replay_json(&ok, &[]);
    assert_eq!(code, Some(0), "{r}");
    assert_eq!((r["outcome"].as_str(), r["path"].as_str()), (Some("reproduced"), Some("completed")));
    assert_eq!(r["failure_point"]["reproduced"], true);
    // Without the failure point, the diverging path alone does not reproduce it: exit 1.
    let o = vmrr(&["replay", s(&trace), "--json", "--no-failure-point", "--no-explain"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn an_edited_input_has_no_suspect_and_the_report_says_what_it_can_be() {
    let Some((d, trace)) = recorded("hello-long", &[]) else {
        return;
    };
    // Answer one of the guest's line-status reads with "transmitter busy": the guest polls
    // once more, so its next exit differs from the recording's.
    let edited = at(&d, "edited.vmrr");
    let mut done = false;
    rewrite(&trace, &edited, |_, data| {
        if !done && data.as_slice() == [0x60] {
            data[0] = 0x00;
            done = true;
            return true;
        }
        false
    });
    let (code, r) = replay_json(&edited, &[]);
    assert_eq!(code, Some(1), "{r}");
    let dv = &r["divergence"];
    assert!(dv["suspects"].as_array().unwrap().is_empty(), "{dv}");
    let why = dv["why_none"].as_str().unwrap();
    assert!(why.contains("input vmrr does not model") && why.contains("DMA"), "{why}");
    assert!(dv["cause"].as_str().unwrap().contains("input vmrr does not record"), "{dv}");
}

#[test]
fn seabios_replays_to_the_end_or_the_report_names_its_rdtsc() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let out = at(&d, "bios.vmrr");
    let o = vmrr(&[
        "record",
        "--firmware",
        s(seabios()),
        "-o",
        s(&out),
        "--max-exits",
        "1500",
        "--debugcon",
        "none",
        "--serial",
        "none",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let enforced = annotation(&out, "kvm.cpuid_enforced").expect("the trace records the host fact");
    let (code, r) = replay_json(&out, &[]);
    if enforced == "false" {
        // The guest saw the TSC: SeaBIOS calibrates "CPU Mhz" with it.
        assert_eq!(code, Some(1), "{r}");
        assert_names_rdtsc(&r["divergence"]);
        assert_eq!(r["divergence"]["console"]["device"], "debugcon");
        assert!(r["divergence"]["console"]["text"].as_str().unwrap().contains("CPU Mhz"), "{r}");
    } else {
        // The TSC was hidden: SeaBIOS does not use it, and replays to the end.
        assert_eq!(code, Some(0), "{r}");
        assert_eq!(r["outcome"], "completed");
    }
}

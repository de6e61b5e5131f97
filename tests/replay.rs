//! `vmrr replay` and `vmrr pack` end to end on real KVM.

mod common;
use common::*;

use vmrr_format::{Body, TraceReader, TraceWriter, WriterOptions};

/// Every built-in guest that runs on one vCPU (the table must name each one `vmrr guests`
/// lists; those needing several are the multi-vCPU tests'): recorded,
/// packed, replayed from the bundle, with the outcome and path its description promises.
/// The TSC guests read a value no exit carries, so their path diverges on every host; the
/// guests that run forever end at `--max-exits`.
#[test]
fn every_builtin_guest_records_packs_and_replays() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let table: [(&str, Vec<&str>, &str, &str); 14] = [
        ("hello", vec![], "completed", "completed"),
        ("hello-long", vec![], "completed", "completed"),
        ("pio-storm", vec!["--iterations", "2000", "--checkpoint-every", "700"], "completed", "completed"),
        ("mmio-storm", vec!["--iterations", "2000"], "completed", "completed"),
        ("entropy", vec![], "completed", "completed"),
        ("interrupts", vec!["--iterations", "5", "--checkpoint-every", "30"], "completed", "completed"),
        (
            "memory-churn",
            vec!["--iterations", "2", "--mem-mib", "32", "--checkpoint-every", "50"],
            "completed",
            "completed",
        ),
        ("emulation-failure", vec!["--checkpoint-every", "60"], "reproduced", "completed"),
        ("tsc", vec![], "diverged", "diverged"),
        ("tsc-fail", vec![], "reproduced", "diverged"),
        ("dirty-pages", vec!["--max-exits", "50", "--checkpoint-every", "20"], "completed", "completed"),
        ("dirty-paced", vec!["--max-exits", "30"], "completed", "completed"),
        ("rewrite-window", vec!["--max-exits", "30", "--checkpoint-every", "10"], "completed", "completed"),
        ("smp-counter", vec!["--iterations", "20"], "completed", "completed"),
    ];
    let mut named: Vec<&str> = table.iter().map(|t| t.0).collect();
    let mut builtins: Vec<&str> = vmrr_engine::guests::BUILTINS
        .iter()
        .filter(|b| b.min_vcpus == 1)
        // Its replay has no queue device and diverges at the notify write (tests/virtqueue.rs).
        .filter(|b| b.name != "virtqueue")
        .map(|b| b.name)
        .collect();
    named.sort_unstable();
    builtins.sort_unstable();
    assert_eq!(named, builtins, "the table covers every built-in guest");
    for (name, extra, outcome, path) in table {
        let trace = record_guest(&d, name, &extra);
        let recorded_exits = exits(&records(&trace)).len() as u64;
        let bundle = at(&d, &format!("{name}.bundle.vmrr"));
        let o = vmrr(&["pack", s(&trace), "-o", s(&bundle)]);
        assert_eq!(o.status.code(), Some(0), "pack {name}: {}", stderr(&o));
        let (code, r) = replay_json(&bundle, &[]);
        assert_eq!(code, Some(if outcome == "diverged" { 1 } else { 0 }), "{name}: {r}");
        assert_eq!(r["outcome"], outcome, "{name}: {r}");
        assert_eq!(r["path"], path, "{name}: {r}");
        assert_eq!(r["start"]["snapshot"], 0, "{name}: a whole replay starts from the initial snapshot");
        if path == "completed" {
            assert_eq!(r["serial_output_matches"], true, "{name}");
            assert_eq!(r["exits_replayed"].as_u64().unwrap(), recorded_exits, "{name}");
            assert!(r["divergence"].is_null(), "{name}: {r}");
        } else {
            // The TSC is named as the cause.
            let cause = r["divergence"]["cause"].as_str().unwrap_or_default();
            assert!(cause.contains("TSC"), "{name}: {r}");
            assert!(r["exits_replayed"].as_u64().unwrap() < recorded_exits, "{name}");
        }
    }
}

#[test]
fn entropy_replays_byte_identical_output_that_differed_when_recorded() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let mut printed = Vec::new();
    for i in 0..2 {
        let trace = at(&d, &format!("e{i}.vmrr"));
        let serial = at(&d, &format!("e{i}.rec.txt"));
        let o = vmrr(&["record", "--guest", "entropy", "-o", s(&trace), "--serial", s(&serial)]);
        assert_eq!(o.status.code(), Some(0));
        let replayed = at(&d, &format!("e{i}.replay.txt"));
        let o = vmrr(&["replay", s(&trace), "--serial", s(&replayed), "--json"]);
        assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
        let rec = std::fs::read(&serial).unwrap();
        assert_eq!(std::fs::read(&replayed).unwrap(), rec, "replayed output is byte-identical");
        printed.push(rec);
    }
    assert_ne!(printed[0], printed[1], "the two recordings printed different digests");
}

#[test]
fn an_emulation_failure_is_reproduced_offline_with_the_instruction_decoded() {
    let Some((_d, trace)) = recorded("emulation-failure", &[]) else {
        return;
    };
    let (code, r) = replay_json(&trace, &[]);
    assert_eq!(code, Some(0));
    assert_eq!(r["outcome"], "reproduced");
    let f = &r["emulation_failure"];
    assert_eq!(f["disassembly"], "popcnt rax,[rdi]");
    assert_eq!(f["insn_bytes"], "f3480fb807");
    assert_eq!(f["insn_len"], 5);
    assert_eq!(f["memory_operand"], 0xd000_1000u64);
    assert_eq!(f["memory"], "mmio (no memory slot)");
    assert!(f["rip"].as_u64().unwrap() >= 0x10_0000);
    assert!(f["exits_before"].as_array().unwrap().len() >= 8);
    assert!(f["registers"]["rax"].as_str().unwrap().starts_with("0x27f80ddaa1ba7878"));
}

#[test]
fn an_edited_input_diverges_right_after_it_with_exit_1() {
    let Some((d, trace)) = recorded("hello-long", &[]) else {
        return;
    };
    // The 5th poll of the UART line status: change "transmitter ready" (0x60) to "busy".
    let polls: Vec<u64> =
        records(&trace).iter().filter(|r| r.kind == "io" && r.json["port"] == 0x3fd).map(|r| r.seq).collect();
    let victim = polls[4];
    let edited = at(&d, "edited.vmrr");
    rewrite(&trace, &edited, |seq, data| {
        if seq == victim {
            data[0] = 0x00;
            true
        } else {
            false
        }
    });
    assert_eq!(vmrr(&["verify", s(&edited)]).status.code(), Some(0), "the edited trace reads cleanly");
    let (code, r) = replay_json(&edited, &[]);
    assert_eq!(code, Some(1), "{r}");
    assert_eq!(r["outcome"], "diverged");
    let dv = &r["divergence"];
    assert_eq!(dv["after_input"], victim, "pinpoints the edited record");
    assert_eq!(dv["seq"], victim + 1, "the guest polled again instead of writing");
    assert!(dv["reason"].as_str().unwrap().contains("direction"), "{dv}");
    assert_eq!(dv["expected"]["direction"], "out");
    assert_eq!(dv["actual"]["direction"], "in");
    assert_eq!(dv["actual"]["port"], 0x3fd);
    assert!(!dv["last_matching"].as_array().unwrap().is_empty());
    assert!(dv["registers"]["rip"].is_string());
    // Human report says the same.
    let o = vmrr(&["replay", s(&edited)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains(&format!("at record {}", victim + 1)), "{}", stdout(&o));
}

#[test]
fn a_guest_image_changed_after_recording_diverges() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    // A flat real-mode image printing "AB" then exiting through the debug port.
    let img = at(&d, "prog.bin");
    let prog = [0xba, 0xf8, 0x03, 0xb0, b'A', 0xee, 0xb0, b'B', 0xee, 0xb0, 0x00, 0xe6, 0xf4, 0xf4];
    std::fs::write(&img, prog).unwrap();
    let trace = at(&d, "img.vmrr");
    let o = vmrr(
        &[&["record"][..], &image_args(&img, "0x1000", "real"), &["-o", s(&trace), "--serial", "none"]]
            .concat(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // Replay never opens the path the trace names: the user passes the image.
    let o = vmrr(&["replay", s(&trace), "--rebuild"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("pass --image FILE") && stderr(&o).contains("prog.bin"), "{}", stderr(&o));
    let (code, r) = replay_json(&trace, &["--rebuild", "--image", s(&img)]);
    assert_eq!((code, r["outcome"].as_str()), (Some(0), Some("completed")), "{r}");
    // A bundle carries the image it was packed with: self-contained, checksummed.
    let bundle = at(&d, "img.vmrrb");
    let o = vmrr(&["pack", s(&trace), "-o", s(&bundle), "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let m = vmrr_format::bundle::read_manifest(&bundle, &Default::default()).unwrap();
    assert!(m.entries.iter().any(|e| e.name == "image.bin" && e.size == prog.len() as u64), "{m:?}");
    let mut changed = prog;
    changed[7] = b'C';
    std::fs::write(&img, changed).unwrap();
    let (code, r) = replay_json(&bundle, &["--rebuild"]);
    assert_eq!((code, r["outcome"].as_str()), (Some(0), Some("completed")), "the bundle's own image: {r}");
    let (code, r) = replay_json(&trace, &["--rebuild", "--image", s(&img)]);
    assert_eq!(code, Some(1), "{r}");
    assert!(r["divergence"]["reason"].as_str().unwrap().contains("data written"), "{r}");
    assert_eq!(r["divergence"]["actual"]["data"], "43");
    // The snapshot still holds the original image: replaying from it completes.
    let (code, _) = replay_json(&trace, &[]);
    assert_eq!(code, Some(0));
}

#[test]
fn goto_from_a_late_checkpoint_and_snapshot_at() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let trace = record_guest(
        &d,
        "memory-churn",
        &["--iterations", "3", "--mem-mib", "32", "--checkpoint-every", "40"],
    );
    let (_, full) = replay_json(&trace, &[]);
    assert_eq!(full["outcome"], "completed");
    // Replaying from the last checkpoint gives the same result as from the start.
    let last = vmrr_format::overview::scan(&trace).unwrap().checkpoints.last().unwrap().snapshot_id;
    let (code, late) = replay_json(&trace, &["--from-checkpoint", &last.to_string()]);
    assert_eq!(code, Some(0));
    assert_eq!(late["outcome"], "completed");
    assert_eq!(late["serial_output_matches"], true);
    assert_eq!(late["start"]["snapshot"], last);
    assert!(late["exits_replayed"].as_u64().unwrap() < full["exits_replayed"].as_u64().unwrap());
    // --goto starts at the nearest checkpoint before the target and stops there.
    let target = 130u64;
    let (code, g) = replay_json(&trace, &["--goto", &target.to_string()]);
    assert_eq!(code, Some(0), "{g}");
    assert_eq!(g["stopped_at"], target);
    assert_eq!(g["outcome"], "stopped", "stopped where asked, not completed: {g}");
    assert!(g["start"]["seq"].as_u64().unwrap() <= target);
    assert!(g["start"]["snapshot"].as_u64().unwrap() > 0, "started from a checkpoint, not the beginning");
    // --snapshot-at writes a snapshot a debugging session can start from.
    let snap = at(&d, "at130");
    let o = vmrr(&["replay", s(&trace), "--snapshot-at", &target.to_string(), s(&snap), "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let info = vmrr(&["snapshot", "info", s(&snap), "--json"]);
    assert_eq!(info.status.code(), Some(0), "{}", stderr(&info));
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(v["exit_seq"], target);
    // It continues to the same end as the recording.
    let chain = vmrr_engine::snapshot::load_chain(&snap, u64::MAX).unwrap();
    let mut m = vmrr_engine::snapshot::restore(
        &chain,
        vmrr_engine::devices::console::Console::capture_only(),
        vmrr_engine::devices::console::Console::capture_only(),
        false,
    )
    .unwrap();
    let sum = m.run().unwrap();
    assert!(matches!(sum.outcome, vmrr_engine::machine::Outcome::GuestExit(0)));
    let out = m.serial().captured();
    // What the recorded guest printed: a full replay's console, which replay checks byte
    // for byte against the trace's serial-port writes.
    let console = at(&d, "recorded.serial");
    let o = vmrr(&["replay", s(&trace), "--serial", s(&console)]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let recorded = std::fs::read(&console).unwrap();
    assert!(
        !out.is_empty() && recorded.ends_with(&out),
        "{:?} vs {:?}",
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&recorded)
    );
}

#[test]
fn missing_cpu_features_warn_and_strict_cpu_refuses() {
    let Some((d, trace)) = recorded("hello-long", &[]) else {
        return;
    };
    let host = vmrr_engine::kvm::cpuid::host_supported().unwrap();
    // A leaf-7 EBX feature this host lacks.
    let ebx7 = host.iter().find(|e| e.function == 7 && e.index == 0).map_or(0, |e| e.ebx);
    let bit = (0..32).find(|b| ebx7 & (1 << b) == 0).expect("some feature is absent");
    let edited = at(&d, "cpu.vmrr");
    let mut r = TraceReader::open(&trace).unwrap();
    let opts = WriterOptions { trace_id: Some(r.header().trace_id), ..Default::default() };
    let mut w = TraceWriter::create(&edited, opts).unwrap();
    while let Some(item) = r.next_record() {
        let rec = item.unwrap();
        if let Body::Cpuid(c) = rec.body {
            let mut entries: Vec<_> = c.iter().collect();
            for e in &mut entries {
                if e.function == 7 && e.index == 0 {
                    e.ebx |= 1 << bit;
                }
            }
            let mut copy = rec;
            copy.body = Body::Cpuid(vmrr_format::CpuidEntries::Native(&entries));
            w.append_record(&copy).unwrap();
        } else {
            w.append_record(&rec).unwrap();
        }
    }
    w.finish().unwrap();
    copy_dir(&vmrr_engine::snapshot::dir_for_trace(&trace), &vmrr_engine::snapshot::dir_for_trace(&edited));
    let (code, rep) = replay_json(&edited, &[]);
    assert_eq!(code, Some(0));
    assert_eq!(rep["cpu_warnings"].as_array().unwrap().len(), 1, "{rep}");
    let o = vmrr(&["replay", s(&edited), "--strict-cpu"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stderr(&o).contains("lacks CPU features"));
}

#[test]
fn damaged_bundles_are_refused_with_exit_3() {
    let Some((d, trace)) = recorded("hello", &[]) else {
        return;
    };
    let bundle = at(&d, "b.vmrr");
    assert_eq!(vmrr(&["pack", s(&trace), "-o", s(&bundle)]).status.code(), Some(0));
    let good = std::fs::read(&bundle).unwrap();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (good[..good.len() / 2].to_vec(), "outside the file"),
        (
            {
                let mut b = good.clone();
                let n = b.len();
                b[n - 10] ^= 0xff;
                b
            },
            "checksum",
        ),
        (
            {
                let mut b = good.clone();
                b[40] ^= 0x01;
                b
            },
            "manifest checksum",
        ),
        (
            {
                let mut b = good.clone();
                b[8] = 7;
                b
            },
            "checksum",
        ),
    ];
    for (i, (bytes, msg)) in cases.into_iter().enumerate() {
        let p = at(&d, &format!("bad{i}.vmrr"));
        std::fs::write(&p, bytes).unwrap();
        let o = vmrr(&["replay", s(&p)]);
        assert_eq!(o.status.code(), Some(3), "case {i}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(msg) && stderr(&o).contains(&format!("bad{i}.vmrr")),
            "case {i}: {}",
            stderr(&o)
        );
    }
}

#[test]
fn every_checkpoint_of_an_interrupt_guest_replays_including_one_right_before_an_injection() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    // A checkpoint every 2 exits lands between a `hlt` exit and the timer interrupt
    // injected after it: replay from there must see that the restored guest can take it.
    let trace = record_guest(&d, "interrupts", &["--iterations", "4", "--checkpoint-every", "2"]);
    let f = vmrr_format::overview::scan(&trace).unwrap();
    let recs = records(&trace);
    let before_injection = f
        .checkpoints
        .iter()
        .filter(|c| recs.iter().any(|r| r.seq == c.record_seq + 1 && r.kind == "interrupt"))
        .count();
    assert!(before_injection > 0, "no checkpoint right before an injection");
    for c in &f.checkpoints {
        let (code, r) = replay_json(&trace, &["--from-checkpoint", &c.snapshot_id.to_string()]);
        assert_eq!(
            (code, r["outcome"].as_str()),
            (Some(0), Some("completed")),
            "checkpoint {}: {r}",
            c.snapshot_id
        );
    }
}

#[test]
fn an_interrupt_replay_cannot_inject_is_refused_with_exit_3_naming_the_record() {
    // FORMAT.md §6: an NMI, or a source a newer writer defined, is refused rather than
    // injected as an external interrupt.
    let Some((d, trace)) = recorded("interrupts", &["--iterations", "3"]) else {
        return;
    };
    for (source, why) in [(1u32, "NMI"), (9, "not defined")] {
        let edited = at(&d, &format!("source-{source}.vmrr"));
        let mut r = TraceReader::open(&trace).unwrap();
        let opts = WriterOptions { trace_id: Some(r.header().trace_id), ..Default::default() };
        let mut w = TraceWriter::create(&edited, opts).unwrap();
        let mut victim = None;
        while let Some(item) = r.next_record() {
            let mut rec = item.unwrap();
            if let Body::Interrupt(mut i) = rec.body {
                if victim.is_none() {
                    victim = Some(rec.seq);
                    i.source = source;
                    rec.body = Body::Interrupt(i);
                }
            }
            w.append_record(&rec).unwrap();
        }
        w.finish().unwrap();
        let victim = victim.expect("the guest took an interrupt");
        let o = vmrr(&["replay", s(&edited)]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(3), "{err}");
        assert!(
            err.contains(&format!("record seq {victim}"))
                && err.contains(&format!("interrupt source {source}")),
            "{err}"
        );
        assert!(err.contains(why), "{err}");
    }
}

/// Background checkpoints (the default) append their record once the snapshot is durable,
/// possibly after later exits; replay from each checkpoint must start at its position (the
/// pause), not at its record, and reach the same end as with stopped-world checkpoints,
/// whose record always follows its position.
#[test]
fn replay_starts_every_checkpoint_at_its_pause_background_or_stopped_world() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let common = ["--iterations", "3", "--mem-mib", "32", "--checkpoint-every", "40"];
    for (name, extra) in [("background", vec![]), ("stop-world", vec!["--stop-world-checkpoints"])] {
        let dir = at(&d, name);
        std::fs::create_dir_all(&dir).unwrap();
        let trace = dir.join("churn.vmrr");
        let mut args =
            vec!["record", "--guest", "memory-churn", "-o", s(&trace), "--serial", "none", "--json"];
        args.extend_from_slice(&common);
        args.extend_from_slice(&extra);
        let o = vmrr(&args);
        assert_eq!(o.status.code(), Some(0), "{name}: {}", stderr(&o));
        let summary: serde_json::Value = serde_json::from_slice(&o.stdout).expect("run summary");
        assert_eq!(summary["checkpoints"]["capture"], name, "{summary}");
        let f = vmrr_format::overview::scan(&trace).expect("overview");
        assert!(f.checkpoints.len() >= 4, "{name}: {} checkpoints", f.checkpoints.len());
        for w in f.checkpoints.windows(2) {
            assert!(w[0].after_seq < w[1].after_seq, "{name}: positions in order");
            assert_eq!(w[1].exits - w[0].exits, 40, "{name}: one every 40 exits");
        }
        for c in &f.checkpoints {
            assert!(c.record_seq > c.after_seq, "{name}: a record comes after its position");
            if name == "stop-world" {
                assert_eq!(c.record_seq, c.after_seq + 1, "a stopped-world record follows its position");
            }
            let id = c.snapshot_id.to_string();
            let (code, r) = replay_json(&trace, &["--from-checkpoint", &id]);
            assert_eq!(code, Some(0), "{name} checkpoint {id}: {r}");
            assert_eq!(r["outcome"], "completed", "{name} checkpoint {id}: {r}");
            assert_eq!(r["serial_output_matches"], true, "{name} checkpoint {id}");
            assert_eq!(
                r["exits_replayed"].as_u64().unwrap(),
                f.exits - c.exits,
                "{name} checkpoint {id}: {r}"
            );
        }
    }
}

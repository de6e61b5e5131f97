//! Replaying in CI at scale, against real KVM: a corpus of repros with one verdict each
//! (`no_longer_fails` included), JUnit valid against the Ant JUnit schema, shards run as
//! Kubernetes Indexed Job pods merged into the single run's verdicts, and one trace in
//! segments giving the sequential replay's first divergence.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::schema as corpus_schema;
use common::*;

/// `vmrr ARGS` with environment variables.
fn vmrr_env(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vmrr"));
    c.args(args).env_remove("JOB_COMPLETION_INDEX").env_remove("JOB_COMPLETIONS");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("runs vmrr")
}

/// The JSON lines of a corpus run: entries by path, and the summary.
fn lines(out: &[u8]) -> (Vec<serde_json::Value>, serde_json::Value) {
    let text = String::from_utf8_lossy(out);
    let mut entries = Vec::new();
    let mut summary = serde_json::Value::Null;
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        match v["kind"].as_str() {
            Some("entry") => entries.push(v),
            Some("summary") => summary = v,
            other => panic!("unexpected line kind {other:?}: {l}"),
        }
    }
    (entries, summary)
}

fn verdict_of<'a>(entries: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    entries
        .iter()
        .find(|e| e["path"].as_str().is_some_and(|p| p.ends_with(name)))
        .unwrap_or_else(|| panic!("no entry {name} in {entries:?}"))
}

/// Records built-in `guest` and packs it into `corpus/NAME.vmrrb`.
fn packed(d: &tempfile::TempDir, corpus: &Path, guest: &str, extra: &[&str]) -> PathBuf {
    let trace = record_guest(d, guest, extra);
    let out = corpus.join(format!("{guest}.vmrrb"));
    let o = vmrr(&["pack", s(&trace), "-o", s(&out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    out
}

/// A long-mode ring-0 image that prints "AB\n" on the serial port, then runs `tail` on the
/// MMIO address 0xd0001000 and exits through port 0xf4. With `popcnt rax,[rdi]` as its
/// tail KVM cannot emulate it (an emulation failure); with `mov rax,[rdi]; nop` it is an
/// MMIO read: the same code but for that one instruction, as a fixed firmware would be.
fn image(tail: &[u8]) -> Vec<u8> {
    let mut v = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    v.extend_from_slice(&[0xb0, b'A', 0xee, 0xb0, b'B', 0xee, 0xb0, b'\n', 0xee]); // out dx, al (x3)
    v.extend_from_slice(&[0x48, 0xbf, 0x00, 0x10, 0x00, 0xd0, 0, 0, 0, 0]); // mov rdi, 0xd0001000
    v.extend_from_slice(tail);
    v.extend_from_slice(&[0xb0, 0x00, 0xe6, 0xf4, 0xf4]); // mov al, 0; out 0xf4, al; hlt
    v
}
const POPCNT: [u8; 5] = [0xf3, 0x48, 0x0f, 0xb8, 0x07];
const MOV_NOP: [u8; 5] = [0x48, 0x8b, 0x07, 0x66, 0x90];

#[test]
fn a_corpus_gives_each_repro_a_verdict_and_each_bad_entry_an_error() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let corpus = at(&d, "corpus");
    std::fs::create_dir(&corpus).unwrap();
    packed(&d, &corpus, "emulation-failure", &[]); // reproduced
    packed(&d, &corpus, "hello", &[]); // completed
    // diverged: the guest reads the TSC, which no exit carries (a bare trace, its snapshots beside it)
    let o = vmrr(&["record", "--guest", "tsc", "-o", s(&corpus.join("tsc.vmrr")), "--serial", "none"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // no_longer_fails: a real emulation failure, replayed with the fixed image.
    let (bad, fixed) = (at(&d, "firmware.bin"), at(&d, "firmware-fixed.bin"));
    std::fs::write(&bad, image(&POPCNT)).unwrap();
    std::fs::write(&fixed, image(&MOV_NOP)).unwrap();
    let trace = at(&d, "image.vmrr");
    let mut rec = vec!["record"];
    rec.extend(image_args(&bad, "0x100000", "long"));
    rec.extend(["-o", s(&trace), "--serial", "none"]);
    let o = vmrr(&rec);
    assert_eq!(o.status.code(), Some(5), "the image fails when recorded: {}", stderr(&o));
    let img_bundle = corpus.join("image.vmrrb");
    assert!(vmrr(&["pack", s(&trace), "-o", s(&img_bundle)]).status.success());
    // Bad entries: not a repro at all, a bundle cut short; and a file that is not searched.
    std::fs::write(corpus.join("junk.vmrrb"), b"not a bundle").unwrap();
    let whole = std::fs::read(corpus.join("hello.vmrrb")).unwrap();
    std::fs::write(corpus.join("cut.vmrrb"), &whole[..whole.len() / 2]).unwrap();
    std::fs::write(corpus.join("README.txt"), b"repros of customer bugs").unwrap();

    // The recording really fails: replayed as recorded, the failure reproduces.
    let (code, rep) = replay_json(&img_bundle, &[]);
    assert_eq!((code, rep["verdict"].as_str()), (Some(0), Some("reproduced")), "{rep}");

    let junit = at(&d, "junit.xml");
    let o = vmrr(&[
        "replay",
        s(&corpus),
        "--rebuild",
        "--image",
        s(&fixed),
        "--jobs",
        "2",
        "--json",
        "--junit",
        s(&junit),
    ]);
    let (entries, summary) = lines(&o.stdout);
    assert_eq!(o.status.code(), Some(3), "an entry that is no repro makes the run exit 3: {}", stderr(&o));
    assert_eq!(entries.len(), 6, "README.txt is not an entry: {entries:?}");
    assert_eq!(verdict_of(&entries, "emulation-failure.vmrrb")["verdict"], "reproduced");
    assert_eq!(verdict_of(&entries, "hello.vmrrb")["verdict"], "completed");
    let tsc = verdict_of(&entries, "tsc.vmrr");
    assert_eq!(tsc["verdict"], "diverged", "{tsc}");
    assert!(tsc["report"]["divergence"]["cause"].as_str().is_some_and(|c| c.contains("rdtsc")), "{tsc}");
    let img = verdict_of(&entries, "image.vmrrb");
    assert_eq!(img["verdict"], "no_longer_fails", "{img}");
    let div = &img["report"]["divergence"];
    assert_eq!(div["seq"], img["report"]["recorded_failure"], "at the recorded failure: {img}");
    assert_eq!(div["actual"]["kind"], "mmio", "{img}");
    assert!(img["report"]["failure_point"].is_null(), "the recorded code's failure point is not run: {img}");
    for bad in ["junk.vmrrb", "cut.vmrrb"] {
        let e = verdict_of(&entries, bad);
        assert!(e["verdict"].is_null(), "{e}");
        assert_eq!(e["error"]["code"], 3, "{e}");
        assert!(e["error"]["message"].as_str().is_some_and(|m| m.contains(bad)), "names it: {e}");
    }
    let counts = &summary["counts"];
    assert_eq!(
        [
            &counts["reproduced"],
            &counts["completed"],
            &counts["no_longer_fails"],
            &counts["diverged"],
            &counts["error"]
        ],
        [1, 1, 1, 1, 2],
        "{summary}"
    );
    assert_eq!(summary["exit_code"], 3);

    // JUnit: one suite per repro, the diverged one failing, the bad ones erroring, valid
    // against the published Ant JUnit schema.
    let x = std::fs::read_to_string(&junit).unwrap();
    assert_eq!(x.matches("<testsuite ").count(), 6, "{x}");
    assert_eq!(x.matches("<failure type=\"diverged\"").count(), 1, "{x}");
    assert_eq!(x.matches("<error type=\"exit 3\"").count(), 2, "{x}");
    assert!(x.contains("REPRODUCED the recorded failure"), "the report is the output: {x}");
    if let Some(py) = corpus_schema::schema_python() {
        corpus_schema::validate(&py, "junit", &junit);
        // The schema is strict: a suite without its required hostname is refused.
        let bad = at(&d, "bad-junit.xml");
        std::fs::write(&bad, x.replacen(" hostname=\"", " host=\"", 1)).unwrap();
        assert!(!corpus_schema::passes(&py, "junit", &bad));
    }
    // An existing JUnit file is not replaced without --force.
    let o = vmrr(&["replay", s(&corpus.join("hello.vmrrb")), "--junit", s(&junit)]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));

    // The same results judged again: no_longer_fails fails a run that asks for it.
    let report = at(&d, "run.jsonl");
    let o = vmrr(&["replay", s(&img_bundle), "--rebuild", "--image", s(&fixed), "--jobs", "1", "--json"]);
    assert_eq!(o.status.code(), Some(0), "no_longer_fails passes by default: {}", stderr(&o));
    std::fs::write(&report, &o.stdout).unwrap();
    let o = vmrr(&["merge", s(&report), "--fail-on", "diverged,no_longer_fails", "--json"]);
    let (entries, summary) = lines(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!((entries[0]["exit_code"].as_u64(), summary["exit_code"].as_u64()), (Some(1), Some(1)));
}

#[test]
fn shards_run_as_indexed_job_pods_merge_into_the_single_runs_verdicts() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let corpus = at(&d, "corpus");
    std::fs::create_dir(&corpus).unwrap();
    packed(&d, &corpus, "emulation-failure", &[]);
    packed(&d, &corpus, "hello", &[]);
    packed(&d, &corpus, "interrupts", &["--iterations", "5"]);
    packed(&d, &corpus, "pio-storm", &["--iterations", "3000"]);
    packed(&d, &corpus, "memory-churn", &["--iterations", "1", "--mem-mib", "16"]);
    packed(&d, &corpus, "tsc", &[]);

    let single = vmrr_env(&["replay", s(&corpus), "--json", "--jobs", "2"], &[]);
    let (all, single_summary) = lines(&single.stdout);
    assert_eq!(all.len(), 6, "{}", stderr(&single));
    let verdicts = |e: &[serde_json::Value]| {
        let mut v: Vec<(String, String)> = e
            .iter()
            .map(|x| {
                (x["path"].as_str().unwrap().to_string(), x["verdict"].as_str().unwrap_or("error").into())
            })
            .collect();
        v.sort();
        v
    };

    // Three pods of an Indexed Job: the index from Kubernetes, the count from the manifest.
    let mut reports = Vec::new();
    let mut seen = Vec::new();
    for i in 0..3 {
        let idx = i.to_string();
        let o = vmrr_env(
            &["replay", s(&corpus), "--json", "--jobs", "1"],
            &[("JOB_COMPLETION_INDEX", idx.as_str()), ("JOB_COMPLETIONS", "3")],
        );
        let (entries, summary) = lines(&o.stdout);
        assert_eq!(summary["shard"], serde_json::json!({"index": i, "count": 3}), "{summary}");
        assert_eq!(summary["corpus"], single_summary["corpus"]);
        seen.extend(verdicts(&entries).into_iter().map(|(p, _)| p));
        let path = at(&d, &format!("shard-{i}.jsonl"));
        std::fs::write(&path, &o.stdout).unwrap();
        reports.push(path);
    }
    let mut distinct = seen.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        (seen.len(), distinct.len()),
        (6, 6),
        "the shards are disjoint and cover the corpus: {seen:?}"
    );

    let args: Vec<&str> = ["merge", "--json"].into_iter().chain(reports.iter().map(|p| s(p))).collect();
    let o = vmrr(&args);
    let (merged, summary) = lines(&o.stdout);
    assert_eq!(verdicts(&merged), verdicts(&all), "merged shards = the single run");
    assert_eq!(summary["counts"], single_summary["counts"]);
    assert_eq!(summary["merged_shards"], serde_json::json!([0, 1, 2]));
    assert_eq!(o.status.code(), single.status.code(), "{}", stderr(&o));

    // Bad input to merge: a shard missing, a shard twice, another corpus's report.
    let o = vmrr(&["merge", s(&reports[0]), s(&reports[1])]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("shards missing: 2/3"), "{}", stderr(&o));
    let o = vmrr(&["merge", s(&reports[0]), s(&reports[1]), s(&reports[2]), s(&reports[0])]);
    assert!(stderr(&o).contains("was given already"), "{}", stderr(&o));
    let other = at(&d, "other.jsonl");
    std::fs::write(&other, vmrr(&["replay", s(&corpus.join("hello.vmrrb")), "--jobs", "1", "--json"]).stdout)
        .unwrap();
    let o = vmrr(&["merge", s(&reports[0]), s(&reports[1]), s(&reports[2]), s(&other)]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("other.jsonl: a report of another corpus"), "{}", stderr(&o));
    let (merged, _) =
        lines(&vmrr(&["merge", "--json", s(&reports[0]), s(&reports[1]), s(&reports[2]), s(&other)]).stdout);
    assert_eq!(merged.len(), 6, "the other reports are still merged");
    let junk = at(&d, "junk.jsonl");
    std::fs::write(&junk, b"{\"no\": 1}\n").unwrap();
    let o = vmrr(&["merge", s(&reports[0]), s(&reports[1]), s(&reports[2]), s(&junk)]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("junk.jsonl"), "{}", stderr(&o));

    // Bad shard settings are usage errors, before anything runs.
    for (args, env) in [
        (vec!["replay", s(&corpus), "--shard", "3/3"], vec![]),
        (vec!["replay", s(&corpus), "--shard", "x"], vec![]),
        (vec!["replay", s(&corpus)], vec![("JOB_COMPLETION_INDEX", "0")]),
        (vec!["replay", s(&corpus)], vec![("JOB_COMPLETION_INDEX", "4"), ("JOB_COMPLETIONS", "4")]),
    ] {
        let o = vmrr_env(&args, &env);
        assert_eq!(o.status.code(), Some(2), "{args:?} {env:?}: {}", stderr(&o));
    }
}

#[test]
fn segments_give_the_sequential_replays_verdict_and_first_divergence() {
    let Some((d, trace)) = recorded("pio-storm", &["--iterations", "2500", "--checkpoint-every", "500"])
    else {
        return;
    };
    // Where the five segments lie (each checks against the next one's first checkpoint).
    let (code, clean) = replay_json(&trace, &["--segments", "5"]);
    assert_eq!((code, clean["verdict"].as_str()), (Some(0), Some("completed")), "{clean}");
    let segs = clean["segments"].as_array().unwrap();
    assert_eq!(segs.len(), 5);
    let ends: Vec<u64> = segs[..4]
        .iter()
        .map(|s| s["checks"].as_array().unwrap().last().unwrap()["seq"].as_u64().unwrap())
        .collect();
    for s in segs {
        assert!(s["checks"].as_array().unwrap().iter().all(|c| c["equal"] == true), "{s}");
    }

    // A record tampered in the third segment (index 2).
    let target = (ends[1] + ends[2]) / 2;
    let tampered = at(&d, "tampered.vmrr");
    rewrite(&trace, &tampered, |seq, data| {
        if seq == target {
            data[0] ^= 0x5a;
        }
        seq == target
    });
    let (code, seq_rep) = replay_json(&tampered, &["--no-explain"]);
    assert_eq!((code, seq_rep["verdict"].as_str()), (Some(1), Some("diverged")), "{seq_rep}");
    let first = seq_rep["divergence"]["seq"].clone();
    assert_eq!(first, target, "{seq_rep}");
    let (code, par) = replay_json(&tampered, &["--no-explain", "--segments", "5", "--jobs", "2"]);
    assert_eq!((code, par["verdict"].as_str()), (Some(1), Some("diverged")), "{par}");
    assert_eq!(par["divergence"]["seq"], first, "same first divergence as the sequential replay");
    let paths: Vec<&str> =
        par["segments"].as_array().unwrap().iter().map(|s| s["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["completed", "completed", "diverged", "completed", "completed"]);

    // The segments run as separate processes (runners), merged.
    let mut files = Vec::new();
    for k in 0..5 {
        let o = vmrr(&[
            "replay",
            s(&tampered),
            "--no-explain",
            "--segments",
            "5",
            "--segment",
            &k.to_string(),
            "--json",
        ]);
        assert_eq!(o.status.code(), Some(if k == 2 { 1 } else { 0 }), "{}", stderr(&o));
        let f = at(&d, &format!("seg-{k}.json"));
        std::fs::write(&f, &o.stdout).unwrap();
        files.push(f);
    }
    let mut args = vec!["merge", "--json"];
    args.extend(files.iter().rev().map(|f| s(f)));
    let o = vmrr(&args);
    let merged: serde_json::Value = serde_json::from_slice(&o.stdout).expect("merged report");
    assert_eq!((o.status.code(), &merged["divergence"]["seq"]), (Some(1), &first), "{merged}");

    // One bundle per segment: each replays alone as its segment; merged, the same.
    let dir = at(&d, "segments");
    let o = vmrr(&["pack", s(&tampered), "--segments", "5", "-o", s(&dir)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut reports = Vec::new();
    for k in 0..5 {
        let b = dir.join(format!("seg-{k:03}-of-005.vmrrb"));
        let o = vmrr(&["replay", s(&b), "--no-explain", "--json"]);
        let f = at(&d, &format!("bundle-{k}.json"));
        std::fs::write(&f, &o.stdout).unwrap();
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("a segment report");
        assert_eq!(r["segment"]["index"], k, "{r}");
        reports.push(f);
    }
    let mut args = vec!["merge", "--json"];
    args.extend(reports.iter().map(|f| s(f)));
    let o = vmrr(&args);
    let merged: serde_json::Value = serde_json::from_slice(&o.stdout).expect("merged report");
    assert_eq!(merged["divergence"]["seq"], first, "{merged}");
    assert_eq!(merged["exits_replayed"], par["exits_replayed"], "{merged}");

    // A missing checkpoint: the segments that need it fail with exit 3 naming it; the
    // others still run.
    let holed = at(&d, "holed.vmrr");
    std::fs::copy(&trace, &holed).unwrap();
    copy_dir(&vmrr_engine::snapshot::dir_for_trace(&trace), &vmrr_engine::snapshot::dir_for_trace(&holed));
    let third = segs[3]["from_snapshot"].as_u64().unwrap();
    std::fs::remove_dir_all(vmrr_engine::snapshot::snapshot_dir(
        &vmrr_engine::snapshot::dir_for_trace(&holed),
        third,
    ))
    .unwrap();
    let o = vmrr(&["replay", s(&holed), "--segments", "5", "--segment", "3"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains(&format!("checkpoint {third} (snapshot {third}")), "{}", stderr(&o));
    let o = vmrr(&["replay", s(&holed), "--segments", "5"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("segment 2 of 5") && stderr(&o).contains("segment 3 of 5"), "{}", stderr(&o));
    // Segment 4 starts from a snapshot incremental on the missing one: named as such.
    assert!(
        stderr(&o).contains(&format!("needs snapshot {third}, its parent, which is missing")),
        "{}",
        stderr(&o)
    );
    for k in [0, 1] {
        assert!(
            stderr(&o).contains(&format!("segment {k} of 5: completed")),
            "the others ran: {}",
            stderr(&o)
        );
    }
}

#[test]
fn a_machine_that_differs_from_a_checkpoint_is_a_divergence_there() {
    let Some((d, trace)) =
        recorded("memory-churn", &["--iterations", "2", "--mem-mib", "16", "--checkpoint-every", "10"])
    else {
        return;
    };
    let (code, rep) = replay_json(&trace, &["--verify-checkpoints"]);
    assert_eq!((code, rep["verdict"].as_str()), (Some(0), Some("completed")), "{rep}");
    // One page a checkpoint stores, changed on disk: the replayed machine no longer equals
    // it, though every exit matches.
    let snaps = vmrr_engine::snapshot::dir_for_trace(&trace);
    let id = 3;
    let dir = vmrr_engine::snapshot::snapshot_dir(&snaps, id);
    let st = vmrr_engine::snapshot::load(&dir, u64::MAX).unwrap();
    let slot = st
        .state
        .slots
        .iter()
        .position(|s| s.stored_pages > 0 && !s.full)
        .expect("an incremental slot with pages");
    let page = (0..st.state.slots[slot].page_count()).find(|p| st.state.slots[slot].has_page(*p)).unwrap();
    let file = dir.join(&st.state.slots[slot].file);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[usize::try_from(page * 4096 + 100).unwrap()] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    let (code, rep) = replay_json(&trace, &["--verify-checkpoints"]);
    assert_eq!((code, rep["verdict"].as_str()), (Some(1), Some("diverged")), "{rep}");
    let div = &rep["divergence"];
    assert_eq!(div["expected"]["checkpoint"], id, "{div}");
    let gpa = st.state.slots[slot].gpa + page * 4096;
    assert!(div["summary"].as_str().unwrap().contains(&format!("1 page (first at {gpa:#x})")), "{div}");
    drop(d);
}

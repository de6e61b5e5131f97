//! `vmrr record --timing`, `vmrr profile` (tables, `--json`, `--vs`, `--svg`) and
//! `vmrr timeline` end to end, on real KVM recordings and on synthetic traces.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use vmrr_format::{Body, Direction, Io, Mmio, SyncMode, Timing, TraceWriter, WriterOptions};

fn ok(o: &std::process::Output) {
    assert_eq!(o.status.code(), Some(0), "stdout: {}\nstderr: {}", stdout(o), stderr(o));
}

fn json_of(o: &std::process::Output) -> Value {
    ok(o);
    serde_json::from_slice(&o.stdout).expect("one JSON object")
}

/// Records `guest` with `--timing` into `dir/name`; returns the trace and the summary.
fn record_timed(
    d: &tempfile::TempDir,
    name: &str,
    guest: &str,
    extra: &[&str],
) -> (std::path::PathBuf, Value) {
    let out = at(d, name);
    let mut args = vec!["record", "--guest", guest, "-o", s(&out), "--serial", "none", "--timing", "--json"];
    args.extend_from_slice(extra);
    let o = vmrr(&args);
    (out, summary(&o))
}

fn dist_is_ordered(d: &Value) {
    let g = |k: &str| d[k].as_u64().unwrap_or_else(|| panic!("{k} in {d}"));
    assert!(g("min") <= g("p50") && g("p50") <= g("p99") && g("p99") <= g("max"), "{d}");
    assert!(g("total") >= g("max") && g("samples") > 0, "{d}");
}

#[test]
fn profile_of_the_interrupts_guest_names_the_costliest_handler() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let (trace, sum) = record_timed(&d, "irq.vmrr", "interrupts", &[]);
    assert_eq!(sum["outcome"], "guest_exit", "{sum}");
    let exits = sum["exits"].as_u64().unwrap();
    let p = json_of(&vmrr(&["profile", s(&trace), "--json", "--top", "0"]));
    assert_eq!(p["timing"], true);
    assert_eq!(p["summary"]["exits"], exits);
    assert_eq!(p["summary"]["timed_exits"], exits);
    // Every exit is in exactly one kind, and one port for port I/O.
    let kinds = p["by_kind"].as_object().unwrap();
    let counted: u64 = kinds.values().map(|k| k["count"].as_u64().unwrap()).sum();
    assert_eq!(counted, exits);
    let io = kinds["io"]["count"].as_u64().unwrap();
    let ports: u64 = p["by_port"].as_object().unwrap().values().map(|k| k["count"].as_u64().unwrap()).sum();
    assert_eq!(ports, io);
    // The documented keys.
    for (name, k) in kinds {
        assert!(k["count"].is_u64() && k["share"].is_f64() && k["rank"].is_u64(), "{name}: {k}");
        if !k["handler_ns"].is_null() {
            dist_is_ordered(&k["handler_ns"]);
        }
    }
    // The guest halts between timer interrupts: vmrr's HLT handler waits for the timer, so
    // it is the costliest handler. The time axis adds up (FORMAT.md §5.4: one vCPU's span is
    // the sum of its handler and guest times as stored), and it is the recording's own
    // time: no longer than the run the recorder measured on its clock.
    let c = &p["costliest"]["handler"];
    assert_eq!(c["key"], "hlt", "{p}");
    dist_is_ordered(&c["handler_ns"]);
    let g = |k: &str| p["summary"][k].as_u64().unwrap();
    assert_eq!(g("span_ns"), g("handler_ns") + g("guest_ns"), "{}", p["summary"]);
    assert_eq!(
        g("handler_samples"),
        exits - 1,
        "every exit but the last carries its predecessor's handler time"
    );
    let secs = sum["seconds"].as_f64().unwrap();
    assert!((g("span_ns") as f64) < secs * 1e9, "span {} ns, run {secs} s", g("span_ns"));
    assert_eq!(p["by_kind"]["hlt"]["rank"], 1);
    // The costliest device is a port of the timer or the serial console.
    let dev = &p["costliest"]["device"];
    assert_eq!(dev["by"], "port");
    dist_is_ordered(&dev["handler_ns"]);
    // The text table names it with its percentiles.
    let o = vmrr(&["profile", s(&trace), "--by", "port"]);
    ok(&o);
    let text = stdout(&o);
    let line = text
        .lines()
        .find(|l| l.starts_with("costliest handler: kind hlt (p50 "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains(", p99 "), "{line}");
    assert!(text.contains("by port, sorted by total handler time"), "{text}");
    assert!(text.lines().any(|l| l.starts_with(dev["key"].as_str().unwrap())), "{text}");
}

#[test]
fn a_trace_without_timing_profiles_by_counts() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let out = at(&d, "plain.vmrr");
    ok(&vmrr(&["record", "--guest", "hello", "-o", s(&out), "--serial", "none", "--no-snapshot"]));
    let p = json_of(&vmrr(&["profile", s(&out), "--json"]));
    assert_eq!(p["timing"], false);
    assert!(p["summary"]["exits"].as_u64().unwrap() > 10);
    assert!(p["by_port"]["0x3f8:out"]["count"].as_u64().unwrap() > 5, "{p}");
    assert!(p["by_port"]["0x3f8:out"]["handler_ns"].is_null());
    let o = vmrr(&["profile", s(&out)]);
    ok(&o);
    assert!(
        stdout(&o).contains("no timing in this trace (record with --timing): counts only"),
        "{}",
        stdout(&o)
    );
    // Every handler total is zero: the table is in the order of the counts, and says so.
    assert!(stdout(&o).contains("by kind, sorted by count ("), "{}", stdout(&o));
    assert!(!stdout(&o).contains("handler time"), "{}", stdout(&o));
}

/// Long-mode ring-3 loop, `n` times: `out 0x5c0` (the storm sink), `out 0x80` (POST),
/// a 4-byte MMIO write to the sink page; then the debug-exit write.
fn mixed_storm(d: &tempfile::TempDir, n: u32) -> std::path::PathBuf {
    let mut code = vec![0xb9];
    code.extend_from_slice(&n.to_le_bytes()); // mov ecx, n
    code.extend_from_slice(&[0xbf, 0x00, 0x00, 0x00, 0xd0]); // mov edi, 0xd0000000
    code.extend_from_slice(&[
        0x66, 0xba, 0xc0, 0x05, 0xee, // top: mov dx, 0x5c0 ; out dx, al
        0x66, 0xba, 0x80, 0x00, 0xee, // mov dx, 0x80 ; out dx, al
        0x89, 0x07, // mov [rdi], eax
        0xff, 0xc9, // dec ecx
        0x75, 0xf0, // jnz top
        0x31, 0xc0, 0xe6, 0xf4, // xor eax, eax ; out 0xf4, al
        0xeb, 0xfe, // jmp $
    ]);
    let p = at(d, "mixed.bin");
    std::fs::write(&p, code).unwrap();
    p
}

#[test]
fn vs_shows_the_slowed_handler_and_nothing_else_out_of_its_spread() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let image = mixed_storm(&d, 3000);
    let (a, b) = (at(&d, "a.vmrr"), at(&d, "b.vmrr"));
    let args = |out: &Path| -> Vec<String> {
        [
            &["record"][..],
            &image_args(&image, "0x100000", "long"),
            &["--ring", "3", "-o", s(out), "--serial", "none", "--timing", "--no-snapshot"],
        ]
        .concat()
        .into_iter()
        .map(String::from)
        .collect()
    };
    let (aa, ba) = (args(&a), args(&b));
    let a_args: Vec<&str> = aa.iter().map(String::as_str).collect();
    let b_args: Vec<&str> = ba.iter().map(String::as_str).collect();
    // The same guest twice, at the same time (so both runs see the same load on the
    // machine), the second with a storm sink that spends 100 us on every access.
    let ca = MeasuredChild::spawn(&a_args);
    let cb = MeasuredChild::spawn_with(&b_args, &[("VMRR_TEST_SLOW_SINK", "storm:100")]);
    let (ma, mb) = (ca.wait(), cb.wait());
    assert_eq!((ma.code, mb.code), (Some(0), Some(0)), "{}\n{}", ma.stderr, mb.stderr);
    let cmp = |by: &str| -> BTreeMap<String, Value> {
        // Two recordings side by side on two shared cores: the slowed run keeps a CPU busier,
        // so its other handlers are preempted more (measured up to +37% at p50 under load).
        // The noise floor the test asks for covers that; the slowed handler is 5x and more.
        let v =
            json_of(&vmrr(&["profile", s(&a), "--vs", s(&b), "--json", "--top", "0", "--noise-floor", "50"]));
        v[format!("by_{by}")]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["key"].as_str().unwrap().to_string(), r.clone()))
            .collect()
    };
    let ports = cmp("port");
    let storm = &ports["0x5c0:out"];
    assert_eq!(storm["verdict"], "slower", "{storm}");
    assert!(storm["p50_ratio"].as_f64().unwrap() > 5.0, "{storm}");
    assert!(storm["ci"][0].as_f64().unwrap() > 1.0, "{storm}");
    assert_eq!((storm["count_a"].as_u64(), storm["count_b"].as_u64()), (Some(3000), Some(3000)));
    // Nothing else moved beyond its spread and the run-to-run noise floor (each has enough
    // exits for a verdict).
    let within = |r: &Value| matches!(r["verdict"].as_str(), Some("within_spread" | "within_noise"));
    let post = &ports["0x80:out"];
    assert!(within(post), "{post}");
    let mmio = cmp("mmio");
    assert!(within(&mmio["0xd0000000:write"]), "{mmio:?}");
    let kinds = cmp("kind");
    assert!(within(&kinds["mmio"]), "{kinds:?}");
    assert_eq!(kinds["io"]["verdict"], "slower", "io holds the slowed port: {kinds:?}");
    for (key, r) in ports.iter().chain(&mmio) {
        if key != "0x5c0:out" {
            assert!(within(r) || r["verdict"] == "no_timing", "{key}: {r}");
        }
    }
    // The text names the slowed handler and only it.
    let o = vmrr(&["profile", s(&a), "--vs", s(&b), "--by", "port", "--noise-floor", "50"]);
    ok(&o);
    let text = stdout(&o);
    assert!(
        text.lines().any(|l| l == "changed beyond the spread and the 50% noise floor: 0x5c0:out"),
        "{text}"
    );
    // The same run against itself: nothing changes, every interval contains 1.
    let v = json_of(&vmrr(&["profile", s(&a), "--vs", s(&a), "--json"]));
    for r in v["by_port"].as_array().unwrap() {
        assert!(r["verdict"] == "within_spread" || r["verdict"] == "no_timing", "{r}");
    }
}

#[test]
fn svg_pictures_are_written() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let (trace, _) = record_timed(&d, "irq.vmrr", "interrupts", &[]);
    let dir = at(&d, "pics");
    ok(&vmrr(&["profile", s(&trace), "--svg", s(&dir), "--by", "port"]));
    for (f, must) in [("exit-rate.svg", ">io ("), ("handler-latency.svg", ": p50 ")] {
        let svg = std::fs::read_to_string(dir.join(f)).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{f}");
        assert!(svg.contains("<polyline") && svg.contains(must), "{f}: {svg}");
        assert!(!svg.contains("NaN"), "{f}");
    }
}

/// Checks a Chrome trace-event file against the format's rules: every event has a name,
/// a known phase, a pid, and the fields its phase needs with the right types; complete
/// slices on one track are in time order and do not overlap.
fn check_trace_events(v: &Value) -> BTreeMap<String, usize> {
    let events = v["traceEvents"].as_array().expect("traceEvents is an array");
    let mut phases = BTreeMap::new();
    let mut last_end: BTreeMap<(u64, u64), f64> = BTreeMap::new();
    for e in events {
        let ph = e["ph"].as_str().unwrap_or_else(|| panic!("no ph: {e}"));
        *phases.entry(ph.to_string()).or_insert(0) += 1;
        assert!(e["name"].is_string(), "{e}");
        assert!(e["pid"].is_u64(), "{e}");
        match ph {
            "M" => assert!(e["args"]["name"].is_string() && e["tid"].is_u64(), "{e}"),
            "X" => {
                let (ts, dur) = (e["ts"].as_f64().unwrap(), e["dur"].as_f64().unwrap());
                assert!(ts >= 0.0 && dur >= 0.0, "{e}");
                let track = (e["pid"].as_u64().unwrap(), e["tid"].as_u64().unwrap());
                let end = last_end.entry(track).or_insert(0.0);
                assert!(ts + 1e-3 >= *end, "slice at {ts} starts before the previous one ends ({end}): {e}");
                *end = ts + dur;
            }
            "i" => {
                assert!(e["ts"].as_f64().unwrap() >= 0.0 && e["tid"].is_u64(), "{e}");
                assert!(matches!(e["s"].as_str(), Some("t" | "p" | "g")), "{e}");
            }
            "C" => {
                assert!(e["ts"].as_f64().unwrap() >= 0.0, "{e}");
                let args = e["args"].as_object().unwrap();
                assert!(!args.is_empty() && args.values().all(Value::is_number), "{e}");
            }
            other => panic!("unexpected phase {other}: {e}"),
        }
    }
    phases
}

fn timeline(trace: &Path, out: &Path, extra: &[&str]) -> (std::process::Output, Value) {
    let mut args = vec!["timeline", s(trace), "-o", s(out)];
    args.extend_from_slice(extra);
    let o = vmrr(&args);
    let v = std::fs::read(out).ok().map(|b| serde_json::from_slice(&b).expect("the file parses"));
    (o, v.unwrap_or(Value::Null))
}

#[test]
fn timeline_of_a_recording_follows_the_trace_event_format() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let (trace, sum) = record_timed(&d, "irq.vmrr", "interrupts", &[]);
    let out = at(&d, "run.json");
    // A replay report naming a divergence at exit 5 (as `vmrr replay --json` writes it).
    let report = at(&d, "report.json");
    std::fs::write(
        &report,
        r#"{"outcome":"diverged","divergence":{"seq":5,"reason":"test"},"failure":null}"#,
    )
    .unwrap();
    let (o, v) = timeline(&trace, &out, &["--replay-report", s(&report)]);
    ok(&o);
    let phases = check_trace_events(&v);
    let events = v["traceEvents"].as_array().unwrap();
    let exits = sum["exits"].as_u64().unwrap();
    assert_eq!(phases["X"] as u64, exits, "one slice per exit");
    assert!(phases["C"] >= 1);
    let named =
        |prefix: &str| events.iter().filter(|e| e["name"].as_str().unwrap().starts_with(prefix)).count();
    assert_eq!(named("interrupt 0x20") as u64, sum["interrupts"].as_u64().unwrap());
    assert_eq!(named("divergence"), 1);
    assert_eq!(named("thread_name"), 1, "one track: one vCPU");
    assert!(v["otherData"]["mode"].as_str().unwrap().starts_with("one slice per exit"));
    // Slices carry their handler time in dur, and guest time in args.
    let io = events.iter().find(|e| e["name"] == "io 0x5b0:out").expect("the timer port");
    assert!(io["args"]["guest_ns"].is_u64() && io["args"]["seq"].is_u64(), "{io}");
}

#[test]
fn timeline_marks_the_failure_and_refuses_bad_arguments() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let out = at(&d, "fail.vmrr");
    let o = vmrr(&["record", "--guest", "emulation-failure", "-o", s(&out), "--serial", "none", "--timing"]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    let json = at(&d, "fail.json");
    let (o, v) = timeline(&out, &json, &[]);
    ok(&o);
    check_trace_events(&v);
    assert!(
        v["traceEvents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "failure: emulation_failure" && e["ph"] == "i"),
        "no failure instant"
    );
    // The output is an input: refused, nothing written over the trace.
    let before = std::fs::read(&out).unwrap();
    assert_eq!(vmrr(&["timeline", s(&out), "-o", s(&out)]).status.code(), Some(2));
    assert_eq!(std::fs::read(&out).unwrap(), before);
    // A report that is not one: invalid input; a missing one: usage.
    let bad = at(&d, "bad.json");
    std::fs::write(&bad, b"{\"outcome\": 1, \"divergence\": {\"seq\": \"x\"}}").unwrap();
    let o = vmrr(&["timeline", s(&out), "-o", s(&at(&d, "x.json")), "--replay-report", s(&bad)]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("bad.json"), "{}", stderr(&o));
    assert!(!at(&d, "x.json").exists(), "no partial output");
    let o =
        vmrr(&["timeline", s(&out), "-o", s(&at(&d, "x.json")), "--replay-report", s(&at(&d, "none.json"))]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// A synthetic timed trace of `n` exits: IO to two ports and MMIO, 5 us in the guest,
/// handlers of 1-3 us, an interrupt every 1000 exits.
fn synthetic(path: &Path, n: u64) {
    let opts = WriterOptions { timing: true, sync: SyncMode::Never, ..Default::default() };
    let mut w = TraceWriter::create(path, opts).unwrap();
    let mut rng = Rng(42);
    for i in 0..n {
        let handler = (i > 0).then(|| 1000 + rng.next() % 2000);
        let t = Timing::from_ns(handler, 5000 + rng.next() % 500);
        let body = match i % 3 {
            0 => Body::Io(Io { direction: Direction::Out, size: 1, port: 0x3f8, count: 1, data: b"x" }),
            1 => Body::Io(Io { direction: Direction::In, size: 1, port: 0x3fd, count: 1, data: b"`" }),
            _ => Body::Mmio(Mmio {
                phys_addr: 0xd000_0000,
                len: 4,
                is_write: true,
                data: [1, 0, 0, 0, 0, 0, 0, 0],
            }),
        };
        w.append_timed(0, body, None, t).unwrap();
        if i % 1000 == 999 {
            w.append(0, Body::Interrupt(vmrr_format::Interrupt { vector: 0x20, source: 0 }), None).unwrap();
        }
    }
    w.finish().unwrap();
}

#[test]
fn a_ten_million_exit_timeline_is_aggregated_in_bounded_memory_and_size() {
    let d = tmp();
    let n = std::env::var("VMRR_TIMELINE_EXITS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000_000u64);
    let trace = at(&d, "big.vmrr");
    synthetic(&trace, n);
    let small = at(&d, "small.vmrr");
    synthetic(&small, 1000);
    let out = at(&d, "big.json");
    let m = vmrr_measured(&["timeline", s(&trace), "-o", s(&out)]);
    assert_eq!(m.code, Some(0), "{}", m.stderr);
    let tiny = vmrr_measured(&["timeline", s(&small), "-o", s(&at(&d, "small.json"))]);
    assert_eq!(tiny.code, Some(0), "{}", tiny.stderr);
    // Profiling the same trace streams too. (Measured before this test allocates much
    // itself: a child's peak includes its parent's from before `exec`.)
    let p = vmrr_measured(&["profile", s(&trace), "--json", "--by", "port"]);
    assert_eq!(p.code, Some(0), "{}", p.stderr);
    assert!(p.max_rss_kib <= tiny.max_rss_kib + 16 * 1024, "profile peak {} KiB", p.max_rss_kib);
    let size = std::fs::metadata(&out).unwrap().len();
    eprintln!(
        "timeline of {n} exits: {size} bytes, peak RSS {} KiB (1,000 exits: {} KiB)",
        m.max_rss_kib, tiny.max_rss_kib
    );
    // Streamed: memory does not grow with the trace; aggregated: the file is bounded by
    // the number of windows (50,000 per vCPU at most), not by the exits.
    assert!(m.max_rss_kib <= tiny.max_rss_kib + 16 * 1024, "peak {} KiB", m.max_rss_kib);
    assert!(size < 64 << 20, "{size} bytes");
    let v: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let phases = check_trace_events(&v);
    let mode = v["otherData"]["mode"].as_str().unwrap();
    assert!(mode.starts_with("aggregated"), "{mode}");
    assert!(m.stderr.contains("aggregated per"), "{}", m.stderr);
    // Every exit is counted in some window's slices.
    let counted: u64 = v["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ph"] == "X")
        .map(|e| e["args"]["exits"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, n);
    assert!(phases["X"] as u64 <= 3 * 50_000 + 3, "{phases:?}");
    let pj: Value = serde_json::from_slice(&p.stdout).unwrap();
    assert_eq!(pj["summary"]["exits"], n);
    assert_eq!(pj["by_port"]["0x3fd:in"]["count"], n / 3);
}

/// The design measurement behind the time codes (docs/PERFORMANCE.md): the compressed size
/// per exit of a real `pio-storm` trace with its timing payload as recorded, as two exact
/// nanosecond `u32`s (the stored values plus jitter drawn within each code's range, which
/// is what a nanosecond clock adds), as `u32`s rounded to fewer significant bits, and
/// without it. Run with
/// `cargo test --release --test profile -- --ignored --nocapture timing_encodings`.
#[test]
#[ignore = "a measurement, not a check"]
fn timing_encodings_compared() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let (trace, _) = record_timed(&d, "storm.vmrr", "pio-storm", &["--iterations", "60000", "--no-snapshot"]);
    let mut r = vmrr_format::TraceReader::open(&trace).unwrap();
    let mut rng = Rng(7);
    let round = |ns: u64, bits: u32| -> u64 {
        if ns < 1 << (bits + 1) {
            return ns;
        }
        let e = 63 - ns.leading_zeros() - bits;
        ((ns + (1 << (e - 1))) >> e) << e
    };
    let names = [
        "time codes (as recorded)",
        "exact ns, 2 x u32",
        "u32, 5 significant bits",
        "u32, 7 significant bits",
        "no timing payload",
    ];
    let mut bufs = vec![Vec::new(); names.len()];
    let mut exits = 0u64;
    while let Some(rec) = r.next_record() {
        let rec = rec.unwrap();
        let mut raw = Vec::new();
        vmrr_format::encode(&rec, &mut raw).unwrap();
        raw[8..16].copy_from_slice(&0u64.to_le_bytes()); // as SEQ_DELTA stores contiguous records
        let Some(t) = rec.timing else {
            bufs.iter_mut().for_each(|b| b.extend_from_slice(&raw));
            continue;
        };
        exits += 1;
        let n = raw.len();
        let jitter = |code: u16, rng: &mut Rng| {
            vmrr_format::timing::code_bounds(code).map_or(0, |(lo, hi)| lo + rng.next() % (hi - lo + 1))
        };
        let (h, g) = (jitter(t.prev_handler, &mut rng), jitter(t.guest, &mut rng));
        for (v, b) in bufs.iter_mut().enumerate() {
            let mut rr = raw.clone();
            let mut put = |h: u64, g: u64| {
                rr[n - 8..n - 4].copy_from_slice(&u32::try_from(h).unwrap_or(u32::MAX).to_le_bytes());
                rr[n - 4..n].copy_from_slice(&u32::try_from(g).unwrap_or(u32::MAX).to_le_bytes());
            };
            match v {
                1 => put(h, g),
                2 => put(round(h, 4), round(g, 4)),
                3 => put(round(h, 6), round(g, 6)),
                4 => {
                    rr.truncate(n - 8);
                    rr[0..4].copy_from_slice(&u32::try_from(n - 8).unwrap().to_le_bytes());
                    rr[20] &= !2;
                }
                _ => {}
            }
            b.extend_from_slice(&rr);
        }
    }
    for (name, b) in names.iter().zip(&bufs) {
        let stored: usize = b.chunks(256 << 10).map(|c| zstd::bulk::compress(c, 3).unwrap().len()).sum();
        eprintln!("{name:<28} {:.2} compressed bytes per exit", stored as f64 / exits as f64);
    }
}

#[test]
fn a_damaged_trace_profiles_what_is_readable_and_exits_3() {
    let d = tmp();
    let trace = at(&d, "damaged.vmrr");
    let opts =
        WriterOptions { timing: true, chunk_target: 4096, sync: SyncMode::Never, ..Default::default() };
    let mut w = TraceWriter::create(&trace, opts).unwrap();
    for i in 0..3000u64 {
        let io = Io { direction: Direction::Out, size: 1, port: 0x3f8, count: 1, data: b"x" };
        w.append_timed(0, Body::Io(io), None, Timing::from_ns((i > 0).then_some(900), 4000)).unwrap();
    }
    w.finish().unwrap();
    let mut bytes = std::fs::read(&trace).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&trace, &bytes).unwrap();
    let o = vmrr(&["profile", s(&trace), "--json"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("damaged.vmrr"), "{}", stderr(&o));
    let p: Value = serde_json::from_slice(&o.stdout).expect("the readable part is still profiled");
    let n = p["summary"]["exits"].as_u64().unwrap();
    assert!(n > 1000 && n < 3000, "{n}");
    assert!(p["summary"]["missing_records"].as_u64().unwrap() > 0);
    assert_eq!(p["by_port"]["0x3f8:out"]["handler_ns"]["p50"], 904); // 900 ns as stored
    let out = at(&d, "damaged.json");
    let (o, v) = timeline(&trace, &out, &[]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    check_trace_events(&v);
    assert!(v["traceEvents"].as_array().unwrap().iter().any(|e| e["name"] == "records missing"));
}

#[test]
fn a_timed_recording_replays_and_verifies() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let (trace, _) = record_timed(&d, "irq.vmrr", "interrupts", &["--checkpoint-every", "20"]);
    let o = vmrr(&["replay", s(&trace), "--json"]);
    let rep = json_of(&o);
    assert_eq!(rep["outcome"], "completed", "{rep}");
    ok(&vmrr(&["verify", s(&trace)]));
    // A repaired copy keeps the timing (and announces it).
    let copy = at(&d, "copy.vmrr");
    ok(&vmrr(&["verify", s(&trace), "--repair", s(&copy)]));
    assert!(vmrr_format::TraceReader::open(&copy).unwrap().header().has_timing());
    let p = json_of(&vmrr(&["profile", s(&copy), "--json"]));
    assert_eq!(p["summary"]["timed_exits"], p["summary"]["exits"]);
    // Exits followed by a checkpoint are counted apart.
    assert!(p["checkpoints"]["count"].as_u64().unwrap() > 0, "{}", p["checkpoints"]);
}

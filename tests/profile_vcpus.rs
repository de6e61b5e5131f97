//! `vmrr profile --by vcpu` and `vmrr timeline` on traces of several vCPUs and device
//! threads, written with the format's writer (no KVM needed).

mod common;
use common::*;

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use vmrr_format::timing::{time_code, time_from_code};
use vmrr_format::{Body, Direction, Io, Mmio, Record, SyncMode, Timing, TraceWriter, WriterOptions};

/// The first `vcpu` value of a device thread (format 1.2).
const DEVICE: u32 = 0x8000_0000;

/// What each vCPU does: its exit, its handler time and its guest time (ns).
struct Cpu {
    body: Body<'static>,
    handler_ns: u64,
    guest_ns: u64,
}

fn cpus() -> [Cpu; 3] {
    [
        Cpu {
            body: Body::Io(Io { direction: Direction::Out, size: 1, port: 0x3f8, count: 1, data: b"x" }),
            handler_ns: 1000,
            guest_ns: 500,
        },
        Cpu {
            body: Body::Mmio(Mmio {
                phys_addr: 0xd000_0000,
                len: 4,
                is_write: true,
                data: [1, 0, 0, 0, 0, 0, 0, 0],
            }),
            handler_ns: 2000,
            guest_ns: 250,
        },
        Cpu { body: Body::Hlt, handler_ns: 4000, guest_ns: 8000 },
    ]
}

/// Durations as the trace stores them (time codes).
fn stored(ns: u64) -> u64 {
    time_from_code(time_code(ns)).expect("a valid code")
}

/// What the test expects of the trace [`write_trace`] wrote.
#[derive(Default)]
struct Expected {
    /// Exits per vCPU.
    exits: [u64; 3],
    /// Each vCPU's exit instants on its axis, in ns.
    instants: [Vec<u64>; 3],
    /// Device events: (track tid, name, instant in ns: the latest exit of any vCPU).
    device: Vec<(u64, String, u64)>,
}

/// A timed trace with vCPUs 0, 1 and 2 exiting interleaved (30, 20 and 10 exits), device
/// thread 0 writing guest memory and device thread 1 changing an IRQ line (an event kind
/// this reader does not know, as format 1.2's is to it).
fn write_trace(path: &Path) -> Expected {
    let opts =
        WriterOptions { timing: true, guest_writes: true, sync: SyncMode::Never, ..Default::default() };
    let mut w = TraceWriter::create(path, opts).unwrap();
    let cpus = cpus();
    let mut e = Expected::default();
    let mut last = [0u64; 3];
    // vCPU 0 every step, vCPU 1 two steps of three, vCPU 2 one of three.
    for step in 0..30u64 {
        let order: &[usize] = match step % 3 {
            0 => &[2, 0, 1],
            1 => &[0, 1],
            _ => &[0],
        };
        for &v in order {
            let c = &cpus[v];
            let first = e.exits[v] == 0;
            let t = Timing::from_ns((!first).then_some(c.handler_ns), c.guest_ns);
            w.append_timed(u32::try_from(v).unwrap(), c.body, None, t).unwrap();
            last[v] += if first { 0 } else { stored(c.handler_ns) } + stored(c.guest_ns);
            e.instants[v].push(last[v]);
            e.exits[v] += 1;
        }
        let now = *last.iter().max().unwrap();
        if step % 5 == 4 {
            let seq = w.append_guest_write(DEVICE, 0x8000 + step, b"hello").unwrap();
            e.device.push((u64::from(DEVICE) + 1, "guest write".into(), now));
            let rec = Record::new(
                seq + 1,
                DEVICE + 1,
                Body::Unknown { kind: 0x8009, body_size: 8, flags: 0, bytes: &[1, 0, 0, 0, 0, 0, 0, 0] },
            );
            w.append_record(&rec).unwrap();
            e.device.push((u64::from(DEVICE) + 2, "unknown_event 0x8009".into(), now));
        }
    }
    w.finish().unwrap();
    e
}

fn ok(o: &std::process::Output) {
    assert_eq!(o.status.code(), Some(0), "stdout: {}\nstderr: {}", stdout(o), stderr(o));
}

fn json_of(o: &std::process::Output) -> Value {
    ok(o);
    serde_json::from_slice(&o.stdout).expect("one JSON object")
}

#[test]
fn profile_by_vcpu_has_one_row_per_vcpu_with_its_own_times() {
    let d = tmp();
    let trace = at(&d, "three.vmrr");
    let e = write_trace(&trace);
    let p = json_of(&vmrr(&["profile", s(&trace), "--json", "--by", "vcpu"]));
    let total: u64 = e.exits.iter().sum();
    assert_eq!(p["summary"]["exits"], total);
    assert_eq!(p["summary"]["vcpus"], 3);
    let rows = p["by_vcpu"].as_object().expect("by_vcpu");
    assert_eq!(rows.keys().map(String::as_str).collect::<Vec<_>>(), ["vcpu0", "vcpu1", "vcpu2"], "{p}");
    for (v, c) in cpus().iter().enumerate() {
        let r = &rows[&format!("vcpu{v}")];
        assert_eq!(r["count"], e.exits[v], "{r}");
        let share = r["share"].as_f64().unwrap();
        assert!((share - e.exits[v] as f64 / total as f64).abs() < 1e-9, "{r}");
        // Every exit but the vCPU's last has its handler time, all equal to this vCPU's.
        let h = &r["handler_ns"];
        assert_eq!(h["samples"], e.exits[v] - 1, "{r}");
        assert_eq!(
            (h["min"].as_u64(), h["max"].as_u64()),
            (Some(stored(c.handler_ns)), Some(stored(c.handler_ns)))
        );
        let g = &r["guest_ns"];
        assert_eq!(g["samples"], e.exits[v], "{r}");
        assert_eq!(
            (g["min"].as_u64(), g["max"].as_u64()),
            (Some(stored(c.guest_ns)), Some(stored(c.guest_ns)))
        );
    }
    // The rows add up to the exits and rank by handler time: vCPU 0 has 29 x 1 us, vCPU 1
    // 19 x 2 us, vCPU 2 9 x 4 us.
    let rank = |k: &str| rows[k]["rank"].as_u64().unwrap();
    assert_eq!((rank("vcpu1"), rank("vcpu2"), rank("vcpu0")), (1, 2, 3));
    // The other groupings follow each vCPU's handler times too: the port is vCPU 0's.
    assert_eq!(p["by_port"]["0x3f8:out"]["handler_ns"]["max"], stored(1000));
    assert_eq!(p["by_kind"]["hlt"]["handler_ns"]["min"], stored(4000));
    // The span is the longest vCPU axis, not their sum.
    let span = e.instants.iter().map(|i| *i.last().unwrap()).max().unwrap();
    assert_eq!(p["summary"]["span_ns"], span);

    let o = vmrr(&["profile", s(&trace), "--by", "vcpu"]);
    ok(&o);
    let text = stdout(&o);
    assert!(text.contains("on 3 vCPUs"), "{text}");
    assert!(text.contains("by vcpu, sorted by total handler time (3 of 3 keys):"), "{text}");
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("vcpu")).collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("vcpu1 ") && lines[0].split_whitespace().nth(1) == Some("20"), "{text}");

    // A comparison with itself: the same three keys, counts on both sides.
    let c = json_of(&vmrr(&["profile", s(&trace), "--vs", s(&trace), "--json"]));
    let rows = c["by_vcpu"].as_array().expect("by_vcpu");
    let counts: BTreeMap<&str, (u64, u64)> = rows
        .iter()
        .map(|r| {
            (r["key"].as_str().unwrap(), (r["count_a"].as_u64().unwrap(), r["count_b"].as_u64().unwrap()))
        })
        .collect();
    assert_eq!(counts, BTreeMap::from([("vcpu0", (30, 30)), ("vcpu1", (20, 20)), ("vcpu2", (10, 10))]));
    let o = vmrr(&["profile", s(&trace), "--vs", s(&trace), "--by", "vcpu"]);
    ok(&o);
    assert!(stdout(&o).contains("by vcpu: "), "{}", stdout(&o));
}

#[test]
fn one_vcpu_is_one_row() {
    let d = tmp();
    let trace = at(&d, "one.vmrr");
    let mut w =
        TraceWriter::create(&trace, WriterOptions { sync: SyncMode::Never, ..Default::default() }).unwrap();
    for _ in 0..5 {
        w.append(0, Body::Hlt, None).unwrap();
    }
    w.finish().unwrap();
    let p = json_of(&vmrr(&["profile", s(&trace), "--json"]));
    let rows = p["by_vcpu"].as_object().unwrap();
    assert_eq!(rows.len(), 1, "{p}");
    assert_eq!(rows["vcpu0"]["count"], 5);
    assert_eq!(rows["vcpu0"]["share"], 1.0);
    assert!(rows["vcpu0"]["handler_ns"].is_null(), "no timing: counts only");
}

#[test]
fn timeline_has_a_track_per_vcpu_and_per_device_thread() {
    let d = tmp();
    let trace = at(&d, "three.vmrr");
    let e = write_trace(&trace);
    let out = at(&d, "three.json");
    ok(&vmrr(&["timeline", s(&trace), "-o", s(&out)]));
    let v: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let events = v["traceEvents"].as_array().unwrap();
    let names: BTreeMap<u64, &str> = events
        .iter()
        .filter(|e| e["name"] == "thread_name")
        .map(|e| (e["tid"].as_u64().unwrap(), e["args"]["name"].as_str().unwrap()))
        .collect();
    let dev = u64::from(DEVICE);
    assert_eq!(
        names,
        BTreeMap::from([
            (1, "vCPU 0"),
            (2, "vCPU 1"),
            (3, "vCPU 2"),
            (dev + 1, "device 0"),
            (dev + 2, "device 1")
        ]),
        "one thread_name per track"
    );
    // Every exit is a slice on its vCPU's track, named by its kind, at its instant on that
    // vCPU's own axis (increasing along the track).
    let kinds = ["io 0x3f8:out", "mmio 0xd0000000:write", "hlt"];
    for (cpu, kind) in kinds.iter().enumerate() {
        let tid = cpu as u64 + 1;
        let slices: Vec<&Value> = events.iter().filter(|e| e["ph"] == "X" && e["tid"] == tid).collect();
        assert_eq!(slices.len() as u64, e.exits[cpu], "vCPU {cpu}");
        assert!(slices.iter().all(|s| s["name"] == *kind), "vCPU {cpu}: {slices:?}");
        let ts: Vec<f64> = slices.iter().map(|s| s["ts"].as_f64().unwrap()).collect();
        assert!(ts.windows(2).all(|w| w[0] < w[1]), "vCPU {cpu}: {ts:?}");
        for (t, want) in ts.iter().zip(&e.instants[cpu]) {
            assert!((t - *want as f64 / 1000.0).abs() < 1e-6, "vCPU {cpu}: {t} us, want {want} ns");
        }
        // Each slice lasts its handler time (the vCPU's last has none).
        let c = &cpus()[cpu];
        let durs: Vec<f64> = slices.iter().map(|s| s["dur"].as_f64().unwrap()).collect();
        assert!(
            durs[..durs.len() - 1].iter().all(|d| (d - stored(c.handler_ns) as f64 / 1000.0).abs() < 1e-6)
        );
        assert_eq!(durs.last(), Some(&0.0));
    }
    assert!(
        events.iter().filter(|e| e["ph"] == "X").all(|e| e["tid"].as_u64().unwrap() <= 3),
        "no exit on a device track"
    );
    // Device events: instants on their thread's track, at the latest exit of any vCPU.
    let device: Vec<(u64, String, f64)> = events
        .iter()
        .filter(|e| e["ph"] == "i" && e["tid"].as_u64().unwrap() > dev)
        .map(|e| {
            (e["tid"].as_u64().unwrap(), e["name"].as_str().unwrap().to_string(), e["ts"].as_f64().unwrap())
        })
        .collect();
    assert_eq!(device.len(), e.device.len(), "{device:?}");
    for ((tid, name, ts), (want_tid, want_name, want_ns)) in device.iter().zip(&e.device) {
        assert_eq!((tid, name), (want_tid, want_name));
        assert!((ts - *want_ns as f64 / 1000.0).abs() < 1e-6, "{name}: {ts} us, want {want_ns} ns");
    }
    let write = events.iter().find(|e| e["name"] == "guest write").unwrap();
    assert_eq!(
        (write["args"]["gpa"].as_u64(), write["args"]["len"].as_u64()),
        (Some(0x8004), Some(5)),
        "{write}"
    );
    // A rate counter per vCPU, none for the device threads.
    let counters: std::collections::BTreeSet<&str> =
        events.iter().filter(|e| e["ph"] == "C").map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(counters, ["exits/s vCPU 0", "exits/s vCPU 1", "exits/s vCPU 2"].into_iter().collect());
}

#[test]
fn aggregated_timeline_keeps_the_tracks_and_counts_every_exit() {
    let d = tmp();
    let trace = at(&d, "three.vmrr");
    let e = write_trace(&trace);
    let out = at(&d, "agg.json");
    ok(&vmrr(&["timeline", s(&trace), "-o", s(&out), "--aggregate-above", "10"]));
    let v: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let events = v["traceEvents"].as_array().unwrap();
    assert!(v["otherData"]["mode"].as_str().unwrap().starts_with("aggregated"));
    for cpu in 0..3usize {
        let exits: u64 = events
            .iter()
            .filter(|e| e["ph"] == "X" && e["tid"] == cpu as u64 + 1)
            .map(|e| e["args"]["exits"].as_u64().unwrap())
            .sum();
        assert_eq!(exits, e.exits[cpu], "vCPU {cpu}");
    }
    let device =
        events.iter().filter(|e| e["ph"] == "i" && e["tid"].as_u64().unwrap() > u64::from(DEVICE)).count();
    assert_eq!(device, e.device.len());
}

//! `vmrr bench --quick --json --plot DIR` on real KVM: every documented figure is present
//! under its stable name with a plausible value, and the charts are written. No figure is
//! compared with a time: the machine is shared and noisy (docs/PERFORMANCE.md has them).

mod common;
use common::*;

/// Keys documented in docs/PERFORMANCE.md ("`vmrr bench --json` keys") that hold one
/// positive number.
const NUMBERS: &[&str] = &[
    "exit_ns_floor",
    "record_ns_per_exit",
    "record_ns_per_exit_sustained_zstd",
    "plain_exits_per_s",
    "record_exits_per_s",
    "replay_exits_per_s",
    "replay_vs_record",
    "bytes_per_exit",
    "raw_bytes_per_exit",
    "decode_records_per_s",
    "resets_per_s",
    "reset_cycles_per_s",
    "seconds",
];
/// Keys holding an object of memory size (MiB) -> ms.
const BY_MEMORY: &[&str] = &[
    "restore_ms",
    "restore_warm_ms",
    "restore_remap_ms",
    "restore_remap_whole_ms",
    "restore_remap_load_ms",
    "memslot_ms",
];

fn positive(v: &serde_json::Value, what: &str) -> f64 {
    let x = v.as_f64().unwrap_or_else(|| panic!("{what} is not a number: {v}"));
    assert!(x.is_finite() && x > 0.0, "{what} = {x}");
    x
}

#[test]
fn quick_bench_reports_every_documented_figure() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let plots = at(&d, "img");
    let o = vmrr(&["bench", "--quick", "--json", "--plot", s(&plots)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("one JSON object on stdout");
    assert_eq!(r["quick"], true);
    for k in NUMBERS {
        positive(&r[*k], k);
    }
    // record_overhead is 1 - record/plain: below 1 while recording runs at all, and may be
    // negative in noise.
    for o in [&r["record_overhead"], &r["mmio"]["record_overhead"]] {
        let x = o.as_f64().expect("record_overhead");
        assert!(x.is_finite() && x < 1.0 && x > -1.0, "record_overhead = {x}");
    }
    for g in ["plain_exits_per_s", "record_exits_per_s", "replay_exits_per_s", "replay_vs_record"] {
        positive(&r["mmio"][g], &format!("mmio.{g}"));
    }
    for k in BY_MEMORY {
        for mib in ["128", "1024", "8192"] {
            positive(&r[*k][mib], &format!("{k}.{mib}"));
        }
    }
    for pct in ["1", "10"] {
        for k in [
            "capture_pause_ms",
            "capture_durable_ms",
            "capture_pause_stop_world_ms",
            "capture_pause_4_vcpus_ms",
        ] {
            positive(&r[k][pct], &format!("{k}.{pct}"));
        }
        // A background capture is durable no sooner than its pause ends.
        assert!(r["capture_durable_ms"][pct].as_f64() >= r["capture_pause_ms"][pct].as_f64());
    }
    // Fractions of throughput lost: below 1 while the guest runs at all, maybe negative
    // in noise.
    for k in ["checkpoint_overhead", "checkpoint_overhead_stop_world", "checkpoint_overhead_dirty_log_only"] {
        let x = r[k].as_f64().unwrap_or_else(|| panic!("{k}: {}", r[k]));
        assert!(x.is_finite() && x < 1.0 && x > -1.0, "{k} = {x}");
    }
    positive(&r["checkpoint_overhead_dirty_pct_per_s"], "checkpoint_overhead_dirty_pct_per_s");
    // Compared figures carry their 95% interval (docs/PERFORMANCE.md): the storms' always
    // (the quick run repeats them at least 6 times), the checkpoint overhead's only with 6
    // repetitions or more (the quick run does one: null, and it says so).
    let interval = |fig: &serde_json::Value, ci: &serde_json::Value, what: &str| -> bool {
        if ci.is_null() {
            return false;
        }
        let (lo, hi) = (ci[0].as_f64().expect(what), ci[1].as_f64().expect(what));
        let x = fig.as_f64().expect(what);
        assert!(lo <= x && x <= hi, "{what}: {x} outside [{lo}, {hi}]");
        true
    };
    for (m, storm) in [(&r, "pio-storm"), (&r["mmio"], "mmio-storm")] {
        for k in [
            "plain_exits_per_s",
            "record_exits_per_s",
            "replay_exits_per_s",
            "record_overhead",
            "replay_vs_record",
        ] {
            assert!(
                interval(&m[k], &m[format!("{k}_ci95")], k),
                "{storm}: {k}_ci95 = {}",
                m[format!("{k}_ci95")]
            );
        }
        let i = &r["intervals"][storm];
        assert!(i["repetitions"].as_u64().unwrap() >= 6, "{i}");
        assert!(i["within_2_points"].is_boolean() && i["seconds"].is_f64(), "{i}");
    }
    for k in [
        "checkpoint_overhead",
        "checkpoint_overhead_stop_world",
        "checkpoint_overhead_dirty_log_only",
        "checkpoint_overhead_background_vs_dirty_log",
    ] {
        assert!(r[k].is_f64(), "{k}");
        assert!(!interval(&r[k], &r[format!("{k}_ci95")], k), "one repetition gives no interval: {k}");
    }
    let i = &r["intervals"]["checkpoint_overhead"];
    assert_eq!((i["repetitions"].as_u64(), i["within_2_points"].as_bool()), (Some(1), Some(false)), "{i}");
    assert!(interval(&r["resets_per_s"], &r["resets_per_s_ci95"], "resets_per_s"));
    // 1% and 10% of a 1 GiB guest's pages were dirtied and captured.
    let pages = |p: &str| r["capture_dirty_pages"][p].as_u64().unwrap_or(0);
    assert!(pages("1") >= 2600 && pages("10") >= 26000, "{}", r["capture_dirty_pages"]);
    assert_eq!(r["reset_dirty_pages"], 64);
    // Switching between a snapshot and its child remaps the pages the guest dirtied in
    // between (256 and its stack), not the guest's memory.
    let remapped = r["restore_remap_pages"].as_u64().unwrap_or(0);
    assert!((256..512).contains(&remapped), "restore_remap_pages = {remapped}");
    // A compressed I/O storm takes a few bytes per exit against 72 raw.
    assert!(r["bytes_per_exit"].as_f64().unwrap() < r["raw_bytes_per_exit"].as_f64().unwrap());
    for f in ["throughput.svg", "restore.svg", "bytes-per-exit.svg"] {
        let svg = std::fs::read_to_string(plots.join(f)).expect(f);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{f}");
        assert!(svg.contains("exits/s") || svg.contains(" ms") || svg.contains(" B"), "{f}");
    }
}

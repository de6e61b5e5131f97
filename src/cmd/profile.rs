//! `vmrr profile`: where exit-handling time goes (the CLI face of
//! `crate::profile`): a table per exit kind, port, MMIO address, MSR or vCPU, a comparison
//! of two runs (`--vs`), and SVG pictures (`--svg`).

use std::path::{Path, PathBuf};

use crate::profile::{
    self, By, CompareRow, Profile, ProfileOptions, Table, Verdict, compare_tables, latency_svg, profile_json,
    rate_svg,
};
use vmrr_format::describe::{count, duration};

use super::{out_line, print_json};
use crate::exit_code::{CliError, CliResult, INVALID_INPUT};

/// `vmrr profile` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct ProfileArgs {
    /// The trace (recorded with `--timing` for times; without, counts only).
    pub trace: PathBuf,
    /// Print JSON on stdout instead of text.
    ///
    /// One object with every grouping: `by_kind`, `by_port`, `by_mmio`, `by_msr`, `by_vcpu`.
    #[arg(long)]
    pub json: bool,
    /// The grouping the table shows: exit kind, port, MMIO address, MSR, or the vCPU that
    /// exited (one row per vCPU: `vcpu0`, `vcpu1`, ...).
    #[arg(long, default_value = "kind", value_parser = ["kind", "port", "mmio", "msr", "vcpu"])]
    pub by: String,
    /// Rows per table (0: all).
    #[arg(long, default_value_t = 20)]
    pub top: usize,
    /// Compare with a second run: ratios of its handler times to this one's, and whether
    /// each difference is outside the run-to-run spread.
    #[arg(long, value_name = "B")]
    pub vs: Option<PathBuf>,
    /// With `--vs`: the run-to-run noise floor in percent; a median must move beyond it
    /// (and beyond its own spread) to be called slower or faster.
    #[arg(long, default_value_t = 10.0, requires = "vs")]
    pub noise_floor: f64,
    /// Write `exit-rate.svg` and `handler-latency.svg` (of TRACE) into this directory.
    #[arg(long, value_name = "DIR")]
    pub svg: Option<PathBuf>,
    /// With --svg: replace the SVG files that exist in DIR.
    #[arg(long, requires = "svg")]
    pub force: bool,
}

/// What was read from one trace.
struct Read {
    path: PathBuf,
    profile: Profile,
    damage: Option<String>,
}

fn read(path: &Path, blocks: bool) -> Result<Read, CliError> {
    let t = super::trace_file::TraceFile::open(path)?;
    let mut r = t.reader()?;
    let opts = ProfileOptions { by: By::ALL.to_vec(), blocks, ..Default::default() };
    let (profile, damage) = profile::profile_trace(&mut r, &opts)?;
    let damage = damage.first.map(|first| match damage.regions {
        0 => format!("{first} (`vmrr verify` shows it)"),
        n => format!("{first} ({} skipped; `vmrr verify` shows them)", count(n, "damaged region")),
    });
    Ok(Read { path: path.to_path_buf(), profile, damage })
}

/// Runs `vmrr profile`.
pub fn run(args: &ProfileArgs) -> CliResult {
    let by = By::parse(&args.by).ok_or_else(|| CliError::Usage(format!("--by {}: unknown", args.by)))?;
    let top = (args.top > 0).then_some(args.top);
    if !(args.noise_floor.is_finite() && (0.0..1000.0).contains(&args.noise_floor)) {
        return Err(CliError::Usage(format!(
            "--noise-floor {}: a percentage from 0 to 1000",
            args.noise_floor
        )));
    }
    let floor = args.noise_floor / 100.0;
    if let Some(dir) = &args.svg {
        let mut inputs: Vec<&Path> = vec![&args.trace];
        inputs.extend(args.vs.as_deref());
        crate::output::directory(dir)?;
        for file in [RATE_SVG, LATENCY_SVG] {
            crate::output::check_file(&dir.join(file), &inputs, args.force)?;
        }
    }
    let a = read(&args.trace, args.vs.is_some())?;
    let b = match &args.vs {
        Some(p) => Some(read(p, true)?),
        None => None,
    };
    if let Some(dir) = &args.svg {
        write_svgs(dir, &a, by, args.force)?;
    }
    match (&b, args.json) {
        (None, true) => {
            let mut v = profile_json(&a.profile, top);
            v["trace"] = serde_json::json!(a.path.display().to_string());
            v["costliest"] = costliest_json(&a.profile);
            print_json(&v)?;
        }
        (None, false) => print_profile(&a, by, top)?,
        (Some(b), true) => print_json(&comparison_json(&a, b, top, floor))?,
        (Some(b), false) => print_comparison(&a, b, by, top, floor)?,
    }
    let damage = a.damage.iter().chain(b.iter().flat_map(|b| b.damage.iter())).next().cloned();
    match damage {
        Some(d) => {
            eprintln!("vmrr: error: {d}");
            Err(CliError::Reported { code: INVALID_INPUT })
        }
        None => Ok(()),
    }
}

const RATE_SVG: &str = "exit-rate.svg";
const LATENCY_SVG: &str = "handler-latency.svg";

fn write_svgs(dir: &Path, a: &Read, by: By, force: bool) -> CliResult {
    let name = a.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let table = a.profile.table(by).unwrap_or(&a.profile.tables[0]);
    let files = [
        (RATE_SVG, rate_svg(&a.profile.rate, &format!("Exit rate: {name}"))),
        (LATENCY_SVG, latency_svg(table, &format!("Handler latency by {}: {name}", by.name()), 8)),
    ];
    for (file, svg) in files {
        crate::output::write_bytes(&dir.join(file), &[&a.path], force, svg.as_bytes())?;
    }
    eprintln!("vmrr: wrote {} and {} in {}", RATE_SVG, LATENCY_SVG, dir.display());
    Ok(())
}

/// The costliest handler overall (by kind) and the costliest device (port, MMIO
/// address or MSR), by total handler time.
fn costliest(p: &Profile) -> [Option<(By, &profile::Row)>; 2] {
    fn timed(t: &Table) -> Option<(By, &profile::Row)> {
        t.rows().into_iter().find(|r| r.handler.count() > 0).map(|r| (t.by, r))
    }
    let kind = p.table(By::Kind).and_then(timed);
    let device = [By::Port, By::Mmio, By::Msr]
        .into_iter()
        .filter_map(|b| p.table(b).and_then(timed))
        .max_by_key(|(_, r)| r.handler.total_ns());
    [kind, device]
}

fn costliest_json(p: &Profile) -> serde_json::Value {
    let entry = |c: Option<(By, &profile::Row)>| {
        c.map(|(by, r)| {
            serde_json::json!({"by": by.name(), "key": r.key.to_string(), "count": r.count,
                               "handler_ns": profile::Dist::of(&r.handler)})
        })
    };
    let [k, d] = costliest(p);
    serde_json::json!({"handler": entry(k), "device": entry(d)})
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn opt_dur(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), duration)
}

fn print_profile(a: &Read, by: By, top: Option<usize>) -> CliResult {
    let s = &a.profile.summary;
    let mut out = std::io::stdout().lock();
    let mut lines = Vec::new();
    let busy = s.handler_ns.saturating_add(s.guest_ns).max(1) as f64;
    lines.push(format!(
        "{}: {} ({} timed) on {}{}",
        a.path.display(),
        count(s.exits, "exit"),
        s.timed_exits,
        count(s.vcpus, "vCPU"),
        if s.timed_exits > 0 {
            format!(
                " over {}; handlers {} of the time, guest {}",
                duration(s.span_ns),
                pct(s.handler_ns as f64 / busy),
                pct(s.guest_ns as f64 / busy)
            )
        } else {
            "; no timing in this trace (record with --timing): counts only".into()
        }
    ));
    if let Some(end) = &s.end {
        lines.push(format!("run ended: {end}{}", if s.failed { " (a failure)" } else { "" }));
    }
    for (label, c) in ["costliest handler", "costliest device"].into_iter().zip(costliest(&a.profile)) {
        if let Some((b, r)) = c {
            lines.push(format!(
                "{label}: {} {} (p50 {}, p99 {}, max {}, {} in {})",
                b.name(),
                r.key,
                opt_dur(r.handler.quantile_ns(0.5)),
                opt_dur(r.handler.quantile_ns(0.99)),
                opt_dur(r.handler.max_ns()),
                duration(r.handler.total_ns()),
                count(r.count, "exit")
            ));
        }
    }
    let cp = &a.profile.checkpoints;
    if cp.count() > 0 {
        lines.push(format!(
            "{} followed by a checkpoint: their handler time ({} in all) is counted apart",
            if cp.count() == 1 { "1 exit was".to_string() } else { format!("{} exits were", cp.count()) },
            duration(cp.total_ns())
        ));
    }
    if s.missing_records > 0 {
        lines.push(format!(
            "{} missing (sequence gaps): handler times across them are not counted",
            count(s.missing_records, "record")
        ));
    }
    let table = a.profile.table(by).unwrap_or(&a.profile.tables[0]);
    let rows = table.rows();
    let shown = top.unwrap_or(rows.len()).min(rows.len());
    lines.push(String::new());
    lines.push(format!(
        "by {}, sorted by {} ({} of {}){}:",
        by.name(),
        // Without timing every total is zero: the rows are in the order of their counts.
        if s.timed_exits > 0 { "total handler time" } else { "count" },
        shown,
        count(rows.len() as u64, "key"),
        if table.folded() { "; keys past the limit are folded into (other)" } else { "" }
    ));
    lines.push(format!(
        "{:<22} {:>10} {:>7} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "key", "count", "share", "time%", "total", "min", "p50", "p99", "max", "guest p50"
    ));
    let exits = table.exits().max(1) as f64;
    let total = table.handler_total_ns();
    for r in rows.iter().take(shown) {
        let h = &r.handler;
        lines.push(format!(
            "{:<22} {:>10} {:>7} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
            r.key.to_string(),
            r.count,
            pct(r.count as f64 / exits),
            if total > 0 { pct(h.total_ns() as f64 / total as f64) } else { "-".into() },
            if h.count() > 0 { duration(h.total_ns()) } else { "-".into() },
            opt_dur(h.min_ns()),
            opt_dur(h.quantile_ns(0.5)),
            opt_dur(h.quantile_ns(0.99)),
            opt_dur(h.max_ns()),
            opt_dur(r.guest.quantile_ns(0.5)),
        ));
    }
    for l in lines {
        if !out_line(&mut out, &l)? {
            return Ok(());
        }
    }
    Ok(())
}

fn ratio(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |r| format!("{r:.2}"))
}

fn verdict_text(r: &CompareRow) -> String {
    match r.verdict {
        Verdict::Slower => "SLOWER".into(),
        Verdict::Faster => "FASTER".into(),
        Verdict::WithinSpread => "within the spread".into(),
        Verdict::WithinNoise => format!("within the noise floor ({:.0}%)", r.noise_floor * 100.0),
        Verdict::TooFewSamples => format!("too few exits ({} / {} blocks)", r.blocks[0], r.blocks[1]),
        Verdict::NoTiming => "no timing: counts only".into(),
        Verdict::OnlyInA => "only in A".into(),
        Verdict::OnlyInB => "only in B".into(),
    }
}

const METHOD: &str = "B/A of the median handler time; interval: 95% block bootstrap over per-block medians; \
                      a change lies beyond the interval and the run-to-run noise floor (docs/PROFILING.md)";

fn print_comparison(a: &Read, b: &Read, by: By, top: Option<usize>, floor: f64) -> CliResult {
    let mut out = std::io::stdout().lock();
    let (ta, tb) = (table(&a.profile, by), table(&b.profile, by));
    let rows = compare_tables(ta, tb, floor);
    let shown = top.unwrap_or(rows.len()).min(rows.len());
    let mut lines = vec![
        format!(
            "A: {} ({} exits, {} timed)",
            a.path.display(),
            a.profile.summary.exits,
            a.profile.summary.timed_exits
        ),
        format!(
            "B: {} ({} exits, {} timed)",
            b.path.display(),
            b.profile.summary.exits,
            b.profile.summary.timed_exits
        ),
        format!("by {}: {METHOD}", by.name()),
        format!(
            "{:<22} {:>9} {:>9} {:>9} {:>9} {:>8} {:>16} {:>9}  {}",
            "key", "count A", "count B", "p50 A", "p50 B", "B/A", "95% interval", "p99 B/A", "verdict"
        ),
    ];
    for r in rows.iter().take(shown) {
        lines.push(format!(
            "{:<22} {:>9} {:>9} {:>9} {:>9} {:>8} {:>16} {:>9}  {}",
            r.key,
            r.count_a,
            r.count_b,
            opt_dur(r.handler_a.map(|d| d.p50)),
            opt_dur(r.handler_b.map(|d| d.p50)),
            ratio(r.p50_ratio),
            r.ci.map_or_else(|| "-".into(), |[lo, hi]| format!("[{lo:.2}, {hi:.2}]")),
            ratio(r.p99_ratio),
            verdict_text(r)
        ));
    }
    let changed: Vec<&str> = rows
        .iter()
        .filter(|r| matches!(r.verdict, Verdict::Slower | Verdict::Faster))
        .map(|r| r.key.as_str())
        .collect();
    lines.push(if changed.is_empty() {
        format!("no handler's median moved beyond its spread and the {:.0}% noise floor", floor * 100.0)
    } else {
        format!("changed beyond the spread and the {:.0}% noise floor: {}", floor * 100.0, changed.join(", "))
    });
    for l in lines {
        if !out_line(&mut out, &l)? {
            return Ok(());
        }
    }
    Ok(())
}

fn table(p: &Profile, by: By) -> &Table {
    p.table(by).unwrap_or(&p.tables[0])
}

fn comparison_json(a: &Read, b: &Read, top: Option<usize>, floor: f64) -> serde_json::Value {
    let mut v = serde_json::json!({
        "a": {"trace": a.path.display().to_string(), "summary": a.profile.summary},
        "b": {"trace": b.path.display().to_string(), "summary": b.profile.summary},
        "method": METHOD,
        "noise_floor": floor,
    });
    for by in By::ALL {
        let rows: Vec<CompareRow> = compare_tables(table(&a.profile, by), table(&b.profile, by), floor)
            .into_iter()
            .take(top.unwrap_or(usize::MAX))
            .collect();
        v[format!("by_{}", by.name())] = serde_json::to_value(rows).unwrap_or_default();
    }
    v
}

//! Two pictures of a profile as hand-written SVG (no plotting dependency): the exit rate
//! over time per kind, and the handler-latency distribution per key on a log scale.

use std::fmt::Write as _;

use super::profiler::Table;
use super::rate::RateSeries;
use vmrr_format::describe::duration;
use vmrr_format::kind;

const W: f64 = 820.0;
const H: f64 = 420.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 240.0;
const TOP: f64 = 64.0;
const BOTTOM: f64 = 52.0;
const PALETTE: [&str; 8] =
    ["#3b6ea8", "#d9822b", "#4f9a5d", "#b3446c", "#7a5fb0", "#5a8f9e", "#9c7a2b", "#555555"];
/// Latency bins per decade.
const PER_DECADE: f64 = 10.0;

/// `s` with `&`, `<` and `>` escaped for SVG text.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A step of 1, 2 or 5 times a power of ten giving about `n` ticks over `span`.
fn nice_step(span: f64, n: f64) -> f64 {
    let raw = (span / n).max(f64::MIN_POSITIVE);
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * p).find(|s| *s >= raw).unwrap_or(10.0 * p)
}

/// The opening of a `width` x `height` SVG picture on white with `title` and `subtitle`
/// in its top left corner (the caller closes it with `</svg>`).
pub fn open(width: f64, height: f64, title: &str, subtitle: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"16\" y=\"28\" font-size=\"18\" font-weight=\"bold\">{}</text>\n\
         <text x=\"16\" y=\"48\" font-size=\"12\" fill=\"#555\">{}</text>\n",
        esc(title),
        esc(subtitle)
    )
}

/// Plot-area coordinates.
struct Frame {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

impl Frame {
    fn new() -> Self {
        Frame { x0: LEFT, x1: W - RIGHT, y0: TOP, y1: H - BOTTOM }
    }
    fn x(&self, f: f64) -> f64 {
        self.x0 + (self.x1 - self.x0) * f.clamp(0.0, 1.0)
    }
    fn y(&self, f: f64) -> f64 {
        self.y1 - (self.y1 - self.y0) * f.clamp(0.0, 1.0)
    }
    fn axes(&self, s: &mut String, xlabel: &str, ylabel: &str) {
        let _ = write!(
            s,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#999\"/>\n\
             <text x=\"{}\" y=\"{}\" font-size=\"12\" text-anchor=\"middle\">{}</text>\n\
             <text x=\"18\" y=\"{}\" font-size=\"12\" text-anchor=\"middle\" transform=\"rotate(-90 18 {})\">{}</text>\n",
            self.x0,
            self.y0,
            self.x1 - self.x0,
            self.y1 - self.y0,
            (self.x0 + self.x1) / 2.0,
            H - 12.0,
            esc(xlabel),
            (self.y0 + self.y1) / 2.0,
            (self.y0 + self.y1) / 2.0,
            esc(ylabel)
        );
    }
    fn xtick(&self, s: &mut String, f: f64, label: &str) {
        let x = self.x(f);
        let _ = write!(
            s,
            "<line x1=\"{x:.1}\" y1=\"{}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"#eee\"/>\n\
             <text x=\"{x:.1}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">{}</text>\n",
            self.y0,
            self.y1,
            self.y1 + 16.0,
            esc(label)
        );
    }
    fn ytick(&self, s: &mut String, f: f64, label: &str) {
        let y = self.y(f);
        let _ = write!(
            s,
            "<line x1=\"{}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#eee\"/>\n\
             <text x=\"{}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{}</text>\n",
            self.x0,
            self.x1,
            self.x0 - 6.0,
            y + 4.0,
            esc(label)
        );
    }
    fn line(&self, s: &mut String, points: &[(f64, f64)], color: &str) {
        let pts: Vec<String> =
            points.iter().map(|(x, y)| format!("{:.1},{:.1}", self.x(*x), self.y(*y))).collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" stroke-linejoin=\"round\" points=\"{}\"/>",
            pts.join(" ")
        );
    }
    fn legend(&self, s: &mut String, i: usize, color: &str, text: &str) {
        let (x, y) = (self.x1 + 16.0, self.y0 + 8.0 + 20.0 * i as f64);
        let _ = write!(
            s,
            "<rect x=\"{x}\" y=\"{}\" width=\"14\" height=\"4\" fill=\"{color}\"/>\n\
             <text x=\"{}\" y=\"{}\" font-size=\"12\">{}</text>\n",
            y - 4.0,
            x + 20.0,
            y + 1.0,
            esc(text)
        );
    }
}

/// A power of ten of nanoseconds as `1ns`, `10us`, `100ms`, `1s`.
fn decade_label(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns}ns"),
        1_000..1_000_000 => format!("{}us", ns / 1_000),
        1_000_000..1_000_000_000 => format!("{}ms", ns / 1_000_000),
        _ => format!("{}s", ns / 1_000_000_000),
    }
}

/// A tick's count: `1.5k`, `2k`, `1.2M` (a decimal only where the value has one, so two
/// ticks never read the same).
fn count_label(v: f64) -> String {
    let short = |x: f64, unit: &str| {
        let s = format!("{x:.1}");
        format!("{}{unit}", s.strip_suffix(".0").unwrap_or(&s))
    };
    if v >= 1e6 {
        short(v / 1e6, "M")
    } else if v >= 1e3 {
        short(v / 1e3, "k")
    } else {
        format!("{v:.0}")
    }
}

#[cfg(test)]
mod label_tests {
    use super::count_label;

    #[test]
    fn ticks_a_half_apart_read_differently() {
        assert_eq!(count_label(1500.0), "1.5k");
        assert_eq!(count_label(2000.0), "2k");
        assert_eq!(count_label(250.0), "250");
        assert_eq!(count_label(2_500_000.0), "2.5M");
    }
}

/// Exit rate over time, one line per kind (at most 8; the rest are left out and named in
/// the subtitle).
pub fn rate_svg(rate: &RateSeries, title: &str) -> String {
    let series = rate.series();
    let bins = rate.len().max(1);
    let span_s = bins as f64 * rate.bin_ns() as f64 / 1e9;
    let shown = series.len().min(PALETTE.len());
    let subtitle = format!(
        "exits per second in bins of {}{}",
        duration(rate.bin_ns()),
        if series.len() > shown {
            format!("; {} quieter kinds not drawn", series.len() - shown)
        } else {
            String::new()
        }
    );
    let mut s = open(W, H, title, &subtitle);
    let f = Frame::new();
    let max = series.iter().take(shown).flat_map(|x| x.per_s.iter().copied()).fold(0.0f64, f64::max).max(1.0);
    let ystep = nice_step(max, 5.0);
    let ymax = (max / ystep).ceil() * ystep;
    let mut v = 0.0;
    while v <= ymax + ystep / 2.0 {
        f.ytick(&mut s, v / ymax, &count_label(v));
        v += ystep;
    }
    let (unit, scale) = if span_s < 1.0 { ("ms", 1e3) } else { ("s", 1.0) };
    let xstep = nice_step(span_s * scale, 6.0);
    let mut t = 0.0;
    while t <= span_s * scale + xstep / 1e6 {
        f.xtick(&mut s, t / (span_s * scale), &format!("{}", (t * 1e6).round() / 1e6));
        t += xstep;
    }
    f.axes(&mut s, &format!("time since the first entry ({unit})"), "exits / s");
    for (i, x) in series.iter().take(shown).enumerate() {
        let pts: Vec<(f64, f64)> =
            x.per_s.iter().enumerate().map(|(b, r)| ((b as f64 + 0.5) / bins as f64, r / ymax)).collect();
        f.line(&mut s, &pts, PALETTE[i]);
        let name = x.kind.map_or("other", kind::name);
        f.legend(&mut s, i, PALETTE[i], &format!("{name} ({} exits)", x.exits));
    }
    s.push_str("</svg>\n");
    s
}

/// Handler-latency distribution of the `top` costliest keys of `table` that have handler
/// times: for each, the share of its exits per latency bin (10 bins per decade, log scale),
/// with its p50 marked on the axis and p50/p99 in the legend.
pub fn latency_svg(table: &Table, title: &str, top: usize) -> String {
    let rows: Vec<_> =
        table.rows().into_iter().filter(|r| r.handler.count() > 0).take(top.min(PALETTE.len())).collect();
    let mut s = open(
        W,
        H,
        title,
        &format!(
            "handler time (exit to the next KVM_RUN) by {}: share of each key's exits per bin",
            table.by.name()
        ),
    );
    let f = Frame::new();
    let lo = rows.iter().filter_map(|r| r.handler.min_ns()).min().unwrap_or(100).max(1) as f64;
    let hi = rows.iter().filter_map(|r| r.handler.max_ns()).max().unwrap_or(1000).max(2) as f64;
    let (d0, mut d1) = (lo.log10().floor(), hi.log10().ceil());
    if d1 <= d0 {
        d1 = d0 + 1.0;
    }
    let nbins = ((d1 - d0) * PER_DECADE).round().max(1.0);
    // nbins is at most 20 decades x 10 bins.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let nb = nbins as usize;
    let shares: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| {
            let mut bins = vec![0.0; nb];
            let n = r.handler.count() as f64;
            for (code, c) in r.handler.buckets() {
                let v = vmrr_format::timing::time_from_code(code).unwrap_or(1).max(1) as f64;
                let b = ((v.log10() - d0) * PER_DECADE).floor().clamp(0.0, nbins - 1.0);
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let b = b as usize;
                bins[b] += c as f64 / n * 100.0;
            }
            bins
        })
        .collect();
    let max = shares.iter().flatten().copied().fold(0.0f64, f64::max).max(1.0);
    let ystep = nice_step(max, 5.0);
    let ymax = (max / ystep).ceil() * ystep;
    let mut v = 0.0;
    while v <= ymax + ystep / 2.0 {
        f.ytick(&mut s, v / ymax, &format!("{v}%"));
        v += ystep;
    }
    let mut d = d0;
    while d <= d1 + 0.01 {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let ns = 10f64.powf(d).round() as u64;
        f.xtick(&mut s, (d - d0) / (d1 - d0), &decade_label(ns));
        d += 1.0;
    }
    f.axes(&mut s, "handler time (log scale)", "share of the key's exits");
    for (i, (r, bins)) in rows.iter().zip(&shares).enumerate() {
        let pts: Vec<(f64, f64)> =
            bins.iter().enumerate().map(|(b, v)| ((b as f64 + 0.5) / nbins, v / ymax)).collect();
        f.line(&mut s, &pts, PALETTE[i]);
        let p50 = r.handler.quantile_ns(0.5).unwrap_or(0);
        let p99 = r.handler.quantile_ns(0.99).unwrap_or(0);
        let x = f.x(((p50.max(1) as f64).log10() - d0) / (d1 - d0));
        let _ = writeln!(
            s,
            "<path d=\"M{x:.1},{:.1} l-5,8 h10 z\" fill=\"{}\"><title>{} p50 {}</title></path>",
            f.y1 - 8.0,
            PALETTE[i],
            esc(&r.key.to_string()),
            duration(p50)
        );
        f.legend(&mut s, i, PALETTE[i], &format!("{}: p50 {} p99 {}", r.key, duration(p50), duration(p99)));
    }
    if rows.is_empty() {
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" font-size=\"14\" text-anchor=\"middle\" fill=\"#555\">no handler times in this trace (record with --timing)</text>",
            (f.x0 + f.x1) / 2.0,
            (f.y0 + f.y1) / 2.0
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{By, ProfileOptions, Profiler};
    use vmrr_format::timing::Timing;
    use vmrr_format::{Body, Direction, Io, Record};

    #[test]
    fn pictures_are_well_formed() {
        let mut p = Profiler::new(&ProfileOptions { by: vec![By::Port], ..Default::default() });
        for seq in 0..1000u64 {
            let port = if seq % 3 == 0 { 0x3f8 } else { 0x80 };
            let io = Io { direction: Direction::Out, size: 1, port, count: 1, data: b"x" };
            let t = Timing::from_ns(Some(500 + seq % 7 * 100), 40_000);
            p.observe(&Record::new(seq, 0, Body::Io(io)).with_timing(t));
        }
        let prof = p.finish();
        for svg in [rate_svg(&prof.rate, "rate"), latency_svg(prof.table(By::Port).unwrap(), "lat", 8)] {
            assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
            assert_eq!(svg.matches("<polyline").count(), if svg.contains(">rate<") { 1 } else { 2 });
            assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        }
    }
}

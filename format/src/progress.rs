//! Progress of long work (a recording bounded by `--max-seconds`, packing and verifying a
//! large trace, the divergence search, a corpus run), one way for every command: a bar or a
//! spinner on stderr when stderr is a terminal, nothing at all otherwise (a log, a pipe, a
//! CI runner get no progress lines). The bar is cleared when the work ends, so what a
//! command prints afterwards reads as if no bar had been there.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// What a bar counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Things, named in the plural (`"exits"`, `"repros"`, `"instructions"`).
    Count(&'static str),
    /// Bytes, shown as KiB, MiB, GiB.
    Bytes,
    /// Seconds of wall-clock time.
    Seconds,
}

/// Inputs at least this large show progress while packed or verified.
pub const LARGE_FILE: u64 = 64 << 20;

/// A progress display: shown on a terminal, inert otherwise. Cleared when dropped.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
}

/// Whether progress is shown at all: stderr is a terminal.
pub fn on_terminal() -> bool {
    std::io::stderr().is_terminal()
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

impl Progress {
    /// Shows nothing.
    pub fn hidden() -> Self {
        Progress { bar: None }
    }

    /// A bar for `total` units of `unit`, labelled `what` (`"replay"`, `"packing run.vmrr"`).
    pub fn bar(what: &str, total: u64, unit: Unit) -> Self {
        if !on_terminal() {
            return Self::hidden();
        }
        let counts = match unit {
            Unit::Count(noun) => format!("{{human_pos}}/{{human_len}} {noun}"),
            Unit::Bytes => "{bytes}/{total_bytes}".into(),
            Unit::Seconds => "{pos}/{len} s".into(),
        };
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        bar.set_style(style(&format!("{{msg}} [{{bar:30}}] {counts} ({{elapsed}}, {{eta}} left)")));
        bar.set_message(what.to_string());
        bar.enable_steady_tick(Duration::from_millis(250));
        Progress { bar: Some(bar) }
    }

    /// A spinner for work of unknown length: `what`, a count of `unit` so far, the time
    /// it has taken.
    pub fn spinner(what: &str, unit: Unit) -> Self {
        if !on_terminal() {
            return Self::hidden();
        }
        let counts = match unit {
            Unit::Count(noun) => format!(" {{human_pos}} {noun}"),
            Unit::Bytes => " {bytes}".into(),
            Unit::Seconds => String::new(),
        };
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(style(&format!("{{spinner}} {{msg}}{counts} ({{elapsed}})")));
        bar.set_message(what.to_string());
        bar.enable_steady_tick(Duration::from_millis(250));
        Progress { bar: Some(bar) }
    }

    /// A bar that fills with wall-clock time up to `limit` (a recording bounded by
    /// `--max-seconds`): moved by a thread of its own until the display is dropped.
    pub fn timed(what: &str, limit: Duration) -> Self {
        let p = Self::bar(what, limit.as_secs().max(1), Unit::Seconds);
        if let Some(bar) = p.bar.clone() {
            let t0 = Instant::now();
            let _ = std::thread::Builder::new().name("vmrr-progress".into()).spawn(move || {
                while !bar.is_finished() {
                    bar.set_position(t0.elapsed().as_secs());
                    std::thread::sleep(Duration::from_millis(200));
                }
            });
        }
        p
    }

    /// A spinner while `what` (`"packing"`, `"verifying"`) works on `file`, when the file
    /// is at least [`LARGE_FILE`] bytes; nothing for a smaller (or unreadable) one.
    pub fn for_file(what: &str, file: &std::path::Path) -> Self {
        match std::fs::metadata(file) {
            Ok(m) if m.len() >= LARGE_FILE => {
                Self::spinner(&format!("{what} {} ({} MiB)", file.display(), m.len() >> 20), Unit::Seconds)
            }
            _ => Self::hidden(),
        }
    }

    /// Whether anything is shown.
    pub fn is_shown(&self) -> bool {
        self.bar.is_some()
    }

    /// Sets how far the work is.
    pub fn set(&self, pos: u64) {
        if let Some(b) = &self.bar {
            b.set_position(pos);
        }
    }

    /// Adds `n` to how far the work is.
    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// Prints `line` on stderr above the bar (only while a bar is shown).
    pub fn println(&self, line: &str) {
        if let Some(b) = &self.bar {
            b.println(line);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

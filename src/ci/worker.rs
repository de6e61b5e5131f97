//! Replays run as child `vmrr replay ... --json` processes, N at a time: each child's
//! report (or error and exit code) becomes one result, and nothing a child does (a crash,
//! a hang past its stall limit, memory it exhausts) reaches the others.

use std::collections::VecDeque;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Instant, SystemTime};

use vmrr_format::bundle::Budgets;
use vmrr_format::progress::{Progress, Unit};
use vmrr_replay::Report;

use super::entries::Entry;
use super::outcome::{EntryError, EntryResult};
use crate::cmd::replay::ReplayArgs;
use crate::exit_code::INTERNAL;

/// The `vmrr replay` options each child gets from the parent's command line.
pub fn forwarded(args: &ReplayArgs, budgets: &Budgets) -> Vec<String> {
    let mut v = vec![
        format!("--max-mem-mib={}", budgets.max_mem >> 20),
        format!("--max-extract-mib={}", budgets.max_extract >> 20),
        format!("--stall-seconds={}", args.stall_seconds),
        format!("--explain-steps={}", args.explain_steps),
    ];
    for (on, flag) in [
        (args.rebuild, "--rebuild"),
        (args.strict_cpu, "--strict-cpu"),
        (args.no_explain, "--no-explain"),
        (args.no_failure_point, "--no-failure-point"),
        (args.ci.verify_checkpoints, "--verify-checkpoints"),
        (args.path, "--path"),
    ] {
        if on {
            v.push(flag.into());
        }
    }
    for (file, flag) in [
        (&args.image, "--image"),
        (&args.firmware, "--firmware"),
        (&args.kernel, "--kernel"),
        (&args.initrd, "--initrd"),
        (&args.system_map, "--system-map"),
    ] {
        if let Some(f) = file {
            v.push(flag.into());
            v.push(f.display().to_string());
        }
    }
    v
}

/// One child run: `vmrr replay SRC --json EXTRA...`.
pub struct Run {
    /// Exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// The signal that killed it.
    pub signal: Option<i32>,
    /// Its report, when it printed one.
    pub report: Option<Report>,
    /// What it wrote to stderr.
    pub stderr: String,
    /// When it started.
    pub started: SystemTime,
    /// Seconds it took.
    pub seconds: f64,
}

/// Runs `vmrr replay src --json extra...` in a child process.
pub fn replay_child(src: &Path, extra: &[String]) -> Run {
    let started = SystemTime::now();
    let t = Instant::now();
    let exe = std::env::current_exe().unwrap_or_else(|_| "vmrr".into());
    let out = Command::new(exe)
        .arg("replay")
        .arg(src)
        .arg("--json")
        .args(extra)
        .stdin(Stdio::null())
        .env_remove(super::shard::INDEX_ENV)
        .output();
    let seconds = t.elapsed().as_secs_f64();
    match out {
        Ok(o) => {
            use std::os::unix::process::ExitStatusExt;
            Run {
                code: o.status.code(),
                signal: o.status.signal(),
                report: serde_json::from_slice(&o.stdout).ok(),
                stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
                started,
                seconds,
            }
        }
        Err(e) => Run {
            code: Some(i32::from(INTERNAL)),
            signal: None,
            report: None,
            stderr: format!("vmrr: error: cannot start a replay process: {e}"),
            started,
            seconds,
        },
    }
}

impl Run {
    /// The run's error, when it did not end with a report (exit 0 or 1 and a JSON report).
    pub fn error(&self) -> Option<EntryError> {
        let message = || {
            let lines: Vec<&str> = self
                .stderr
                .lines()
                .filter(|l| l.starts_with("vmrr: error:"))
                .map(|l| l.trim_start_matches("vmrr: error:").trim())
                .collect();
            if lines.is_empty() { self.stderr.trim().to_string() } else { lines.join("; ") }
        };
        match (self.code, self.signal, &self.report) {
            (Some(0 | 1), _, Some(_)) => None,
            (_, Some(sig), _) => Some(EntryError {
                code: INTERNAL,
                message: format!("the replay process was killed by signal {sig}"),
            }),
            (Some(code), _, _) if code >= 2 => {
                Some(EntryError { code: u8::try_from(code).unwrap_or(INTERNAL), message: message() })
            }
            _ => Some(EntryError {
                code: INTERNAL,
                message: format!("the replay process printed no report: {}", message()),
            }),
        }
    }
}

/// This host's name, or `localhost`.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// `t` as UTC `YYYY-MM-DDTHH:MM:SS` (the JUnit schema's timestamp, without a zone).
pub fn utc(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = vmrr_format::date::civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Replays `entries`, `jobs` at a time; results in the entries' order. With `progress`, on
/// a terminal, a bar of the repros done and a line per finished repro above it.
pub fn run_all(entries: &[Entry], extra: &[String], jobs: usize, progress: bool) -> Vec<EntryResult> {
    let queue: Arc<Mutex<VecDeque<(usize, Entry)>>> =
        Arc::new(Mutex::new(entries.iter().cloned().enumerate().collect()));
    let (tx, rx) = mpsc::channel::<(usize, EntryResult)>();
    let host = hostname();
    let workers: Vec<_> = (0..jobs.min(entries.len()).max(1))
        .map(|_| {
            let queue = Arc::clone(&queue);
            let tx = tx.clone();
            let extra = extra.to_vec();
            let host = host.clone();
            std::thread::spawn(move || {
                loop {
                    let next = queue.lock().map(|mut q| q.pop_front()).unwrap_or(None);
                    let Some((i, e)) = next else { break };
                    let run = replay_child(&e.path, &extra);
                    let error = run.error();
                    let result = EntryResult {
                        path: e.path.display().to_string(),
                        exits: e.exits,
                        verdict: if error.is_none() { run.report.as_ref().map(|r| r.verdict) } else { None },
                        error,
                        exit_code: 0,
                        seconds: run.seconds,
                        started: utc(run.started),
                        hostname: host.clone(),
                        stderr: run.stderr,
                        report: run.report,
                    };
                    if tx.send((i, result)).is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
    drop(tx);
    let mut out: Vec<Option<EntryResult>> = vec![None; entries.len()];
    let bar = if progress {
        Progress::bar("corpus", entries.len() as u64, Unit::Count("repros"))
    } else {
        Progress::hidden()
    };
    for (i, r) in rx {
        bar.println(&format!("{:<16} {} ({:.1} s)", r.status(), r.path, r.seconds));
        bar.inc(1);
        if let Some(slot) = out.get_mut(i) {
            *slot = Some(r);
        }
    }
    for w in workers {
        let _ = w.join();
    }
    out.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::utc;
    use std::time::{Duration, SystemTime};

    #[test]
    fn utc_dates() {
        let at = |s: u64| utc(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(at(1_798_761_599), "2026-12-31T23:59:59");
    }
}

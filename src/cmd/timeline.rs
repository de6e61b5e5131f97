//! `vmrr timeline`: a trace as Chrome trace-event JSON for Perfetto and `chrome://tracing`
//! (`crate::profile::write_timeline` does the work).

use std::io::Read as _;
use std::path::{Path, PathBuf};

use crate::profile::{Marker, TimelineOptions, write_timeline};
use serde_json::{Value, json};

use crate::exit_code::{CliError, CliResult, INVALID_INPUT};

/// `vmrr timeline` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct TimelineArgs {
    /// The trace.
    pub trace: PathBuf,
    /// The JSON file to write (a file: `-` is not stdout here).
    #[arg(long, short)]
    pub out: PathBuf,
    /// A `vmrr replay --json` report of this trace: its divergence (and reproduced
    /// failure) become instant events at the records they name.
    #[arg(long, value_name = "REPORT")]
    pub replay_report: Option<PathBuf>,
    /// Aggregate per time window above this many exits, interrupts and device-thread
    /// events together.
    #[arg(long, default_value_t = 200_000)]
    pub aggregate_above: u64,
    /// Replace an existing --out file (never an input, a directory or a special file).
    #[arg(long)]
    pub force: bool,
}

/// Why a replay report cannot mark this trace's timeline (exit 2: the arguments do not
/// belong together).
#[derive(Debug, thiserror::Error)]
pub enum ReplayReportError {
    /// The report is of another trace: its records would be marked on the wrong run.
    #[error(
        "{report}: a replay report of trace {report_trace}, not of {trace} (trace {trace_id}): give the report `vmrr replay {trace} --json` wrote"
    )]
    OtherTrace {
        /// The report.
        report: PathBuf,
        /// The trace id it names.
        report_trace: String,
        /// The trace given.
        trace: PathBuf,
        /// Its id.
        trace_id: String,
    },
}

/// Largest replay report read (a report holds a few dozen records).
const MAX_REPORT_BYTES: u64 = 16 << 20;

/// Markers from a replay report: the divergence at its record, a reproduced failure at
/// the last record.
fn markers(path: &Path, trace: &Path, trace_id: &str) -> Result<Vec<Marker>, CliError> {
    let f = std::fs::File::open(path)
        .map_err(|e| CliError::Usage(format!("cannot open the replay report {}: {e}", path.display())))?;
    let mut text = String::new();
    f.take(MAX_REPORT_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| CliError::Invalid(format!("{}: cannot read the replay report: {e}", path.display())))?;
    if text.len() as u64 > MAX_REPORT_BYTES {
        return Err(CliError::Invalid(format!(
            "{}: larger than {MAX_REPORT_BYTES} bytes: not a replay report",
            path.display()
        )));
    }
    let v: Value = serde_json::from_str(&text).map_err(|e| {
        CliError::Invalid(format!(
            "{}: not JSON at line {} column {}: {e}",
            path.display(),
            e.line(),
            e.column()
        ))
    })?;
    let Some(outcome) = v.get("outcome").and_then(Value::as_str) else {
        return Err(CliError::Invalid(format!(
            "{}: field 'outcome' missing: not a `vmrr replay --json` report",
            path.display()
        )));
    };
    // A report of older vmrr names no trace: it cannot be checked.
    if let Some(id) = v.get("trace_id").and_then(Value::as_str).filter(|id| *id != trace_id) {
        let e = ReplayReportError::OtherTrace {
            report: path.to_path_buf(),
            report_trace: id.to_string(),
            trace: trace.to_path_buf(),
            trace_id: trace_id.to_string(),
        };
        return Err(CliError::Coded { code: crate::exit_code::USAGE, message: e.to_string() });
    }
    let mut out = Vec::new();
    if let Some(d) = v.get("divergence").filter(|d| !d.is_null()) {
        let seq = d.get("seq").and_then(Value::as_u64).ok_or_else(|| {
            CliError::Invalid(format!("{}: field 'divergence.seq' missing or not a number", path.display()))
        })?;
        let reason = d.get("reason").and_then(Value::as_str).unwrap_or("");
        out.push(Marker {
            seq: Some(seq),
            name: "divergence".into(),
            args: json!({"seq": seq, "reason": reason, "after_input": d.get("after_input")}),
        });
    }
    for field in ["emulation_failure", "failure"] {
        if let Some(f) = v.get(field).filter(|f| !f.is_null()) {
            out.push(Marker {
                seq: None,
                name: format!(
                    "replay reproduced: {}",
                    f.get("exit").and_then(Value::as_str).unwrap_or(field)
                ),
                args: json!({"outcome": outcome, "disassembly": f.get("disassembly"), "rip": f.get("rip")}),
            });
        }
    }
    Ok(out)
}

/// Runs `vmrr timeline`.
pub fn run(args: &TimelineArgs) -> CliResult {
    let mut inputs: Vec<&Path> = vec![&args.trace];
    if let Some(r) = &args.replay_report {
        inputs.push(r);
    }
    crate::output::check_file(&args.out, &inputs, args.force)?;
    let t = super::trace_file::TraceFile::open(&args.trace)?;
    let mut reader = t.reader()?;
    let markers = match &args.replay_report {
        Some(p) => {
            let id: String = reader.header().trace_id.iter().map(|b| format!("{b:02x}")).collect();
            markers(p, &args.trace, &id)?
        }
        None => Vec::new(),
    };
    let opts = TimelineOptions {
        aggregate_above: args.aggregate_above,
        name: args.trace.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        ..Default::default()
    };
    let mut summary = None;
    crate::output::write_file(&args.out, &inputs, args.force, |w| {
        let s = write_timeline(&mut reader, &markers, &opts, w).map_err(|e| match e {
            crate::profile::TimelineError::Read(r) => CliError::Trace(r),
            crate::profile::TimelineError::Write(source) => {
                CliError::Output { context: format!("writing {}", args.out.display()), source }
            }
        })?;
        summary = Some(s);
        Ok(())
    })?;
    let Some(s) = summary else {
        return Err(CliError::Replay("the timeline writer reported nothing".into()));
    };
    eprintln!(
        "vmrr: wrote {}: {} exits, {} events, {}{}",
        args.out.display(),
        s.exits,
        s.events,
        if s.aggregated {
            format!(
                "aggregated per {} us window (more than {} exits)",
                s.window_ns / 1000,
                args.aggregate_above
            )
        } else {
            "one slice per exit".into()
        },
        if s.time_axis == "sequence" { "; no timing in the trace: time is the record sequence" } else { "" }
    );
    if let Some(first) = &s.damage.first {
        match s.damage.regions {
            0 => eprintln!("vmrr: error: {first}"),
            n => eprintln!("vmrr: error: {first} ({n} damaged region(s) skipped)"),
        }
        return Err(CliError::Reported { code: INVALID_INPUT });
    }
    Ok(())
}

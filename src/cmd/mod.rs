//! One module per subcommand.

pub mod demo;
pub mod guests;
pub mod inspect;
pub mod pack;
pub mod record;
pub mod replay;
pub mod snapshot;
pub mod stats;
pub mod verify;

use std::io::Write;

use crate::exit_code::CliError;

/// Writes a line to stdout; a closed pipe (`vmrr inspect | head`) ends quietly.
pub fn out_line(out: &mut impl Write, line: &str) -> Result<bool, CliError> {
    match writeln!(out, "{line}") {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(source) => Err(CliError::Output { context: "writing to stdout".into(), source }),
    }
}

/// Prints a JSON value as one line.
pub fn print_json(v: &impl serde::Serialize) -> Result<(), CliError> {
    let s = serde_json::to_string(v)
        .map_err(|e| CliError::Output { context: "encoding JSON".into(), source: e.into() })?;
    let mut out = std::io::stdout().lock();
    out_line(&mut out, &s).map(|_| ())
}

/// Maps a bundle error to the CLI's exit codes (damaged or invalid input: 3; the host: 6).
pub fn bundle_err(e: vmrr_format::bundle::BundleError) -> CliError {
    if e.is_invalid_input() {
        return CliError::Invalid(crate::exit_code::chain(&e));
    }
    match e {
        vmrr_format::bundle::BundleError::File(f) => {
            CliError::Output { context: format!("{} {}", f.what, f.path.display()), source: f.source }
        }
        other => CliError::Invalid(crate::exit_code::chain(&other)),
    }
}

/// Maps a replay error to the CLI's exit codes.
pub fn replay_err(e: vmrr_replay::ReplayError) -> CliError {
    use vmrr_replay::ReplayError;
    if e.is_invalid_input() {
        return CliError::Invalid(crate::exit_code::chain(&e));
    }
    match e {
        ReplayError::CpuMismatch(m) => {
            CliError::Capability(format!("the replay host lacks CPU features the recorded guest saw: {m}"))
        }
        ReplayError::Session(s) => CliError::Session(s),
        ReplayError::Run(r) => CliError::Run(r),
        ReplayError::Snapshot(s) => CliError::Snapshot(s),
        other => CliError::Replay(other.to_string()),
    }
}

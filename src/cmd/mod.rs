//! One module per subcommand.

pub mod corpus_args;
pub mod demo;
pub mod guests;
pub mod inspect;
pub mod pack;
pub mod profile;
pub mod record;
pub mod replay;
pub mod snapshot;
pub mod stats;
pub mod timeline;
pub mod trace_file;
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

/// Maps a bundle error to the CLI's exit codes (damaged, invalid or over-budget input: 3;
/// an output that may not be written or an input file missing: 2; the host: 6).
pub fn bundle_err(e: vmrr_format::bundle::BundleError) -> CliError {
    use vmrr_format::bundle::BundleError;
    let text = crate::exit_code::chain(&e);
    let code = match &e {
        BundleError::Output(_) => crate::exit_code::USAGE,
        BundleError::Input(i) if i.is_not_found() => crate::exit_code::USAGE,
        BundleError::GuestFile { source, .. } => {
            match source.downcast_ref::<vmrr_format::input::InputError>() {
                Some(i) if !i.is_not_found() && !matches!(i, vmrr_format::input::InputError::Io { .. }) => {
                    crate::exit_code::INVALID_INPUT
                }
                _ => crate::exit_code::USAGE,
            }
        }
        _ if e.is_invalid_input() => crate::exit_code::INVALID_INPUT,
        _ => crate::exit_code::OUTPUT,
    };
    CliError::Coded { code, message: text }
}

/// Maps a replay error to the CLI's exit codes.
pub fn replay_err(e: vmrr_replay::ReplayError) -> CliError {
    use vmrr_replay::ReplayError;
    if let ReplayError::InBundle { message, inner } = e {
        // The exit code is the inner error's; the message names the bundle's entries.
        let code = replay_err(*inner).code();
        return CliError::Coded { code, message };
    }
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
        ReplayError::Bundle(b) => bundle_err(b),
        e @ (ReplayError::Rebuild { .. }
        | ReplayError::Output(_)
        | ReplayError::Segments(_)
        | ReplayError::PastEnd { .. }
        | ReplayError::SeveralVcpus { .. }
        | ReplayError::Source(_)) => {
            CliError::Coded { code: crate::exit_code::USAGE, message: crate::exit_code::chain(&e) }
        }
        ReplayError::Input(i) if i.is_not_found() => CliError::Usage(crate::exit_code::chain(&i)),
        ReplayError::File(f) if f.what.starts_with("creating") => {
            CliError::Output { context: format!("{} {}", f.what, f.path.display()), source: f.source }
        }
        other => CliError::Replay(crate::exit_code::chain(&other)),
    }
}

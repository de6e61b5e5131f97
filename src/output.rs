//! The output rule of every command that writes a file (`record`, `timeline`, `profile
//! --svg`, `demo`, `bench --plot`, `pack`, `verify --repair`, JUnit files), in the CLI's
//! terms; the rule itself is `vmrr_format::output`'s, shared with the engine's writers
//! (`Embedded::start`, snapshots):
//!
//! - never an existing file or directory without `--force`, and even with it only what
//!   the command writes (a regular file, a vmrr snapshot directory), never an input;
//! - written under a temporary name beside it and renamed into place when complete;
//! - created with one mode (`0o666` less the umask).
//!
//! A refusal is a usage error (exit 2) naming the path and saying `--force`.

use std::io::Write;
use std::path::Path;

use vmrr_format::output::{self, OutputError, OutputKind};

use crate::exit_code::CliError;

/// A refused output: a usage error whose message names the path and what to do.
pub fn refused(e: OutputError) -> CliError {
    CliError::Usage(e.to_string())
}

/// Checks that the file `out` may be written by a command reading `inputs`.
///
/// # Errors
/// A usage error naming `out`: it is an input, exists (without `force`), is not a
/// regular file, or its directory is missing.
pub fn check_file(out: &Path, inputs: &[&Path], force: bool) -> Result<(), CliError> {
    output::check(out, inputs, force, OutputKind::File).map_err(refused)
}

/// Writes the file `out` (checked as [`check_file`]): `fill` writes its content into a
/// scratch file beside it, which is synced and renamed into place; a failed or interrupted
/// write leaves neither a partial file nor a changed `out`.
///
/// # Errors
/// The refusals of [`check_file`], `fill`'s error, or the file system's.
pub fn write_file(
    out: &Path,
    inputs: &[&Path],
    force: bool,
    fill: impl FnOnce(&mut dyn Write) -> Result<(), CliError>,
) -> Result<(), CliError> {
    check_file(out, inputs, force)?;
    let err = |context: String| move |source| CliError::Output { context, source };
    let dir = output::directory_of(out);
    let (scratch, file) =
        output::scratch_file(out).map_err(err(format!("creating a file in {}", dir.display())))?;
    let mut w = std::io::BufWriter::new(file);
    fill(&mut w)?;
    let file = w.into_inner().map_err(|e| CliError::Output {
        context: format!("writing {}", out.display()),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(err(format!("syncing {}", out.display())))?;
    drop(file);
    scratch.publish(out, force).map_err(|source| match source.kind() {
        // Created by someone else since the check.
        std::io::ErrorKind::AlreadyExists => refused(OutputError::Exists { out: out.to_path_buf() }),
        _ => CliError::Output { context: format!("creating {}", out.display()), source },
    })
}

/// [`write_file`] with the whole content at hand.
///
/// # Errors
/// As [`write_file`].
pub fn write_bytes(out: &Path, inputs: &[&Path], force: bool, bytes: &[u8]) -> Result<(), CliError> {
    write_file(out, inputs, force, |w| {
        w.write_all(bytes)
            .map_err(|source| CliError::Output { context: format!("writing {}", out.display()), source })
    })
}

/// A directory that receives a command's files (`profile --svg`, `bench --plot`): created
/// when missing (not its parents); an existing one must be a directory. Its files are each
/// checked by [`write_file`].
///
/// # Errors
/// A usage error when `dir` is not a directory or its parent is missing; the file system's.
pub fn directory(dir: &Path) -> Result<(), CliError> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(refused(OutputError::NotOurs { out: dir.to_path_buf(), what: "not a directory" })),
        Err(_) => {
            if !output::directory_of(dir).is_dir() {
                return Err(refused(OutputError::NoDirectory { out: dir.to_path_buf() }));
            }
            std::fs::create_dir(dir)
                .map_err(|source| CliError::Output { context: format!("creating {}", dir.display()), source })
        }
    }
}

/// Refuses an output path that names one of the inputs (the same file by another name
/// included): writing it would destroy what is being read.
///
/// # Errors
/// A usage error naming both.
pub fn not_an_input(out: &Path, inputs: &[&Path]) -> Result<(), CliError> {
    match output::check(out, inputs, true, OutputKind::File) {
        Err(e @ OutputError::IsInput { .. }) => Err(refused(e)),
        _ => Ok(()),
    }
}

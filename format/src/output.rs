//! Where a command may write: the checks every output path passes before anything is
//! read into it or written.
//!
//! - An output that is one of the command's inputs (the same file, by device and inode:
//!   a second name, a hard link or a symlink to it counts) is refused.
//! - An output that exists is refused unless the user passed `--force`, and even then it
//!   is replaced only when it is what the command writes: a regular file for a file
//!   output (never a directory, device, FIFO or symlink), a vmrr snapshot directory
//!   (only `state.bin` and `mem-N.raw` files) for a snapshot output, a trace's snapshots
//!   directory (only `snap-NNNNNN` snapshot directories) for a trace's.
//! - A trace's output is its file and its snapshots directory ([`check_trace`]): another
//!   trace's snapshots are never replaced by accident (their names differ, see
//!   [`crate::layout`]).
//! - Its directory must exist.
//!
//! The output itself is written under a unique temporary name beside it
//! ([`crate::scratch::Scratch`], [`scratch_file`]) and renamed into place when complete,
//! so a failure or a signal never leaves it half-written and never touches what was there
//! before. Files are created with one mode everywhere: `0o666` less the umask, as
//! `File::create` does. A recording is the one output written at its own name: what a
//! recording killed midway wrote must be where the user looks for it (`vmrr verify
//! --repair` reads it); it is created exclusively ([`prepare_trace`]).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What an output is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// A file (trace, bundle).
    File,
    /// A snapshot directory.
    SnapshotDir,
    /// A trace's snapshots directory (`run.vmrr.snapshots`).
    Snapshots,
}

/// An output path that must not be written.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The output is an input.
    #[error("{}: the output is also an input ({}): choose another output path", out.display(), input.display())]
    IsInput {
        /// The output.
        out: PathBuf,
        /// The input it is.
        input: PathBuf,
    },
    /// The output exists and `--force` was not given.
    #[error("{}: already exists; pass --force to replace it", out.display())]
    Exists {
        /// The output.
        out: PathBuf,
    },
    /// The output exists and is not something this command writes.
    #[error("{}: exists and is {what}, which vmrr never replaces (not even with --force)", out.display())]
    NotOurs {
        /// The output.
        out: PathBuf,
        /// What it is.
        what: &'static str,
    },
    /// The output's directory does not exist.
    #[error("{}: its directory does not exist", out.display())]
    NoDirectory {
        /// The output.
        out: PathBuf,
    },
}

fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    a.dev() == b.dev() && a.ino() == b.ino()
}

/// Whether `dir` holds only what a snapshot directory holds.
fn is_snapshot_dir(dir: &Path) -> bool {
    let Ok(rd) = std::fs::read_dir(dir) else { return false };
    let mut has_state = false;
    for e in rd {
        let Ok(e) = e else { return false };
        let Ok(t) = e.file_type() else { return false };
        let name = e.file_name();
        let Some(name) = name.to_str() else { return false };
        if !t.is_file() {
            return false;
        }
        if name == crate::layout::STATE_FILE {
            has_state = true;
        } else if crate::layout::memory_file_slot(name).is_none() {
            return false;
        }
    }
    has_state
}

/// Whether `dir` holds only snapshot directories (and what an interrupted capture left:
/// hidden `.vmrr-` scratch directories).
fn is_snapshots_dir(dir: &Path) -> bool {
    let Ok(rd) = std::fs::read_dir(dir) else { return false };
    rd.into_iter().all(|e| {
        let Ok(e) = e else { return false };
        let name = e.file_name();
        let Some(name) = name.to_str() else { return false };
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        is_dir
            && (name.starts_with(".vmrr-")
                || (crate::layout::is_snapshot_dir_name(name) && is_snapshot_dir(&e.path())))
    })
}

/// Checks that `out` may be written by a command reading `inputs` (see the module docs);
/// `force` allows replacing an existing output of the right kind. Nothing is touched.
///
/// # Errors
/// [`OutputError`] saying why not.
pub fn check(out: &Path, inputs: &[&Path], force: bool, kind: OutputKind) -> Result<(), OutputError> {
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(OutputError::NoDirectory { out: out.to_path_buf() });
    }
    // Following symlinks: an output that leads to an input is that input.
    if let Ok(o) = std::fs::metadata(out) {
        for i in inputs {
            if std::fs::metadata(i).is_ok_and(|m| same_file(&m, &o)) {
                return Err(OutputError::IsInput { out: out.to_path_buf(), input: i.to_path_buf() });
            }
        }
    }
    let Ok(md) = std::fs::symlink_metadata(out) else { return Ok(()) };
    let t = md.file_type();
    let what = if t.is_symlink() {
        Some("a symbolic link")
    } else {
        match kind {
            OutputKind::File if t.is_file() => None,
            OutputKind::File if t.is_dir() => Some("a directory"),
            OutputKind::File => Some("not a regular file"),
            OutputKind::SnapshotDir if t.is_dir() && is_snapshot_dir(out) => None,
            OutputKind::SnapshotDir if t.is_dir() => Some("a directory that is not a vmrr snapshot"),
            OutputKind::SnapshotDir if t.is_file() => Some("a file"),
            OutputKind::SnapshotDir => Some("not a directory"),
            OutputKind::Snapshots if t.is_dir() && is_snapshots_dir(out) => None,
            OutputKind::Snapshots if t.is_dir() => Some("a directory that is not a vmrr snapshots directory"),
            OutputKind::Snapshots => Some("not a directory"),
        }
    };
    match (what, force) {
        (Some(what), _) => Err(OutputError::NotOurs { out: out.to_path_buf(), what }),
        (None, false) => Err(OutputError::Exists { out: out.to_path_buf() }),
        (None, true) => Ok(()),
    }
}

/// Checks that a trace may be recorded at `out`: the file (as [`check`] with
/// [`OutputKind::File`]) and, when `with_snapshots`, its snapshots directory
/// ([`crate::layout::snapshots_of`], as [`OutputKind::Snapshots`]). Nothing is touched.
///
/// # Errors
/// [`OutputError`] saying why not, naming the path refused.
pub fn check_trace(
    out: &Path,
    inputs: &[&Path],
    force: bool,
    with_snapshots: bool,
) -> Result<(), OutputError> {
    check(out, inputs, force, OutputKind::File)?;
    if with_snapshots {
        check(&crate::layout::snapshots_of(out), inputs, force, OutputKind::Snapshots)?;
    }
    Ok(())
}

/// Makes room for a trace recorded at `out` after [`check_trace`] accepted it: with
/// `force`, removes the trace and its snapshots directory that were there (the check made
/// sure they are vmrr's); without, removes nothing. The trace is then created exclusively
/// (`TraceWriter::create_new`), so a file that appeared since is not replaced either.
///
/// # Errors
/// [`check_trace`]'s refusals (checked again), or the removal failed.
pub fn prepare_trace(out: &Path, force: bool, with_snapshots: bool) -> Result<(), PrepareError> {
    check_trace(out, &[], force, with_snapshots)?;
    if !force {
        return Ok(());
    }
    let root = crate::layout::snapshots_of(out);
    for (path, dir) in [(out.to_path_buf(), false), (root, true)] {
        if (dir && !with_snapshots) || std::fs::symlink_metadata(&path).is_err() {
            continue;
        }
        let r = if dir { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        r.map_err(|source| PrepareError::Remove { path, source })?;
    }
    Ok(())
}

/// A trace's output could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The output may not be written.
    #[error(transparent)]
    Refused(#[from] OutputError),
    /// What `--force` replaces could not be removed.
    #[error("cannot remove {}", path.display())]
    Remove {
        /// What was being removed.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A new scratch file beside `out` (see [`scratch_prefix`]), to be filled and then
/// published with [`crate::scratch::Scratch::publish`]`(out, force)`; created with the mode
/// every vmrr output has.
///
/// # Errors
/// The file cannot be created, or the process is stopping.
pub fn scratch_file(out: &Path) -> std::io::Result<(crate::scratch::Scratch, std::fs::File)> {
    crate::scratch::Scratch::file_in(directory_of(out), &scratch_prefix(out))
}

/// The directory an output is written in (its temporary lives there too, so the final
/// rename stays on one file system).
pub fn directory_of(out: &Path) -> &Path {
    out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// The prefix of an output's temporary name: `.vmrr-<name>-` (hidden, and never a name
/// vmrr reads as a trace, snapshot or bundle).
pub fn scratch_prefix(out: &Path) -> String {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    format!(".vmrr-{name}-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals() {
        let d = std::env::temp_dir().join(format!("vmrr-output-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let input = d.join("in.vmrr");
        std::fs::write(&input, b"x").unwrap();
        let link = d.join("link.vmrr");
        std::fs::hard_link(&input, &link).unwrap();
        let sym = d.join("sym.vmrr");
        std::os::unix::fs::symlink(&input, &sym).unwrap();
        let k = OutputKind::File;
        for out in [&input, &link, &sym] {
            assert!(matches!(check(out, &[&input], true, k), Err(OutputError::IsInput { .. })), "{out:?}");
        }
        let other = d.join("other");
        std::fs::write(&other, b"y").unwrap();
        assert!(matches!(check(&other, &[&input], false, k), Err(OutputError::Exists { .. })));
        assert!(check(&other, &[&input], true, k).is_ok());
        assert!(check(&d.join("new"), &[&input], false, k).is_ok());
        assert!(matches!(check(&d, &[&input], true, k), Err(OutputError::NotOurs { .. })));
        assert!(matches!(check(Path::new("/dev/null"), &[], true, k), Err(OutputError::NotOurs { .. })));
        assert!(matches!(check(&d.join("nowhere/x"), &[], true, k), Err(OutputError::NoDirectory { .. })));
        let snap = d.join("snap");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(snap.join("state.bin"), b"s").unwrap();
        std::fs::write(snap.join("mem-0.raw"), b"m").unwrap();
        assert!(check(&snap, &[], true, OutputKind::SnapshotDir).is_ok());
        std::fs::write(snap.join("notes.txt"), b"mine").unwrap();
        assert!(matches!(check(&snap, &[], true, OutputKind::SnapshotDir), Err(OutputError::NotOurs { .. })));
        let trace = d.join("t.vmrr");
        std::fs::write(&trace, b"t").unwrap();
        let root = crate::layout::snapshots_of(&trace);
        std::fs::create_dir_all(root.join("snap-000000")).unwrap();
        std::fs::write(root.join("snap-000000/state.bin"), b"s").unwrap();
        assert!(matches!(check_trace(&trace, &[], false, true), Err(OutputError::Exists { .. })));
        assert!(check_trace(&trace, &[], true, true).is_ok());
        std::fs::remove_file(&trace).unwrap();
        // The trace is gone but its snapshots directory is not: refused just the same.
        assert!(
            matches!(check_trace(&trace, &[], false, true), Err(OutputError::Exists { out }) if out == root)
        );
        assert!(check_trace(&trace, &[], false, false).is_ok());
        std::fs::write(root.join("notes.txt"), b"mine").unwrap();
        assert!(matches!(check_trace(&trace, &[], true, true), Err(OutputError::NotOurs { .. })));
        std::fs::remove_file(root.join("notes.txt")).unwrap();
        prepare_trace(&trace, true, true).unwrap();
        assert!(!root.exists());
        std::fs::remove_dir_all(&d).unwrap();
    }
}

//! Where a command may write: the checks every output path passes before anything is
//! read into it or written.
//!
//! - An output that is one of the command's inputs (the same file, by device and inode:
//!   a second name, a hard link or a symlink to it counts) is refused.
//! - An output that exists is refused unless the user passed `--force`, and even then it
//!   is replaced only when it is what the command writes: a regular file for a file
//!   output (never a directory, device, FIFO or symlink), a vmrr snapshot directory
//!   (only `state.bin` and `mem-N.raw` files) for a snapshot output.
//! - Its directory must exist.
//!
//! The output itself is written under a unique temporary name beside it
//! ([`crate::scratch::Scratch`]) and renamed into place when complete, so a failure or a
//! signal never leaves it half-written and never touches what was there before.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What an output is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// A file (trace, bundle).
    File,
    /// A snapshot directory.
    SnapshotDir,
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
        }
    };
    match (what, force) {
        (Some(what), _) => Err(OutputError::NotOurs { out: out.to_path_buf(), what }),
        (None, false) => Err(OutputError::Exists { out: out.to_path_buf() }),
        (None, true) => Ok(()),
    }
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
        std::fs::remove_dir_all(&d).unwrap();
    }
}

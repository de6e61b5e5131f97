//! Opening an input file: only regular files are read.
//!
//! A trace, a snapshot's state or memory file, a bundle or a guest image that is a FIFO
//! would block its reader forever; a character device (`/dev/zero`) never ends; a file of
//! `/proc` or `/sys` says its size is 0 whatever it holds (`/proc/self/mem` is the
//! process's own memory). vmrr reads only regular files on file systems whose sizes are
//! real, and there is no flag to read anything else: every reader seeks (a trace's index
//! is at its end), so a pipe could not be read anyway; copy such input to a file first.
//!
//! The check cannot be raced: the path is looked at first (so that a device or FIFO is
//! never opened: opening one can block or have side effects), then opened without
//! blocking and without becoming a controlling terminal, and the opened descriptor's own
//! `fstat` and `fstatfs` decide.

use std::fs::{File, Metadata};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// An input that is not a regular file, or that cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// Opening or examining the file failed.
    #[error("cannot open {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a regular file (FIFO, device, socket, directory, or a file of a
    /// pseudo file system whose size is not what it holds).
    #[error(
        "{}: offset 0x0: {kind}, not a regular file: vmrr reads only regular files (copy it into one first)",
        path.display()
    )]
    NotRegular {
        /// The file.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
}

impl InputError {
    /// True when the file does not exist (a usage error rather than bad input).
    pub fn is_not_found(&self) -> bool {
        matches!(self, InputError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// What a file type is, in words; `None` for a regular file.
fn kind_of(md: &Metadata) -> Option<&'static str> {
    let t = md.file_type();
    if t.is_file() {
        None
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_fifo() {
        Some("a FIFO")
    } else if t.is_char_device() {
        Some("a character device")
    } else if t.is_block_device() {
        Some("a block device")
    } else if t.is_socket() {
        Some("a socket")
    } else {
        Some("not a file")
    }
}

/// File systems whose files report sizes that are not what they hold.
fn pseudo_fs(f: &File) -> std::io::Result<Option<&'static str>> {
    // statfs(2) magic numbers (linux/magic.h).
    const PSEUDO: &[(u64, &str)] = &[
        (0x9fa0, "a file of /proc"),
        (0x6265_6572, "a file of /sys"),
        (0x6462_6720, "a file of debugfs"),
        (0x7472_6163, "a file of tracefs"),
        (0x7363_6673, "a file of securityfs"),
        (0x0027_e0eb, "a file of the cgroup file system"),
        (0x6367_7270, "a file of the cgroup2 file system"),
        (0xcafe_4a11, "a file of the BPF file system"),
        (0x6265_6570, "a file of configfs"),
        (0x6165_676c, "a file of pstore"),
        (0xde5e_81e4, "a file of efivarfs"),
    ];
    let st = rustix::fs::fstatfs(f).map_err(std::io::Error::from)?;
    #[allow(clippy::cast_sign_loss)] // f_type is a magic number, compared bit for bit
    let magic = (st.f_type as u64) & 0xffff_ffff;
    Ok(PSEUDO.iter().find(|(m, _)| *m == magic).map(|(_, k)| *k))
}

/// Opens `path` for reading when it is a regular file on a real file system, and returns
/// it with its metadata (from the opened descriptor).
///
/// # Errors
/// [`InputError::NotRegular`] naming what the file is, or [`InputError::Io`].
pub fn open_regular(path: &Path) -> Result<(File, Metadata), InputError> {
    let io = |source| InputError::Io { path: path.to_path_buf(), source };
    let not_regular = |kind| InputError::NotRegular { path: path.to_path_buf(), kind };
    // Look before opening: a FIFO blocks `open` itself until a writer comes, and opening
    // some devices does something.
    let before = std::fs::metadata(path).map_err(io)?;
    if let Some(kind) = kind_of(&before) {
        return Err(not_regular(kind));
    }
    // The path may have been replaced since: the descriptor's own fstat decides.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(
            i32::try_from((rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY).bits())
                .unwrap_or_default(),
        )
        .open(path)
        .map_err(io)?;
    let md = f.metadata().map_err(io)?;
    if let Some(kind) = kind_of(&md) {
        return Err(not_regular(kind));
    }
    if let Some(kind) = pseudo_fs(&f).map_err(io)? {
        return Err(not_regular(kind));
    }
    // O_NONBLOCK means nothing for a regular file; clear it all the same.
    rustix::fs::fcntl_setfl(&f, rustix::fs::OFlags::empty()).map_err(|e| io(e.into()))?;
    Ok((f, md))
}

/// Whether `path` is a directory (following symlinks), without opening it.
pub fn is_dir(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_dir())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_open() {
        let d = std::env::temp_dir().join(format!("vmrr-input-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("f");
        std::fs::write(&f, b"x").unwrap();
        assert_eq!(open_regular(&f).unwrap().1.len(), 1);
        for (p, what) in [
            (Path::new("/dev/zero"), "character device"),
            (Path::new("/proc/self/mem"), "/proc"),
            (d.as_path(), "directory"),
        ] {
            let e = open_regular(p).unwrap_err();
            assert!(e.to_string().contains(what), "{p:?}: {e}");
        }
        let fifo = d.join("fifo");
        rustix::fs::mkfifoat(rustix::fs::CWD, &fifo, rustix::fs::Mode::from_raw_mode(0o600)).unwrap();
        // Would block forever if opened for reading with no writer.
        assert!(open_regular(&fifo).unwrap_err().to_string().contains("FIFO"));
        assert!(open_regular(&d.join("missing")).unwrap_err().is_not_found());
        std::fs::remove_dir_all(&d).unwrap();
    }
}

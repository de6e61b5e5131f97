//! Files and directories that exist only while one command runs: a bundle extracted for a
//! replay, an output being written before it is renamed into place.
//!
//! Each has a unique name (random, created with `O_EXCL` / `mkdir`, so nothing existing
//! is ever reused or overwritten), is removed when dropped (every return path, errors and
//! panics included), and is listed in a process-wide registry so that a process told to
//! stop (SIGINT, SIGTERM, SIGHUP: the CLI's signal watcher calls [`remove_all`]) removes
//! it before it dies. Registration and creation happen under one lock, and so do a
//! publishing rename and the removal after a signal: a path is never created after the
//! registry was emptied, and never removed after it was published.
//!
//! Only SIGKILL (which no process can handle) leaves one behind; their names start with
//! `vmrr-` (extractions, in `$TMPDIR`) or `.vmrr-` (outputs, beside the output).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

struct Registry {
    /// False once [`remove_all`] ran: nothing new may be created.
    open: bool,
    next: u64,
    live: Vec<(u64, PathBuf, bool)>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry { open: true, next: 0, live: Vec::new() });

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    // A panic while holding the lock leaves the list valid (every change is one push or
    // one retain), so a poisoned lock is still usable.
    REGISTRY.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn remove(path: &Path, dir: bool) {
    let _ = if dir { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
}

/// A file or directory with a unique name, removed when dropped unless published.
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
    dir: bool,
    id: u64,
    published: bool,
}

fn unique_name(prefix: &str) -> String {
    let r = crate::random_id();
    format!("{prefix}{}", crate::describe::hex(&r[..8]))
}

impl Scratch {
    fn create(parent: &Path, prefix: &str, dir: bool) -> io::Result<(Scratch, Option<File>)> {
        for _ in 0..64 {
            let path = parent.join(unique_name(prefix));
            let mut reg = registry();
            if !reg.open {
                return Err(io::Error::new(io::ErrorKind::Interrupted, "vmrr is stopping (signal)"));
            }
            let made = if dir {
                std::fs::create_dir(&path).map(|()| None)
            } else {
                std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path).map(Some)
            };
            match made {
                Ok(file) => {
                    let id = reg.next;
                    reg.next += 1;
                    reg.live.push((id, path.clone(), dir));
                    return Ok((Scratch { path, dir, id, published: false }, file));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(io::ErrorKind::AlreadyExists, "no unique temporary name found"))
    }

    /// A new, empty directory in `parent` named `<prefix><random>`.
    ///
    /// # Errors
    /// The directory cannot be created, or the process is stopping.
    pub fn dir_in(parent: &Path, prefix: &str) -> io::Result<Scratch> {
        Self::create(parent, prefix, true).map(|(s, _)| s)
    }

    /// A new, empty file in `parent` named `<prefix><random>`, open for reading and
    /// writing.
    ///
    /// # Errors
    /// The file cannot be created, or the process is stopping.
    pub fn file_in(parent: &Path, prefix: &str) -> io::Result<(Scratch, File)> {
        let (s, f) = Self::create(parent, prefix, false)?;
        let f = f.ok_or_else(|| io::Error::other("a scratch file was created without a handle"))?;
        Ok((s, f))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames it to `dest` (same file system), which must not exist unless `replace`:
    /// a file then replaces `dest` atomically, and a directory is exchanged with `dest`
    /// atomically and the old `dest` removed. After this it is no longer removed on drop.
    ///
    /// # Errors
    /// `dest` exists (and not `replace`), the rename failed, or the process is stopping.
    pub fn publish(mut self, dest: &Path, replace: bool) -> io::Result<()> {
        let mut reg = registry();
        if !reg.open {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "vmrr is stopping (signal)"));
        }
        let old = if replace && self.dir && std::fs::symlink_metadata(dest).is_ok() {
            exchange(&self.path, dest)?;
            // What is at our path now is the old `dest`: it is removed below, on drop.
            Some(())
        } else if replace {
            std::fs::rename(&self.path, dest)?;
            None
        } else {
            rename_noreplace(&self.path, dest)?;
            None
        };
        if old.is_none() {
            self.published = true;
            reg.live.retain(|(id, _, _)| *id != self.id);
        }
        drop(reg);
        if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            // Make the new name durable.
            let _ = File::open(parent).and_then(|d| d.sync_all());
        }
        Ok(())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.published {
            return;
        }
        let mut reg = registry();
        remove(&self.path, self.dir);
        reg.live.retain(|(id, _, _)| *id != self.id);
    }
}

/// `rename(from, to)` failing when `to` exists.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        // A file system without RENAME_NOREPLACE: look, then rename.
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
            if std::fs::symlink_metadata(to).is_ok() {
                return Err(io::Error::from(io::ErrorKind::AlreadyExists));
            }
            std::fs::rename(from, to)
        }
        Err(e) => Err(e.into()),
    }
}

/// Swaps `a` and `b` atomically (both exist).
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    match renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
            // Without RENAME_EXCHANGE: move `b` aside under a unique name, then `a` into
            // place, then the old `b` to `a` (removed by the caller).
            let parent = b.parent().unwrap_or(Path::new("."));
            let aside = parent.join(unique_name(".vmrr-old-"));
            std::fs::rename(b, &aside)?;
            if let Err(e) = std::fs::rename(a, b) {
                let _ = std::fs::rename(&aside, b);
                return Err(e);
            }
            std::fs::rename(&aside, a)
        }
        Err(e) => Err(e.into()),
    }
}

/// Removes every scratch file and directory of this process and refuses new ones; what
/// the CLI's signal watcher runs before the process dies of SIGINT, SIGTERM or SIGHUP.
/// Returns how many were removed. Holding the registry while removing means no path is
/// published or created meanwhile; the caller is about to end the process.
pub fn remove_all() -> usize {
    let mut reg = registry();
    reg.open = false;
    let live = std::mem::take(&mut reg.live);
    for (_, path, dir) in &live {
        // Another thread may still be creating files inside a directory: retry.
        for _ in 0..100 {
            remove(path, *dir);
            if std::fs::symlink_metadata(path).is_err() {
                break;
            }
        }
    }
    // Keep the lock: nothing may be created or published between here and the exit.
    std::mem::forget(reg);
    live.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_removed_on_drop_and_published_once() {
        let root = std::env::temp_dir().join(format!("vmrr-scratch-test-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let d = Scratch::dir_in(&root, "vmrr-x-").unwrap();
        let e = Scratch::dir_in(&root, "vmrr-x-").unwrap();
        assert_ne!(d.path(), e.path());
        std::fs::write(d.path().join("inner"), b"1").unwrap();
        let p = d.path().to_path_buf();
        drop(d);
        assert!(!p.exists());
        // Publishing never replaces an existing file unless asked to.
        let (f, _) = Scratch::file_in(&root, ".vmrr-f-").unwrap();
        let dest = root.join("out");
        std::fs::write(&dest, b"keep").unwrap();
        let fp = f.path().to_path_buf();
        assert_eq!(f.publish(&dest, false).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        assert!(!fp.exists(), "the scratch file is removed when publishing fails");
        assert_eq!(std::fs::read(&dest).unwrap(), b"keep");
        let (f, _) = Scratch::file_in(&root, ".vmrr-f-").unwrap();
        f.publish(&dest, true).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"");
        // A directory replacing one: exchanged, the old one removed.
        let old = root.join("dir");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join("a"), b"old").unwrap();
        let n = Scratch::dir_in(&root, ".vmrr-d-").unwrap();
        std::fs::write(n.path().join("b"), b"new").unwrap();
        n.publish(&old, true).unwrap();
        assert!(old.join("b").exists() && !old.join("a").exists());
        drop(e);
        std::fs::remove_file(&dest).unwrap();
        std::fs::remove_dir_all(&old).unwrap();
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0, "nothing left behind");
        std::fs::remove_dir(&root).unwrap();
    }
}

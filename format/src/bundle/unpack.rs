//! Reading a bundle: the header and manifest checked before anything is written, then each
//! entry checked (CRC before decompression, sizes against the manifest) while it is
//! extracted into a directory of its own.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::payload::{BUF, Region, decoder};
use super::{
    BundleError, HEADER, MAGIC, MAJOR, MAX_ENTRIES, MAX_MANIFEST, Manifest, SNAPSHOTS_ENTRY, Storage,
};
use super::{TRACE_ENTRY, Unpacked, allowed, file_err, invalid, sparse};

/// Reads and checks a bundle's header and manifest.
///
/// # Errors
/// A damaged or hostile bundle.
pub fn read_manifest(src: &Path, max_mem: u64) -> Result<Manifest, BundleError> {
    let mut f = File::open(src).map_err(file_err("opening", src))?;
    let len = f.metadata().map_err(file_err("reading", src))?.len();
    let mut h = [0u8; 32];
    if len < HEADER {
        return Err(invalid(src, 0, format!("truncated: {len} bytes, the header needs {HEADER}")));
    }
    f.read_exact(&mut h).map_err(file_err("reading", src))?;
    if h[..8] != MAGIC {
        return Err(invalid(src, 0, "bad magic (not a vmrr bundle)"));
    }
    let stored = u32::from_le_bytes([h[28], h[29], h[30], h[31]]);
    if crc32c::crc32c(&h[..28]) != stored {
        return Err(invalid(src, 28, "header checksum mismatch"));
    }
    let (major, minor) = (u16::from_le_bytes([h[8], h[9]]), u16::from_le_bytes([h[10], h[11]]));
    if major != MAJOR {
        return Err(BundleError::Version { path: src.display().to_string(), major, minor });
    }
    if h[12..16] != [0; 4] {
        return Err(invalid(src, 12, "non-zero reserved field"));
    }
    let mlen = u64::from_le_bytes([h[16], h[17], h[18], h[19], h[20], h[21], h[22], h[23]]);
    if mlen > MAX_MANIFEST || HEADER + mlen > len {
        return Err(invalid(
            src,
            16,
            format!("manifest of {mlen} bytes does not fit (limit {MAX_MANIFEST}, file {len})"),
        ));
    }
    let mut json = vec![0u8; usize::try_from(mlen).unwrap_or(0)];
    f.read_exact(&mut json).map_err(file_err("reading", src))?;
    let mcrc = u32::from_le_bytes([h[24], h[25], h[26], h[27]]);
    if crc32c::crc32c(&json) != mcrc {
        return Err(invalid(src, HEADER, "manifest checksum mismatch"));
    }
    let m: Manifest =
        serde_json::from_slice(&json).map_err(|e| invalid(src, HEADER, format!("manifest: {e}")))?;
    if m.entries.len() > MAX_ENTRIES {
        return Err(invalid(
            src,
            HEADER,
            format!("{} entries exceed the limit of {MAX_ENTRIES}", m.entries.len()),
        ));
    }
    let mut names = std::collections::BTreeSet::new();
    let mut total_mem: u64 = 0;
    for e in &m.entries {
        let cap = allowed(&e.name, max_mem).ok_or_else(|| {
            invalid(src, HEADER, format!("entry name {:?} is not part of a bundle's layout", e.name))
        })?;
        if !names.insert(e.name.as_str()) {
            return Err(invalid(src, HEADER, format!("entry {:?} appears twice", e.name)));
        }
        if e.size > cap {
            let why = if e.storage == Storage::Sparse {
                format!(
                    "entry {:?} asks for {} MiB of guest memory, over the limit of {} MiB (--max-mem-mib)",
                    e.name,
                    e.size >> 20,
                    cap >> 20
                )
            } else {
                format!("entry {:?} of {} bytes exceeds its limit of {cap}", e.name, e.size)
            };
            return Err(invalid(src, HEADER, why));
        }
        if e.storage == Storage::Sparse {
            total_mem = total_mem.saturating_add(e.size);
        }
        let end = e.offset.checked_add(e.stored);
        if e.offset < HEADER + mlen || end.is_none_or(|x| x > len) {
            return Err(invalid(src, e.offset, format!("entry {:?} lies outside the file", e.name)));
        }
    }
    if !names.contains(TRACE_ENTRY) {
        return Err(invalid(src, HEADER, "no trace in the bundle"));
    }
    if m.snapshots.is_empty() && total_mem > 0 {
        return Err(invalid(src, HEADER, "memory files without snapshots"));
    }
    Ok(m)
}

/// Unpacks `src` into the existing, empty directory `dir`, validating everything (see the
/// module docs). `max_mem` caps each memory file.
///
/// # Errors
/// A damaged or hostile bundle; nothing is written outside `dir`.
pub fn unpack(src: &Path, dir: &Path, max_mem: u64) -> Result<Unpacked, BundleError> {
    let m = read_manifest(src, max_mem)?;
    let f = File::open(src).map_err(file_err("opening", src))?;
    let mut buf = vec![0u8; BUF];
    for e in &m.entries {
        // read_manifest checked that the payload lies inside the file.
        let end = e.offset + e.stored;
        // 1. The checksum over the stored bytes, before any of them is decoded.
        let mut crc = 0u32;
        let mut p = e.offset;
        while p < end {
            let n = usize::try_from((end - p).min(BUF as u64)).unwrap_or(0);
            f.read_exact_at(&mut buf[..n], p).map_err(file_err("reading", src))?;
            crc = crc32c::crc32c_append(crc, &buf[..n]);
            p += n as u64;
        }
        if crc != e.crc32c {
            return Err(invalid(src, e.offset, format!("entry {:?}: checksum mismatch", e.name)));
        }
        // 2. `e.name` passed `allowed`: relative, no `..`, only [a-z0-9._/-]. Files are
        //    created new (an existing file or symlink there is an error, never followed).
        let target = dir.join(&e.name);
        if let Some(parent) = target.parent() {
            create_dirs_within(dir, parent).map_err(file_err("creating", parent))?;
        }
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
            .map_err(file_err("creating", &target))?;
        let region = Region { file: &f, pos: e.offset, end };
        match e.storage {
            Storage::Zstd => {
                let mut dec = decoder(region).map_err(file_err("decompressing", &target))?;
                let written = std::io::copy(&mut (&mut dec).take(e.size + 1), &mut out)
                    .map_err(|err| invalid(src, e.offset, format!("entry {:?}: {err}", e.name)))?;
                if written != e.size {
                    return Err(invalid(
                        src,
                        e.offset,
                        format!("entry {:?}: {written} bytes, manifest says {}", e.name, e.size),
                    ));
                }
            }
            Storage::Sparse => sparse::decode(&f, e, &out, src, &target, &mut buf)?,
        }
        out.sync_all().map_err(file_err("syncing", &target))?;
    }
    Ok(Unpacked { trace: dir.join(TRACE_ENTRY), manifest: m })
}

/// Creates `path` and its missing parents, all inside `root`, refusing to pass through a
/// symlink (which could point anywhere).
fn create_dirs_within(root: &Path, path: &Path) -> std::io::Result<()> {
    let rel = path.strip_prefix(root).map_err(|_| std::io::Error::other("outside the target directory"))?;
    let mut at = root.to_path_buf();
    for c in rel.components() {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(md) if md.file_type().is_dir() => {}
            Ok(_) => {
                return Err(std::io::Error::other(
                    "exists and is not a directory (symlinks are not followed)",
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir(&at)?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Moves the unpacked layout so that `dir/trace.vmrr` has its snapshots at
/// `dir/trace.snapshots` (the layout replay expects).
///
/// # Errors
/// Renaming failed.
pub fn arrange(dir: &Path) -> Result<(), BundleError> {
    let from = dir.join(SNAPSHOTS_ENTRY);
    if from.is_dir() {
        let to = crate::layout::snapshots_of(&dir.join(TRACE_ENTRY));
        std::fs::rename(&from, &to).map_err(file_err("renaming", &from))?;
    }
    Ok(())
}

//! Repro bundles: one self-contained, checksummed, compressed file holding a trace, the
//! snapshots it references, and what the recording host was (CPUID, kernel, KVM
//! capabilities, the original command line: all in the trace's annotations, repeated in
//! the manifest for tools).
//!
//! Layout (little-endian):
//!
//! | off | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `"VMRRBNDL"` |
//! | 8 | 2 | major (1) |
//! | 10 | 2 | minor (0) |
//! | 12 | 4 | reserved, zero |
//! | 16 | 8 | `manifest_len` (at most 16 MiB) |
//! | 24 | 4 | CRC32C of the manifest |
//! | 28 | 4 | CRC32C of bytes 0..28 |
//! | 32 | `manifest_len` | manifest (JSON) |
//! | ... | | entry payloads, at the offsets the manifest gives |
//!
//! Each entry is a file of the unpacked layout (`trace.vmrr`,
//! `snapshots/snap-NNNNNN/state.bin`, `snapshots/snap-NNNNNN/mem-N.raw`) stored as one
//! zstd frame, except memory files, stored sparse: the non-zero 4 KiB pages as
//! `(offset, length)` extents plus one zstd frame of their bytes. Every payload has a
//! CRC32C.
//!
//! A bundle is untrusted input. Before anything is written: the header CRC, version,
//! manifest size and CRC, every entry name against the layout's exact grammar (no `..`,
//! no absolute paths, no other characters: nothing can land outside the target
//! directory), sizes against caps (`--max-mem-mib` for memory files), offsets inside the
//! file. While extracting: each payload's CRC before decompressing it, decompressed sizes
//! against the manifest, no existing file overwritten (no symlink followed).

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Bundle magic.
pub const MAGIC: [u8; 8] = *b"VMRRBNDL";
/// Major version.
pub const MAJOR: u16 = 1;
/// Minor version.
pub const MINOR: u16 = 0;
const HEADER: u64 = 32;
/// Largest manifest accepted.
pub const MAX_MANIFEST: u64 = 16 << 20;
/// Most entries accepted.
pub const MAX_ENTRIES: usize = 100_000;
/// Largest trace accepted.
pub const MAX_TRACE: u64 = 1 << 40;
/// Largest snapshot state file accepted.
pub const MAX_STATE: u64 = vmrr_engine::snapshot::codec::MAX_STATE + 64;
const PAGE: u64 = 4096;

/// A bundle problem.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// An OS call failed.
    #[error("{what} {path}")]
    Io {
        /// What.
        what: &'static str,
        /// File.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The bundle is damaged or hostile.
    #[error("{path}: offset {offset:#x}: {reason}")]
    Invalid {
        /// The bundle.
        path: String,
        /// Where.
        offset: u64,
        /// What.
        reason: String,
    },
    /// A newer bundle version.
    #[error("{path}: bundle version {major}.{minor} is not readable by this vmrr (reads {MAJOR}.x)")]
    Version {
        /// The bundle.
        path: String,
        /// Major.
        major: u16,
        /// Minor.
        minor: u16,
    },
    /// Packing failed: the trace or its snapshots are not usable.
    #[error("{0}")]
    Pack(String),
}

/// How an entry is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// One zstd frame of the whole file.
    Zstd,
    /// Extents of non-zero pages, then one zstd frame of their bytes.
    Sparse,
}

/// One file in the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Path in the unpacked layout.
    pub name: String,
    /// Unpacked size.
    pub size: u64,
    /// Storage.
    pub storage: Storage,
    /// Offset of the payload in the bundle.
    pub offset: u64,
    /// Payload length.
    pub stored: u64,
    /// CRC32C of the payload.
    pub crc32c: u32,
}

/// The manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The trace's id.
    pub trace_id: String,
    /// The recording's annotations (host, CPU, KVM capabilities, command line, guest).
    pub annotations: Vec<(String, String)>,
    /// Snapshot ids included.
    pub snapshots: Vec<u64>,
    /// The files.
    pub entries: Vec<Entry>,
}

/// What [`unpack`] produced.
#[derive(Debug)]
pub struct Unpacked {
    /// The trace.
    pub trace: PathBuf,
    /// The manifest.
    pub manifest: Manifest,
}

fn io(what: &'static str, p: &Path) -> impl FnOnce(std::io::Error) -> BundleError {
    let path = p.display().to_string();
    move |source| BundleError::Io { what, path, source }
}

/// True for a name of the unpacked layout, and its size cap.
fn allowed(name: &str, max_mem: u64) -> Option<u64> {
    if name == "trace.vmrr" {
        return Some(MAX_TRACE);
    }
    let rest = name.strip_prefix("snapshots/snap-")?;
    let (id, file) = rest.split_once('/')?;
    if !(6..=20).contains(&id.len()) || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if file == "state.bin" {
        return Some(MAX_STATE);
    }
    let n = file.strip_prefix("mem-")?.strip_suffix(".raw")?;
    (!n.is_empty() && n.len() <= 3 && n.bytes().all(|b| b.is_ascii_digit())).then_some(max_mem)
}

/// Packs `trace` and every snapshot its checkpoint records reference into `out`.
///
/// # Errors
/// The trace or a snapshot is missing or damaged, or `out` cannot be written.
pub fn pack(trace: &Path, out: &Path) -> Result<Manifest, BundleError> {
    let facts = crate::facts::scan(trace).map_err(|e| BundleError::Pack(e.to_string()))?;
    let root = vmrr_engine::snapshot::dir_for_trace(trace);
    let mut files: Vec<(String, PathBuf, Storage)> =
        vec![("trace.vmrr".into(), trace.to_path_buf(), Storage::Zstd)];
    let mut ids = Vec::new();
    for c in &facts.checkpoints {
        let dir = vmrr_engine::snapshot::snapshot_dir(&root, c.snapshot_id);
        // Validates the snapshot (and its chain) before it is shipped.
        vmrr_engine::snapshot::load_chain(&dir, u64::MAX).map_err(|e| BundleError::Pack(e.to_string()))?;
        ids.push(c.snapshot_id);
        let base = format!("snapshots/snap-{:06}", c.snapshot_id);
        files.push((format!("{base}/state.bin"), dir.join("state.bin"), Storage::Zstd));
        let rd = std::fs::read_dir(&dir).map_err(io("reading", &dir))?;
        let mut mems: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("mem-")))
            .collect();
        mems.sort();
        for p in mems {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
            files.push((format!("{base}/{n}"), p, Storage::Sparse));
        }
    }
    let tmp = out.with_extension("tmp");
    let mut body: Vec<Entry> = Vec::new();
    let payload_path = tmp.with_extension("payload");
    let mut payload = File::create(&payload_path).map_err(io("creating", &payload_path))?;
    let mut offset = 0u64;
    for (name, path, storage) in files {
        let f = File::open(&path).map_err(io("opening", &path))?;
        let size = f.metadata().map_err(io("reading", &path))?.len();
        let bytes = match storage {
            Storage::Zstd => {
                let mut v = Vec::new();
                zstd::stream::copy_encode(&f, &mut v, 3).map_err(io("compressing", &path))?;
                v
            }
            Storage::Sparse => sparse_encode(&f, size, &path)?,
        };
        payload.write_all(&bytes).map_err(io("writing", &payload_path))?;
        body.push(Entry {
            name,
            size,
            storage,
            offset,
            stored: bytes.len() as u64,
            crc32c: crc32c::crc32c(&bytes),
        });
        offset += bytes.len() as u64;
    }
    drop(payload);
    let manifest = Manifest {
        trace_id: facts.trace_id.iter().map(|b| format!("{b:02x}")).collect(),
        annotations: facts.annotations.clone(),
        snapshots: ids,
        entries: body,
    };
    // Entry offsets are relative to the payload; make them absolute now that the manifest
    // size is known (iterate: the offsets' digits change the manifest's length).
    let mut m = manifest.clone();
    let mut json = serde_json::to_vec(&m).map_err(|e| BundleError::Pack(e.to_string()))?;
    for _ in 0..4 {
        let base = HEADER + json.len() as u64;
        for (e, orig) in m.entries.iter_mut().zip(&manifest.entries) {
            e.offset = base + orig.offset;
        }
        let next = serde_json::to_vec(&m).map_err(|e| BundleError::Pack(e.to_string()))?;
        if next.len() == json.len() {
            json = next;
            break;
        }
        json = next;
    }
    let mut out_f = File::create(&tmp).map_err(io("creating", &tmp))?;
    let mut hdr = Vec::with_capacity(32);
    hdr.extend_from_slice(&MAGIC);
    hdr.extend_from_slice(&MAJOR.to_le_bytes());
    hdr.extend_from_slice(&MINOR.to_le_bytes());
    hdr.extend_from_slice(&[0; 4]);
    hdr.extend_from_slice(&(json.len() as u64).to_le_bytes());
    hdr.extend_from_slice(&crc32c::crc32c(&json).to_le_bytes());
    let c = crc32c::crc32c(&hdr);
    hdr.extend_from_slice(&c.to_le_bytes());
    out_f.write_all(&hdr).map_err(io("writing", &tmp))?;
    out_f.write_all(&json).map_err(io("writing", &tmp))?;
    let mut payload = File::open(&payload_path).map_err(io("opening", &payload_path))?;
    std::io::copy(&mut payload, &mut out_f).map_err(io("writing", &tmp))?;
    out_f.sync_all().map_err(io("syncing", &tmp))?;
    let _ = std::fs::remove_file(&payload_path);
    std::fs::rename(&tmp, out).map_err(io("renaming", &tmp))?;
    Ok(m)
}

/// Extents of non-zero pages, then one zstd frame of their bytes.
fn sparse_encode(f: &File, size: u64, path: &Path) -> Result<Vec<u8>, BundleError> {
    let mut extents: Vec<(u64, u64)> = Vec::new();
    let mut data = Vec::new();
    let mut page = vec![0u8; 4096];
    let ranges = data_ranges(f, size).map_err(io("scanning", path))?;
    for (off, len) in ranges {
        let mut p = off / PAGE * PAGE;
        while p < (off + len).min(size) {
            let n = usize::try_from(PAGE.min(size - p)).unwrap_or(0);
            f.read_exact_at(&mut page[..n], p).map_err(io("reading", path))?;
            if page[..n].iter().any(|&b| b != 0) {
                match extents.last_mut() {
                    Some((s, l)) if *s + *l == p => *l += n as u64,
                    _ => extents.push((p, n as u64)),
                }
                data.extend_from_slice(&page[..n]);
            }
            p += PAGE;
        }
    }
    let mut out = Vec::new();
    out.extend_from_slice(&(extents.len() as u64).to_le_bytes());
    for (s, l) in &extents {
        out.extend_from_slice(&s.to_le_bytes());
        out.extend_from_slice(&l.to_le_bytes());
    }
    let z = zstd::bulk::compress(&data, 3).map_err(io("compressing", path))?;
    out.extend_from_slice(&z);
    Ok(out)
}

/// Populated ranges of a file (all of it when the file system cannot tell).
fn data_ranges(f: &File, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    // std has no SEEK_DATA; reading zero pages is only slower, never wrong. Scan in
    // 1 MiB blocks and skip all-zero ones.
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < size {
        let n = usize::try_from((size - off).min(buf.len() as u64)).unwrap_or(0);
        f.read_exact_at(&mut buf[..n], off)?;
        if buf[..n].iter().any(|&b| b != 0) {
            out.push((off, n as u64));
        }
        off += n as u64;
    }
    Ok(out)
}

fn invalid(path: &Path, offset: u64, reason: impl Into<String>) -> BundleError {
    BundleError::Invalid { path: path.display().to_string(), offset, reason: reason.into() }
}

/// Reads and checks a bundle's header and manifest.
///
/// # Errors
/// A damaged or hostile bundle.
pub fn read_manifest(src: &Path, max_mem: u64) -> Result<Manifest, BundleError> {
    let mut f = File::open(src).map_err(io("opening", src))?;
    let len = f.metadata().map_err(io("reading", src))?.len();
    let mut h = [0u8; 32];
    if len < HEADER {
        return Err(invalid(src, 0, format!("truncated: {len} bytes, the header needs {HEADER}")));
    }
    f.read_exact(&mut h).map_err(io("reading", src))?;
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
    let mlen = u64::from_le_bytes(h[16..24].try_into().unwrap_or([0; 8]));
    if mlen > MAX_MANIFEST || HEADER + mlen > len {
        return Err(invalid(
            src,
            16,
            format!("manifest of {mlen} bytes does not fit (limit {MAX_MANIFEST}, file {len})"),
        ));
    }
    let mut json = vec![0u8; usize::try_from(mlen).unwrap_or(0)];
    f.read_exact(&mut json).map_err(io("reading", src))?;
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
            return Err(invalid(
                src,
                HEADER,
                format!("entry {:?} of {} bytes exceeds its limit of {cap}", e.name, e.size),
            ));
        }
        if e.storage == Storage::Sparse {
            total_mem = total_mem.saturating_add(e.size);
        }
        let end = e.offset.checked_add(e.stored);
        if e.offset < HEADER + mlen || end.is_none_or(|x| x > len) {
            return Err(invalid(src, e.offset, format!("entry {:?} lies outside the file", e.name)));
        }
    }
    if !names.contains("trace.vmrr") {
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
    let f = File::open(src).map_err(io("opening", src))?;
    for e in &m.entries {
        let mut stored =
            vec![0u8; usize::try_from(e.stored).map_err(|_| invalid(src, e.offset, "entry too large"))?];
        f.read_exact_at(&mut stored, e.offset).map_err(io("reading", src))?;
        if crc32c::crc32c(&stored) != e.crc32c {
            return Err(invalid(src, e.offset, format!("entry {:?}: checksum mismatch", e.name)));
        }
        // `e.name` passed `allowed`: relative, no `..`, only [a-z0-9._/-].
        let target = dir.join(&e.name);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
        }
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
            .map_err(io("creating", &target))?;
        match e.storage {
            Storage::Zstd => {
                let mut dec =
                    zstd::stream::read::Decoder::new(&stored[..]).map_err(io("decompressing", &target))?;
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
            Storage::Sparse => sparse_decode(&stored, e, &out, src, &target)?,
        }
        out.sync_all().map_err(io("syncing", &target))?;
    }
    Ok(Unpacked { trace: dir.join("trace.vmrr"), manifest: m })
}

fn sparse_decode(stored: &[u8], e: &Entry, out: &File, src: &Path, target: &Path) -> Result<(), BundleError> {
    let bad = |r: String| invalid(src, e.offset, format!("entry {:?}: {r}", e.name));
    let n = u64::from_le_bytes(
        stored.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(|| bad("truncated".into()))?,
    );
    let ext_bytes = n.checked_mul(16).and_then(|x| x.checked_add(8)).filter(|x| *x <= stored.len() as u64);
    let Some(ext_end) = ext_bytes else { return Err(bad(format!("{n} extents do not fit"))) };
    let ext_end = usize::try_from(ext_end).unwrap_or(usize::MAX);
    let mut extents = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    let mut total: u64 = 0;
    let mut prev_end = 0u64;
    for c in stored[8..ext_end].chunks_exact(16) {
        let s = u64::from_le_bytes(c[..8].try_into().unwrap_or([0; 8]));
        let l = u64::from_le_bytes(c[8..].try_into().unwrap_or([0; 8]));
        if s < prev_end || s.checked_add(l).is_none_or(|x| x > e.size) || s % PAGE != 0 {
            return Err(bad(format!("extent {s:#x}+{l:#x} is out of order or outside the file")));
        }
        prev_end = s + l;
        total += l;
        extents.push((s, l));
    }
    let data = zstd::bulk::decompress(&stored[ext_end..], usize::try_from(total).unwrap_or(0))
        .map_err(|err| bad(format!("decompression: {err}")))?;
    if data.len() as u64 != total {
        return Err(bad(format!("{} bytes of pages, extents need {total}", data.len())));
    }
    out.set_len(e.size).map_err(io("sizing", target))?;
    let mut at = 0usize;
    for (s, l) in extents {
        let l = usize::try_from(l).unwrap_or(0);
        out.write_all_at(&data[at..at + l], s).map_err(io("writing", target))?;
        at += l;
    }
    Ok(())
}

/// Moves the unpacked layout so that `dir/trace.vmrr` has its snapshots at
/// `dir/trace.snapshots` (the layout replay expects).
///
/// # Errors
/// Renaming failed.
pub fn arrange(dir: &Path) -> Result<(), BundleError> {
    let from = dir.join("snapshots");
    if from.is_dir() {
        let to = dir.join("trace.snapshots");
        std::fs::rename(&from, &to).map_err(io("renaming", &from))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_follow_the_layout_only() {
        let cap = 1 << 30;
        for ok in [
            "trace.vmrr",
            "snapshots/snap-000000/state.bin",
            "snapshots/snap-000012/mem-0.raw",
            "snapshots/snap-999999/mem-31.raw",
        ] {
            assert!(allowed(ok, cap).is_some(), "{ok}");
        }
        for bad in [
            "../trace.vmrr",
            "/etc/passwd",
            "snapshots/../../x",
            "snapshots/snap-000000/../../state.bin",
            "snapshots/snap-00000/state.bin",
            "snapshots/snap-000000/mem-.raw",
            "snapshots/snap-000000/mem-0.raw/x",
            "snapshots/snap-000000/evil",
            "trace.vmrr/",
            "",
            "snapshots/snap-0000a0/state.bin",
        ] {
            assert!(allowed(bad, cap).is_none(), "{bad}");
        }
    }
}

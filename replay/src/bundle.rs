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
const PAGE_BYTES: usize = 4096;

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
    #[error(
        "{path}: offset 0x8: bundle version {major}.{minor} is not readable by this vmrr (reads {MAJOR}.x): use the vmrr that packed it, or a newer one"
    )]
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
    let payload = File::create(&payload_path).map_err(io("creating", &payload_path))?;
    let mut payload = std::io::BufWriter::with_capacity(1 << 20, payload);
    let mut offset = 0u64;
    for (name, path, storage) in files {
        let f = File::open(&path).map_err(io("opening", &path))?;
        let size = f.metadata().map_err(io("reading", &path))?.len();
        // Streamed: memory stays at a few buffers whatever the guest's size.
        let mut w = Summing { inner: &mut payload, len: 0, crc: 0 };
        match storage {
            Storage::Zstd => {
                let mut enc =
                    zstd::stream::write::Encoder::new(&mut w, 3).map_err(io("compressing", &path))?;
                enc.set_pledged_src_size(Some(size)).map_err(io("compressing", &path))?;
                std::io::copy(&mut &f, &mut enc).map_err(io("compressing", &path))?;
                enc.finish().map_err(io("compressing", &path))?;
            }
            Storage::Sparse => sparse_encode(&f, size, &path, &mut w)?,
        }
        let (stored, crc) = (w.len, w.crc);
        body.push(Entry { name, size, storage, offset, stored, crc32c: crc });
        offset += stored;
    }
    payload.flush().map_err(io("writing", &payload_path))?;
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

/// A writer that counts and checksums what passes through it.
struct Summing<W: Write> {
    inner: W,
    len: u64,
    crc: u32,
}

impl<W: Write> Write for Summing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Reads `[pos, end)` of a file, positionally (several can share one file).
struct Region<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for Region<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = usize::try_from((self.end - self.pos).min(buf.len() as u64)).unwrap_or(0);
        if n == 0 {
            return Ok(0);
        }
        let got = self.file.read_at(&mut buf[..n], self.pos)?;
        if got == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.pos += got as u64;
        Ok(got)
    }
}

/// Streaming copies use buffers of this size.
const BUF: usize = 1 << 20;
/// Largest zstd window a bundle may ask a decoder for (2^24 = 16 MiB; vmrr writes 2 MiB).
const WINDOW_LOG_MAX: u32 = 24;

/// Extents of non-zero pages, then one zstd frame of their bytes, streamed into `out`.
fn sparse_encode(f: &File, size: u64, path: &Path, out: &mut impl Write) -> Result<(), BundleError> {
    let extents = nonzero_extents(f, size).map_err(io("scanning", path))?;
    out.write_all(&(extents.len() as u64).to_le_bytes()).map_err(io("writing", path))?;
    for (s, l) in &extents {
        out.write_all(&s.to_le_bytes()).map_err(io("writing", path))?;
        out.write_all(&l.to_le_bytes()).map_err(io("writing", path))?;
    }
    let total: u64 = extents.iter().map(|e| e.1).sum();
    let mut enc = zstd::stream::write::Encoder::new(out, 3).map_err(io("compressing", path))?;
    enc.set_pledged_src_size(Some(total)).map_err(io("compressing", path))?;
    let mut buf = vec![0u8; BUF];
    for (s, l) in extents {
        let mut p = s;
        while p < s + l {
            let n = usize::try_from((s + l - p).min(BUF as u64)).unwrap_or(0);
            f.read_exact_at(&mut buf[..n], p).map_err(io("reading", path))?;
            enc.write_all(&buf[..n]).map_err(io("compressing", path))?;
            p += n as u64;
        }
    }
    enc.finish().map_err(io("compressing", path))?;
    Ok(())
}

/// The non-zero 4 KiB pages of a memory file as merged `(offset, len)` extents. Only the
/// file's populated ranges (`SEEK_DATA`) are read.
fn nonzero_extents(f: &File, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let mut extents: Vec<(u64, u64)> = Vec::new();
    let mut buf = vec![0u8; BUF];
    for (off, len) in vmrr_engine::snapshot::populated_ranges(f, size)? {
        let mut p = off / PAGE * PAGE;
        let end = (off + len).min(size);
        while p < end {
            let n = usize::try_from((end - p).min(BUF as u64)).unwrap_or(0);
            f.read_exact_at(&mut buf[..n], p)?;
            for (i, page) in buf[..n].chunks(PAGE_BYTES).enumerate() {
                if page.iter().any(|&b| b != 0) {
                    let at = p + i as u64 * PAGE;
                    let l = page.len() as u64;
                    match extents.last_mut() {
                        Some((s, el)) if *s + *el == at => *el += l,
                        _ => extents.push((at, l)),
                    }
                }
            }
            p += n as u64;
        }
    }
    Ok(extents)
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
            let why = if e.name.ends_with(".raw") {
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
    let mut buf = vec![0u8; BUF];
    for e in &m.entries {
        // read_manifest checked that the payload lies inside the file.
        let end = e.offset + e.stored;
        // 1. The checksum over the stored bytes, before any of them is decoded.
        let mut crc = 0u32;
        let mut p = e.offset;
        while p < end {
            let n = usize::try_from((end - p).min(BUF as u64)).unwrap_or(0);
            f.read_exact_at(&mut buf[..n], p).map_err(io("reading", src))?;
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
            create_dirs_within(dir, parent).map_err(io("creating", parent))?;
        }
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
            .map_err(io("creating", &target))?;
        let region = Region { file: &f, pos: e.offset, end };
        match e.storage {
            Storage::Zstd => {
                let mut dec = decoder(region).map_err(io("decompressing", &target))?;
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
            Storage::Sparse => sparse_decode(&f, e, &out, src, &target, &mut buf)?,
        }
        out.sync_all().map_err(io("syncing", &target))?;
    }
    Ok(Unpacked { trace: dir.join("trace.vmrr"), manifest: m })
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

/// A streaming zstd decoder whose window (its memory) is capped.
fn decoder(
    r: Region<'_>,
) -> std::io::Result<zstd::stream::read::Decoder<'static, std::io::BufReader<Region<'_>>>> {
    let mut d = zstd::stream::read::Decoder::new(r)?;
    d.window_log_max(WINDOW_LOG_MAX)?;
    Ok(d)
}

fn sparse_decode(
    f: &File,
    e: &Entry,
    out: &File,
    src: &Path,
    target: &Path,
    buf: &mut [u8],
) -> Result<(), BundleError> {
    let bad = |r: String| invalid(src, e.offset, format!("entry {:?}: {r}", e.name));
    let mut w8 = [0u8; 8];
    if e.stored < 8 {
        return Err(bad("truncated".into()));
    }
    f.read_exact_at(&mut w8, e.offset).map_err(io("reading", src))?;
    let n = u64::from_le_bytes(w8);
    // Extents are disjoint whole pages: at most one per page, and their table must fit.
    let table = n.checked_mul(16).and_then(|x| x.checked_add(8)).filter(|x| *x <= e.stored);
    let Some(table) = table.filter(|_| n <= e.size.div_ceil(PAGE)) else {
        return Err(bad(format!("{n} extents do not fit")));
    };
    let mut dec = decoder(Region { file: f, pos: e.offset + table, end: e.offset + e.stored })
        .map_err(io("decompressing", target))?;
    out.set_len(e.size).map_err(io("sizing", target))?;
    let mut prev_end = 0u64;
    let mut ext = [0u8; 16];
    for i in 0..n {
        f.read_exact_at(&mut ext, e.offset + 8 + i * 16).map_err(io("reading", src))?;
        let s = u64::from_le_bytes(ext[..8].try_into().unwrap_or([0; 8]));
        let l = u64::from_le_bytes(ext[8..].try_into().unwrap_or([0; 8]));
        if s < prev_end || s.checked_add(l).is_none_or(|x| x > e.size) || s % PAGE != 0 {
            return Err(bad(format!("extent {s:#x}+{l:#x} is out of order or outside the file")));
        }
        prev_end = s + l;
        let mut p = s;
        while p < s + l {
            let want = usize::try_from((s + l - p).min(buf.len() as u64)).unwrap_or(0);
            dec.read_exact(&mut buf[..want]).map_err(|err| bad(format!("page data at {p:#x}: {err}")))?;
            out.write_all_at(&buf[..want], p).map_err(io("writing", target))?;
            p += want as u64;
        }
    }
    // Nothing may follow the pages the extents describe.
    let mut one = [0u8; 1];
    match dec.read(&mut one) {
        Ok(0) => Ok(()),
        Ok(_) => Err(bad("more page data than the extents describe".into())),
        Err(err) => Err(bad(format!("page data: {err}"))),
    }
}

/// Fuzzing entry point: reads `data` as a bundle the way `vmrr replay` does, offline:
/// manifest, unpack (memory files capped at 64 MiB so a run stays small), then the trace's
/// facts and every snapshot chain it names. Must return without panicking and in bounded
/// memory for every input; nothing is written outside a private temporary directory.
///
/// The input is tried as given and again with every checksum recomputed (see
/// [`fix_checksums`]), so mutations reach what lies behind them.
pub fn fuzz_read(data: &[u8]) {
    fuzz_read_one(data);
    let mut fixed = data.to_vec();
    if fix_checksums(&mut fixed) {
        fuzz_read_one(&fixed);
    }
}

/// Recomputes a bundle's checksums in place: each entry's payload CRC (when the manifest
/// parses and the payload lies inside the file; the manifest is rewritten only when that
/// keeps its length), the manifest's and the header's. For fuzzing and crafted test files.
/// False when `b` is too short or its manifest does not fit.
pub fn fix_checksums(b: &mut [u8]) -> bool {
    let hdr = usize::try_from(HEADER).unwrap_or(32);
    if b.len() < hdr {
        return false;
    }
    let mlen = u64::from_le_bytes(b[16..24].try_into().unwrap_or([0; 8]));
    let Some(mend) = usize::try_from(mlen).ok().and_then(|m| m.checked_add(hdr)).filter(|e| *e <= b.len())
    else {
        return false;
    };
    if let Ok(mut m) = serde_json::from_slice::<Manifest>(&b[hdr..mend]) {
        for e in &mut m.entries {
            let range = usize::try_from(e.offset)
                .ok()
                .zip(usize::try_from(e.stored).ok())
                .and_then(|(o, l)| Some(o..o.checked_add(l)?))
                .filter(|r| r.end <= b.len());
            if let Some(r) = range {
                e.crc32c = crc32c::crc32c(&b[r]);
            }
        }
        if let Ok(json) = serde_json::to_vec(&m) {
            if json.len() == mend - hdr {
                b[hdr..mend].copy_from_slice(&json);
            }
        }
    }
    let mcrc = crc32c::crc32c(&b[hdr..mend]);
    b[24..28].copy_from_slice(&mcrc.to_le_bytes());
    let hcrc = crc32c::crc32c(&b[..28]);
    b[28..32].copy_from_slice(&hcrc.to_le_bytes());
    true
}

fn fuzz_read_one(data: &[u8]) {
    let Ok(dir) = tempfile::tempdir() else { return };
    let src = dir.path().join("fuzz.vmrrb");
    let out = dir.path().join("out");
    if std::fs::write(&src, data).is_err() || std::fs::create_dir(&out).is_err() {
        return;
    }
    let Ok(u) = unpack(&src, &out, 64 << 20) else { return };
    if arrange(&out).is_err() {
        return;
    }
    if let Ok(facts) = crate::facts::scan(&u.trace) {
        let root = vmrr_engine::snapshot::dir_for_trace(&u.trace);
        for c in facts.checkpoints.iter().take(16) {
            let _ = vmrr_engine::snapshot::load_chain(
                &vmrr_engine::snapshot::snapshot_dir(&root, c.snapshot_id),
                64 << 20,
            );
        }
    }
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

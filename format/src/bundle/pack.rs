//! Writing a bundle: the trace, every snapshot its checkpoint records reference, and the
//! guest image or firmware it runs, streamed through compression in bounded memory
//! whatever the guest's size.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{
    BundleError, Entry, FIRMWARE_ENTRY, HEADER, IMAGE_ENTRY, INITRD_ENTRY, KERNEL_ENTRY, MAGIC, MAJOR,
    MAX_ENTRIES, MAX_FIRMWARE, MAX_KERNEL, MAX_MANIFEST, MINOR, MINOR_KERNEL, Manifest, SNAPSHOTS_ENTRY,
    Storage, TRACE_ENTRY,
};
use super::{file_err, sparse};
use crate::layout;
use crate::scratch::Scratch;

/// Checks one snapshot directory (and its parent chain) before it is shipped; the engine
/// provides it (`vmrr_engine::snapshot::ChainCheck`), so this crate needs no KVM.
pub type SnapshotCheck<'a> = &'a dyn Fn(&Path) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Checks `(file, recorded sha256)`; an error says why the file is not the recorded one.
pub type IdentityCheck<'a> = &'a dyn Fn(&Path, &str) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// How to pack.
pub struct PackOptions<'a> {
    /// Checks each snapshot the trace references.
    pub check: SnapshotCheck<'a>,
    /// The guest image, firmware or kernel to ship, instead of the path the trace names
    /// (which is where it was when recorded, on this host).
    pub guest_file: Option<PathBuf>,
    /// The initramfs to ship, instead of the path the trace names.
    pub initrd_file: Option<PathBuf>,
    /// Checks a kernel or initramfs file against the identity the trace recorded
    /// (`vmrr.kernel_sha256`, `vmrr.initrd_sha256`): the engine provides it, so a file
    /// replaced since the recording is not shipped as if it were the recorded one.
    pub identity: Option<IdentityCheck<'a>>,
    /// Replace an existing bundle at the output path (`--force`; see [`crate::output`]).
    pub replace: bool,
}

/// A guest file a trace runs: its entry, what it is, the flag that names it, its path, its
/// size cap, and the annotation holding its recorded SHA-256 (if any).
struct GuestFile {
    entry: &'static str,
    what: &'static str,
    flag: &'static str,
    path: PathBuf,
    cap: u64,
    sha256_key: Option<&'static str>,
}

/// The guest files a trace's annotations name (a flat image, a firmware, or a kernel and
/// its initramfs), at the paths given instead where there are some.
fn guest_files(
    overview: &crate::overview::TraceOverview,
    given: Option<&Path>,
    given_initrd: Option<&Path>,
) -> Vec<GuestFile> {
    let named = |k| overview.annotation(k).map(PathBuf::from);
    let pick = |p: PathBuf, g: Option<&Path>| g.map_or(p, Path::to_path_buf);
    if overview.annotation("vmrr.guest").is_some() {
        return Vec::new();
    }
    if let Some(p) = named("vmrr.image") {
        let path = pick(p, given);
        return vec![GuestFile {
            entry: IMAGE_ENTRY,
            what: "image",
            flag: "--image",
            path,
            cap: u64::MAX,
            sha256_key: None,
        }];
    }
    if let Some(p) = named("vmrr.firmware") {
        let path = pick(p, given);
        return vec![GuestFile {
            entry: FIRMWARE_ENTRY,
            what: "firmware",
            flag: "--firmware",
            path,
            cap: MAX_FIRMWARE,
            sha256_key: None,
        }];
    }
    let mut files = Vec::new();
    if let Some(p) = named("vmrr.kernel") {
        let path = pick(p, given);
        files.push(GuestFile {
            entry: KERNEL_ENTRY,
            what: "kernel",
            flag: "--kernel",
            path,
            cap: MAX_KERNEL,
            sha256_key: Some("vmrr.kernel_sha256"),
        });
    }
    if let Some(p) = named("vmrr.initrd") {
        let path = pick(p, given_initrd);
        files.push(GuestFile {
            entry: INITRD_ENTRY,
            what: "initramfs",
            flag: "--initrd",
            path,
            cap: u64::MAX,
            sha256_key: Some("vmrr.initrd_sha256"),
        });
    }
    files
}

/// Packs `trace`, every snapshot its checkpoint records reference (after `opts.check`
/// accepted each), and the guest image or firmware it runs, into `out`. `out` is checked
/// first (it must not be an input, nor exist unless `opts.replace`), written under a
/// unique temporary name beside it, and renamed into place when complete: a failure
/// leaves nothing behind and the previous `out` untouched.
///
/// # Errors
/// The trace, a snapshot or the guest file is missing, damaged or not a regular file, the
/// bundle would exceed a reader's caps, `out` may not be written, or writing failed.
pub fn pack(trace: &Path, out: &Path, opts: &PackOptions<'_>) -> Result<Manifest, BundleError> {
    // The output checked against the trace before anything is read: `pack X -o X` is
    // refused as such, not as whatever reading X would have found first.
    crate::output::check(out, &[trace], opts.replace, crate::output::OutputKind::File)?;
    let overview = crate::overview::scan(trace)?;
    let mut files: Vec<(String, PathBuf, Storage)> =
        vec![(TRACE_ENTRY.into(), trace.to_path_buf(), Storage::Zstd)];
    let minor = guest_entries(&overview, opts, &mut files)?;
    let ids = snapshot_entries(&overview, trace, opts, &mut files)?;
    // Before anything is written: the output is none of the inputs, and not something
    // that may not be replaced.
    let inputs: Vec<&Path> = files.iter().map(|(_, p, _)| p.as_path()).collect();
    crate::output::check(out, &inputs, opts.replace, crate::output::OutputKind::File)?;
    let dir = crate::output::directory_of(out);
    let prefix = crate::output::scratch_prefix(out);
    let scratch = |what| {
        let at = dir.join(format!("{prefix}{what}"));
        move |source| BundleError::File(crate::FileError { what: "creating", path: at, source })
    };
    let (payload_tmp, payload) =
        Scratch::file_in(dir, &format!("{prefix}payload-")).map_err(scratch("payload-*"))?;
    let payload_path = payload_tmp.path().to_path_buf();
    let mut payload = std::io::BufWriter::with_capacity(1 << 20, payload);
    let mut body: Vec<Entry> = Vec::new();
    let mut offset = 0u64;
    for (name, path, storage) in files {
        let (f, md) = crate::input::open_regular(&path)?;
        let size = md.len();
        // Streamed: memory stays at a few buffers whatever the guest's size.
        let mut w = Summing { inner: &mut payload, len: 0, crc: 0 };
        match storage {
            Storage::Zstd => compress(&f, size, &mut w).map_err(file_err("compressing", &path))?,
            Storage::Sparse => sparse::encode(&f, size, &path, &mut w)?,
        }
        let (stored, crc) = (w.len, w.crc);
        body.push(Entry { name, size, storage, offset, stored, crc32c: crc });
        offset += stored;
    }
    let mut payload = payload.into_inner().map_err(|e| {
        BundleError::File(crate::FileError {
            what: "writing",
            path: payload_path.clone(),
            source: e.into_error(),
        })
    })?;
    let manifest = Manifest {
        trace_id: crate::describe::hex(&overview.trace_id),
        annotations: overview.annotations.clone(),
        snapshots: ids,
        entries: body,
        exits: Some(overview.exits),
    };
    drop(overview);
    let (m, json) = place_entries(manifest)?;
    if json.len() as u64 > MAX_MANIFEST {
        return Err(BundleError::TooLarge {
            path: trace.display().to_string(),
            reason: format!(
                "the manifest would take {} bytes, over the {MAX_MANIFEST} a reader accepts",
                json.len()
            ),
        });
    }
    let (tmp, mut out_f) = Scratch::file_in(dir, &prefix).map_err(scratch("*"))?;
    let tmp_path = tmp.path().to_path_buf();
    out_f.write_all(&header(&json, minor)).map_err(file_err("writing", &tmp_path))?;
    out_f.write_all(&json).map_err(file_err("writing", &tmp_path))?;
    drop(json);
    payload.seek(SeekFrom::Start(0)).map_err(file_err("reading", &payload_path))?;
    std::io::copy(&mut payload, &mut out_f).map_err(file_err("writing", &tmp_path))?;
    out_f.sync_all().map_err(file_err("syncing", &tmp_path))?;
    drop(payload_tmp);
    tmp.publish(out, opts.replace).map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => {
            BundleError::Output(crate::output::OutputError::Exists { out: out.to_path_buf() })
        }
        _ => BundleError::File(crate::FileError { what: "renaming into", path: out.to_path_buf(), source }),
    })?;
    Ok(m)
}

/// Adds the guest files the trace runs (image or firmware, kernel and initramfs) to
/// `files`, each a regular file within its cap and, where the trace recorded its SHA-256,
/// the same file; returns the bundle minor version they need.
fn guest_entries(
    overview: &crate::overview::TraceOverview,
    opts: &PackOptions<'_>,
    files: &mut Vec<(String, PathBuf, Storage)>,
) -> Result<u16, BundleError> {
    let mut minor = MINOR;
    for g in guest_files(overview, opts.guest_file.as_deref(), opts.initrd_file.as_deref()) {
        let failed = |source: Box<dyn std::error::Error + Send + Sync>| BundleError::GuestFile {
            what: g.what,
            flag: g.flag,
            path: g.path.clone(),
            source,
        };
        let (_, md) = crate::input::open_regular(&g.path).map_err(|e| failed(e.into()))?;
        if md.len() > g.cap {
            return Err(failed(format!("{} bytes, over the limit of {}", md.len(), g.cap).into()));
        }
        if let (Some(key), Some(check)) = (g.sha256_key, opts.identity) {
            if let Some(sha) = overview.annotation(key) {
                check(&g.path, sha).map_err(failed)?;
            }
        }
        if g.entry == KERNEL_ENTRY {
            minor = MINOR_KERNEL;
        }
        files.push((g.entry.into(), g.path.clone(), Storage::Zstd));
    }
    Ok(minor)
}

/// Adds every snapshot the trace's checkpoint records reference (its state and memory
/// files, after `opts.check` accepted it) to `files`; returns their ids.
fn snapshot_entries(
    overview: &crate::overview::TraceOverview,
    trace: &Path,
    opts: &PackOptions<'_>,
    files: &mut Vec<(String, PathBuf, Storage)>,
) -> Result<Vec<u64>, BundleError> {
    let root = layout::find_snapshots(trace).unwrap_or_else(|| layout::snapshots_of(trace));
    let mut ids = Vec::new();
    for c in &overview.checkpoints {
        let dir = layout::snapshot_dir(&root, c.snapshot_id);
        (opts.check)(&dir).map_err(|source| BundleError::Snapshot { dir: dir.clone(), source })?;
        ids.push(c.snapshot_id);
        let base = format!("{SNAPSHOTS_ENTRY}/{}", layout::snapshot_dir_name(c.snapshot_id));
        files.push((format!("{base}/{}", layout::STATE_FILE), dir.join(layout::STATE_FILE), Storage::Zstd));
        let rd = std::fs::read_dir(&dir).map_err(file_err("reading", &dir))?;
        let mut mems: Vec<(u32, PathBuf)> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter_map(|p| {
                let slot = layout::memory_file_slot(p.file_name()?.to_str()?)?;
                Some((slot, p))
            })
            .collect();
        mems.sort();
        for (slot, p) in mems {
            files.push((format!("{base}/{}", layout::memory_file_name(slot)), p, Storage::Sparse));
        }
        if files.len() > MAX_ENTRIES {
            return Err(BundleError::TooLarge {
                path: trace.display().to_string(),
                reason: format!(
                    "the bundle would hold more than {MAX_ENTRIES} files (the most a reader accepts)"
                ),
            });
        }
    }
    Ok(ids)
}

/// Streams `f` (`size` bytes) into `out` as one zstd frame.
fn compress(f: &File, size: u64, out: &mut impl Write) -> std::io::Result<()> {
    let mut enc = zstd::stream::write::Encoder::new(out, 3)?;
    enc.set_pledged_src_size(Some(size))?;
    std::io::copy(&mut &*f, &mut enc)?;
    enc.finish()?;
    Ok(())
}

/// Makes the entries' payload-relative offsets absolute now that the manifest's size is
/// known (iterating: the offsets' digits change the manifest's length). Returns the final
/// manifest and its JSON.
fn place_entries(manifest: Manifest) -> Result<(Manifest, Vec<u8>), BundleError> {
    let json_err = |e: serde_json::Error| {
        BundleError::File(crate::FileError {
            what: "encoding the manifest of",
            path: PathBuf::from("bundle"),
            source: e.into(),
        })
    };
    let mut m = manifest.clone();
    let mut json = serde_json::to_vec(&m).map_err(json_err)?;
    for _ in 0..4 {
        let base = HEADER + json.len() as u64;
        for (e, orig) in m.entries.iter_mut().zip(&manifest.entries) {
            e.offset = base + orig.offset;
        }
        let next = serde_json::to_vec(&m).map_err(json_err)?;
        let settled = next.len() == json.len();
        json = next;
        if settled {
            break;
        }
    }
    Ok((m, json))
}

/// The 32-byte header for a manifest.
fn header(json: &[u8], minor: u16) -> Vec<u8> {
    let mut hdr = Vec::with_capacity(32);
    hdr.extend_from_slice(&MAGIC);
    hdr.extend_from_slice(&MAJOR.to_le_bytes());
    hdr.extend_from_slice(&minor.to_le_bytes());
    hdr.extend_from_slice(&[0; 4]);
    hdr.extend_from_slice(&(json.len() as u64).to_le_bytes());
    hdr.extend_from_slice(&crc32c::crc32c(json).to_le_bytes());
    let c = crc32c::crc32c(&hdr);
    hdr.extend_from_slice(&c.to_le_bytes());
    hdr
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

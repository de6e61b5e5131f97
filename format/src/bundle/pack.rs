//! Writing a bundle: the trace and every snapshot its checkpoint records reference,
//! streamed through compression in bounded memory whatever the guest's size.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{
    BundleError, Entry, HEADER, MAGIC, MAJOR, MINOR, Manifest, SNAPSHOTS_ENTRY, Storage, TRACE_ENTRY,
};
use super::{file_err, sparse};
use crate::layout;

/// Checks one snapshot directory (and its parent chain) before it is shipped; the engine
/// provides it (`vmrr_engine::snapshot::load_chain`), so this crate needs no KVM.
pub type SnapshotCheck<'a> = &'a dyn Fn(&Path) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Packs `trace` and every snapshot its checkpoint records reference into `out`, after
/// `check` accepted each snapshot.
///
/// # Errors
/// The trace or a snapshot is missing or damaged, or `out` cannot be written.
pub fn pack(trace: &Path, out: &Path, check: SnapshotCheck<'_>) -> Result<Manifest, BundleError> {
    let overview = crate::overview::scan(trace)?;
    let root = layout::snapshots_of(trace);
    let mut files: Vec<(String, PathBuf, Storage)> =
        vec![(TRACE_ENTRY.into(), trace.to_path_buf(), Storage::Zstd)];
    let mut ids = Vec::new();
    for c in &overview.checkpoints {
        let dir = layout::snapshot_dir(&root, c.snapshot_id);
        check(&dir).map_err(|source| BundleError::Snapshot { dir: dir.clone(), source })?;
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
    }
    let tmp = out.with_extension("tmp");
    let mut body: Vec<Entry> = Vec::new();
    let payload_path = tmp.with_extension("payload");
    let payload = File::create(&payload_path).map_err(file_err("creating", &payload_path))?;
    let mut payload = std::io::BufWriter::with_capacity(1 << 20, payload);
    let mut offset = 0u64;
    for (name, path, storage) in files {
        let f = File::open(&path).map_err(file_err("opening", &path))?;
        let size = f.metadata().map_err(file_err("reading", &path))?.len();
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
    payload.flush().map_err(file_err("writing", &payload_path))?;
    drop(payload);
    let manifest = Manifest {
        trace_id: crate::describe::hex(&overview.trace_id),
        annotations: overview.annotations.clone(),
        snapshots: ids,
        entries: body,
    };
    let (m, json) = place_entries(manifest)?;
    let mut out_f = File::create(&tmp).map_err(file_err("creating", &tmp))?;
    out_f.write_all(&header(&json)).map_err(file_err("writing", &tmp))?;
    out_f.write_all(&json).map_err(file_err("writing", &tmp))?;
    let mut payload = File::open(&payload_path).map_err(file_err("opening", &payload_path))?;
    std::io::copy(&mut payload, &mut out_f).map_err(file_err("writing", &tmp))?;
    out_f.sync_all().map_err(file_err("syncing", &tmp))?;
    let _ = std::fs::remove_file(&payload_path);
    std::fs::rename(&tmp, out).map_err(file_err("renaming", &tmp))?;
    Ok(m)
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
fn header(json: &[u8]) -> Vec<u8> {
    let mut hdr = Vec::with_capacity(32);
    hdr.extend_from_slice(&MAGIC);
    hdr.extend_from_slice(&MAJOR.to_le_bytes());
    hdr.extend_from_slice(&MINOR.to_le_bytes());
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

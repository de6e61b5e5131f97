//! Reading a bundle: the header and manifest checked before anything is written, then each
//! entry checked (CRC before decompression, sizes against the manifest) while it is
//! extracted into a directory of its own.
//!
//! Only what is used is extracted: the trace, the guest files, the snapshots the manifest
//! lists and the memory files their states name (given a reader of states). Any other
//! memory entry is refused, naming the entry, before it is written. Runs of zero bytes are
//! left as holes: an entry of gigabytes of zeros costs no disk.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::payload::{BUF, Region, decoder};
use super::{
    Budgets, BundleError, EntryKind, FIRMWARE_ENTRY, HEADER, IMAGE_ENTRY, INITRD_ENTRY, KERNEL_ENTRY, MAGIC,
    MAJOR, MAX_MANIFEST, Manifest, SNAPSHOTS_ENTRY, Storage,
};
use super::{TRACE_ENTRY, Unpacked, allowed, file_err, invalid, over_budget, sparse};

/// Reads and checks a bundle's header and manifest: names, sizes against their caps and
/// `budgets.max_mem` (each snapshot's memory files together), snapshot entries against the
/// snapshots the manifest lists, payloads inside the file.
///
/// # Errors
/// A damaged or hostile bundle, or one over a budget.
pub fn read_manifest(src: &Path, budgets: &Budgets) -> Result<Manifest, BundleError> {
    let (f, md) = crate::input::open_regular(src)?;
    read_manifest_from(&f, md.len(), src, budgets)
}

fn read_manifest_from(f: &File, len: u64, src: &Path, budgets: &Budgets) -> Result<Manifest, BundleError> {
    let (m, manifest_end) = read_raw_manifest(f, len, src)?;
    check_entries(&m, manifest_end, len, src, budgets)?;
    Ok(m)
}

/// The header checked (magic, checksum, version, reserved field, manifest size) and the
/// manifest read, checksummed and parsed; returns it and where the payload starts.
fn read_raw_manifest(f: &File, len: u64, src: &Path) -> Result<(Manifest, u64), BundleError> {
    let mut h = [0u8; 32];
    if len < HEADER {
        return Err(invalid(src, 0, format!("truncated: {len} bytes, the header needs {HEADER}")));
    }
    f.read_exact_at(&mut h, 0).map_err(file_err("reading", src))?;
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
    f.read_exact_at(&mut json, HEADER).map_err(file_err("reading", src))?;
    let mcrc = u32::from_le_bytes([h[24], h[25], h[26], h[27]]);
    if crc32c::crc32c(&json) != mcrc {
        return Err(invalid(src, HEADER, "manifest checksum mismatch"));
    }
    let m: Manifest =
        serde_json::from_slice(&json).map_err(|e| invalid(src, HEADER, format!("manifest: {e}")))?;
    Ok((m, HEADER + mlen))
}

/// Every entry of `m` (in a file of `len` bytes whose payload starts at `manifest_end`):
/// a name of the layout, listed once, stored the way its kind is, within its cap and the
/// budgets, of a listed snapshot, inside the payload; and the set of entries a bundle of
/// one guest.
fn check_entries(
    m: &Manifest,
    manifest_end: u64,
    len: u64,
    src: &Path,
    budgets: &Budgets,
) -> Result<(), BundleError> {
    let mut names = std::collections::HashSet::with_capacity(m.entries.len());
    let listed: std::collections::HashSet<u64> = m.snapshots.iter().copied().collect();
    let mut states = std::collections::HashSet::new();
    let mut memory: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    for e in &m.entries {
        let kind = allowed(&e.name).ok_or_else(|| {
            invalid(src, HEADER, format!("entry name {:?} is not part of a bundle's layout", e.name))
        })?;
        if !names.insert(e.name.as_str()) {
            return Err(invalid(src, HEADER, format!("entry {:?} appears twice", e.name)));
        }
        let want = if matches!(kind, EntryKind::Memory(_)) { Storage::Sparse } else { Storage::Zstd };
        if e.storage != want {
            return Err(invalid(src, HEADER, format!("entry {:?} must be stored {want:?}", e.name)));
        }
        entry_within_cap(e, kind, src, budgets)?;
        match kind {
            EntryKind::State(id) | EntryKind::Memory(id) if !listed.contains(&id) => {
                return Err(invalid(
                    src,
                    HEADER,
                    format!("entry {:?} belongs to snapshot {id}, which the manifest does not list", e.name),
                ));
            }
            EntryKind::State(id) => {
                states.insert(id);
            }
            EntryKind::Memory(id) => {
                let total = memory.entry(id).or_default();
                *total = total.saturating_add(e.size);
                if *total > budgets.max_mem {
                    return Err(over_budget(
                        src,
                        HEADER,
                        format!(
                            "snapshot {id}'s memory files total more than {} MiB (at entry {:?}), over the limit of {} MiB of guest memory (--max-mem-mib)",
                            budgets.max_mem >> 20,
                            e.name,
                            budgets.max_mem >> 20
                        ),
                    ));
                }
            }
            _ => {}
        }
        let end = e.offset.checked_add(e.stored);
        if e.offset < manifest_end || end.is_none_or(|x| x > len) {
            return Err(invalid(src, e.offset, format!("entry {:?} lies outside the file", e.name)));
        }
    }
    if !names.contains(TRACE_ENTRY) {
        return Err(invalid(src, HEADER, "no trace in the bundle"));
    }
    let guests = [IMAGE_ENTRY, FIRMWARE_ENTRY, KERNEL_ENTRY].iter().filter(|n| names.contains(**n)).count();
    if guests > 1 {
        return Err(invalid(src, HEADER, "more than one of a guest image, a firmware and a kernel"));
    }
    if names.contains(INITRD_ENTRY) && !names.contains(KERNEL_ENTRY) {
        return Err(invalid(src, HEADER, "an initramfs without a kernel"));
    }
    if let Some(id) = m.snapshots.iter().find(|id| !states.contains(id)) {
        return Err(invalid(src, HEADER, format!("snapshot {id} is listed but has no state entry")));
    }
    Ok(())
}

/// Entry `e`, of `kind`, is no larger than its cap (guest memory's against `--max-mem-mib`).
fn entry_within_cap(
    e: &super::Entry,
    kind: EntryKind,
    src: &Path,
    budgets: &Budgets,
) -> Result<(), BundleError> {
    let cap = kind.cap(budgets);
    if e.size <= cap {
        return Ok(());
    }
    Err(match kind {
        EntryKind::Memory(_) | EntryKind::Image | EntryKind::Initrd => over_budget(
            src,
            HEADER,
            format!(
                "entry {:?} asks for {} MiB of guest memory, over the limit of {} MiB (--max-mem-mib)",
                e.name,
                e.size >> 20,
                cap >> 20
            ),
        ),
        _ => {
            invalid(src, HEADER, format!("entry {:?} of {} bytes exceeds its limit of {cap}", e.name, e.size))
        }
    })
}

/// Free bytes for an unprivileged writer on the file system holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Unpacks `src` into the existing, empty directory `dir`, validating everything (see the
/// module docs) and refusing, before anything is written, a bundle whose extraction would
/// exceed `budgets` or the free space of `dir`'s file system. With `states`, each memory
/// entry must be a file its snapshot's state references, no larger than it says.
///
/// # Errors
/// A damaged or hostile bundle (an entry nothing references included), a budget exceeded,
/// or too little space; nothing is written outside `dir`.
pub fn unpack(
    src: &Path,
    dir: &Path,
    budgets: &Budgets,
    states: Option<super::StateFiles<'_>>,
) -> Result<Unpacked, BundleError> {
    let (f, md) = crate::input::open_regular(src)?;
    let m = read_manifest_from(&f, md.len(), src, budgets)?;
    let mut buf = vec![0u8; BUF];
    // 1. What extraction will write, before any of it is.
    let mut total = 0u64;
    for e in &m.entries {
        let bytes = match e.storage {
            Storage::Zstd => e.size,
            Storage::Sparse => sparse::stored_bytes(&f, e, src)?,
        };
        total = total.saturating_add(bytes);
        if total > budgets.max_extract {
            return Err(over_budget(
                src,
                HEADER,
                format!(
                    "extracting would write more than the limit of {} MiB (--max-extract-mib): {} MiB up to and including entry {:?}",
                    budgets.max_extract >> 20,
                    total >> 20,
                    e.name,
                ),
            ));
        }
    }
    if let Some(free) = free_bytes(dir) {
        if total > free {
            return Err(BundleError::NoSpace {
                dir: dir.to_path_buf(),
                need_mib: total.div_ceil(1 << 20),
                free_mib: free >> 20,
            });
        }
    }
    // 2. The trace's header, decompressed alone: a bundle whose "trace" is not one (gigabytes
    //    of zeros, another file) is refused before anything is written.
    //    (Decoding bytes whose checksum is unchecked: a failure here is reported as the
    //    checksum mismatch when it is one.)
    if let Some(e) = m.entries.iter().find(|e| e.name == TRACE_ENTRY) {
        if let Err(err) = check_trace_header(&f, e, src) {
            check_crc(&f, e, src, &mut buf)?;
            return Err(err);
        }
    }
    // 3. Extract: the trace, guest files and states first; then the memory files the
    //    states reference, once what references them is known.
    let mut made = std::collections::HashSet::new();
    let mut written = 0u64;
    let (memory, rest): (Vec<_>, Vec<_>) =
        m.entries.iter().partition(|e| matches!(allowed(&e.name), Some(EntryKind::Memory(_))));
    for e in rest {
        written += extract(&f, e, src, dir, &mut made, &mut buf)?;
    }
    let used = match states {
        Some(states) => used_snapshots(&m, dir, states),
        None => None,
    };
    for e in memory {
        if let Some(used) = &used {
            referenced_memory(e, src, used)?;
        }
        written += extract(&f, e, src, dir, &mut made, &mut buf)?;
    }
    let at = |name: &str| names_entry(&m, name).then(|| dir.join(name));
    Ok(Unpacked {
        trace: dir.join(TRACE_ENTRY),
        image: at(IMAGE_ENTRY),
        firmware: at(FIRMWARE_ENTRY),
        kernel: at(KERNEL_ENTRY),
        initrd: at(INITRD_ENTRY),
        manifest: m,
        written,
    })
}

/// Extracts the trace entry of `src` alone into the existing, empty directory `dir` (for
/// commands that read only the trace: `inspect`, `stats`, `profile`, `timeline`); the
/// header and manifest are checked as [`unpack`] checks them. Returns the trace's path.
///
/// # Errors
/// A damaged or hostile bundle, or a trace larger than `budgets.max_extract`.
pub fn unpack_trace(src: &Path, dir: &Path, budgets: &Budgets) -> Result<std::path::PathBuf, BundleError> {
    let (f, md) = crate::input::open_regular(src)?;
    let m = read_manifest_from(&f, md.len(), src, budgets)?;
    let Some(e) = m.entries.iter().find(|e| e.name == TRACE_ENTRY) else {
        return Err(invalid(src, HEADER, "no trace in the bundle"));
    };
    if e.size > budgets.max_extract {
        return Err(over_budget(
            src,
            HEADER,
            format!(
                "entry {TRACE_ENTRY:?} of {} MiB is over the limit of {} MiB (--max-extract-mib)",
                e.size >> 20,
                budgets.max_extract >> 20
            ),
        ));
    }
    let mut buf = vec![0u8; BUF];
    if let Err(err) = check_trace_header(&f, e, src) {
        check_crc(&f, e, src, &mut buf)?;
        return Err(err);
    }
    extract(&f, e, src, dir, &mut std::collections::HashSet::new(), &mut buf)?;
    Ok(dir.join(TRACE_ENTRY))
}

/// Extracts entry `e` into `dir` (its checksum first, then its bytes, zero runs left as
/// holes); returns the bytes it holds.
fn extract(
    f: &File,
    e: &super::Entry,
    src: &Path,
    dir: &Path,
    made: &mut std::collections::HashSet<std::path::PathBuf>,
    buf: &mut [u8],
) -> Result<u64, BundleError> {
    // read_manifest checked that the payload lies inside the file.
    let end = e.offset + e.stored;
    // The checksum over the stored bytes, before any of them is decoded.
    check_crc(f, e, src, buf)?;
    // `e.name` passed `allowed`: relative, no `..`, only [a-z0-9._/-]. Files are
    // created new (an existing file or symlink there is an error, never followed).
    let target = dir.join(&e.name);
    if let Some(parent) = target.parent().filter(|p| !made.contains(*p)) {
        create_dirs_within(dir, parent).map_err(file_err("creating", parent))?;
        made.insert(parent.to_path_buf());
    }
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&target)
        .map_err(file_err("creating", &target))?;
    let region = Region { file: f, pos: e.offset, end };
    // No fsync: the directory is private and is removed after the replay; a crash loses
    // nothing the bundle does not still hold.
    match e.storage {
        Storage::Zstd => {
            let mut dec = decoder(region).map_err(file_err("decompressing", &target))?;
            let n = copy_holes(&mut (&mut dec).take(e.size + 1), &out, buf)
                .map_err(|err| invalid(src, e.offset, format!("entry {:?}: {err}", e.name)))?;
            if n != e.size {
                return Err(invalid(
                    src,
                    e.offset,
                    format!("entry {:?}: {n} bytes, manifest says {}", e.name, e.size),
                ));
            }
            out.set_len(n).map_err(file_err("sizing", &target))?;
            Ok(n)
        }
        Storage::Sparse => sparse::decode(f, e, &out, src, &target, buf),
    }
}

/// Copies `from` into `out` block by block, leaving blocks of zeros as holes (the file is
/// sized by the caller); returns the bytes read.
fn copy_holes(from: &mut impl Read, out: &File, buf: &mut [u8]) -> std::io::Result<u64> {
    let mut pos = 0u64;
    loop {
        let mut n = 0;
        while n < buf.len() {
            match from.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if n == 0 {
            return Ok(pos);
        }
        if buf[..n].iter().any(|b| *b != 0) {
            out.write_all_at(&buf[..n], pos)?;
        }
        pos += n as u64;
    }
}

/// The memory files each used snapshot references, by snapshot.
type Used = std::collections::HashMap<u64, Vec<(String, u64)>>;

/// The memory files each snapshot the manifest lists references, read from the states
/// just extracted. `None` when a state cannot be read: its reader reports why.
fn used_snapshots(m: &Manifest, dir: &Path, states: super::StateFiles<'_>) -> Option<Used> {
    let root = dir.join(SNAPSHOTS_ENTRY);
    let mut used = Used::new();
    for id in &m.snapshots {
        let state = crate::layout::snapshot_dir(&root, *id).join(crate::layout::STATE_FILE);
        used.insert(*id, states(&state).ok()?.files);
    }
    Some(used)
}

/// The memory entry `e` is a file its snapshot's state references (of no more bytes than
/// the state says).
fn referenced_memory(e: &super::Entry, src: &Path, used: &Used) -> Result<(), BundleError> {
    let Some(EntryKind::Memory(id)) = allowed(&e.name) else { return Ok(()) };
    let bad = |r: String| invalid(src, e.offset, format!("entry {:?}: {r}", e.name));
    let Some(files) = used.get(&id) else {
        return Err(bad(format!("snapshot {id} is not used: nothing uses it")));
    };
    let name = e.name.rsplit('/').next().unwrap_or_default();
    match files.iter().find(|(f, _)| f == name) {
        None => Err(bad(format!("snapshot {id}'s state references no such memory file: nothing uses it"))),
        Some((_, size)) if e.size > *size => {
            Err(bad(format!("{} bytes, but snapshot {id}'s state says its slot holds {size}", e.size)))
        }
        Some(_) => Ok(()),
    }
}

/// Checks entry `e`'s CRC32C over its stored bytes (read in blocks into `buf`).
fn check_crc(f: &File, e: &super::Entry, src: &Path, buf: &mut [u8]) -> Result<(), BundleError> {
    let end = e.offset + e.stored;
    let mut crc = 0u32;
    let mut p = e.offset;
    while p < end {
        let n = usize::try_from((end - p).min(buf.len() as u64)).unwrap_or(0);
        f.read_exact_at(&mut buf[..n], p).map_err(file_err("reading", src))?;
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        p += n as u64;
    }
    if crc != e.crc32c {
        return Err(invalid(src, e.offset, format!("entry {:?}: checksum mismatch", e.name)));
    }
    Ok(())
}

/// Decompresses the first bytes of the trace entry `e` and checks them as a trace header
/// (magic, byte order, size, version, features, checksum).
fn check_trace_header(f: &File, e: &super::Entry, src: &Path) -> Result<(), BundleError> {
    let bad = |r: String| invalid(src, e.offset, format!("entry {:?}: {r}", e.name));
    let region = Region { file: f, pos: e.offset, end: e.offset + e.stored };
    let mut dec = decoder(region).map_err(|err| bad(err.to_string()))?;
    let want = e.size.min(u64::from(crate::header::MAX_HEADER_SIZE));
    let mut head = Vec::with_capacity(usize::try_from(want).unwrap_or(0));
    (&mut dec).take(want).read_to_end(&mut head).map_err(|err| bad(err.to_string()))?;
    let size = crate::FileHeader::peek_size(&head).map_err(|d| bad(format!("not a trace: {d}")))?;
    let h = head
        .get(..usize::try_from(size).unwrap_or(usize::MAX))
        .ok_or_else(|| bad(format!("not a trace: its header of {size} bytes is cut short")))?;
    crate::FileHeader::decode(h).map_err(|d| bad(format!("not a trace: {d}")))?;
    Ok(())
}

fn names_entry(m: &Manifest, name: &str) -> bool {
    m.entries.iter().any(|e| e.name == name)
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

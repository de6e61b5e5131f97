//! Rewriting snapshots on disk, without KVM: flattening a chain into one full snapshot,
//! and squashing a full snapshot into its child (how the flight recorder drops its oldest
//! checkpoint).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use vmrr_format::FileError;
use vmrr_format::layout::STATE_FILE;

use super::chain::{ChainCheck, load};
use super::pages::{Zeros, copy_pages};
use super::{SnapshotError, StoredSnapshot};
use crate::kvm::memory::PAGE_SIZE;

fn write_state(path: &Path, state: &super::SnapshotState) -> Result<(), SnapshotError> {
    let bytes = super::state::to_file_bytes(state)?;
    std::fs::write(path, bytes).map_err(FileError::on("writing", path))?;
    File::open(path).and_then(|f| f.sync_all()).map_err(FileError::on("syncing", path))?;
    Ok(())
}

/// Writes the newest snapshot of `chain` as one full snapshot into `out` (a snapshot
/// directory): every page resolved through the chain, zero pages left as holes.
///
/// `out` is checked before anything is written (see `vmrr_format::output`): it may not be
/// a snapshot of the chain, and may exist only with `replace` and when it is a snapshot
/// directory. The result is written into a uniquely named directory beside `out` and
/// renamed into place when complete (exchanged atomically with an `out` it replaces), so
/// a failure or a signal leaves nothing behind and nothing else is ever removed.
///
/// # Errors
/// `out` may not be written, or file-system failures.
pub fn flatten(chain: &[StoredSnapshot], out: &Path, replace: bool) -> Result<(), SnapshotError> {
    let top = chain.last().ok_or(SnapshotError::EmptyChain)?;
    let dirs: Vec<&Path> = chain.iter().map(|l| l.dir.as_path()).collect();
    write_flat(top, &dirs, out, replace, |k| Ok(std::borrow::Cow::Borrowed(&chain[k])))
}

/// As [`flatten`], for the snapshot in `src` and its parents, holding one parent's state at
/// a time (a chain of N large states costs about two states, not N): the chain is checked
/// first ([`ChainCheck`]), then each parent is read again, in order, when its pages are
/// copied (and must still be the snapshot checked). Returns the chain's length.
///
/// # Errors
/// As for [`super::load_chain`] and [`flatten`].
pub fn flatten_dir(src: &Path, out: &Path, replace: bool, max_mem: u64) -> Result<usize, SnapshotError> {
    let check = ChainCheck::new(max_mem);
    let checked = check.top(src)?;
    let dirs = check.dirs_of(src);
    let refs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    let top = &checked.top;
    let last = dirs.len().saturating_sub(1);
    write_flat(top, &refs, out, replace, |k| {
        if k == last {
            return Ok(std::borrow::Cow::Borrowed(top));
        }
        let l = load(&dirs[k], max_mem)?;
        if !check.still_valid(&dirs[k], &l.state) {
            return Err(SnapshotError::Invalid {
                path: dirs[k].join(STATE_FILE),
                error: super::state::InvalidState {
                    offset: 0,
                    reason: "changed while the chain was flattened".into(),
                },
            });
        }
        Ok(std::borrow::Cow::Owned(l))
    })?;
    Ok(dirs.len())
}

/// A copy of `s` without its slots' page bitmaps (what a full snapshot of it holds; the
/// bitmaps can be most of a state's size).
fn without_bitmaps(s: &super::SnapshotState) -> super::SnapshotState {
    super::SnapshotState {
        id: s.id,
        parent: s.parent,
        trace_id: s.trace_id,
        exit_seq: s.exit_seq,
        exits: s.exits,
        interrupts: s.interrupts,
        created_unix_ns: s.created_unix_ns,
        vm: s.vm.clone(),
        slots: s
            .slots
            .iter()
            .map(|x| super::SlotState {
                id: x.id,
                gpa: x.gpa,
                size: x.size,
                kind: x.kind,
                flags: x.flags,
                file: x.file.clone(),
                full: x.full,
                pages: Vec::new(),
                stored_pages: x.stored_pages,
            })
            .collect(),
        vcpus: s.vcpus.clone(),
        bus: s.bus.clone(),
        annotations: s.annotations.clone(),
        kernel_irqchip: s.kernel_irqchip.clone(),
    }
}

/// Writes `top` as a full snapshot into `out`, taking the chain's layers (`dirs`, oldest
/// first; `layer(k)` gives layer `k`) one at a time, in order.
fn write_flat<'a>(
    top: &StoredSnapshot,
    dirs: &[&Path],
    out: &Path,
    replace: bool,
    mut layer: impl FnMut(usize) -> Result<std::borrow::Cow<'a, StoredSnapshot>, SnapshotError>,
) -> Result<(), SnapshotError> {
    use vmrr_format::output::{self, OutputKind};
    output::check(out, dirs, replace, OutputKind::SnapshotDir)?;
    let dir = output::directory_of(out);
    let scratch = vmrr_format::scratch::Scratch::dir_in(dir, &output::scratch_prefix(out))
        .map_err(FileError::on("creating a directory in", dir))?;
    let tmp = scratch.path().to_path_buf();
    let mut state = without_bitmaps(&top.state);
    state.parent = None;
    let mut dsts = Vec::with_capacity(state.slots.len());
    for s in &state.slots {
        let dst_path = tmp.join(&s.file);
        let dst = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&dst_path)
            .map_err(FileError::on("creating", &dst_path))?;
        dst.set_len(s.size).map_err(FileError::on("sizing", &dst_path))?;
        dsts.push((dst_path, dst));
    }
    for k in 0..dirs.len() {
        let l = layer(k)?;
        for (i, (s, (dst_path, dst))) in state.slots.iter().zip(&dsts).enumerate() {
            let Some(src_slot) = l.state.slots.get(i) else { continue };
            let src_path = l.dir.join(&src_slot.file);
            let src = super::overlay::open(&src_path)?;
            let runs = if src_slot.full {
                vmrr_format::layout::populated_ranges(&src, s.size)
                    .map_err(FileError::on("scanning", &src_path))?
                    .into_iter()
                    .map(|(o, n)| {
                        (o / PAGE_SIZE, (o + n).div_ceil(PAGE_SIZE).min(s.page_count()) - o / PAGE_SIZE)
                    })
                    .collect()
            } else {
                src_slot.runs()
            };
            // A page changed to zero in a later snapshot must overwrite older data; a full
            // base's zero pages stay holes.
            let zeros = if src_slot.full { Zeros::Skip } else { Zeros::Write };
            for (first, count) in runs {
                copy_pages(
                    first,
                    count,
                    zeros,
                    |p, buf| {
                        Ok(src
                            .read_exact_at(buf, p * PAGE_SIZE)
                            .map_err(FileError::on("reading", &src_path))?)
                    },
                    |p, bytes| {
                        Ok(dst
                            .write_all_at(bytes, p * PAGE_SIZE)
                            .map_err(FileError::on("writing", dst_path))?)
                    },
                )?;
            }
        }
    }
    let zero = vec![0u8; usize::try_from(PAGE_SIZE).unwrap_or(4096)];
    for (s, (dst_path, dst)) in state.slots.iter_mut().zip(&dsts) {
        // Count the non-zero pages of the result.
        let mut page = vec![0u8; zero.len()];
        let mut stored = 0;
        let data = vmrr_format::layout::populated_ranges(dst, s.size)
            .map_err(FileError::on("scanning", dst_path))?;
        for (o, n) in data {
            let mut p = o / PAGE_SIZE;
            while p * PAGE_SIZE < o + n && p < s.page_count() {
                dst.read_exact_at(&mut page, p * PAGE_SIZE).map_err(FileError::on("reading", dst_path))?;
                if page != zero {
                    stored += 1;
                }
                p += 1;
            }
        }
        dst.sync_all().map_err(FileError::on("syncing", dst_path))?;
        s.full = true;
        s.pages = Vec::new();
        s.stored_pages = stored;
    }
    write_state(&tmp.join(STATE_FILE), &state)?;
    scratch.publish(out, replace).map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => {
            SnapshotError::Output(vmrr_format::output::OutputError::Exists { out: out.to_path_buf() })
        }
        _ => SnapshotError::File(FileError { what: "renaming into", path: out.to_path_buf(), source }),
    })?;
    Ok(())
}

/// Folds snapshot `older` (full) into its child `newer` (incremental on it): the child's
/// changed pages are written into the older snapshot's files, its state made full, and the
/// result takes the child's directory. Afterwards `newer` is a full snapshot and `older` is
/// gone; grandchildren (whose parent is `newer`) stay valid. O(pages the child changed).
///
/// Used by the flight recorder to drop its oldest checkpoint without breaking the chain.
/// While it runs, the child's directory is the only one named for it: a crash leaves the
/// old child (whose parent is then missing, so it does not load) or the finished result.
///
/// # Errors
/// Not a full parent and its direct child, or file-system failures.
pub fn squash(older: &Path, newer: &Path) -> Result<(), SnapshotError> {
    let o = load(older, u64::MAX)?;
    let n = load(newer, u64::MAX)?;
    if o.state.parent.is_some() || n.state.parent != Some(o.state.id) {
        return Err(SnapshotError::NotParent { older: o.state.id, newer: n.state.id });
    }
    let work = older.with_extension("squash");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::rename(older, &work).map_err(FileError::on("renaming", older))?;
    let mut state = n.state.clone();
    state.parent = None;
    for (s, os) in state.slots.iter_mut().zip(&o.state.slots) {
        let dst_path = work.join(&os.file);
        let dst = std::fs::OpenOptions::new()
            .write(true)
            .open(&dst_path)
            .map_err(FileError::on("opening", &dst_path))?;
        let src_path = newer.join(&s.file);
        let src = super::overlay::open(&src_path)?;
        for (first, count) in s.runs() {
            copy_pages(
                first,
                count,
                Zeros::Write,
                |p, buf| {
                    Ok(src.read_exact_at(buf, p * PAGE_SIZE).map_err(FileError::on("reading", &src_path))?)
                },
                |p, bytes| {
                    Ok(dst.write_all_at(bytes, p * PAGE_SIZE).map_err(FileError::on("writing", &dst_path))?)
                },
            )?;
        }
        dst.sync_all().map_err(FileError::on("syncing", &dst_path))?;
        s.file = os.file.clone();
        s.full = true;
        s.pages = Vec::new();
        s.stored_pages = os.stored_pages.max(s.stored_pages);
    }
    let tmp = work.join("state.bin.tmp");
    write_state(&tmp, &state)?;
    std::fs::rename(&tmp, work.join(STATE_FILE)).map_err(FileError::on("renaming", &tmp))?;
    std::fs::remove_dir_all(newer).map_err(FileError::on("removing", newer))?;
    std::fs::rename(&work, newer).map_err(FileError::on("renaming", &work))?;
    if let Some(root) = newer.parent() {
        File::open(root).and_then(|d| d.sync_all()).map_err(FileError::on("syncing", root))?;
    }
    Ok(())
}

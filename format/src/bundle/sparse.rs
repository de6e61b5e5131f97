//! Memory files in a bundle: the non-zero 4 KiB pages as `(offset, length)` extents, then
//! one zstd frame of their bytes. Holes and zero pages cost nothing.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::payload::{BUF, Region, decoder};
use super::{BundleError, Entry, PAGE, PAGE_BYTES, file_err, invalid};

/// Extents of non-zero pages, then one zstd frame of their bytes, streamed into `out`.
pub(super) fn encode(f: &File, size: u64, path: &Path, out: &mut impl Write) -> Result<(), BundleError> {
    let extents = nonzero_extents(f, size).map_err(file_err("scanning", path))?;
    let write = file_err("writing", path);
    let mut table = Vec::with_capacity(8 + 16 * extents.len());
    table.extend_from_slice(&(extents.len() as u64).to_le_bytes());
    for (s, l) in &extents {
        table.extend_from_slice(&s.to_le_bytes());
        table.extend_from_slice(&l.to_le_bytes());
    }
    out.write_all(&table).map_err(write)?;
    let total: u64 = extents.iter().map(|e| e.1).sum();
    compress_extents(f, &extents, total, out).map_err(file_err("compressing", path))
}

fn compress_extents(
    f: &File,
    extents: &[(u64, u64)],
    total: u64,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let mut enc = zstd::stream::write::Encoder::new(out, 3)?;
    enc.set_pledged_src_size(Some(total))?;
    let mut buf = vec![0u8; BUF];
    for &(s, l) in extents {
        let mut p = s;
        while p < s + l {
            let n = usize::try_from((s + l - p).min(BUF as u64)).unwrap_or(0);
            f.read_exact_at(&mut buf[..n], p)?;
            enc.write_all(&buf[..n])?;
            p += n as u64;
        }
    }
    enc.finish()?;
    Ok(())
}

/// The non-zero 4 KiB pages of a memory file as merged `(offset, len)` extents. Only the
/// file's populated ranges (`SEEK_DATA`) are read.
fn nonzero_extents(f: &File, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let mut extents: Vec<(u64, u64)> = Vec::new();
    let mut buf = vec![0u8; BUF];
    for (off, len) in crate::layout::populated_ranges(f, size)? {
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

/// The number of extents entry `e`'s table claims, checked against what can hold them:
/// at most one per page of the file, and the table inside the payload.
pub(super) fn extent_count(f: &File, e: &Entry, src: &Path) -> Result<u64, BundleError> {
    let bad = |r: String| invalid(src, e.offset, format!("entry {:?}: {r}", e.name));
    let mut w8 = [0u8; 8];
    if e.stored < 8 {
        return Err(bad("truncated".into()));
    }
    f.read_exact_at(&mut w8, e.offset).map_err(file_err("reading", src))?;
    let n = u64::from_le_bytes(w8);
    // Extents are disjoint whole pages: at most one per page, and their table must fit.
    let table = n.checked_mul(16).and_then(|x| x.checked_add(8)).filter(|x| *x <= e.stored);
    if table.is_none() || n > e.size.div_ceil(PAGE) {
        return Err(bad(format!("{n} extents do not fit")));
    }
    Ok(n)
}

/// Extents read from a table in blocks (one `pread` per 4,096 extents).
struct Extents<'a> {
    f: &'a File,
    at: u64,
    left: u64,
    block: Vec<u8>,
    pos: usize,
}

impl Extents<'_> {
    fn next(&mut self, src: &Path) -> Result<Option<(u64, u64)>, BundleError> {
        if self.pos == self.block.len() {
            if self.left == 0 {
                return Ok(None);
            }
            let k = self.left.min(4096);
            self.block.resize(usize::try_from(k * 16).unwrap_or(0), 0);
            self.f.read_exact_at(&mut self.block, self.at).map_err(file_err("reading", src))?;
            self.at += k * 16;
            self.left -= k;
            self.pos = 0;
        }
        let mut c = crate::cursor::Cursor::new(&self.block[self.pos..]);
        let (s, l) = (c.read_u64().unwrap_or(u64::MAX), c.read_u64().unwrap_or(u64::MAX));
        self.pos += 16;
        Ok(Some((s, l)))
    }
}

/// Bytes the memory entry `e` writes when extracted: the sum of its extents, read from its
/// table (checked for order and bounds as [`decode`] checks them) before anything is
/// written.
pub(super) fn stored_bytes(f: &File, e: &Entry, src: &Path) -> Result<u64, BundleError> {
    let n = extent_count(f, e, src)?;
    let mut extents = Extents { f, at: e.offset + 8, left: n, block: Vec::new(), pos: 0 };
    let (mut prev_end, mut total) = (0u64, 0u64);
    while let Some((s, l)) = extents.next(src)? {
        if s < prev_end || s.checked_add(l).is_none_or(|x| x > e.size) || s % PAGE != 0 {
            return Err(invalid(
                src,
                e.offset,
                format!("entry {:?}: extent {s:#x}+{l:#x} is out of order or outside the file", e.name),
            ));
        }
        prev_end = s + l;
        total += l;
    }
    Ok(total)
}

/// Writes the memory file of entry `e` (payload in `f`) into `out`, checking every extent.
/// Returns the bytes written.
pub(super) fn decode(
    f: &File,
    e: &Entry,
    out: &File,
    src: &Path,
    target: &Path,
    buf: &mut [u8],
) -> Result<u64, BundleError> {
    let bad = |r: String| invalid(src, e.offset, format!("entry {:?}: {r}", e.name));
    let n = extent_count(f, e, src)?;
    let table = 8 + n * 16;
    let mut dec = decoder(Region { file: f, pos: e.offset + table, end: e.offset + e.stored })
        .map_err(file_err("decompressing", target))?;
    out.set_len(e.size).map_err(file_err("sizing", target))?;
    let mut prev_end = 0u64;
    let mut written = 0u64;
    let mut extents = Extents { f, at: e.offset + 8, left: n, block: Vec::new(), pos: 0 };
    while let Some((s, l)) = extents.next(src)? {
        if s < prev_end || s.checked_add(l).is_none_or(|x| x > e.size) || s % PAGE != 0 {
            return Err(bad(format!("extent {s:#x}+{l:#x} is out of order or outside the file")));
        }
        prev_end = s + l;
        let mut p = s;
        while p < s + l {
            let want = usize::try_from((s + l - p).min(buf.len() as u64)).unwrap_or(0);
            dec.read_exact(&mut buf[..want]).map_err(|err| bad(format!("page data at {p:#x}: {err}")))?;
            // Zeros stay a hole (the file was sized above).
            if buf[..want].iter().any(|b| *b != 0) {
                out.write_all_at(&buf[..want], p).map_err(file_err("writing", target))?;
            }
            p += want as u64;
            written += want as u64;
        }
    }
    // Nothing may follow the pages the extents describe.
    let mut one = [0u8; 1];
    match dec.read(&mut one) {
        Ok(0) => Ok(written),
        Ok(_) => Err(bad("more page data than the extents describe".into())),
        Err(err) => Err(bad(format!("page data: {err}"))),
    }
}

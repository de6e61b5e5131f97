//! Pages: runs of set bits in a page bitmap (`crate::page::bitmap_runs`), and the one loop that copies runs of pages
//! between guest memory and snapshot files, 64 pages at a time.

use crate::page::PAGE_SIZE;
pub use crate::page::bitmap_runs;
use crate::snapshot::SnapshotError;

/// Pages copied per read and write.
const BATCH: u64 = 64;

/// Maximal runs `[start, end)` of `true` in `keep`, in order.
pub(crate) fn true_runs(keep: &[bool]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut k = 0;
    std::iter::from_fn(move || {
        while k < keep.len() && !keep[k] {
            k += 1;
        }
        let start = k;
        while k < keep.len() && keep[k] {
            k += 1;
        }
        (k > start).then_some((start, k))
    })
}

/// Whether to write pages that hold only zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Zeros {
    /// Write them (they must overwrite older data).
    Write,
    /// Skip them (a fresh sparse file: holes read as zero).
    Skip,
}

/// Copies pages `[first, first + count)`: `read(page, buf)` fills `buf` with the pages
/// from `page` on, `write(page, bytes)` stores them. Returns the pages written.
///
/// # Errors
/// The first error of `read` or `write`.
pub(crate) fn copy_pages(
    first: u64,
    count: u64,
    zeros: Zeros,
    mut read: impl FnMut(u64, &mut [u8]) -> Result<(), SnapshotError>,
    mut write: impl FnMut(u64, &[u8]) -> Result<(), SnapshotError>,
) -> Result<u64, SnapshotError> {
    let page = usize::try_from(PAGE_SIZE).unwrap_or(4096);
    let mut buf = vec![0u8; page * usize::try_from(BATCH).unwrap_or(64)];
    let mut written = 0;
    let mut p = first;
    let end = first + count;
    while p < end {
        let n = (end - p).min(BATCH);
        let chunk = &mut buf[..page * usize::try_from(n).unwrap_or(0)];
        read(p, chunk)?;
        if zeros == Zeros::Write {
            write(p, chunk)?;
            written += n;
        } else {
            // Write maximal runs of non-zero pages.
            let pages: Vec<bool> = chunk.chunks(page).map(|c| c.iter().any(|&b| b != 0)).collect();
            for (s, e) in true_runs(&pages) {
                write(p + s as u64, &chunk[s * page..e * page])?;
                written += (e - s) as u64;
            }
        }
        p += n;
    }
    Ok(written)
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // page indices in tests are small
mod tests {
    use super::*;

    #[test]
    fn runs_of_a_bitmap() {
        let b = [0b0110_0001u64, 1u64 << 63];
        assert_eq!(bitmap_runs(&b, 128), vec![(0, 1), (5, 2), (127, 1)]);
        // Runs across word boundaries join; bits past `pages` are ignored.
        let b = [1u64 << 63, u64::MAX, 0b11, 1 << 5];
        assert_eq!(bitmap_runs(&b, 200), vec![(63, 67), (197, 1)]);
        assert_eq!(bitmap_runs(&b, 197), vec![(63, 67)]);
        assert_eq!(bitmap_runs(&[u64::MAX], 10), vec![(0, 10)]);
    }

    #[test]
    fn runs_of_kept_entries() {
        let r: Vec<_> = true_runs(&[false, true, true, false, true]).collect();
        assert_eq!(r, vec![(1, 3), (4, 5)]);
        assert_eq!(true_runs(&[false, false]).count(), 0);
        assert_eq!(true_runs(&[true, true]).collect::<Vec<_>>(), vec![(0, 2)]);
    }

    #[test]
    fn copies_skip_zero_pages_in_runs() {
        let src: Vec<u8> = (0..5u8).flat_map(|i| vec![if i == 2 { 0 } else { i + 1 }; 4096]).collect();
        let mut got = Vec::new();
        let n = copy_pages(
            0,
            5,
            Zeros::Skip,
            |p, buf| {
                buf.copy_from_slice(&src[p as usize * 4096..p as usize * 4096 + buf.len()]);
                Ok(())
            },
            |p, bytes| {
                got.push((p, bytes.len() / 4096));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(n, 4);
        assert_eq!(got, vec![(0, 2), (3, 2)]);
    }

    proptest::proptest! {
        #[test]
        fn runs_agree_with_bits(words in proptest::collection::vec(proptest::prelude::any::<u64>(), 0..8), pages in 0u64..600) {
            let runs = bitmap_runs(&words, pages);
            let mut from_runs = vec![false; pages as usize];
            for (s, n) in &runs {
                for p in *s..*s + *n {
                    from_runs[p as usize] = true;
                }
            }
            for p in 0..pages {
                let bit = words.get((p / 64) as usize).is_some_and(|w| w & (1 << (p % 64)) != 0);
                proptest::prop_assert_eq!(from_runs[p as usize], bit, "page {}", p);
            }
            // Runs are maximal and ordered.
            for w in runs.windows(2) {
                proptest::prop_assert!(w[0].0 + w[0].1 < w[1].0);
            }
        }
    }
}

//! The guest page: the unit of memory slots, KVM's dirty log, snapshot files, copy-on-write
//! remaps and userfaultfd ranges. Every page size in the engine is this one.

/// Bytes in a guest page, as a length.
pub const PAGE_BYTES: usize = 1 << 12;
/// Bytes in a guest page, as an address or file-offset quantity.
pub const PAGE_SIZE: u64 = PAGE_BYTES as u64;

/// Runs `(first_page, count)` of set bits in a page bitmap (bits past `pages` ignored).
/// Word at a time: zero and all-ones words cost one comparison each.
pub fn bitmap_runs(bitmap: &[u64], pages: u64) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut push = |first: u64, end: u64| match runs.last_mut() {
        Some((s, n)) if *s + *n == first => *n += end - first,
        _ => runs.push((first, end - first)),
    };
    for (i, &w) in bitmap.iter().enumerate() {
        let base = i as u64 * 64;
        if base >= pages {
            break;
        }
        let limit = (pages - base).min(64);
        let mut w = if limit < 64 { w & ((1u64 << limit) - 1) } else { w };
        if w == u64::MAX {
            push(base, base + 64);
            continue;
        }
        while w != 0 {
            let start = u64::from(w.trailing_zeros());
            let len = u64::from((w >> start).trailing_ones());
            push(base + start, base + start + len);
            w &= if start + len >= 64 { 0 } else { !((1u64 << (start + len)) - 1) };
        }
    }
    runs
}

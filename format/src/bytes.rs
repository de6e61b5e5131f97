//! Little-endian output and small size helpers (reads are in [`crate::cursor`]).

/// True when every byte in `bytes` is zero.
pub(crate) fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// Rounds `n` up to a multiple of 8, or `None` on overflow.
pub(crate) fn align8(n: usize) -> Option<usize> {
    n.checked_add(7).map(|v| v & !7)
}

/// Widens a `u32` length to `usize` (lossless on every platform this crate supports).
pub(crate) fn usize_from(v: u32) -> usize {
    // u32 -> usize is lossless on 32- and 64-bit targets; the crate does not build on 16-bit.
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// Widens a `usize` to `u64` (lossless on every supported platform).
pub(crate) fn u64_from(v: usize) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// Appends little-endian integers and zero padding to an output buffer.
pub(crate) trait PutLe {
    fn put_u8(&mut self, v: u8);
    fn put_u16(&mut self, v: u16);
    fn put_u32(&mut self, v: u32);
    fn put_u64(&mut self, v: u64);
}

impl PutLe for Vec<u8> {
    #[inline]
    fn put_u8(&mut self, v: u8) {
        self.push(v);
    }
    #[inline]
    fn put_u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    #[inline]
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    #[inline]
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn align_rounds_up() {
        assert_eq!(align8(0), Some(0));
        assert_eq!(align8(1), Some(8));
        assert_eq!(align8(16), Some(16));
        assert_eq!(align8(usize::MAX), None);
    }
}

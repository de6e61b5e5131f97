//! Checked reads of untrusted little-endian bytes.
//!
//! One reader for the whole workspace, in the style of gimli's `Reader`: every typed read
//! is built on one primitive, [`Cursor::read_slice`], and a read that does not fit fails
//! with a [`ShortRead`] naming the offset and sizes, consuming nothing. Nothing panics and
//! nothing allocates. The fixed-offset helpers ([`u32_at`] and friends) are the same reads
//! from a cursor placed at an offset, for structures read by field offset.

/// A read ran past the end of the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{need} bytes needed at offset {offset:#x}, {have} available")]
pub struct ShortRead {
    /// Where the read started.
    pub offset: usize,
    /// Bytes the read needed.
    pub need: usize,
    /// Bytes there were from `offset` on.
    pub have: usize,
}

/// A position in a byte slice, advanced by each successful read.
#[derive(Debug, Clone, Copy)]
pub struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `bytes`.
    #[inline]
    pub const fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes, pos: 0 }
    }

    /// A cursor at `pos` in `bytes` (past the end is allowed: every read then fails).
    #[inline]
    pub const fn at(bytes: &'a [u8], pos: usize) -> Self {
        Cursor { bytes, pos }
    }

    /// The offset of the next read.
    #[inline]
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes left from the position on.
    #[inline]
    pub fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    /// The next `n` bytes, borrowed; the one primitive every other read is built on.
    ///
    /// # Errors
    /// Fewer than `n` bytes remain (the position does not move).
    #[inline]
    pub fn read_slice(&mut self, n: usize) -> Result<&'a [u8], ShortRead> {
        let short = ShortRead { offset: self.pos, need: n, have: self.remaining() };
        let end = self.pos.checked_add(n).ok_or(short)?;
        let s = self.bytes.get(self.pos..end).ok_or(short)?;
        self.pos = end;
        Ok(s)
    }

    /// The next `N` bytes, copied.
    ///
    /// # Errors
    /// Fewer than `N` bytes remain.
    #[inline]
    pub fn read_array<const N: usize>(&mut self) -> Result<[u8; N], ShortRead> {
        let s = self.read_slice(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    /// Skips `n` bytes.
    ///
    /// # Errors
    /// Fewer than `n` bytes remain.
    #[inline]
    pub fn skip(&mut self, n: usize) -> Result<(), ShortRead> {
        self.read_slice(n).map(|_| ())
    }

    /// A byte.
    ///
    /// # Errors
    /// No byte remains.
    #[inline]
    pub fn read_u8(&mut self) -> Result<u8, ShortRead> {
        self.read_array::<1>().map(|[b]| b)
    }

    /// A little-endian `u16`.
    ///
    /// # Errors
    /// Fewer than 2 bytes remain.
    #[inline]
    pub fn read_u16(&mut self) -> Result<u16, ShortRead> {
        self.read_array().map(u16::from_le_bytes)
    }

    /// A little-endian `u32`.
    ///
    /// # Errors
    /// Fewer than 4 bytes remain.
    #[inline]
    pub fn read_u32(&mut self) -> Result<u32, ShortRead> {
        self.read_array().map(u32::from_le_bytes)
    }

    /// A little-endian `u64`.
    ///
    /// # Errors
    /// Fewer than 8 bytes remain.
    #[inline]
    pub fn read_u64(&mut self) -> Result<u64, ShortRead> {
        self.read_array().map(u64::from_le_bytes)
    }
}

/// The byte at `off`, or `None` when it does not fit.
#[inline]
pub fn u8_at(bytes: &[u8], off: usize) -> Option<u8> {
    Cursor::at(bytes, off).read_u8().ok()
}

/// The little-endian `u16` at `off`, or `None` when it does not fit.
#[inline]
pub fn u16_at(bytes: &[u8], off: usize) -> Option<u16> {
    Cursor::at(bytes, off).read_u16().ok()
}

/// The little-endian `u32` at `off`, or `None` when it does not fit.
#[inline]
pub fn u32_at(bytes: &[u8], off: usize) -> Option<u32> {
    Cursor::at(bytes, off).read_u32().ok()
}

/// The little-endian `u64` at `off`, or `None` when it does not fit.
#[inline]
pub fn u64_at(bytes: &[u8], off: usize) -> Option<u64> {
    Cursor::at(bytes, off).read_u64().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_advance_and_short_reads_consume_nothing() {
        let b = [1u8, 2, 3, 4, 5, 6, 7];
        let mut c = Cursor::new(&b);
        assert_eq!(c.read_u16(), Ok(0x0201));
        assert_eq!(c.read_u32(), Ok(0x0605_0403));
        assert_eq!(c.read_u16(), Err(ShortRead { offset: 6, need: 2, have: 1 }));
        assert_eq!(c.position(), 6);
        assert_eq!(c.read_u8(), Ok(7));
        assert_eq!(c.remaining(), 0);
    }

    #[test]
    fn fixed_offsets_refuse_out_of_range() {
        let b = [1u8, 2, 3];
        assert_eq!(u16_at(&b, 1), Some(0x0302));
        assert_eq!(u16_at(&b, 2), None);
        assert_eq!(u32_at(&b, 0), None);
        assert_eq!(u64_at(&b, usize::MAX), None);
        assert_eq!(Cursor::at(&b, usize::MAX).read_slice(2).map_err(|e| e.have), Err(0));
    }
}

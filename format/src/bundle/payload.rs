//! Reading an entry's payload: a positional window on the bundle file, and a zstd decoder
//! whose memory is capped whatever the bundle asks for.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;

/// Streaming copies use buffers of this size.
pub(super) const BUF: usize = 1 << 20;
/// Largest zstd window a bundle may ask a decoder for (2^24 = 16 MiB; vmrr writes 2 MiB).
const WINDOW_LOG_MAX: u32 = 24;

/// Reads `[pos, end)` of a file, positionally (several can share one file).
pub(super) struct Region<'a> {
    pub(super) file: &'a File,
    pub(super) pos: u64,
    pub(super) end: u64,
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

/// A streaming zstd decoder whose window (its memory) is capped.
pub(super) fn decoder(
    r: Region<'_>,
) -> std::io::Result<zstd::stream::read::Decoder<'static, std::io::BufReader<Region<'_>>>> {
    let mut d = zstd::stream::read::Decoder::new(r)?;
    d.window_log_max(WINDOW_LOG_MAX)?;
    Ok(d)
}

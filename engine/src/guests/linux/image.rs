//! A Linux kernel file as the user gives it: an ELF `vmlinux`, or a bzImage (Debian's
//! `vmlinuz`) whose compressed payload is unpacked in the host when vmrr knows its
//! compression, so the guest starts at the ELF's PVH entry instead of running the kernel's
//! own decompressor (about 90 s on a host that emulates ring 0, against about 12 s to the
//! first line through PVH).
//!
//! Everything here is pure byte logic on untrusted input: every offset is checked, every
//! output is bounded, and errors name the field and the reason.

use std::io::Read;

/// Where the setup header starts in a bzImage (`struct setup_header` in the boot protocol).
const SETUP_HEADER: usize = 0x1f1;
/// Bytes of the setup header this module reads (through `init_size` at 0x260).
const SETUP_HEADER_END: usize = 0x268;
/// The boot protocol's oldest version with `payload_offset`/`payload_length` (2.08).
const MIN_PAYLOAD_PROTOCOL: u16 = 0x0208;

/// The compression of a bzImage's payload, named by its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// `1f 8b`.
    Gzip,
    /// `fd 37 7a 58 5a 00`.
    Xz,
    /// The lz4 legacy frame (`02 21 4c 18`), what Debian's kernels use.
    Lz4,
    /// `28 b5 2f fd`.
    Zstd,
    /// `BZh`: the kernel can decompress it, vmrr cannot.
    Bzip2,
    /// `5d 00 00`: raw lzma, which the kernel can decompress and vmrr cannot.
    Lzma,
    /// `89 4c 5a 4f`: lzo, likewise.
    Lzo,
    /// An uncompressed ELF payload.
    None,
}

impl Compression {
    /// Identifies a payload by its first bytes.
    pub fn of(payload: &[u8]) -> Option<Compression> {
        let starts = |m: &[u8]| payload.starts_with(m);
        Some(if starts(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if starts(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Compression::Xz
        } else if starts(&[0x02, 0x21, 0x4c, 0x18]) {
            Compression::Lz4
        } else if starts(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else if starts(b"BZh") {
            Compression::Bzip2
        } else if starts(&[0x5d, 0, 0]) {
            Compression::Lzma
        } else if starts(&[0x89, b'L', b'Z', b'O']) {
            Compression::Lzo
        } else if starts(b"\x7fELF") {
            Compression::None
        } else {
            return None;
        })
    }

    /// Its name in messages and annotations.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
            Compression::Bzip2 => "bzip2",
            Compression::Lzma => "lzma",
            Compression::Lzo => "lzo",
            Compression::None => "none",
        }
    }

    /// Whether vmrr unpacks it in the host.
    pub fn unpacked_here(self) -> bool {
        matches!(
            self,
            Compression::Gzip | Compression::Xz | Compression::Lz4 | Compression::Zstd | Compression::None
        )
    }
}

/// The fields of a bzImage's setup header that loading needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetupHeader {
    /// Boot protocol version (`0x020f` is 2.15).
    pub version: u16,
    /// 512-byte sectors of real-mode setup code after the boot sector.
    pub setup_sects: u8,
    /// `xloadflags` (bit 0: the kernel has a 64-bit entry at 0x200).
    pub xloadflags: u16,
    /// Longest command line the kernel takes, without its NUL.
    pub cmdline_size: u32,
    /// Highest address an initramfs may end at.
    pub initrd_addr_max: u32,
    /// Where the protected-mode kernel prefers to run.
    pub pref_address: u64,
    /// Bytes the kernel needs from its load address before it relocates itself.
    pub init_size: u32,
    /// Alignment the kernel needs.
    pub kernel_alignment: u32,
}

/// `xloadflags` bit 0: a 64-bit entry point at `load address + 0x200`.
pub const XLF_KERNEL_64: u16 = 1;

/// A kernel file that is not one vmrr can boot.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Neither ELF nor bzImage.
    #[error("is neither an ELF vmlinux nor a bzImage (no ELF magic, no 'HdrS' at 0x202)")]
    UnknownFormat,
    /// A header field is out of range or points outside the file.
    #[error("bzImage field {field} at {offset:#x}: {reason}")]
    BadHeader {
        /// The setup-header field.
        field: &'static str,
        /// Its offset in the file.
        offset: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The payload's compression is not one Linux uses.
    #[error("bzImage payload at {offset:#x} has an unknown compression (first bytes {magic})")]
    UnknownCompression {
        /// Where the payload starts in the file.
        offset: usize,
        /// Its first bytes, in hex.
        magic: String,
    },
    /// The payload is damaged or truncated.
    #[error("bzImage payload ({compression}) cannot be decompressed: {reason}")]
    Corrupt {
        /// The payload's compression.
        compression: &'static str,
        /// What the decompressor reported.
        reason: String,
    },
    /// The payload decompresses to more than the guest could hold.
    #[error("bzImage payload ({compression}) decompresses to more than {limit} bytes")]
    TooLarge {
        /// The payload's compression.
        compression: &'static str,
        /// The limit.
        limit: u64,
    },
}

/// What a kernel file turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unpacked {
    /// An ELF vmlinux: the file itself, or a bzImage's payload unpacked here.
    Elf {
        /// The ELF bytes.
        elf: Vec<u8>,
        /// The bzImage it came from, if any: its header and payload compression.
        from: Option<(SetupHeader, Compression)>,
    },
    /// A bzImage whose payload only the kernel can decompress: booted through the 64-bit
    /// boot protocol, the kernel's decompressor running in the guest.
    BzImage {
        /// Its setup header.
        header: SetupHeader,
        /// The payload's compression.
        compression: Compression,
    },
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// Whether `file` starts like a bzImage (`HdrS` at 0x202).
pub fn is_bzimage(file: &[u8]) -> bool {
    file.get(0x202..0x206) == Some(b"HdrS")
}

/// Reads and checks a bzImage's setup header.
///
/// # Errors
/// A field out of range or past the end of the file.
pub fn setup_header(file: &[u8]) -> Result<SetupHeader, ImageError> {
    let bad = |field, offset, reason: String| ImageError::BadHeader { field, offset, reason };
    if file.len() < SETUP_HEADER_END {
        return Err(bad("setup_header", SETUP_HEADER, format!("the file ends at {:#x}", file.len())));
    }
    let version = u16_at(file, 0x206).unwrap_or(0);
    if version < MIN_PAYLOAD_PROTOCOL {
        return Err(bad("version", 0x206, format!("boot protocol {version:#06x} predates 2.08")));
    }
    let setup_sects = file.get(SETUP_HEADER).copied().unwrap_or(0);
    Ok(SetupHeader {
        version,
        // "If this field is 0, the real value is 4" (the boot protocol).
        setup_sects: if setup_sects == 0 { 4 } else { setup_sects },
        xloadflags: u16_at(file, 0x236).unwrap_or(0),
        cmdline_size: u32_at(file, 0x238).unwrap_or(0),
        initrd_addr_max: u32_at(file, 0x22c).unwrap_or(0),
        pref_address: u64_at(file, 0x258).unwrap_or(0),
        init_size: u32_at(file, 0x260).unwrap_or(0),
        kernel_alignment: u32_at(file, 0x230).unwrap_or(0),
    })
}

/// The raw `struct setup_header` of a bzImage (from 0x1f1 to 0x26c, 123 bytes).
pub fn setup_header_bytes(file: &[u8]) -> Option<Vec<u8>> {
    file.get(SETUP_HEADER..0x26c).map(<[u8]>::to_vec)
}

/// The payload of a bzImage: `(offset in the file, bytes)`.
///
/// # Errors
/// `payload_offset`/`payload_length` point outside the file.
pub fn payload<'a>(file: &'a [u8], header: &SetupHeader) -> Result<(usize, &'a [u8]), ImageError> {
    let bad = |field, offset, reason: String| ImageError::BadHeader { field, offset, reason };
    let pm_start = (usize::from(header.setup_sects) + 1) * 512;
    let off = u32_at(file, 0x248).and_then(|o| usize::try_from(o).ok()).unwrap_or(usize::MAX);
    let len = u32_at(file, 0x24c).and_then(|l| usize::try_from(l).ok()).unwrap_or(usize::MAX);
    let start = pm_start.checked_add(off).filter(|&s| s <= file.len()).ok_or_else(|| {
        bad("payload_offset", 0x248, format!("{off:#x} past the protected-mode kernel ends past the file"))
    })?;
    let end = start.checked_add(len).filter(|&e| e <= file.len()).ok_or_else(|| {
        bad(
            "payload_length",
            0x24c,
            format!("{len} bytes from {start:#x} end past the file ({} bytes): truncated?", file.len()),
        )
    })?;
    Ok((start, &file[start..end]))
}

/// The kernel's version string as a bzImage carries it (`kernel_version` at 0x20e), e.g.
/// `6.1.0-48-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP ...`.
pub fn bzimage_version(file: &[u8]) -> Option<String> {
    let off = usize::from(u16_at(file, 0x20e)?).checked_add(0x200)?;
    let s = file.get(off..)?;
    let end = s.iter().take(256).position(|&b| b == 0)?;
    std::str::from_utf8(&s[..end]).ok().map(str::to_string)
}

/// Opens `file`: an ELF is used as it is; a bzImage's payload is unpacked when vmrr knows
/// its compression (at most `limit` bytes out), else the bzImage is kept for the 64-bit
/// boot protocol.
///
/// # Errors
/// [`ImageError`] naming the field or the reason.
pub fn unpack(file: &[u8], limit: u64) -> Result<Unpacked, ImageError> {
    if file.starts_with(b"\x7fELF") {
        return Ok(Unpacked::Elf { elf: file.to_vec(), from: None });
    }
    if !is_bzimage(file) {
        return Err(ImageError::UnknownFormat);
    }
    let header = setup_header(file)?;
    let (offset, payload) = payload(file, &header)?;
    let compression = Compression::of(payload).ok_or_else(|| ImageError::UnknownCompression {
        offset,
        magic: payload.iter().take(8).map(|b| format!("{b:02x}")).collect(),
    })?;
    if !compression.unpacked_here() {
        return Ok(Unpacked::BzImage { header, compression });
    }
    let elf = decompress(compression, payload, limit)?;
    if !elf.starts_with(b"\x7fELF") {
        return Err(ImageError::Corrupt {
            compression: compression.name(),
            reason: "the unpacked payload is not an ELF".into(),
        });
    }
    Ok(Unpacked::Elf { elf, from: Some((header, compression)) })
}

/// Decompresses a payload to at most `limit` bytes.
///
/// # Errors
/// Damaged or truncated data, or more than `limit` bytes out.
pub fn decompress(c: Compression, data: &[u8], limit: u64) -> Result<Vec<u8>, ImageError> {
    let corrupt = |reason: String| ImageError::Corrupt { compression: c.name(), reason };
    let out = match c {
        Compression::None => data.to_vec(),
        Compression::Gzip => read_bounded(flate2::read::GzDecoder::new(data), c, limit)?,
        Compression::Zstd => {
            let d = zstd::stream::read::Decoder::new(data).map_err(|e| corrupt(e.to_string()))?;
            read_bounded(d, c, limit)?
        }
        Compression::Xz => {
            let mut out = Bounded { buf: Vec::new(), limit };
            lzma_rs::xz_decompress(&mut std::io::BufReader::new(data), &mut out).map_err(|e| {
                if out.full() {
                    ImageError::TooLarge { compression: c.name(), limit }
                } else {
                    corrupt(e.to_string())
                }
            })?;
            out.buf
        }
        Compression::Lz4 => lz4_legacy(data, limit)?,
        Compression::Bzip2 | Compression::Lzma | Compression::Lzo => {
            return Err(corrupt("vmrr does not unpack this compression".into()));
        }
    };
    // The kernel build appends the uncompressed size (little-endian u32) to every payload.
    let tail = data.len().checked_sub(4).and_then(|t| u32_at(data, t));
    if let Some(expected) = tail.filter(|_| c != Compression::None) {
        if u64::from(expected) != out.len() as u64 {
            return Err(corrupt(format!(
                "{} bytes unpacked where the payload's trailer says {expected}: truncated or damaged",
                out.len()
            )));
        }
    }
    Ok(out)
}

fn read_bounded(r: impl Read, c: Compression, limit: u64) -> Result<Vec<u8>, ImageError> {
    let mut out = Vec::new();
    r.take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| ImageError::Corrupt { compression: c.name(), reason: e.to_string() })?;
    if out.len() as u64 > limit {
        return Err(ImageError::TooLarge { compression: c.name(), limit });
    }
    Ok(out)
}

/// A writer that refuses to grow past its limit.
struct Bounded {
    buf: Vec<u8>,
    limit: u64,
}

impl Bounded {
    fn full(&self) -> bool {
        self.buf.len() as u64 >= self.limit
    }
}

impl std::io::Write for Bounded {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() as u64 + b.len() as u64 > self.limit {
            self.buf.extend_from_slice(
                &b[..usize::try_from(self.limit).unwrap_or(0).saturating_sub(self.buf.len())],
            );
            return Err(std::io::Error::other("decompressed size over the limit"));
        }
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The lz4 legacy frame (`lz4 -l`, what `make` uses for a bzImage): the magic, then blocks
/// of `u32 compressed size` + data, each decompressing to at most 8 MiB; the build's 4-byte
/// size trailer follows the last block.
fn lz4_legacy(data: &[u8], limit: u64) -> Result<Vec<u8>, ImageError> {
    const MAGIC: u32 = 0x184c_2102;
    const BLOCK: usize = 8 << 20;
    let corrupt = |reason: String| ImageError::Corrupt { compression: "lz4", reason };
    let mut out: Vec<u8> = Vec::new();
    let mut pos = 4;
    let mut block = vec![0u8; BLOCK];
    // Stop where only the size trailer (or nothing) is left.
    while pos + 4 < data.len() {
        let size = u32_at(data, pos).ok_or_else(|| corrupt(format!("block header at {pos:#x} cut")))?;
        pos += 4;
        if size == MAGIC {
            continue; // concatenated frames
        }
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        let chunk = pos.checked_add(size).and_then(|end| data.get(pos..end)).ok_or_else(|| {
            corrupt(format!("block at {:#x} of {size} bytes ends past the payload", pos - 4))
        })?;
        let n = lz4_flex::block::decompress_into(chunk, &mut block)
            .map_err(|e| corrupt(format!("block at {:#x}: {e}", pos - 4)))?;
        if out.len() as u64 + n as u64 > limit {
            return Err(ImageError::TooLarge { compression: "lz4", limit });
        }
        out.extend_from_slice(&block[..n]);
        pos += size;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_compressions_by_magic() {
        assert_eq!(Compression::of(&[0x1f, 0x8b, 8]), Some(Compression::Gzip));
        assert_eq!(Compression::of(&[0x02, 0x21, 0x4c, 0x18, 0]), Some(Compression::Lz4));
        assert_eq!(Compression::of(b"BZh9"), Some(Compression::Bzip2));
        assert_eq!(Compression::of(b"\x7fELF"), Some(Compression::None));
        assert_eq!(Compression::of(b"nope"), None);
    }

    #[test]
    fn unknown_file_is_refused() {
        assert!(matches!(unpack(b"just some text, no kernel here", 1 << 20), Err(ImageError::UnknownFormat)));
    }

    fn fake_bzimage(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 5 * 512];
        f[SETUP_HEADER] = 4;
        f[0x202..0x206].copy_from_slice(b"HdrS");
        f[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        f[0x248..0x24c].copy_from_slice(&0u32.to_le_bytes());
        f[0x24c..0x250].copy_from_slice(&u32::try_from(payload.len()).unwrap_or(0).to_le_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn with_trailer(mut compressed: Vec<u8>, size: usize) -> Vec<u8> {
        compressed.extend_from_slice(&u32::try_from(size).unwrap_or(0).to_le_bytes());
        compressed
    }

    #[test]
    fn gzip_payload_unpacks_to_its_elf() {
        use std::io::Write;
        let elf = b"\x7fELF and the rest of a kernel".repeat(100);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&elf).unwrap_or_default();
        let payload = with_trailer(gz.finish().unwrap_or_default(), elf.len());
        match unpack(&fake_bzimage(&payload), 1 << 20) {
            Ok(Unpacked::Elf { elf: out, from: Some((_, Compression::Gzip)) }) => assert_eq!(out, elf),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn lz4_legacy_payload_unpacks_and_truncation_is_named() {
        let elf = b"\x7fELF lz4 legacy frames".repeat(500);
        let block = lz4_flex::block::compress(&elf);
        let mut frame = 0x184c_2102u32.to_le_bytes().to_vec();
        frame.extend_from_slice(&u32::try_from(block.len()).unwrap_or(0).to_le_bytes());
        frame.extend_from_slice(&block);
        let payload = with_trailer(frame.clone(), elf.len());
        match unpack(&fake_bzimage(&payload), 1 << 20) {
            Ok(Unpacked::Elf { elf: out, .. }) => assert_eq!(out, elf),
            other => panic!("unexpected {other:?}"),
        }
        // Cut the block short: the message says where.
        let cut = with_trailer(frame[..frame.len() - 10].to_vec(), elf.len());
        let e = unpack(&fake_bzimage(&cut), 1 << 20).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("lz4") && e.contains("ends past the payload"), "{e}");
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let big = vec![0u8; 4 << 20];
        let c = zstd::encode_all(&big[..], 3).unwrap_or_default();
        let payload = with_trailer(c, big.len());
        assert!(matches!(unpack(&fake_bzimage(&payload), 1 << 20), Err(ImageError::TooLarge { .. })));
    }

    #[test]
    fn payload_past_the_file_is_named() {
        let mut f = fake_bzimage(b"\x1f\x8b");
        f[0x24c..0x250].copy_from_slice(&1000u32.to_le_bytes());
        let e = unpack(&f, 1 << 20).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("payload_length") && e.contains("truncated"), "{e}");
    }

    #[test]
    fn unknown_compression_is_named() {
        let e = unpack(&fake_bzimage(b"QQQQQQQQ"), 1 << 20).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("unknown compression") && e.contains("5151"), "{e}");
    }
}

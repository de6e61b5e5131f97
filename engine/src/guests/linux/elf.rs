//! Checking an ELF `vmlinux` before anything is loaded: the header, every loadable
//! segment inside the file and inside guest RAM, and the PVH entry note. rust-vmm's
//! `linux-loader` then does the loading; this pass exists so that a bad kernel is refused
//! with its reason before KVM is touched.

/// `PT_LOAD`.
const PT_LOAD: u32 = 1;
/// `PT_NOTE`.
const PT_NOTE: u32 = 4;
/// `XEN_ELFNOTE_PHYS32_ENTRY`: the 32-bit physical entry of the PVH boot protocol.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// `EM_X86_64`.
const EM_X86_64: u16 = 62;
/// Most program headers read (Linux has a handful).
const MAX_PHDRS: usize = 64;

/// What a checked ELF kernel holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfKernel {
    /// The ELF entry point (`startup_64`'s physical address for a vmlinux).
    pub entry: u64,
    /// The PVH entry, when the kernel has the note.
    pub pvh_entry: Option<u64>,
    /// Loadable segments: `(physical address, bytes in memory)`.
    pub segments: Vec<(u64, u64)>,
}

impl ElfKernel {
    /// The lowest and the first-past-the-highest physical address the kernel occupies.
    pub fn span(&self) -> (u64, u64) {
        let lo = self.segments.iter().map(|s| s.0).min().unwrap_or(0);
        let hi = self.segments.iter().map(|s| s.0.saturating_add(s.1)).max().unwrap_or(0);
        (lo, hi)
    }
}

/// An ELF vmlinux vmrr cannot boot.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// A field is out of range.
    #[error("ELF {field} at {offset:#x}: {reason}")]
    Field {
        /// The field.
        field: &'static str,
        /// Its offset in the ELF.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
}

fn field(field: &'static str, offset: usize, reason: impl Into<String>) -> ElfError {
    ElfError::Field { field, offset, reason: reason.into() }
}

fn get<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
    b.get(off..off.checked_add(N)?)?.try_into().ok()
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    get(b, off).map(u16::from_le_bytes)
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    get(b, off).map(u32::from_le_bytes)
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    get(b, off).map(u64::from_le_bytes)
}

fn to_usize(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// Checks `elf` as a 64-bit x86 kernel.
///
/// # Errors
/// [`ElfError`] naming the field.
pub fn check(elf: &[u8]) -> Result<ElfKernel, ElfError> {
    if !elf.starts_with(b"\x7fELF") {
        return Err(field("e_ident", 0, "no ELF magic"));
    }
    if elf.get(4) != Some(&2) {
        return Err(field("e_ident[EI_CLASS]", 4, "not a 64-bit ELF"));
    }
    if elf.get(5) != Some(&1) {
        return Err(field("e_ident[EI_DATA]", 5, "not little-endian"));
    }
    let machine = u16_at(elf, 18).ok_or_else(|| field("e_machine", 18, "the file ends first"))?;
    if machine != EM_X86_64 {
        return Err(field("e_machine", 18, format!("{machine} is not x86-64 ({EM_X86_64})")));
    }
    let entry = u64_at(elf, 24).ok_or_else(|| field("e_entry", 24, "the file ends first"))?;
    let phoff = to_usize(u64_at(elf, 32).ok_or_else(|| field("e_phoff", 32, "the file ends first"))?);
    let phentsize = usize::from(u16_at(elf, 54).unwrap_or(0));
    let phnum = usize::from(u16_at(elf, 56).unwrap_or(0));
    if phentsize != 56 {
        return Err(field("e_phentsize", 54, format!("{phentsize}, not 56")));
    }
    if phnum == 0 || phnum > MAX_PHDRS {
        return Err(field("e_phnum", 56, format!("{phnum} program headers (1 to {MAX_PHDRS} expected)")));
    }
    let table_end = phnum.checked_mul(56).and_then(|n| n.checked_add(phoff));
    if table_end.is_none_or(|e| e > elf.len()) {
        return Err(field("e_phoff", 32, format!("{phnum} program headers at {phoff:#x} end past the file")));
    }
    let mut k = ElfKernel { entry, pvh_entry: None, segments: Vec::new() };
    for i in 0..phnum {
        let ph = phoff + i * 56;
        let p_type = u32_at(elf, ph).unwrap_or(0);
        let offset = u64_at(elf, ph + 8).unwrap_or(0);
        let paddr = u64_at(elf, ph + 24).unwrap_or(0);
        let filesz = u64_at(elf, ph + 32).unwrap_or(0);
        let memsz = u64_at(elf, ph + 40).unwrap_or(0);
        let in_file = offset.checked_add(filesz).is_some_and(|e| e <= elf.len() as u64);
        if (p_type == PT_LOAD || p_type == PT_NOTE) && !in_file {
            return Err(field(
                "p_offset",
                ph + 8,
                format!("segment {i} ({filesz} bytes at {offset:#x}) ends past the file: truncated?"),
            ));
        }
        match p_type {
            PT_LOAD => {
                if filesz > memsz || paddr.checked_add(memsz).is_none() {
                    return Err(field(
                        "p_memsz",
                        ph + 40,
                        format!("segment {i}: {memsz} bytes at {paddr:#x}"),
                    ));
                }
                k.segments.push((paddr, memsz));
            }
            PT_NOTE => {
                let notes = &elf[to_usize(offset)..to_usize(offset + filesz)];
                if let Some(e) = pvh_note(notes) {
                    k.pvh_entry = Some(e);
                }
            }
            _ => {}
        }
    }
    if k.segments.is_empty() {
        return Err(field("e_phoff", 32, "no loadable segment"));
    }
    Ok(k)
}

/// The PVH entry among `notes`, if one is there.
fn pvh_note(notes: &[u8]) -> Option<u64> {
    let mut pos = 0usize;
    while pos + 12 <= notes.len() {
        let namesz = to_usize(u64::from(u32_at(notes, pos)?));
        let descsz = to_usize(u64::from(u32_at(notes, pos + 4)?));
        let kind = u32_at(notes, pos + 8)?;
        let name_at = pos + 12;
        let desc_at = name_at.checked_add(namesz.checked_add(3)? & !3)?;
        let next = desc_at.checked_add(descsz.checked_add(3)? & !3)?;
        if next > notes.len() {
            return None;
        }
        if kind == XEN_ELFNOTE_PHYS32_ENTRY && notes.get(name_at..name_at + namesz)?.starts_with(b"Xen") {
            return match descsz {
                4 => u32_at(notes, desc_at).map(u64::from),
                8 => u64_at(notes, desc_at),
                _ => None,
            };
        }
        pos = next;
    }
    None
}

/// The kernel's banner (`Linux version 6.1.0-... #1 SMP ...`), found in its bytes.
pub fn banner(image: &[u8]) -> Option<String> {
    const NEEDLE: &[u8] = b"Linux version ";
    let at = image.windows(NEEDLE.len()).position(|w| w == NEEDLE)?;
    let s = &image[at..];
    let end = s.iter().take(512).position(|&b| b == 0 || b == b'\n')?;
    std::str::from_utf8(&s[..end]).ok().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf_with(phdrs: &[(u32, u64, u64, u64, u64)], notes: &[u8]) -> Vec<u8> {
        let mut e = vec![0u8; 64];
        e[..4].copy_from_slice(b"\x7fELF");
        e[4] = 2;
        e[5] = 1;
        e[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        e[24..32].copy_from_slice(&0x100_0000u64.to_le_bytes());
        e[32..40].copy_from_slice(&64u64.to_le_bytes());
        e[54..56].copy_from_slice(&56u16.to_le_bytes());
        e[56..58].copy_from_slice(&u16::try_from(phdrs.len()).unwrap_or(0).to_le_bytes());
        for &(t, off, paddr, filesz, memsz) in phdrs {
            let mut ph = [0u8; 56];
            ph[..4].copy_from_slice(&t.to_le_bytes());
            ph[8..16].copy_from_slice(&off.to_le_bytes());
            ph[24..32].copy_from_slice(&paddr.to_le_bytes());
            ph[32..40].copy_from_slice(&filesz.to_le_bytes());
            ph[40..48].copy_from_slice(&memsz.to_le_bytes());
            e.extend_from_slice(&ph);
        }
        e.extend_from_slice(notes);
        e.resize(e.len() + 4096, 0);
        e
    }

    fn pvh(entry: u32) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend_from_slice(&4u32.to_le_bytes());
        n.extend_from_slice(&4u32.to_le_bytes());
        n.extend_from_slice(&XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes());
        n.extend_from_slice(b"Xen\0");
        n.extend_from_slice(&entry.to_le_bytes());
        n
    }

    #[test]
    fn finds_segments_and_the_pvh_entry() {
        let notes = pvh(0x100_1234);
        let off = 64 + 2 * 56;
        let e = elf_with(
            &[(PT_LOAD, 0, 0x100_0000, 64, 0x2000), (PT_NOTE, off, 0, notes.len() as u64, 0)],
            &notes,
        );
        let k = check(&e).expect("a valid ELF");
        assert_eq!(k.pvh_entry, Some(0x100_1234));
        assert_eq!(k.span(), (0x100_0000, 0x100_2000));
    }

    #[test]
    fn a_segment_past_the_file_is_named() {
        let e = elf_with(&[(PT_LOAD, 0, 0x100_0000, 1 << 30, 1 << 30)], &[]);
        let msg = check(&e).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("p_offset") && msg.contains("truncated"), "{msg}");
    }

    #[test]
    fn another_machine_is_refused() {
        let mut e = elf_with(&[(PT_LOAD, 0, 0x100_0000, 64, 64)], &[]);
        e[18] = 3;
        let msg = check(&e).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("e_machine"), "{msg}");
    }

    #[test]
    fn banner_is_found() {
        let img = b"xx\0Linux version 6.1.0-test (a@b) #1 SMP\n\0yy";
        assert_eq!(banner(img).as_deref(), Some("Linux version 6.1.0-test (a@b) #1 SMP"));
    }
}

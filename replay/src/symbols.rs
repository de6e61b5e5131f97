//! A kernel's symbols from its `System.map` (`vmrr replay --system-map`): addresses named
//! `function+offset` in reports and in gdb (`monitor sym`), and an ELF symbol file gdb
//! loads with `symbol-file` ([`SymbolMap::to_elf`]).
//!
//! Debian's kernel package ships a placeholder `/boot/System.map-*` of one line; the real
//! map is in the `linux-image-*-dbg` package (`/usr/lib/debug/boot/System.map-*`). The
//! placeholder is refused with that advice. A map only names a kernel booted without KASLR
//! (vmrr's default command line has `nokaslr`); [`SymbolMap::check_banner`] checks it
//! against the recorded guest's memory.

use std::path::{Path, PathBuf};

/// Largest `System.map` read.
pub const MAX_MAP: u64 = 64 << 20;
/// Most symbols kept.
pub const MAX_SYMBOLS: usize = 4_000_000;
/// Longest symbol name kept.
const MAX_NAME: usize = 512;

/// One symbol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    /// Its address.
    pub addr: u64,
    /// `nm`'s type letter (`T` global text, `t` local text, `D`, `b`, ...).
    pub kind: char,
    /// Its name.
    pub name: String,
}

impl Symbol {
    /// Code (`T`, `t`, `W`, `w`).
    pub fn is_text(&self) -> bool {
        matches!(self.kind, 'T' | 't' | 'W' | 'w')
    }
}

/// A `System.map` that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SymbolError {
    /// The file cannot be read (or is not a regular file, or is too large).
    #[error("{}: cannot read the system map", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a regular file.
    #[error(transparent)]
    Input(#[from] vmrr_format::input::InputError),
    /// A line does not parse.
    #[error("{}: line {line}: {reason}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// Its 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// Debian's one-line placeholder.
    #[error(
        "{}: this is Debian's placeholder System.map; the real one is in the kernel's -dbg package (apt-get install linux-image-$(uname -r)-dbg, or of the guest's kernel version), at /usr/lib/debug/boot/System.map-VERSION",
        path.display()
    )]
    Placeholder {
        /// The file.
        path: PathBuf,
    },
}

/// The symbols of one kernel, by address.
#[derive(Clone, Default)]
pub struct SymbolMap {
    syms: Vec<Symbol>,
    /// The file it was read from.
    pub path: PathBuf,
}

impl std::fmt::Debug for SymbolMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SymbolMap").field("path", &self.path).field("symbols", &self.syms.len()).finish()
    }
}

impl SymbolMap {
    /// Reads `path` (a regular file of at most [`MAX_MAP`] bytes).
    ///
    /// # Errors
    /// [`SymbolError`] naming the file and the line.
    pub fn read(path: &Path) -> Result<Self, SymbolError> {
        use std::io::Read;
        let (f, md) = vmrr_format::input::open_regular(path)?;
        if md.len() > MAX_MAP {
            return Err(SymbolError::Line {
                path: path.to_path_buf(),
                line: 0,
                reason: format!("{} bytes, over the {MAX_MAP} a system map may have", md.len()),
            });
        }
        let mut text = String::new();
        f.take(MAX_MAP)
            .read_to_string(&mut text)
            .map_err(|source| SymbolError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text, path)
    }

    /// Parses the text of a `System.map` (`ADDRESS TYPE NAME` per line); `path` is for
    /// messages.
    ///
    /// # Errors
    /// A line that does not parse, too many symbols, or Debian's placeholder.
    pub fn parse(text: &str, path: &Path) -> Result<Self, SymbolError> {
        let bad = |line: usize, reason: String| SymbolError::Line { path: path.to_path_buf(), line, reason };
        if text.contains("The real System.map is in") {
            return Err(SymbolError::Placeholder { path: path.to_path_buf() });
        }
        let mut syms = Vec::new();
        for (i, l) in text.lines().enumerate() {
            let mut it = l.split_whitespace();
            let (Some(a), Some(k), Some(name)) = (it.next(), it.next(), it.next()) else {
                if l.trim().is_empty() {
                    continue;
                }
                return Err(bad(i + 1, "not 'ADDRESS TYPE NAME'".into()));
            };
            let addr =
                u64::from_str_radix(a, 16).map_err(|_| bad(i + 1, format!("address {a:?} is not hex")))?;
            let mut kc = k.chars();
            let (Some(kind), None) = (kc.next(), kc.next()) else {
                return Err(bad(i + 1, format!("type {k:?} is not one letter")));
            };
            if name.len() > MAX_NAME {
                return Err(bad(i + 1, format!("a name of {} bytes", name.len())));
            }
            if syms.len() >= MAX_SYMBOLS {
                return Err(bad(i + 1, format!("more than {MAX_SYMBOLS} symbols")));
            }
            syms.push(Symbol { addr, kind, name: name.to_string() });
        }
        if syms.is_empty() {
            return Err(bad(0, "no symbol".into()));
        }
        syms.sort_by_key(|s| s.addr);
        Ok(SymbolMap { syms, path: path.to_path_buf() })
    }

    /// Symbols, by address.
    pub fn symbols(&self) -> &[Symbol] {
        &self.syms
    }

    /// The symbol `addr` lies in and the offset into it: the last one at or below it, if
    /// `addr` is a kernel address within the span the map covers (from its first
    /// kernel-half symbol to 1 MiB past its last). Low addresses (user space, per-CPU
    /// offsets, absolute values) are named by nothing.
    pub fn lookup(&self, addr: u64) -> Option<(&Symbol, u64)> {
        const KERNEL_HALF: u64 = 0xffff_8000_0000_0000;
        let last = self.syms.last()?;
        let first = self.syms.get(self.syms.partition_point(|s| s.addr < KERNEL_HALF))?;
        if addr < KERNEL_HALF || addr < first.addr || addr > last.addr.saturating_add(1 << 20) {
            return None;
        }
        let i = self.syms.partition_point(|s| s.addr <= addr).checked_sub(1)?;
        // Of several symbols at one address, the first text one names it best.
        let at = self.syms[i].addr;
        let first = self.syms[..=i].iter().rposition(|s| s.addr != at).map_or(0, |p| p + 1);
        let s = self.syms[first..=i].iter().find(|s| s.is_text()).unwrap_or(&self.syms[i]);
        Some((s, addr - s.addr))
    }

    /// `name+0xoff` for `addr`, or `None` outside the kernel.
    pub fn name(&self, addr: u64) -> Option<String> {
        self.lookup(addr)
            .map(|(s, off)| if off == 0 { s.name.clone() } else { format!("{}+{off:#x}", s.name) })
    }

    /// The address of symbol `name`.
    pub fn address_of(&self, name: &str) -> Option<u64> {
        self.syms.iter().find(|s| s.name == name).map(|s| s.addr)
    }

    /// Checks the map against a guest's memory: `linux_banner` must read `Linux version`
    /// there (`read` reads guest memory at a linear address). `None` when it does (or the
    /// map has no `linux_banner`), else why not.
    pub fn check_banner(&self, read: impl Fn(u64, &mut [u8]) -> bool) -> Option<String> {
        const WANT: &[u8] = b"Linux version ";
        let at = self.address_of("linux_banner")?;
        let mut buf = [0u8; 14];
        if !read(at, &mut buf) {
            return Some(format!(
                "{}: linux_banner at {at:#x} is not mapped in the guest: the map is of another kernel, or the guest ran with KASLR (boot it with nokaslr)",
                self.path.display()
            ));
        }
        (buf != WANT).then(|| {
            format!(
                "{}: linux_banner at {at:#x} reads {:?}, not \"Linux version\": the map is of another kernel, or the guest ran with KASLR (boot it with nokaslr)",
                self.path.display(),
                String::from_utf8_lossy(&buf)
            )
        })
    }

    /// An ELF file holding the symbols (no code, no debug information), for gdb's
    /// `symbol-file`: text symbols as functions, the others as objects, all in one
    /// allocated, empty section spanning them.
    pub fn to_elf(&self) -> Vec<u8> {
        elf::write(&self.syms)
    }
}

/// The ELF64 symbol file.
mod elf {
    use super::Symbol;

    const SHN_ABS: u16 = 0xfff1;

    fn push_str(tab: &mut Vec<u8>, s: &str) -> u32 {
        let at = u32::try_from(tab.len()).unwrap_or(0);
        tab.extend_from_slice(s.as_bytes());
        tab.push(0);
        at
    }

    fn sym(name: u32, info: u8, shndx: u16, value: u64, size: u64) -> [u8; 24] {
        let mut e = [0u8; 24];
        e[0..4].copy_from_slice(&name.to_le_bytes());
        e[4] = info;
        e[6..8].copy_from_slice(&shndx.to_le_bytes());
        e[8..16].copy_from_slice(&value.to_le_bytes());
        e[16..24].copy_from_slice(&size.to_le_bytes());
        e
    }

    #[allow(clippy::too_many_arguments)]
    fn shdr(
        name: u32,
        kind: u32,
        flags: u64,
        addr: u64,
        off: u64,
        size: u64,
        link: u32,
        info: u32,
    ) -> [u8; 64] {
        let mut h = [0u8; 64];
        h[0..4].copy_from_slice(&name.to_le_bytes());
        h[4..8].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&flags.to_le_bytes());
        h[16..24].copy_from_slice(&addr.to_le_bytes());
        h[24..32].copy_from_slice(&off.to_le_bytes());
        h[32..40].copy_from_slice(&size.to_le_bytes());
        h[40..44].copy_from_slice(&link.to_le_bytes());
        h[44..48].copy_from_slice(&info.to_le_bytes());
        let (align, entsize) = if kind == 2 { (8u64, 24u64) } else { (1, 0) };
        h[48..56].copy_from_slice(&align.to_le_bytes());
        h[56..64].copy_from_slice(&entsize.to_le_bytes());
        h
    }

    pub(super) fn write(syms: &[Symbol]) -> Vec<u8> {
        let placed: Vec<&Symbol> = syms.iter().filter(|s| s.kind != 'A' && s.kind != 'a').collect();
        let lo = placed.first().map_or(0, |s| s.addr);
        let hi = placed.last().map_or(0, |s| s.addr) + 1;
        let mut strtab = vec![0u8];
        let mut locals = vec![[0u8; 24]];
        let mut globals = Vec::new();
        for (i, s) in syms.iter().enumerate() {
            let size = syms.get(i + 1).map_or(0, |n| n.addr.saturating_sub(s.addr));
            let typ: u8 = if s.is_text() { 2 } else { 1 }; // STT_FUNC : STT_OBJECT
            let global = s.kind.is_ascii_uppercase();
            let info = (u8::from(global) << 4) | typ;
            let shndx = if s.kind == 'A' || s.kind == 'a' { SHN_ABS } else { 1 };
            let e = sym(push_str(&mut strtab, &s.name), info, shndx, s.addr, size);
            if global { globals.push(e) } else { locals.push(e) }
        }
        let first_global = u32::try_from(locals.len()).unwrap_or(0);
        let mut symtab: Vec<u8> = locals.iter().flatten().copied().collect();
        symtab.extend(globals.iter().flatten());
        let mut shstrtab = vec![0u8];
        let n_text = push_str(&mut shstrtab, ".kernel");
        let n_sym = push_str(&mut shstrtab, ".symtab");
        let n_str = push_str(&mut shstrtab, ".strtab");
        let n_shs = push_str(&mut shstrtab, ".shstrtab");
        let sym_off = 64u64;
        let str_off = sym_off + symtab.len() as u64;
        let shs_off = str_off + strtab.len() as u64;
        let sh_off = (shs_off + shstrtab.len() as u64).next_multiple_of(8);
        let mut out = Vec::with_capacity(usize::try_from(sh_off).unwrap_or(0) + 5 * 64);
        out.extend_from_slice(b"\x7fELF\x02\x01\x01");
        out.resize(16, 0);
        out.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        out.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes()); // entry
        out.extend_from_slice(&0u64.to_le_bytes()); // phoff
        out.extend_from_slice(&sh_off.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes()); // flags
        out.extend_from_slice(&64u16.to_le_bytes()); // ehsize
        out.extend_from_slice(&0u16.to_le_bytes()); // phentsize
        out.extend_from_slice(&0u16.to_le_bytes()); // phnum
        out.extend_from_slice(&64u16.to_le_bytes()); // shentsize
        out.extend_from_slice(&5u16.to_le_bytes()); // shnum
        out.extend_from_slice(&4u16.to_le_bytes()); // shstrndx
        out.extend_from_slice(&symtab);
        out.extend_from_slice(&strtab);
        out.extend_from_slice(&shstrtab);
        out.resize(usize::try_from(sh_off).unwrap_or(0), 0);
        out.extend_from_slice(&[0u8; 64]);
        // SHT_NOBITS, ALLOC | WRITE | EXECINSTR.
        out.extend_from_slice(&shdr(n_text, 8, 0x7, lo, 0, hi - lo, 0, 0));
        out.extend_from_slice(&shdr(n_sym, 2, 0, 0, sym_off, symtab.len() as u64, 3, first_global));
        out.extend_from_slice(&shdr(n_str, 3, 0, 0, str_off, strtab.len() as u64, 0, 0));
        out.extend_from_slice(&shdr(n_shs, 3, 0, 0, shs_off, shstrtab.len() as u64, 0, 0));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = "ffffffff81000000 T _text\nffffffff81000000 T startup_64\nffffffff81001000 t helper\nffffffff82000000 D some_data\nffffffff82100000 B linux_banner\n";

    #[test]
    fn names_addresses_by_the_nearest_symbol_below() {
        let m = SymbolMap::parse(MAP, Path::new("m")).expect("parses");
        assert_eq!(m.name(0xffff_ffff_8100_1010).as_deref(), Some("helper+0x10"));
        assert_eq!(m.name(0xffff_ffff_8100_0000).as_deref(), Some("_text"));
        assert_eq!(m.name(0x1000), None);
        // The direct map lies below the kernel image: not a symbol's.
        assert_eq!(m.name(0xffff_8880_0000_1000), None);
        assert_eq!(m.address_of("some_data"), Some(0xffff_ffff_8200_0000));
    }

    #[test]
    fn the_placeholder_and_bad_lines_are_named() {
        let e = SymbolMap::parse(
            "ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n",
            Path::new("m"),
        );
        assert!(matches!(e, Err(SymbolError::Placeholder { .. })));
        let e =
            SymbolMap::parse("ffffffff81000000 T a\nzz T b\n", Path::new("m")).err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("line 2") && e.contains("not hex")));
    }

    #[test]
    fn the_elf_holds_every_symbol_locals_first() {
        let m = SymbolMap::parse(MAP, Path::new("m")).expect("parses");
        let elf = m.to_elf();
        assert!(elf.starts_with(b"\x7fELF\x02\x01"));
        // .symtab: null + 1 local (helper) + 4 globals.
        let shoff =
            usize::try_from(u64::from_le_bytes(elf[40..48].try_into().unwrap_or_default())).unwrap_or(0);
        let symtab = &elf[shoff + 2 * 64..shoff + 3 * 64];
        let size = u64::from_le_bytes(symtab[32..40].try_into().unwrap_or_default());
        let first_global = u32::from_le_bytes(symtab[44..48].try_into().unwrap_or_default());
        assert_eq!((size, first_global), (6 * 24, 2));
    }

    #[test]
    fn banner_check_reads_guest_memory() {
        let m = SymbolMap::parse(MAP, Path::new("m")).expect("parses");
        assert_eq!(
            m.check_banner(|_, b| {
                b.copy_from_slice(b"Linux version ");
                true
            }),
            None
        );
        assert!(
            m.check_banner(|_, b| {
                b.fill(0);
                true
            })
            .is_some_and(|w| w.contains("another kernel"))
        );
    }
}

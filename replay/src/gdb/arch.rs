//! The x86 architecture as gdb is told it: the register layout and target description
//! chosen, per connection, from the vCPU's mode.
//!
//! gdb learns the architecture once per connection (`target.xml`) and has no way to be
//! told it changed. So each connection describes the mode the vCPU is in when gdb
//! connects: long mode as `i386:x86-64` with the 64-bit registers plus `fs_base`,
//! `gs_base` and the control registers; real mode as `i8086` with the 32-bit layout, EIP
//! reported as the linear address (`CS.base + IP`) so that `$pc`, `x/i $pc` and
//! breakpoint addresses all live in one address space; 32-bit protected mode as `i386`
//! with the same 32-bit layout. A guest that switches modes later is described by
//! reconnecting (`disconnect`, `target remote ...`).

use gdbstub::arch::{Arch, Registers};
use gdbstub_arch::x86::reg::id::X86_64CoreRegId;
use gdbstub_arch::x86::reg::{X86_64CoreRegs, X86CoreRegs};

/// The register layout a connection uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layout {
    /// `i386:x86-64` core and SSE registers, then `fs_base`, `gs_base`, `cr0`, `cr2`,
    /// `cr3`, `cr4`, `efer`.
    #[default]
    Amd64,
    /// `i386` (or `i8086`) core and SSE registers.
    I386,
}

/// Bytes of the 64-bit core and SSE registers in gdb's `g` packet.
const AMD64_CORE: usize = 0x218;
/// The system registers after them.
const SYS_REGS: usize = 7;

/// The system registers the 64-bit description adds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SysRegs {
    /// FS base.
    pub fs_base: u64,
    /// GS base.
    pub gs_base: u64,
    /// CR0.
    pub cr0: u64,
    /// CR2.
    pub cr2: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
}

impl SysRegs {
    fn values(&self) -> [u64; SYS_REGS] {
        [self.fs_base, self.gs_base, self.cr0, self.cr2, self.cr3, self.cr4, self.efer]
    }
}

/// The registers as exchanged with gdb: the 64-bit set, and the layout to send it in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmrrRegs {
    /// The layout.
    pub layout: Layout,
    /// General, x87 and SSE registers (RIP is the linear program counter in real mode).
    pub core: X86_64CoreRegs,
    /// System registers (64-bit layout only).
    pub sys: SysRegs,
}

fn to_i386(r: &X86_64CoreRegs) -> X86CoreRegs {
    let low = |v: u64| u32::try_from(v & 0xffff_ffff).unwrap_or(0);
    let mut xmm = [0u128; 8];
    xmm.copy_from_slice(&r.xmm[..8]);
    // gdb's amd64 order is rax rbx rcx rdx rsi rdi rbp rsp; i386's is eax ecx edx ebx esp
    // ebp esi edi.
    X86CoreRegs {
        eax: low(r.regs[0]),
        ecx: low(r.regs[2]),
        edx: low(r.regs[3]),
        ebx: low(r.regs[1]),
        esp: low(r.regs[7]),
        ebp: low(r.regs[6]),
        esi: low(r.regs[4]),
        edi: low(r.regs[5]),
        eip: low(r.rip),
        eflags: r.eflags,
        segments: r.segments.clone(),
        st: r.st,
        fpu: r.fpu.clone(),
        xmm,
        mxcsr: r.mxcsr,
    }
}

fn from_i386(x: &X86CoreRegs, r: &mut X86_64CoreRegs) {
    for (i, v) in [x.eax, x.ebx, x.ecx, x.edx, x.esi, x.edi, x.ebp, x.esp].into_iter().enumerate() {
        r.regs[i] = u64::from(v);
    }
    r.rip = u64::from(x.eip);
    r.eflags = x.eflags;
    r.segments = x.segments.clone();
    r.st = x.st;
    r.fpu = x.fpu.clone();
    r.xmm[..8].copy_from_slice(&x.xmm);
    r.mxcsr = x.mxcsr;
}

impl Registers for VmrrRegs {
    type ProgramCounter = u64;

    fn pc(&self) -> u64 {
        self.core.rip
    }

    fn gdb_serialize(&self, mut write_byte: impl FnMut(Option<u8>)) {
        match self.layout {
            Layout::Amd64 => {
                self.core.gdb_serialize(&mut write_byte);
                for v in self.sys.values() {
                    v.to_le_bytes().iter().for_each(|b| write_byte(Some(*b)));
                }
            }
            Layout::I386 => to_i386(&self.core).gdb_serialize(write_byte),
        }
    }

    fn gdb_deserialize(&mut self, bytes: &[u8]) -> Result<(), ()> {
        // A `G` packet arrives on a default value: its size says the layout.
        if bytes.len() >= AMD64_CORE {
            self.layout = Layout::Amd64;
            self.core.gdb_deserialize(&bytes[..AMD64_CORE])?;
            let mut v = [0u64; SYS_REGS];
            for (i, c) in bytes[AMD64_CORE..].chunks_exact(8).take(SYS_REGS).enumerate() {
                v[i] = u64::from_le_bytes(c.try_into().map_err(|_| ())?);
            }
            let [fs_base, gs_base, cr0, cr2, cr3, cr4, efer] = v;
            self.sys = SysRegs { fs_base, gs_base, cr0, cr2, cr3, cr4, efer };
            Ok(())
        } else {
            let mut x = X86CoreRegs::default();
            x.gdb_deserialize(bytes)?;
            self.layout = Layout::I386;
            from_i386(&x, &mut self.core);
            Ok(())
        }
    }
}

/// x86 whose register layout travels with the registers (gdbstub fixes an `Arch` at
/// compile time; vmrr picks the layout per connection).
pub enum VmrrX86 {}

impl Arch for VmrrX86 {
    type Usize = u64;
    type Registers = VmrrRegs;
    // Single-register access (`p`/`P`) is not offered: gdb uses `g`/`G`.
    type RegId = X86_64CoreRegId;
    type BreakpointKind = usize;
}

/// Real mode: the architecture alone (gdb then uses its own i386 register set, the 32-bit
/// layout); `osabi none` keeps gdb from looking for a Linux ABI.
fn arch_only(arch: &str) -> String {
    format!(
        r#"<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd"><target version="1.0"><architecture>{arch}</architecture><osabi>none</osabi><feature name="org.gnu.gdb.i386.sse"></feature></target>"#
    )
}

/// The target description for `layout` (and, for the 32-bit layout, `i8086` or `i386`).
pub fn target_xml(layout: Layout, real_mode: bool) -> String {
    match layout {
        Layout::I386 => arch_only(if real_mode { "i8086" } else { "i386" }),
        Layout::Amd64 => amd64_xml(),
    }
}

/// A complete x86-64 description: gdb's 64-bit core and SSE features (exactly the `g`
/// layout of [`X86_64CoreRegs`]), then segment bases and vmrr's system registers.
fn amd64_xml() -> String {
    let mut s = String::from(
        r#"<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd"><target version="1.0"><architecture>i386:x86-64</architecture><osabi>none</osabi>"#,
    );
    s.push_str(r#"<feature name="org.gnu.gdb.i386.core"><flags id="i386_eflags" size="4"><field name="CF" start="0" end="0"/><field name="" start="1" end="1"/><field name="PF" start="2" end="2"/><field name="AF" start="4" end="4"/><field name="ZF" start="6" end="6"/><field name="SF" start="7" end="7"/><field name="TF" start="8" end="8"/><field name="IF" start="9" end="9"/><field name="DF" start="10" end="10"/><field name="OF" start="11" end="11"/><field name="NT" start="14" end="14"/><field name="RF" start="16" end="16"/><field name="VM" start="17" end="17"/><field name="AC" start="18" end="18"/><field name="VIF" start="19" end="19"/><field name="VIP" start="20" end="20"/><field name="ID" start="21" end="21"/></flags>"#);
    for (i, r) in ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp"].iter().enumerate() {
        let ty = if i >= 6 { "data_ptr" } else { "int64" };
        s.push_str(&format!(r#"<reg name="{r}" bitsize="64" type="{ty}"/>"#));
    }
    for i in 8..16 {
        s.push_str(&format!(r#"<reg name="r{i}" bitsize="64" type="int64"/>"#));
    }
    s.push_str(r#"<reg name="rip" bitsize="64" type="code_ptr"/><reg name="eflags" bitsize="32" type="i386_eflags"/>"#);
    for r in ["cs", "ss", "ds", "es", "fs", "gs"] {
        s.push_str(&format!(r#"<reg name="{r}" bitsize="32" type="int32"/>"#));
    }
    for i in 0..8 {
        s.push_str(&format!(r#"<reg name="st{i}" bitsize="80" type="i387_ext"/>"#));
    }
    for r in ["fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop"] {
        s.push_str(&format!(r#"<reg name="{r}" bitsize="32" type="int" group="float"/>"#));
    }
    s.push_str("</feature>");
    s.push_str(r#"<feature name="org.gnu.gdb.i386.sse"><vector id="v4f" type="ieee_single" count="4"/><vector id="v2d" type="ieee_double" count="2"/><vector id="v16i8" type="int8" count="16"/><vector id="v8i16" type="int16" count="8"/><vector id="v4i32" type="int32" count="4"/><vector id="v2i64" type="int64" count="2"/><union id="vec128"><field name="v4_float" type="v4f"/><field name="v2_double" type="v2d"/><field name="v16_int8" type="v16i8"/><field name="v8_int16" type="v8i16"/><field name="v4_int32" type="v4i32"/><field name="v2_int64" type="v2i64"/><field name="uint128" type="uint128"/></union><flags id="i386_mxcsr" size="4"><field name="IE" start="0" end="0"/><field name="DE" start="1" end="1"/><field name="ZE" start="2" end="2"/><field name="OE" start="3" end="3"/><field name="UE" start="4" end="4"/><field name="PE" start="5" end="5"/><field name="DAZ" start="6" end="6"/><field name="IM" start="7" end="7"/><field name="DM" start="8" end="8"/><field name="ZM" start="9" end="9"/><field name="OM" start="10" end="10"/><field name="UM" start="11" end="11"/><field name="PM" start="12" end="12"/><field name="FZ" start="15" end="15"/></flags>"#);
    for i in 0..16 {
        s.push_str(&format!(r#"<reg name="xmm{i}" bitsize="128" type="vec128"/>"#));
    }
    s.push_str(r#"<reg name="mxcsr" bitsize="32" type="i386_mxcsr" group="vector"/></feature>"#);
    s.push_str(r#"<feature name="org.gnu.gdb.i386.segments"><reg name="fs_base" bitsize="64" type="int"/><reg name="gs_base" bitsize="64" type="int"/></feature>"#);
    s.push_str(r#"<feature name="org.vmrr.x86.sys"><reg name="cr0" bitsize="64" type="uint64" group="system"/><reg name="cr2" bitsize="64" type="uint64" group="system"/><reg name="cr3" bitsize="64" type="data_ptr" group="system"/><reg name="cr4" bitsize="64" type="uint64" group="system"/><reg name="efer" bitsize="64" type="uint64" group="system"/></feature>"#);
    s.push_str("</target>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(r: &VmrrRegs) -> Vec<u8> {
        let mut out = Vec::new();
        r.gdb_serialize(|b| out.push(b.unwrap_or(0)));
        out
    }

    #[test]
    fn layouts_round_trip_and_have_gdbs_sizes() {
        let mut r = VmrrRegs::default();
        r.core.regs[0] = 0x1122_3344_5566_7788;
        r.core.regs[7] = 0x8000;
        r.core.rip = 0x7c04;
        r.sys.cr3 = 0x9000;
        let b = bytes(&r);
        assert_eq!(b.len(), AMD64_CORE + 8 * SYS_REGS);
        let mut back = VmrrRegs::default();
        back.gdb_deserialize(&b).expect("64-bit layout");
        assert_eq!(back, r);
        r.layout = Layout::I386;
        let b = bytes(&r);
        // gdb's i386 `g` packet: 308 bytes.
        assert_eq!(b.len(), 308);
        let mut back = VmrrRegs::default();
        back.gdb_deserialize(&b).expect("32-bit layout");
        assert_eq!(back.layout, Layout::I386);
        assert_eq!(back.core.regs[0], 0x5566_7788);
        assert_eq!(back.core.regs[7], 0x8000);
        assert_eq!(back.core.rip, 0x7c04);
        assert!(target_xml(Layout::I386, true).contains("i8086"));
        assert!(target_xml(Layout::Amd64, false).contains("org.vmrr.x86.sys"));
    }
}

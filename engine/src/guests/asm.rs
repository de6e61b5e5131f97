//! What the 64-bit built-in guests share: their frame ([`long_mode`]: code, subroutines,
//! data), console output over the 16550 and hex printing as subroutines ([`Lib`]), and
//! the debug-exit port ([`exit`]).

use iced_x86::IcedError;
use iced_x86::code_asm::*;

use crate::devices::map;
use crate::guests::boot::{CS_RING0, IDT_ADDR};

/// Labels of the shared subroutines.
#[derive(Clone, Copy)]
pub struct Lib {
    /// `putc`: prints AL (polls the line status register first). Preserves all registers.
    pub putc: CodeLabel,
    /// `puts`: prints the NUL-terminated string at RSI. Clobbers RSI.
    pub puts: CodeLabel,
    /// `puthex`: prints RAX as 16 hex digits. Preserves RAX.
    pub puthex: CodeLabel,
}

impl Lib {
    /// Creates the labels (the code is emitted by [`Lib::emit`]).
    pub fn new(a: &mut CodeAssembler) -> Self {
        Lib { putc: a.create_label(), puts: a.create_label(), puthex: a.create_label() }
    }

    /// Emits the subroutines.
    pub fn emit(mut self, a: &mut CodeAssembler) -> Result<(), IcedError> {
        // putc
        a.set_label(&mut self.putc)?;
        a.push(rdx)?;
        a.push(rax)?;
        a.mov(dx, u32::from(map::SERIAL + 5))?;
        let mut wait = a.create_label();
        a.set_label(&mut wait)?;
        a.in_(al, dx)?;
        a.test(al, 0x20)?;
        a.jz(wait)?;
        a.pop(rax)?;
        a.mov(dx, u32::from(map::SERIAL))?;
        a.out(dx, al)?;
        a.pop(rdx)?;
        a.ret()?;
        // puts
        a.set_label(&mut self.puts)?;
        a.push(rax)?;
        let mut l = a.create_label();
        let mut done = a.create_label();
        a.set_label(&mut l)?;
        a.mov(al, byte_ptr(rsi))?;
        a.test(al, al)?;
        a.jz(done)?;
        a.call(self.putc)?;
        a.inc(rsi)?;
        a.jmp(l)?;
        a.set_label(&mut done)?;
        a.pop(rax)?;
        a.ret()?;
        // puthex
        a.set_label(&mut self.puthex)?;
        a.push(rax)?;
        a.push(rbx)?;
        a.push(rcx)?;
        a.mov(rbx, rax)?;
        a.mov(ecx, 16)?;
        let mut digit = a.create_label();
        let mut dec = a.create_label();
        a.set_label(&mut digit)?;
        a.rol(rbx, 4)?;
        a.mov(al, bl)?;
        a.and(al, 0x0f)?;
        a.add(al, i32::from(b'0'))?;
        a.cmp(al, i32::from(b'9'))?;
        a.jbe(dec)?;
        a.add(al, i32::from(b'a' - b'9' - 1))?;
        a.set_label(&mut dec)?;
        a.call(self.putc)?;
        a.dec(ecx)?;
        a.jnz(digit)?;
        a.pop(rcx)?;
        a.pop(rbx)?;
        a.pop(rax)?;
        a.ret()?;
        Ok(())
    }
}

/// A 64-bit built-in guest's shared frame: the guest's code, then the subroutines of
/// [`Lib`], then its strings and data in the order they were declared.
pub struct Program {
    /// The shared subroutines.
    pub lib: Lib,
    data: Vec<(CodeLabel, Vec<u8>)>,
}

/// Assembles a 64-bit guest at `base`: `code` emits its instructions (ending with
/// [`exit`] or a loop), declaring its strings and data with [`Program::text`] and
/// [`Program::data`]; the subroutines and the data follow the code.
///
/// # Errors
/// The assembler's.
pub fn long_mode(
    base: u64,
    code: impl FnOnce(&mut CodeAssembler, &mut Program) -> Result<(), IcedError>,
) -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    let mut p = Program { lib: Lib::new(&mut a), data: Vec::new() };
    code(&mut a, &mut p)?;
    p.lib.emit(&mut a)?;
    for (mut label, bytes) in p.data {
        a.set_label(&mut label)?;
        a.db(&bytes)?;
    }
    a.assemble(base)
}

impl Program {
    /// A NUL-terminated string, placed after the code.
    pub fn text(&mut self, a: &mut CodeAssembler, text: &str) -> CodeLabel {
        let mut b = text.as_bytes().to_vec();
        b.push(0);
        self.data(a, &b)
    }

    /// Bytes placed after the code (a variable the guest writes, a descriptor).
    pub fn data(&mut self, a: &mut CodeAssembler, bytes: &[u8]) -> CodeLabel {
        let label = a.create_label();
        self.data.push((label, bytes.to_vec()));
        label
    }

    /// Emits `lea rsi, [msg]; call puts`.
    ///
    /// # Errors
    /// The assembler's.
    pub fn print(&self, a: &mut CodeAssembler, msg: CodeLabel) -> Result<(), IcedError> {
        a.lea(rsi, ptr(msg))?;
        a.call(self.lib.puts)
    }

    /// Emits `call puthex` (prints RAX as 16 hex digits).
    ///
    /// # Errors
    /// The assembler's.
    pub fn print_hex(&self, a: &mut CodeAssembler) -> Result<(), IcedError> {
        a.call(self.lib.puthex)
    }
}

/// Emits a write of `status` to the debug-exit port (ends the run).
///
/// # Errors
/// The assembler's.
pub fn exit(a: &mut CodeAssembler, status: u32) -> Result<(), IcedError> {
    a.mov(eax, status)?;
    a.mov(dx, u32::from(map::DEBUG_EXIT))?;
    a.out(dx, eax)?;
    // Not reached: the engine stops at the debug exit. Spin rather than run off the end.
    let mut spin = a.create_label();
    a.set_label(&mut spin)?;
    a.jmp(spin)
}

/// Emits the set-up of the 64-bit interrupt gate for `vector` (DPL 0, `CS_RING0`) to
/// `handler`, in the IDT at `IDT_ADDR`. Clobbers RAX and RDI.
pub fn idt_gate(a: &mut CodeAssembler, vector: u8, handler: CodeLabel) -> Result<(), IcedError> {
    a.lea(rax, ptr(handler))?;
    a.mov(rdi, IDT_ADDR + 16 * u64::from(vector))?;
    a.mov(word_ptr(rdi), ax)?;
    a.mov(word_ptr(rdi + 2), u32::from(CS_RING0))?;
    a.mov(word_ptr(rdi + 4), 0x8e00u32)?;
    a.shr(rax, 16)?;
    a.mov(word_ptr(rdi + 6), ax)?;
    a.shr(rax, 16)?;
    a.mov(dword_ptr(rdi + 8), eax)?;
    a.mov(dword_ptr(rdi + 12), 0u32)
}

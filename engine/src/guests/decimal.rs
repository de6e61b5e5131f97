//! `putdec`: prints RAX as an unsigned decimal number (no leading zeros) through the
//! shared `putc`.

use iced_x86::IcedError;
use iced_x86::code_asm::*;

use crate::guests::asm::Lib;

/// The `putdec` subroutine's label; the code is emitted by [`Decimal::emit`].
#[derive(Clone, Copy)]
pub struct Decimal {
    /// `putdec`: prints RAX in decimal. Preserves all registers.
    pub putdec: CodeLabel,
}

impl Decimal {
    /// Creates the label.
    pub fn new(a: &mut CodeAssembler) -> Self {
        Decimal { putdec: a.create_label() }
    }

    /// Emits the subroutine (digits are pushed, least significant first, then popped).
    ///
    /// # Errors
    /// The assembler's.
    pub fn emit(mut self, a: &mut CodeAssembler, lib: &Lib) -> Result<(), IcedError> {
        a.set_label(&mut self.putdec)?;
        a.push(rax)?;
        a.push(rbx)?;
        a.push(rcx)?;
        a.push(rdx)?;
        a.mov(ebx, 10)?;
        a.xor(ecx, ecx)?;
        let mut divide = a.create_label();
        let mut print = a.create_label();
        a.set_label(&mut divide)?;
        a.xor(edx, edx)?;
        a.div(rbx)?;
        a.add(edx, i32::from(b'0'))?;
        a.push(rdx)?;
        a.inc(ecx)?;
        a.test(rax, rax)?;
        a.jnz(divide)?;
        a.set_label(&mut print)?;
        a.pop(rax)?;
        a.call(lib.putc)?;
        a.dec(ecx)?;
        a.jnz(print)?;
        a.pop(rdx)?;
        a.pop(rcx)?;
        a.pop(rbx)?;
        a.pop(rax)?;
        a.ret()
    }
}

//! A spinlock in guest memory: a dword, 0 free, 1 held. Taking it is an `xchg` with memory
//! (locked by the architecture without a prefix); waiting spins on plain reads with
//! `pause` so that the contended line is not written while it is held.

use iced_x86::IcedError;
use iced_x86::code_asm::*;

/// Emits taking the lock at `lock` (clobbers EAX).
///
/// # Errors
/// The assembler's.
pub fn acquire(a: &mut CodeAssembler, lock: CodeLabel) -> Result<(), IcedError> {
    let mut spin = a.create_label();
    let mut try_take = a.create_label();
    a.jmp(try_take)?;
    a.set_label(&mut spin)?;
    a.pause()?;
    a.cmp(dword_ptr(lock), 0)?;
    a.jne(spin)?;
    a.set_label(&mut try_take)?;
    a.mov(eax, 1)?;
    a.xchg(dword_ptr(lock), eax)?;
    a.test(eax, eax)?;
    a.jnz(spin)
}

/// Emits releasing the lock at `lock` (a plain store: x86 keeps stores in order).
///
/// # Errors
/// The assembler's.
pub fn release(a: &mut CodeAssembler, lock: CodeLabel) -> Result<(), IcedError> {
    a.mov(dword_ptr(lock), 0)
}

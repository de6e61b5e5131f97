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
    let mut retry = a.create_label();
    let mut spin = a.create_label();
    let mut done = a.create_label();
    a.set_label(&mut retry)?;
    a.mov(eax, 1)?;
    a.xchg(dword_ptr(lock), eax)?;
    a.test(eax, eax)?;
    a.jz(done)?;
    a.set_label(&mut spin)?;
    a.pause()?;
    a.cmp(dword_ptr(lock), 0)?;
    a.jne(spin)?;
    a.jmp(retry)?;
    a.set_label(&mut done)?;
    Ok(())
}

/// Emits releasing the lock at `lock` (a plain store: x86 keeps stores in order).
///
/// # Errors
/// The assembler's.
pub fn release(a: &mut CodeAssembler, lock: CodeLabel) -> Result<(), IcedError> {
    a.mov(dword_ptr(lock), 0)
}

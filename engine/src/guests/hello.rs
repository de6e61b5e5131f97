//! `hello`: prints a greeting over the serial port and exits (real mode and long mode).

use iced_x86::IcedError;
use iced_x86::code_asm::*;

use super::asm::{exit, long_mode};
use crate::devices::map;

/// The greeting the real-mode guest prints.
pub const REAL_TEXT: &str = "Hello from a vmrr guest (16-bit real mode)\n";
/// The greeting the long-mode guest prints.
pub const LONG_TEXT: &str = "Hello from a vmrr guest (64-bit long mode)\n";

/// 16-bit real mode, loaded at [`super::REAL_LOAD`] with DS = 0: print, exit with status 0.
pub fn real() -> Result<Vec<u8>, IcedError> {
    let base = super::REAL_LOAD;
    let mut a = CodeAssembler::new(16)?;
    let mut msg = a.create_label();
    let mut next = a.create_label();
    let mut done = a.create_label();
    let mut wait = a.create_label();
    a.mov(si, 0u32)?; // `be lo hi`, patched below to the message's address (DS = 0)
    a.set_label(&mut next)?;
    a.lodsb()?;
    a.test(al, al)?;
    a.jz(done)?;
    a.mov(ah, al)?;
    a.mov(dx, u32::from(map::SERIAL + 5))?;
    a.set_label(&mut wait)?;
    a.in_(al, dx)?;
    a.test(al, 0x20)?;
    a.jz(wait)?;
    a.mov(al, ah)?;
    a.mov(dx, u32::from(map::SERIAL))?;
    a.out(dx, al)?;
    a.jmp(next)?;
    a.set_label(&mut done)?;
    a.mov(al, 0)?;
    a.out(i32::from(map::DEBUG_EXIT), al)?;
    a.hlt()?;
    a.set_label(&mut msg)?;
    let mut text = REAL_TEXT.as_bytes().to_vec();
    text.push(0);
    a.db(&text)?;
    let mut code = a.assemble(base)?;
    // The message is at the end; the image sits below 64 KiB, so its address is an offset.
    let addr = base + (code.len() - text.len()) as u64;
    let addr = u16::try_from(addr).expect("REAL_LOAD places the whole image below 64 KiB");
    code[1..3].copy_from_slice(&addr.to_le_bytes());
    Ok(code)
}

/// 64-bit long mode: print, exit with status 0.
pub fn long(base: u64) -> Result<Vec<u8>, IcedError> {
    long_mode(base, |a, p| {
        let msg = p.text(a, LONG_TEXT);
        p.print(a, msg)?;
        exit(a, 0)
    })
}

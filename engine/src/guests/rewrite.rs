//! `rewrite-window`: writes the same window of N pages every round (round number in each
//! page's first quadword, its complement in the last), then exits once through the storm
//! port; forever. A checkpoint taken at that exit is followed at once by writes to every
//! page it stores, which is what a background capture must survive: its snapshot has to
//! hold round `r`'s bytes although the guest writes round `r + 1`'s right away. Ring 3.

use iced_x86::IcedError;
use iced_x86::code_asm::*;

use super::churn::CHURN_START;
use crate::devices::map;

/// Builds the guest for a window of `pages` pages from `CHURN_START` (at most up to `end`).
pub fn build(base: u64, end: u64, pages: u64) -> Result<Vec<u8>, IcedError> {
    let total = ((end.saturating_sub(CHURN_START)) / 4096).max(1);
    let n = pages.clamp(1, total);
    let mut a = CodeAssembler::new(64)?;
    let mut round = a.create_label();
    let mut page = a.create_label();
    // r12 = round number; rdi walks the window.
    a.mov(r12, 1u64)?;
    a.set_label(&mut round)?;
    a.mov(rcx, n)?;
    a.mov(rdi, CHURN_START)?;
    a.set_label(&mut page)?;
    a.mov(qword_ptr(rdi), r12)?;
    a.mov(rax, r12)?;
    a.not(rax)?;
    a.mov(qword_ptr(rdi + 4088), rax)?;
    a.add(rdi, 4096)?;
    a.dec(rcx)?;
    a.jnz(page)?;
    a.mov(dx, u32::from(map::STORM))?;
    a.out(dx, al)?;
    a.inc(r12)?;
    a.jmp(round)?;
    a.assemble(base)
}

//! `dirty-pages`: dirties exactly N pages per round (a different N each round, walking
//! through memory), then exits once through the storm port; forever. For snapshot and
//! reset benchmarks: each exit follows exactly N freshly dirtied pages. Ring 3.

use iced_x86::IcedError;
use iced_x86::code_asm::*;

use super::churn::CHURN_START;
use crate::devices::map;

/// Builds the guest for `pages_per_round` pages over `[CHURN_START, end)`.
pub fn build(base: u64, end: u64, pages_per_round: u64) -> Result<Vec<u8>, IcedError> {
    let total = ((end.saturating_sub(CHURN_START)) / 4096).max(1);
    let n = pages_per_round.clamp(1, total);
    let mut a = CodeAssembler::new(64)?;
    let mut round = a.create_label();
    let mut page = a.create_label();
    let mut no_wrap = a.create_label();
    // r12 = round counter, r13 = next page index, r14 = total pages
    a.mov(r12, 1u64)?;
    a.xor(r13, r13)?;
    a.mov(r14, total)?;
    a.set_label(&mut round)?;
    a.mov(rcx, n)?;
    a.set_label(&mut page)?;
    a.mov(rdi, r13)?;
    a.shl(rdi, 12)?;
    a.mov(rax, CHURN_START)?;
    a.add(rdi, rax)?;
    a.mov(qword_ptr(rdi), r12)?;
    a.inc(r13)?;
    a.cmp(r13, r14)?;
    a.jb(no_wrap)?;
    a.xor(r13, r13)?;
    a.set_label(&mut no_wrap)?;
    a.dec(rcx)?;
    a.jnz(page)?;
    a.mov(dx, u32::from(map::STORM))?;
    a.out(dx, al)?;
    a.inc(r12)?;
    a.jmp(round)?;
    a.assemble(base)
}

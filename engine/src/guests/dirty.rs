//! `dirty-pages`: dirties exactly N pages per round (a different N each round, walking
//! through memory), then exits once through the storm port; forever. For snapshot and
//! reset benchmarks: each exit follows exactly N freshly dirtied pages. Ring 3.
//! `dirty-paced`: the same with fixed work between rounds (checkpoint-overhead benchmark).

use iced_x86::IcedError;
use iced_x86::code_asm::*;

use super::churn::CHURN_START;
use crate::devices::map;

/// Loop iterations of work between two rounds of `dirty-paced` (about 1 ms natively).
pub const PACED_SPIN: u64 = 1 << 22;

/// Builds the guest for `pages_per_round` pages over `[CHURN_START, end)`.
pub fn build(base: u64, end: u64, pages_per_round: u64) -> Result<Vec<u8>, IcedError> {
    build_with_spin(base, end, pages_per_round, 0)
}

/// `dirty-paced`: as `dirty-pages`, with [`PACED_SPIN`] iterations of register-only work
/// after each round, so the rate at which it dirties memory is set by `pages_per_round`
/// (the checkpoint-overhead benchmark: its throughput is rounds per second).
pub fn build_paced(base: u64, end: u64, pages_per_round: u64) -> Result<Vec<u8>, IcedError> {
    build_with_spin(base, end, pages_per_round, PACED_SPIN)
}

fn build_with_spin(base: u64, end: u64, pages_per_round: u64, spin: u64) -> Result<Vec<u8>, IcedError> {
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
    if spin > 0 {
        let mut work = a.create_label();
        a.mov(rcx, spin)?;
        a.set_label(&mut work)?;
        a.dec(rcx)?;
        a.jnz(work)?;
    }
    a.inc(r12)?;
    a.jmp(round)?;
    a.assemble(base)
}

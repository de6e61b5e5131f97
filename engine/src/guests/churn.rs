//! `memory-churn`: dirties pages across guest memory over several rounds, with an exit
//! every 256 pages (a point where checkpoints can be taken), then prints a checksum of
//! memory. Ring 3, so it runs natively even where ring-0 code is emulated.

use iced_x86::IcedError;
use iced_x86::code_asm::*;

use super::asm::{exit, long_mode};
use crate::devices::map;

/// First address churned (below it: page tables, the image, stacks).
pub const CHURN_START: u64 = 4 << 20;

/// Builds the guest for memory ranges `ranges` (start, end), `rounds` passes.
pub fn build(base: u64, ranges: &[(u64, u64)], rounds: u64) -> Result<Vec<u8>, IcedError> {
    long_mode(base, |a, p| {
        let msg = p.text(a, "memory-churn checksum: ");
        let nl = p.text(a, "\n");
        let mut round = a.create_label();
        // r12 = round (1-based), r13 = rounds
        a.mov(r12, 1u64)?;
        a.mov(r13, rounds)?;
        a.set_label(&mut round)?;
        for &(start, end) in ranges {
            if end <= start {
                continue;
            }
            let mut page = a.create_label();
            let mut no_exit = a.create_label();
            a.mov(rdi, start)?;
            a.mov(rsi, end)?;
            a.xor(ebx, ebx)?;
            a.set_label(&mut page)?;
            // Each round writes a different word of the page: [rdi + 8 * (round % 512)] += round.
            a.mov(rax, r12)?;
            a.and(eax, 511)?;
            a.add(qword_ptr(rdi + rax * 8), r12)?;
            a.inc(ebx)?;
            a.test(ebx, 255)?;
            a.jnz(no_exit)?;
            a.mov(dx, u32::from(map::STORM))?;
            a.out(dx, al)?;
            a.set_label(&mut no_exit)?;
            a.add(rdi, 4096)?;
            a.cmp(rdi, rsi)?;
            a.jb(page)?;
        }
        a.inc(r12)?;
        a.cmp(r12, r13)?;
        a.jbe(round)?;
        // Checksum: sum of every qword of every churned page's first 4 KiB, rotated per word.
        a.xor(r8, r8)?;
        for &(start, end) in ranges {
            if end <= start {
                continue;
            }
            let mut word = a.create_label();
            a.mov(rdi, start)?;
            a.mov(rsi, end)?;
            a.set_label(&mut word)?;
            a.rol(r8, 1)?;
            a.add(r8, qword_ptr(rdi))?;
            a.add(rdi, 8)?;
            a.cmp(rdi, rsi)?;
            a.jb(word)?;
        }
        p.print(a, msg)?;
        a.mov(rax, r8)?;
        p.print_hex(a)?;
        p.print(a, nl)?;
        exit(a, 0)
    })
}

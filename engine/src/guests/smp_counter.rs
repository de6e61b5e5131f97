//! `smp-counter`: every vCPU (the BSP included) adds 1 to a shared counter N times, each
//! addition under a spinlock, then prints `cpu K: S` (K its APIC ID, which vmrr makes
//! its vCPU index; S its share; both in decimal) under a print lock; the BSP waits for all, checks the counter equals vCPUs × N
//! and prints `total: T ok` (exit status 0) or `total: T WRONG` (status 1). The APs end
//! halted with interrupts off. With one vCPU no AP is started.

use iced_x86::code_asm::*;

use super::asm::{exit, long_mode};
use super::decimal::Decimal;
use super::smp::lock::{acquire, release};
use super::smp::startup::start_aps;
use super::smp::trampoline::{TrampolineError, trampoline};

/// Ring 0, `vcpus` vCPUs, `n` additions each.
///
/// # Errors
/// The assembler's or the trampoline's.
pub fn build(base: u64, vcpus: u32, n: u64) -> Result<Vec<u8>, TrampolineError> {
    let tramp = trampoline()?;
    let expected = u64::from(vcpus).wrapping_mul(n);
    let bytes = long_mode(base, |a, p| {
        let counter = p.data(a, &[0; 8]);
        let lock = p.data(a, &[0; 4]);
        let print_lock = p.data(a, &[0; 4]);
        let finished = p.data(a, &[0; 4]);
        let cpu = p.text(a, "cpu ");
        let colon = p.text(a, ": ");
        let nl = p.text(a, "\n");
        let total = p.text(a, "total: ");
        let ok = p.text(a, " ok\n");
        let wrong = p.text(a, " WRONG\n");
        let dec = Decimal::new(a);
        let mut ap_entry = a.create_label();
        let mut work = a.create_label();
        let mut wait = a.create_label();
        let mut bad = a.create_label();
        let mut park = a.create_label();
        let mut add = a.create_label();

        // BSP: start the APs, do its share as index 0, wait for all, check.
        start_aps(a, p, vcpus, &tramp, ap_entry)?;
        a.xor(ebx, ebx)?;
        a.call(work)?;
        a.set_label(&mut wait)?;
        a.pause()?;
        a.cmp(dword_ptr(finished), vcpus)?;
        a.jb(wait)?;
        p.print(a, total)?;
        a.mov(rax, qword_ptr(counter))?;
        a.call(dec.putdec)?;
        a.mov(rcx, expected)?;
        a.cmp(rax, rcx)?;
        a.jne(bad)?;
        p.print(a, ok)?;
        exit(a, 0)?;
        a.set_label(&mut bad)?;
        p.print(a, wrong)?;
        exit(a, 1)?;

        // AP: its share, then halt for good.
        a.set_label(&mut ap_entry)?;
        a.call(work)?;
        a.set_label(&mut park)?;
        a.cli()?;
        a.hlt()?;
        a.jmp(park)?;

        // work: EBX = APIC ID. R12 counts this vCPU's share, R13 the additions left.
        a.set_label(&mut work)?;
        a.xor(r12d, r12d)?;
        a.mov(r13, n)?;
        a.test(r13, r13)?;
        let mut report = a.create_label();
        a.jz(report)?;
        a.set_label(&mut add)?;
        acquire(a, lock)?;
        a.inc(qword_ptr(counter))?;
        release(a, lock)?;
        a.inc(r12)?;
        a.dec(r13)?;
        a.jnz(add)?;
        a.set_label(&mut report)?;
        acquire(a, print_lock)?;
        p.print(a, cpu)?;
        a.mov(eax, ebx)?;
        a.call(dec.putdec)?;
        p.print(a, colon)?;
        a.mov(rax, r12)?;
        a.call(dec.putdec)?;
        p.print(a, nl)?;
        release(a, print_lock)?;
        a.lock().inc(dword_ptr(finished))?;
        a.ret()?;
        dec.emit(a, &p.lib)
    })?;
    Ok(bytes)
}

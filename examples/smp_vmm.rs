//! A VMM vmrr did not write, with two vCPU threads and a device thread, recorded so that
//! vmrr reproduces its failure without that VMM.
//!
//! The VMM is made of rust-vmm parts and its own code only: `kvm-ioctls` for the VM (KVM's
//! in-kernel irqchip and PIT, an ioeventfd and an irqfd), `vm-memory` for guest memory,
//! `vm-superio`'s 16550 for the console, plain threads. Its device is a one-slot queue: the
//! guest's `out 0x520, al` signals an ioeventfd (no exit reaches userspace), the device
//! thread wakes, writes a line of text into guest memory at 0xa000 and completes through
//! an irqfd on GSI 20, which KVM's IOAPIC delivers to the bootstrap processor as vector
//! 0x30.
//!
//! Its guest (assembled with iced-x86): the bootstrap processor (vCPU 0) starts in long
//! mode, masks the PIC, routes IOAPIC pin 20 to itself, starts the AP with INIT and SIPI
//! through its local APIC (the AP enters a real-mode trampoline at 0x8000 that switches to
//! long mode with the BSP's GDT and page tables), then asks the device three times,
//! printing each line the device wrote, and halts. The AP prints numbered lines, and once
//! the BSP is done runs `popcnt rax, [rdi]` with RDI at unbacked MMIO: KVM cannot emulate
//! it, the AP's thread sees the emulation failure, the VMM stops the other threads and
//! finishes the recording with that failure.
//!
//! vmrr is embedded with [`Embedded::start_smp`]: one [`EmbeddedVcpu`] per vCPU thread, a
//! [`DeviceThread`] whose memory records the device's writes on its own stream, and
//! [`Embedded::finish_smp`] naming the failed vCPU and exit.
//!
//! ```text
//! cargo run --release --example smp_vmm -- /tmp/s.vmrr
//! vmrr pack /tmp/s.vmrr -o /tmp/s.vmrrb && vmrr replay /tmp/s.vmrrb --json
//! ```

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use iced_x86::code_asm::*;
use kvm_bindings::{kvm_dtable, kvm_enable_cap, kvm_pit_config, kvm_regs, kvm_segment};
use kvm_ioctls::{IoEventAddress, Kvm, NoDatamatch, VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;
use vmrr_engine::embed::{
    DeviceThread, EmbedError, EmbedOptions, Embedded, EmbeddedVcpu, Kicker, SmpParts, end_reason, slots_of,
};

/// Guest memory: 4 MiB at 0.
const MEM_SIZE: usize = 4 << 20;
/// vCPUs: the BSP and one AP.
const VCPUS: usize = 2;
/// GDT: null, 64-bit code (0x08), data (0x10), TSS (0x18, two slots).
const GDT: u64 = 0x500;
/// The IDT (256 gates of 16 bytes).
const IDT: u64 = 0x1000;
/// The TSS (KVM needs a usable task register in long mode).
const TSS: u64 = 0x3000;
/// Page tables: PML4, PDPT, then four page directories of 2 MiB pages (4 GiB identity).
const PML4: u64 = 0x1_0000;
/// Real-mode trampoline page the SIPI names (vector 8).
const TRAMPOLINE: u64 = 0x8000;
/// Offset in the trampoline of its 64-bit part.
const TRAMPOLINE_LONG: u64 = 0x80;
/// Where the trampoline's `lgdt` reads the GDT pseudo-descriptor.
const TRAMPOLINE_GDTR: u64 = 0x8f00;
/// Shared words: the flag the interrupt handler sets, the print lock, "BSP done".
const FLAG: u64 = 0x9000;
/// The print lock (a dword: 0 free).
const LOCK: u64 = 0x9004;
/// Set by the BSP when it has served its requests.
const DONE: u64 = 0x9008;
/// Where the device writes its line (NUL-terminated).
const REPLY: u64 = 0xa000;
/// The guest's code and strings.
const CODE: u64 = 0x2_0000;
/// The BSP's stack top.
const BSP_STACK: u64 = 0x8_0000;
/// The AP's stack top.
const AP_STACK: u64 = 0x7_0000;
/// The queue's doorbell port (an ioeventfd).
const QUEUE_PORT: u16 = 0x520;
/// The guest's exit port (`out 0x504, al`: the status), should the AP not fail.
const EXIT_PORT: u16 = 0x504;
/// The device's GSI (an IOAPIC pin only: GSIs from 16 up have no PIC line).
const GSI: u32 = 20;
/// The device's interrupt vector.
const VECTOR: u8 = 0x30;
/// Requests the BSP makes.
const REQUESTS: u8 = 3;
/// Lines the AP prints at least before it fails.
const AP_ROUNDS: u32 = 8;
/// The console.
const COM1: u16 = 0x3f8;
/// Unbacked guest-physical address the AP's failing instruction reads.
const MMIO: u64 = 0xd000_1000;
/// Local APIC (xAPIC) and IOAPIC bases.
const LAPIC: u64 = 0xfee0_0000;
/// IOAPIC base.
const IOAPIC: u64 = 0xfec0_0000;

/// Emits `putc`: AL to the console (clobbers DX).
fn emit_putc(a: &mut CodeAssembler, putc: &mut CodeLabel) -> Result<(), IcedError> {
    a.set_label(putc)?;
    a.mov(dx, u32::from(COM1))?;
    a.out(dx, al)?;
    a.ret()
}

/// Emits `puts`: the NUL-terminated string at RSI (clobbers RAX, RDX, RSI).
fn emit_puts(a: &mut CodeAssembler, puts: &mut CodeLabel, putc: CodeLabel) -> Result<(), IcedError> {
    let mut end = a.create_label();
    a.set_label(puts)?;
    a.mov(al, byte_ptr(rsi))?;
    a.test(al, al)?;
    a.jz(end)?;
    a.call(putc)?;
    a.inc(rsi)?;
    a.jmp(*puts)?;
    a.set_label(&mut end)?;
    a.ret()
}

/// Emits `puthex`: AL as two hex digits (clobbers RAX, RCX, RDX).
fn emit_puthex(a: &mut CodeAssembler, puthex: &mut CodeLabel, putc: CodeLabel) -> Result<(), IcedError> {
    a.set_label(puthex)?;
    a.mov(cl, al)?;
    for shift in [4u32, 0] {
        let mut decimal = a.create_label();
        a.mov(al, cl)?;
        if shift > 0 {
            a.shr(al, shift)?;
        }
        a.and(al, 0x0fu32)?;
        a.add(al, u32::from(b'0'))?;
        a.cmp(al, u32::from(b'9'))?;
        a.jbe(decimal)?;
        a.add(al, 7u32)?;
        a.set_label(&mut decimal)?;
        a.call(putc)?;
    }
    a.ret()
}

/// Emits taking the print lock (clobbers EAX).
fn lock(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let mut spin = a.create_label();
    let mut take = a.create_label();
    a.jmp(take)?;
    a.set_label(&mut spin)?;
    a.pause()?;
    a.cmp(dword_ptr(LOCK), 0)?;
    a.jne(spin)?;
    a.set_label(&mut take)?;
    a.mov(eax, 1)?;
    a.xchg(dword_ptr(LOCK), eax)?;
    a.test(eax, eax)?;
    a.jnz(spin)
}

/// Emits releasing the print lock.
fn unlock(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.mov(dword_ptr(LOCK), 0)
}

/// Emits writing `value` to local APIC register `reg` and, for the ICR, waiting until it
/// was sent (RSI = the LAPIC base).
fn lapic_write(a: &mut CodeAssembler, reg: i32, value: u32) -> Result<(), IcedError> {
    a.mov(dword_ptr(rsi + reg), value)?;
    if reg == 0x300 {
        let mut pending = a.create_label();
        a.set_label(&mut pending)?;
        a.pause()?;
        a.test(dword_ptr(rsi + 0x300), 1 << 12)?;
        a.jnz(pending)?;
    }
    Ok(())
}

/// Emits a counted wait (clobbers ECX).
fn delay(a: &mut CodeAssembler, loops: u32) -> Result<(), IcedError> {
    let mut top = a.create_label();
    a.mov(ecx, loops)?;
    a.set_label(&mut top)?;
    a.pause()?;
    a.dec(ecx)?;
    a.jnz(top)
}

/// The guest's 64-bit code at [`CODE`]: the BSP's entry at its start; returns the bytes,
/// the AP's entry and the interrupt handler's address.
fn guest() -> Result<(Vec<u8>, u64, u64), IcedError> {
    let mut a = CodeAssembler::new(64)?;
    let mut putc = a.create_label();
    let mut puts = a.create_label();
    let mut puthex = a.create_label();
    let mut ap = a.create_label();
    let mut handler = a.create_label();
    let mut s_bsp = a.create_label();
    let mut s_ap = a.create_label();
    let mut s_nl = a.create_label();
    let mut s_fail = a.create_label();
    let mut s_emulated = a.create_label();
    let mut s_done = a.create_label();

    // --- The BSP.
    // The PIC masked (its lines must not reach the BSP through LINT0 as stray vectors).
    a.mov(al, 0xffu32)?;
    a.out(0x21, al)?;
    a.out(0xa1, al)?;
    // IOAPIC pin GSI: vector VECTOR, fixed, edge, to APIC ID 0.
    a.mov(edi, u32::try_from(IOAPIC).unwrap_or(0))?;
    a.mov(dword_ptr(rdi), 0x10 + 2 * GSI)?;
    a.mov(dword_ptr(rdi + 0x10), u32::from(VECTOR))?;
    a.mov(dword_ptr(rdi), 0x11 + 2 * GSI)?;
    a.mov(dword_ptr(rdi + 0x10), 0)?;
    // The local APIC on, then INIT, SIPI, SIPI to all but self.
    a.mov(esi, u32::try_from(LAPIC).unwrap_or(0))?;
    lapic_write(&mut a, 0xf0, 0x1ff)?;
    lapic_write(&mut a, 0x310, 0)?;
    lapic_write(&mut a, 0x300, 0x000c_4500)?;
    delay(&mut a, 10_000)?;
    for _ in 0..2 {
        lapic_write(&mut a, 0x300, 0x000c_4600 | u32::try_from(TRAMPOLINE >> 12).unwrap_or(0))?;
        delay(&mut a, 1_000)?;
    }
    // The requests: R15 = request number.
    a.xor(r15d, r15d)?;
    let mut request = a.create_label();
    let mut wait = a.create_label();
    let mut got = a.create_label();
    a.set_label(&mut request)?;
    a.mov(byte_ptr(FLAG), 0)?;
    a.mov(eax, r15d)?;
    a.mov(dx, u32::from(QUEUE_PORT))?;
    a.out(dx, al)?;
    // Wait for the interrupt: `sti; hlt` so that it cannot slip in between.
    a.set_label(&mut wait)?;
    a.cli()?;
    a.cmp(byte_ptr(FLAG), 0)?;
    a.jne(got)?;
    a.sti()?;
    a.hlt()?;
    a.jmp(wait)?;
    a.set_label(&mut got)?;
    lock(&mut a)?;
    a.lea(rsi, ptr(s_bsp))?;
    a.call(puts)?;
    a.mov(esi, u32::try_from(REPLY).unwrap_or(0))?;
    a.call(puts)?;
    a.lea(rsi, ptr(s_nl))?;
    a.call(puts)?;
    unlock(&mut a)?;
    a.inc(r15d)?;
    a.cmp(r15d, u32::from(REQUESTS))?;
    a.jb(request)?;
    lock(&mut a)?;
    a.lea(rsi, ptr(s_done))?;
    a.call(puts)?;
    unlock(&mut a)?;
    a.mov(byte_ptr(DONE), 1)?;
    let mut idle = a.create_label();
    a.set_label(&mut idle)?;
    a.cli()?;
    a.hlt()?;
    a.jmp(idle)?;

    // --- The AP (from the trampoline, in long mode with its stack): R12 = line number.
    a.set_label(&mut ap)?;
    a.mov(r12d, 1)?;
    let mut line = a.create_label();
    a.set_label(&mut line)?;
    lock(&mut a)?;
    a.lea(rsi, ptr(s_ap))?;
    a.call(puts)?;
    a.mov(eax, r12d)?;
    a.call(puthex)?;
    a.lea(rsi, ptr(s_nl))?;
    a.call(puts)?;
    unlock(&mut a)?;
    a.inc(r12d)?;
    a.cmp(r12d, AP_ROUNDS)?;
    a.jbe(line)?;
    a.cmp(byte_ptr(DONE), 0)?;
    a.je(line)?;
    lock(&mut a)?;
    a.lea(rsi, ptr(s_fail))?;
    a.call(puts)?;
    unlock(&mut a)?;
    a.mov(rdi, MMIO)?;
    a.popcnt(rax, qword_ptr(rdi))?;
    // Only on a host whose KVM emulates it.
    a.lea(rsi, ptr(s_emulated))?;
    a.call(puts)?;
    a.mov(al, 1u32)?;
    a.mov(dx, u32::from(EXIT_PORT))?;
    a.out(dx, al)?;
    let mut stop = a.create_label();
    a.set_label(&mut stop)?;
    a.cli()?;
    a.hlt()?;
    a.jmp(stop)?;

    // --- The device's interrupt: the flag, end of interrupt.
    a.set_label(&mut handler)?;
    a.push(rax)?;
    a.mov(byte_ptr(FLAG), 1)?;
    a.mov(eax, u32::try_from(LAPIC + 0xb0).unwrap_or(0))?;
    a.mov(dword_ptr(rax), 0)?;
    a.pop(rax)?;
    a.iretq()?;

    emit_putc(&mut a, &mut putc)?;
    emit_puts(&mut a, &mut puts, putc)?;
    emit_puthex(&mut a, &mut puthex, putc)?;
    for (label, text) in [
        (&mut s_bsp, "bsp: "),
        (&mut s_ap, "ap: line "),
        (&mut s_nl, "\n"),
        (&mut s_fail, "ap: now popcnt rax, [rdi] on MMIO\n"),
        (&mut s_emulated, "ap: popcnt on MMIO was emulated\n"),
        (&mut s_done, "bsp: done\n"),
    ] {
        a.set_label(label)?;
        let mut bytes = text.as_bytes().to_vec();
        bytes.push(0);
        a.db(&bytes)?;
    }
    let r = a.assemble_options(CODE, iced_x86::BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
    let ap_at = r.label_ip(&ap)?;
    let handler_at = r.label_ip(&handler)?;
    Ok((r.inner.code_buffer, ap_at, handler_at))
}

/// The AP's trampoline at [`TRAMPOLINE`]: real mode (CS = 0x800) to long mode with the
/// BSP's GDT and page tables, then its stack and a jump to `ap_entry`.
fn trampoline(ap_entry: u64) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let mut a = CodeAssembler::new(16)?;
    a.cli()?;
    a.xor(ax, ax)?;
    a.mov(ds, ax)?;
    a.lgdt(ptr(TRAMPOLINE_GDTR))?;
    a.mov(eax, 0x20u32)?; // CR4.PAE
    a.mov(cr4, eax)?;
    a.mov(eax, u32::try_from(PML4)?)?;
    a.mov(cr3, eax)?;
    a.mov(ecx, 0xc000_0080u32)?; // EFER
    a.rdmsr()?;
    a.or(eax, 0x100)?; // LME
    a.wrmsr()?;
    a.mov(eax, 0x8000_0031u32)?; // PG, NE, ET, PE
    a.mov(cr0, eax)?;
    a.jmp_far(0x08, u32::try_from(TRAMPOLINE + TRAMPOLINE_LONG)?)?;
    let mut bytes = a.assemble(TRAMPOLINE)?;
    if bytes.len() > usize::try_from(TRAMPOLINE_LONG)? {
        return Err("the trampoline's 16-bit part outgrew its place".into());
    }
    bytes.resize(usize::try_from(TRAMPOLINE_LONG)?, 0x90);
    let mut a = CodeAssembler::new(64)?;
    a.mov(ax, 0x10u32)?;
    a.mov(ds, ax)?;
    a.mov(es, ax)?;
    a.mov(ss, ax)?;
    a.mov(rsp, AP_STACK)?;
    a.mov(rax, ap_entry)?;
    a.jmp(rax)?;
    bytes.extend(a.assemble(TRAMPOLINE + TRAMPOLINE_LONG)?);
    Ok(bytes)
}

/// GDT, TSS, IDT (one gate), identity page tables for 4 GiB, the trampoline's GDTR.
fn tables(mem: &GuestMemoryMmap, handler: u64) -> Result<(), vm_memory::GuestMemoryError> {
    let put = |gpa: u64, v: u64| mem.write_obj(v, GuestAddress(gpa));
    let tss_low = 0x0000_8900_0000_0067 | ((TSS & 0xff_ffff) << 16) | (((TSS >> 24) & 0xff) << 56);
    for (i, e) in
        [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff, tss_low, TSS >> 32].into_iter().enumerate()
    {
        put(GDT + 8 * i as u64, e)?;
    }
    mem.write_obj(39u16, GuestAddress(TRAMPOLINE_GDTR))?;
    mem.write_obj(u32::try_from(GDT).unwrap_or(0), GuestAddress(TRAMPOLINE_GDTR + 2))?;
    // The gate: offset 15:0, selector 0x08, present interrupt gate, offset 31:16, 63:32.
    let low = (handler & 0xffff) | (0x08 << 16) | (0x8e00 << 32) | ((handler >> 16) & 0xffff) << 48;
    put(IDT + 16 * u64::from(VECTOR), low)?;
    put(IDT + 16 * u64::from(VECTOR) + 8, handler >> 32)?;
    let table = 0x3; // present, writable
    put(PML4, (PML4 + 0x1000) | table)?;
    for g in 0..4u64 {
        let pd = PML4 + 0x2000 + g * 0x1000;
        put(PML4 + 0x1000 + 8 * g, pd | table)?;
        for j in 0..512u64 {
            put(pd + 8 * j, ((g << 30) + (j << 21)) | table | 0x80)?;
        }
    }
    Ok(())
}

/// A flat 64-bit segment.
fn segment(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 11 } else { 3 },
        present: 1,
        dpl: 0,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        ..Default::default()
    }
}

/// The BSP in long mode at [`CODE`].
fn boot_bsp(vcpu: &VcpuFd) -> Result<(), kvm_ioctls::Error> {
    let mut sregs = vcpu.get_sregs()?;
    sregs.cs = segment(0x08, true);
    let data = segment(0x10, false);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr =
        kvm_segment { base: TSS, limit: 0x67, selector: 0x18, type_: 11, present: 1, ..Default::default() };
    sregs.gdt = kvm_dtable { base: GDT, limit: 39, ..Default::default() };
    sregs.idt = kvm_dtable { base: IDT, limit: 0xfff, ..Default::default() };
    sregs.cr0 = 0x8000_0033; // PG, NE, ET, MP, PE
    sregs.cr3 = PML4;
    sregs.cr4 = 0x20;
    sregs.efer = 0x500; // LME, LMA
    vcpu.set_sregs(&sregs)?;
    vcpu.set_regs(&kvm_regs { rip: CODE, rsp: BSP_STACK, rflags: 2, ..Default::default() })
}

/// The serial device's interrupt line: this VMM polls, so it goes nowhere.
struct NoIrq;
impl Trigger for NoIrq {
    type E = std::io::Error;
    fn trigger(&self) -> Result<(), std::io::Error> {
        Ok(())
    }
}

/// Console output: to stdout, as the guest writes it.
struct Stdout;
impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stdout().write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

type Console = Arc<Mutex<Serial<NoIrq, vm_superio::serial::NoEvents, Stdout>>>;

/// How a vCPU thread's run ended.
#[derive(Debug, Clone, Copy)]
enum Ended {
    /// Its exit `seq` failed with end reason `reason`.
    Failed { vcpu: u32, seq: u64, reason: u32 },
    /// The guest wrote its exit status.
    Exit(u8),
    /// Told to stop.
    Stopped,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

/// One vCPU thread: runs and records until its vCPU fails or it is told to stop, then
/// parks the vCPU and hands it back.
fn vcpu_thread(
    mut fd: VcpuFd,
    mut rec: EmbeddedVcpu,
    console: Console,
    stop: Arc<AtomicBool>,
    events: Sender<Ended>,
    kickers: Sender<Kicker>,
) -> Result<(VcpuFd, EmbeddedVcpu), Error> {
    kickers.send(rec.kicker()?)?;
    let ended = loop {
        if stop.load(Ordering::SeqCst) {
            break Ended::Stopped;
        }
        let mut exit_status = None;
        match rec.run(&mut fd) {
            // Kicked (EINTR), or an AP woken by INIT/SIPI from its wait (EAGAIN): no exit.
            Err(EmbedError::Run(e)) if [libc::EINTR, libc::EAGAIN].contains(&e.errno()) => continue,
            Err(e) => return Err(e.into()),
            Ok(VcpuExit::IoOut(port, data)) if (COM1..COM1 + 8).contains(&port) => {
                let mut c = console.lock().unwrap_or_else(PoisonError::into_inner);
                c.write(u8::try_from(port - COM1)?, data.first().copied().unwrap_or(0))?;
            }
            Ok(VcpuExit::IoIn(port, data)) if (COM1..COM1 + 8).contains(&port) => {
                let mut c = console.lock().unwrap_or_else(PoisonError::into_inner);
                data.fill(c.read(u8::try_from(port - COM1)?));
            }
            Ok(VcpuExit::IoOut(EXIT_PORT, data)) => exit_status = Some(data.first().copied().unwrap_or(0)),
            Ok(VcpuExit::IoIn(_, data) | VcpuExit::MmioRead(_, data)) => data.fill(0xff),
            Ok(_) => {}
        }
        let seq = rec.record_exit()?;
        if let Some(reason) = rec.failure() {
            break Ended::Failed { vcpu: rec.index(), seq, reason };
        }
        if let Some(status) = exit_status {
            break Ended::Exit(status);
        }
    };
    // Ready for the final snapshot: the last exit's I/O completed.
    rec.park(&mut fd)?;
    events.send(ended)?;
    Ok((fd, rec))
}

/// The device thread: for each doorbell, the request's line into guest memory through the
/// recording memory, then the interrupt through the irqfd.
fn device_thread(
    dev: DeviceThread,
    doorbell: EventFd,
    irq: EventFd,
    stop: Arc<AtomicBool>,
) -> Result<u32, Error> {
    let memory = dev.memory();
    let mut served = 0u32;
    loop {
        dev.flush()?;
        let rings = doorbell.read()?;
        if stop.load(Ordering::SeqCst) {
            return Ok(served);
        }
        for _ in 0..rings {
            let line = format!("device served request {served} on thread {:#x}\0", dev.id());
            memory.write_slice(line.as_bytes(), GuestAddress(REPLY))?;
            irq.write(1)?;
            dev.record_irqfd(GSI)?;
            served += 1;
        }
    }
}

fn main() -> Result<(), Error> {
    let out = std::env::args().nth(1).unwrap_or_else(|| "smp.vmrr".into());
    let kvm = Kvm::new()?;
    let vm = kvm.create_vm()?;
    vm.set_tss_address(0xfffb_d000)?;
    vm.create_irq_chip()?;
    vm.create_pit2(kvm_pit_config::default())?;
    // Emulation failures carry the instruction's bytes (replay compares them).
    let cap = kvm_bindings::KVM_CAP_EXIT_ON_EMULATION_FAILURE;
    if kvm.check_extension_raw(libc::c_ulong::from(cap)) > 0 {
        let mut c = kvm_enable_cap { cap, ..Default::default() };
        c.args[0] = 1;
        vm.enable_cap(&c)?;
    }
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)])?;
    let (code, ap_entry, handler) = guest()?;
    mem.write_slice(&code, GuestAddress(CODE))?;
    mem.write_slice(&trampoline(ap_entry).map_err(|e| e.to_string())?, GuestAddress(TRAMPOLINE))?;
    tables(&mem, handler)?;
    let host = mem.get_host_address(GuestAddress(0))?;
    let region = kvm_bindings::kvm_userspace_memory_region {
        slot: 0,
        flags: kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES,
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: host as u64,
    };
    // SAFETY: `host` is the start of `mem`'s one 4 MiB region, which `mem` keeps mapped
    // until the end of `main`, after the VM and its vCPUs are used for the last time.
    unsafe { vm.set_user_memory_region(region)? };
    let vcpus: Vec<VcpuFd> = (0..VCPUS as u64).map(|i| vm.create_vcpu(i)).collect::<Result<_, _>>()?;
    boot_bsp(&vcpus[0])?;
    // The device's doorbell and interrupt.
    let doorbell = EventFd::new(0)?;
    vm.register_ioevent(&doorbell, &IoEventAddress::Pio(u64::from(QUEUE_PORT)), NoDatamatch)?;
    let irq = EventFd::new(0)?;
    vm.register_irqfd(&irq, GSI)?;

    // vmrr from here on: the slot is logged dirty, so checkpoints are incremental.
    let mut slots = slots_of(&mem);
    slots.iter_mut().for_each(|s| s.dirty_log = true);
    let refs: Vec<&VcpuFd> = vcpus.iter().collect();
    let parts = SmpParts { kvm: &kvm, vm: &vm, vcpus: &refs };
    let (mut rec, handles) = Embedded::start_smp(parts, &mem, &slots, out.as_ref(), EmbedOptions::default())?;
    drop(refs);

    let stop = Arc::new(AtomicBool::new(false));
    let dev = rec.device_thread()?;
    let device = {
        let (doorbell, irq, stop) = (doorbell.try_clone()?, irq.try_clone()?, Arc::clone(&stop));
        std::thread::spawn(move || device_thread(dev, doorbell, irq, stop))
    };
    let console: Console = Arc::new(Mutex::new(Serial::new(NoIrq, Stdout)));
    let (events, ended) = channel();
    let (kicker_tx, kicker_rx) = channel();
    let threads: Vec<JoinHandle<Result<(VcpuFd, EmbeddedVcpu), Error>>> = vcpus
        .into_iter()
        .zip(handles)
        .map(|(fd, h)| {
            let (console, stop, events, kickers) =
                (Arc::clone(&console), Arc::clone(&stop), events.clone(), kicker_tx.clone());
            std::thread::spawn(move || {
                let failed = events.clone();
                let r = vcpu_thread(fd, h, console, stop, events, kickers);
                if r.is_err() {
                    // Whatever went wrong, the run ends: the main thread stops the others.
                    let _ = failed.send(Ended::Stopped);
                }
                r
            })
        })
        .collect();
    drop(events);
    let kickers: Vec<Kicker> = (0..VCPUS).map(|_| kicker_rx.recv()).collect::<Result<_, _>>()?;
    // The first thread to end ends the run: the others are stopped, kicked out of KVM_RUN
    // (a vCPU halted in the kernel's irqchip never exits on its own) until they have
    // parked.
    let first = ended.recv()?;
    stop.store(true, Ordering::SeqCst);
    while threads.iter().any(|t| !t.is_finished()) {
        kickers.iter().for_each(Kicker::kick);
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut parked = Vec::new();
    for t in threads {
        parked.push(t.join().map_err(|_| "a vCPU thread panicked")??);
    }
    doorbell.write(1)?;
    let served = device.join().map_err(|_| "the device thread panicked")??;
    eprintln!("the device served {served} requests");

    let fds: Vec<&VcpuFd> = parked.iter().map(|(fd, _)| fd).collect();
    let parts = SmpParts { kvm: &kvm, vm: &vm, vcpus: &fds };
    let (reason, status, failed) = match first {
        Ended::Failed { vcpu, seq, reason } => {
            eprintln!("vCPU {vcpu} failed at record {seq}");
            (reason, 0, Some((vcpu, seq)))
        }
        Ended::Exit(status) => (end_reason::GUEST_EXIT, u64::from(status), None),
        Ended::Stopped => (end_reason::STOPPED, 0, None),
    };
    let summary = rec.finish_smp(parts, reason, status, failed)?;
    eprintln!("recorded {} records into {out}", summary.records);
    Ok(())
}

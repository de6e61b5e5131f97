//! A VMM vmrr did not write, recorded so that vmrr replays it without that VMM.
//!
//! The VMM is made of rust-vmm parts and its own code only: `kvm-ioctls` for the VM,
//! `vm-memory` for guest memory, `vm-superio`'s 16550 for the console, and a block-like
//! DMA device of its own: on `out 0x510, al` it copies block `al` (4 KiB) into guest memory
//! at 0x8000 and raises interrupt 0x30. No vmrr machine or device runs it. Its real-mode
//! guest (assembled with iced-x86) reads four blocks, checksums each and prints the sums
//! on the serial console.
//!
//! vmrr is embedded with [`vmrr_engine::embed::Embedded`]: the initial snapshot from the
//! VMM's memory and vCPU fd, `rec.run`/`rec.record_exit` around each exit, the device's
//! writes recorded (even blocks through a `RecordingMemory`, odd ones with an explicit
//! `record_guest_write`), the interrupt injected at an exit boundary, one checkpoint on
//! the way and the final snapshot at the end.
//!
//! ```text
//! cargo run --release --example foreign_vmm -- /tmp/f.vmrr
//! vmrr pack /tmp/f.vmrr -o /tmp/f.vmrrb && vmrr replay /tmp/f.vmrrb --serial -
//! ```

use std::io::Write;

use iced_x86::code_asm::*;
use kvm_ioctls::{Kvm, VcpuExit};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vm_superio::{Serial, Trigger};
use vmrr_engine::embed::{EmbedOptions, Embedded, RecordingMemory, VmParts, slots_of};
use vmrr_engine::kvm::cpuid::CpuidProfile;

/// Guest memory: 1 MiB at 0.
const MEM_SIZE: usize = 1 << 20;
/// Where the guest's code is loaded (CS = 0, so offsets are addresses).
const CODE: u64 = 0x1000;
/// The block device's request port.
const BLOCK_PORT: u16 = 0x510;
/// Where the device puts a block.
const BUFFER: u16 = 0x8000;
/// Block size.
const BLOCK: u16 = 4096;
/// Blocks the guest reads.
const BLOCKS: u8 = 4;
/// The device's interrupt vector.
const VECTOR: u8 = 0x30;
/// Where the guest's interrupt handler is loaded.
const HANDLER: u16 = 0x0f00;
/// The flag the guest's interrupt handler sets.
const FLAG: u16 = 0x600;
/// The console.
const COM1: u16 = 0x3f8;

/// The guest: for each block, clear the flag, request the block, wait (halting) for the
/// interrupt, sum the block's 16-bit words, print the sum in hex; then halt for good.
fn guest() -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(16)?;
    let mut next = a.create_label();
    let mut wait = a.create_label();
    let mut got = a.create_label();
    let mut sum = a.create_label();
    let mut digit = a.create_label();
    let mut decimal = a.create_label();
    let mut end = a.create_label();
    // IVT entry of VECTOR: the handler at 0000:HANDLER.
    a.mov(word_ptr(u32::from(VECTOR) * 4), u32::from(HANDLER))?;
    a.mov(word_ptr(u32::from(VECTOR) * 4 + 2), 0u32)?;
    a.sti()?;
    a.xor(di, di)?; // block number
    a.set_label(&mut next)?;
    a.mov(byte_ptr(u32::from(FLAG)), 0u32)?;
    a.mov(ax, di)?;
    a.mov(dx, u32::from(BLOCK_PORT))?;
    // Interrupts off while asking for the block: the VMM cannot inject at this exit and
    // requests an interrupt window, which opens after the `sti`.
    a.cli()?;
    a.out(dx, al)?;
    a.sti()?;
    a.set_label(&mut wait)?;
    a.cmp(byte_ptr(u32::from(FLAG)), 0u32)?;
    a.jne(got)?;
    a.hlt()?;
    a.jmp(wait)?;
    a.set_label(&mut got)?;
    a.mov(si, u32::from(BUFFER))?;
    a.mov(cx, u32::from(BLOCK / 2))?;
    a.xor(bx, bx)?;
    a.set_label(&mut sum)?;
    a.lodsw()?;
    a.rol(bx, 1)?;
    a.add(bx, ax)?;
    a.dec(cx)?;
    a.jnz(sum)?;
    a.mov(cx, 4u32)?;
    a.mov(dx, u32::from(COM1))?;
    a.set_label(&mut digit)?;
    a.rol(bx, 4)?;
    a.mov(al, bl)?;
    a.and(al, 0x0fu32)?;
    a.add(al, u32::from(b'0'))?;
    a.cmp(al, u32::from(b'9'))?;
    a.jbe(decimal)?;
    a.add(al, 7u32)?;
    a.set_label(&mut decimal)?;
    a.out(dx, al)?;
    a.dec(cx)?;
    a.jnz(digit)?;
    a.inc(di)?;
    a.cmp(di, u32::from(BLOCKS))?;
    a.jae(end)?;
    a.mov(al, u32::from(b' '))?;
    a.out(dx, al)?;
    a.jmp(next)?;
    a.set_label(&mut end)?;
    a.mov(al, u32::from(b'\n'))?;
    a.out(dx, al)?;
    a.cli()?;
    a.hlt()?;
    a.assemble(CODE)
}

/// The interrupt handler: set the flag, return.
fn handler() -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(16)?;
    a.mov(byte_ptr(u32::from(FLAG)), 1u32)?;
    a.iret()?;
    a.assemble(u64::from(HANDLER))
}

/// The block device's medium: block `n` is 4 KiB of xorshift output seeded by `n`.
fn block_data(n: u8) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(n).wrapping_mul(0x2545_f491_4f6c_dd1d);
    let mut out = Vec::with_capacity(usize::from(BLOCK));
    while out.len() < usize::from(BLOCK) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
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

/// The block device: copies a block into guest memory by DMA.
struct BlockDevice {
    /// Guest memory as the device sees it: writes through it are recorded.
    dma: RecordingMemory<GuestMemoryMmap>,
}

impl BlockDevice {
    /// Even blocks go through the recording wrapper (`Bytes::write_slice`); odd ones are
    /// written straight into the VMM's memory and handed to vmrr explicitly.
    fn read_block(&self, n: u8, rec: &mut Embedded) -> Result<(), vm_memory::GuestMemoryError> {
        let data = block_data(n);
        if n % 2 == 0 {
            self.dma.write_slice(&data, GuestAddress(u64::from(BUFFER)))
        } else {
            self.dma.inner().write_slice(&data, GuestAddress(u64::from(BUFFER)))?;
            rec.record_guest_write(u64::from(BUFFER), &data);
            Ok(())
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args().nth(1).unwrap_or_else(|| "foreign.vmrr".into());
    let kvm = Kvm::new()?;
    let vm = kvm.create_vm()?;
    vm.set_tss_address(0xfffb_d000)?;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)])?;
    mem.write_slice(&guest()?, GuestAddress(CODE))?;
    mem.write_slice(&handler()?, GuestAddress(u64::from(HANDLER)))?;
    let host = mem.get_host_address(GuestAddress(0))?;
    let region = kvm_bindings::kvm_userspace_memory_region {
        slot: 0,
        flags: kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES,
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: host as u64,
    };
    // SAFETY: `host` is the start of `mem`'s one 1 MiB region, which `mem` keeps mapped
    // until the end of `main`, after the VM and its vCPU are used for the last time.
    unsafe { vm.set_user_memory_region(region)? };
    let mut vcpu = vm.create_vcpu(0)?;
    let mut sregs = vcpu.get_sregs()?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs)?;
    vcpu.set_regs(&kvm_bindings::kvm_regs { rip: CODE, rsp: 0x7000, rflags: 2, ..Default::default() })?;

    // vmrr from here on: the slot is logged dirty, so checkpoints are incremental.
    let mut slots = slots_of(&mem);
    slots.iter_mut().for_each(|s| s.dirty_log = true);
    let parts = VmParts { kvm: &kvm, vm: &vm, vcpu: &mut vcpu };
    // The guest's CPUID: the deterministic profile (no RDRAND, no TSC, no kvmclock: nothing
    // that steers the guest without an exit). `start` gives it to the vCPU and records it.
    let cpuid = vmrr_engine::kvm::cpuid::build(&kvm, CpuidProfile::Deterministic, false)?;
    let opts = EmbedOptions { cpuid: Some(cpuid), ..EmbedOptions::default() };
    let mut rec = Embedded::start(parts, &mem, &slots, out.as_ref(), opts)?;
    let block = BlockDevice { dma: rec.recording_memory() };
    let mut serial = Serial::new(NoIrq, Stdout);
    let mut irq_pending = false;
    let mut blocks_read = 0;
    loop {
        let mut halted = false;
        match rec.run(&mut vcpu)? {
            VcpuExit::IoOut(port, data) if (COM1..COM1 + 8).contains(&port) => {
                serial.write(u8::try_from(port - COM1)?, data.first().copied().unwrap_or(0))?;
            }
            VcpuExit::IoIn(port, data) if (COM1..COM1 + 8).contains(&port) => {
                data.fill(serial.read(u8::try_from(port - COM1)?));
            }
            VcpuExit::IoOut(BLOCK_PORT, data) => {
                let n = data.first().copied().unwrap_or(0);
                block.read_block(n, &mut rec)?;
                irq_pending = true;
                blocks_read += 1;
            }
            VcpuExit::IoIn(_, data) => data.fill(0xff),
            VcpuExit::IoOut(..) => {}
            VcpuExit::Hlt => halted = true,
            VcpuExit::IrqWindowOpen => {} // the guest can take the pending interrupt now
            other => return Err(format!("unexpected exit {other:?}").into()),
        }
        rec.record_exit()?;
        // Interrupts are injected from userspace, at exit boundaries, when the guest can
        // take them: the determinism contract replay relies on.
        if irq_pending && rec.can_take_interrupt() {
            rec.request_interrupt_window(&mut vcpu, false)?;
            rec.inject_interrupt(&vcpu, VECTOR)?;
            irq_pending = false;
        } else if irq_pending {
            // Not now (interrupts off): KVM exits when the guest can take it; both the
            // request and that exit are recorded, so replay injects at the same point.
            rec.request_interrupt_window(&mut vcpu, true)?;
        } else if halted {
            break;
        }
        if blocks_read == 2 && rec.next_snapshot_id() == 1 {
            rec.checkpoint(VmParts { kvm: &kvm, vm: &vm, vcpu: &mut vcpu })?;
        }
    }
    let summary =
        rec.finish(VmParts { kvm: &kvm, vm: &vm, vcpu: &mut vcpu }, vmrr_engine::embed::end_reason::HLT, 0)?;
    eprintln!("recorded {} records into {out}", summary.records);
    Ok(())
}

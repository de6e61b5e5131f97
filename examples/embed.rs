//! Recording from a VMM that owns its own vCPU loop.
//!
//! This VMM uses plain kvm-ioctls (no vmrr VM type): it creates a VM, maps memory, loads a
//! 16-bit program, and runs it. The only vmrr code is a [`vmrr_engine::Recorder`] created
//! from the vCPU, `rec.run(&mut vcpu)` in place of `vcpu.run()` (so the recorder knows when
//! the guest was entered and when it exited: per-exit timing), and one `record_exit()` call
//! after each exit is handled.
//!
//! `cargo run --example embed -- /tmp/embed.vmrr && vmrr profile /tmp/embed.vmrr --by port`

use kvm_ioctls::{Kvm, SyncReg, VcpuExit};
use vmrr_format::{TraceWriter, WriterOptions, end_reason};

/// A real-mode program, 200 times (so a profile has percentiles): print "hi" (polling the
/// line status), read port 0x5f0; then halt.
const PROGRAM: &[u8] = &[
    0xb9, 0xc8, 0x00, // mov cx, 200
    0xba, 0xfd, 0x03, // top: mov dx, 0x3fd
    0xec, // in al, dx
    0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0xb0, b'h', // mov al, 'h'
    0xee, // out dx, al
    0xb0, b'i', // mov al, 'i'
    0xee, // out dx, al
    0xba, 0xf0, 0x05, // mov dx, 0x5f0
    0xec, // in al, dx
    0x49, // dec cx
    0x75, 0xec, // jnz top
    0xf4, // hlt
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args().nth(1).unwrap_or_else(|| "embed.vmrr".into());
    let kvm = Kvm::new()?;
    let vm = kvm.create_vm()?;
    vm.set_tss_address(0xfffb_d000)?;
    let mut mem = memmap2::MmapMut::map_anon(1 << 20)?;
    mem[0x1000..0x1000 + PROGRAM.len()].copy_from_slice(PROGRAM);
    let region = kvm_bindings::kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: 1 << 20,
        userspace_addr: mem.as_mut_ptr() as u64,
    };
    // SAFETY: `mem` is a 1 MiB anonymous mapping that lives until the end of `main`, after
    // the VM (and its vCPU) are used for the last time.
    unsafe { vm.set_user_memory_region(region)? };
    let mut vcpu = vm.create_vcpu(0)?;
    vcpu.set_sync_valid_reg(SyncReg::Register); // register samples come with every exit
    let mut sregs = vcpu.get_sregs()?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs)?;
    vcpu.set_regs(&kvm_bindings::kvm_regs { rip: 0x1000, rflags: 2, ..Default::default() })?;

    // `timing: true` announces per-exit timing in the trace's header, and the recorder then
    // records it (`Recorder::with_options` with `RecorderOptions` says so explicitly).
    let writer = TraceWriter::create(out.as_ref(), WriterOptions { timing: true, ..Default::default() })?;
    let mut rec = vmrr_engine::Recorder::new(&kvm, &vcpu, 0, writer)?;
    let mut printed = 0;
    loop {
        // `rec.run(&mut vcpu)` is `rec.entering(); vcpu.run(); rec.exited()`.
        let done = match rec.run(&mut vcpu)? {
            VcpuExit::IoIn(port, data) => {
                // This VMM's devices: the UART is always ready; nothing else answers.
                data.fill(if port == 0x3fd { 0x60 } else { 0xff });
                false
            }
            VcpuExit::IoOut(0x3f8, data) => {
                if printed < 2 {
                    print!("{}", String::from_utf8_lossy(data));
                    printed += 1;
                }
                false
            }
            VcpuExit::Hlt => true,
            _ => false,
        };
        rec.record_exit()?; // after the reply is in kvm_run, before the next KVM_RUN
        if done {
            break;
        }
    }
    let summary = rec.finish(end_reason::HLT, 0)?;
    println!("\nrecorded {} records into {out}", summary.records);
    drop(vcpu);
    drop(vm);
    drop(mem);
    Ok(())
}

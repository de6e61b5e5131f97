//! Several vCPUs on KVM's in-kernel irqchip: the trace shared by the VMM's threads, one
//! [`EmbeddedVcpu`] per vCPU thread and one [`DeviceThread`] per device thread, each
//! appending through its own stream of the trace (no lock shared on the per-record path),
//! and the checkpoints and end of a recording of every vCPU. See "Several vCPUs" in the
//! module docs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;
use vmrr_format::{SharedTrace, WriterSummary};

/// A handle that interrupts one thread's `KVM_RUN` (it returns `EINTR`): take it on the
/// vCPU's thread ([`EmbeddedVcpu::kicker`]), kick from the thread that stops the others.
pub use crate::sys::kick::Kicker;

use super::memory::{DeviceStream, Sink};
use super::{EmbedError, EmbedOptions, Embedded, GuestSlot, RecordingMemory, snapshot};
use crate::record::Recorder;

/// The first `vcpu` value of a record that names a device thread (trace format 1.2):
/// device thread `n` records as `DEVICE_THREAD_BASE + n`, vCPUs as their index below it.
pub use vmrr_format::DEVICE_THREAD_BASE;

/// The VMM's KVM objects on several vCPUs, borrowed for a call.
#[derive(Debug, Clone, Copy)]
pub struct SmpParts<'a> {
    /// `/dev/kvm`.
    pub kvm: &'a Kvm,
    /// The VM, with KVM's in-kernel irqchip (`KVM_CREATE_IRQCHIP`) and PIT
    /// (`KVM_CREATE_PIT2`).
    pub vm: &'a VmFd,
    /// Every vCPU, in index order (vCPU `i` created with id `i`, 0 the bootstrap
    /// processor). At a checkpoint and at the end every vCPU thread has parked
    /// ([`EmbeddedVcpu::park`]) and none is in `KVM_RUN`.
    pub vcpus: &'a [&'a VcpuFd],
}

/// What the recording keeps of its vCPU threads and device threads.
#[derive(Debug)]
pub(super) struct Team {
    trace: SharedTrace,
    /// Per vCPU, the exits its thread recorded (mirrored after each).
    exits: Vec<Arc<AtomicU64>>,
    /// Device threads handed out.
    devices: u32,
}

impl Team {
    fn exits(&self) -> u64 {
        self.exits.iter().map(|e| e.load(Ordering::SeqCst)).sum()
    }
}

/// One vCPU thread's handle on the recording: its own recorder on its own stream of the
/// trace. Move it into the thread that runs the vCPU; it stays bound to that vCPU (it maps
/// the vCPU's `kvm_run` page).
pub struct EmbeddedVcpu {
    recorder: Recorder,
    index: u32,
    exits: Arc<AtomicU64>,
    /// `KVM_SYNC_X86_REGS` turned on (at the first run).
    synced: bool,
}

impl std::fmt::Debug for EmbeddedVcpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedVcpu").field("index", &self.index).field("exits", &self.exits).finish()
    }
}

impl EmbeddedVcpu {
    /// The vCPU's index (its records' `vcpu` field).
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Runs the vCPU once (`KVM_RUN`), noting when it entered and exited. The first call
    /// turns on `KVM_SYNC_X86_REGS`, so every exit record carries a register sample.
    ///
    /// # Errors
    /// `KVM_RUN`'s error: `EINTR` when a [`Kicker`] interrupted it (no exit to record).
    pub fn run<'v>(&mut self, vcpu: &'v mut VcpuFd) -> Result<VcpuExit<'v>, EmbedError> {
        if !self.synced {
            vcpu.set_sync_valid_reg(kvm_ioctls::SyncReg::Register);
            self.synced = true;
        }
        self.recorder.run(vcpu).map_err(EmbedError::Run)
    }

    /// Records the exit now in `kvm_run` with the VMM's reply (after handling it, before
    /// the next `KVM_RUN`); returns its record's sequence number, which names the exit in
    /// [`Embedded::finish_smp`] when it is the failure.
    ///
    /// # Errors
    /// The writer's error (a full disk, or the trace was finished).
    pub fn record_exit(&mut self) -> Result<u64, EmbedError> {
        let seq = self.recorder.record_exit()?;
        self.exits.store(self.recorder.exits(), Ordering::SeqCst);
        Ok(seq)
    }

    /// The [`super::end_reason`] of the exit now in `kvm_run` when it is a failure that ends
    /// the run and makes the trace a repro (an emulation failure, another internal error,
    /// a triple fault, a failed entry), `None` for any other exit.
    pub fn failure(&self) -> Option<u32> {
        use vmrr_format::{Body, end_reason, kind};
        let view = self.recorder.view();
        match u16::try_from(view.exit_reason()).ok()? {
            kind::SHUTDOWN => Some(end_reason::SHUTDOWN),
            kind::FAIL_ENTRY => Some(end_reason::FAIL_ENTRY),
            kind::INTERNAL_ERROR => match view.body(false) {
                Body::InternalError(e) if e.suberror == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION => {
                    Some(end_reason::EMULATION_FAILURE)
                }
                _ => Some(end_reason::INTERNAL_ERROR),
            },
            _ => None,
        }
    }

    /// Readies the vCPU for a checkpoint or the end: completes the I/O of the exit it
    /// stands at (at an `IN` exit RAX is written by the next `KVM_RUN`: one with
    /// `immediate_exit` set, which returns at once). Call it on the vCPU's thread, after
    /// [`Self::record_exit`], before it parks and lets [`Embedded::checkpoint_smp`] or
    /// [`Embedded::finish_smp`] read the vCPU. Harmless when nothing is pending.
    ///
    /// # Errors
    /// `KVM_RUN` failed with something other than `EINTR`.
    pub fn park(&mut self, vcpu: &mut VcpuFd) -> Result<(), EmbedError> {
        crate::kvm::entry::complete_pending(vcpu).map_err(EmbedError::Park)
    }

    /// A [`Kicker`] for the calling thread: call it on the vCPU's thread, hand it to the
    /// thread that stops the vCPUs (the signal's handler is installed once per process).
    ///
    /// # Errors
    /// `sigaction` failed.
    pub fn kicker(&self) -> Result<Kicker, EmbedError> {
        Kicker::current().map_err(EmbedError::Kick)
    }

    /// The recorder (interrupt windows, annotations from this vCPU).
    pub fn recorder_mut(&mut self) -> &mut Recorder {
        &mut self.recorder
    }
}

/// One device thread's handle on the recording (see [`Embedded::device_thread`]): its
/// guest-memory writes and the interrupts it raises go to its own stream of the trace, as
/// records from `vcpu` = [`Self::id`]. Cheap to clone; usable from any thread.
#[derive(Debug, Clone)]
pub struct DeviceThread {
    stream: Arc<DeviceStream>,
    memory: RecordingMemory<GuestMemoryMmap>,
    /// Interrupts recorded.
    irqs: Arc<std::sync::atomic::AtomicU32>,
}

impl DeviceThread {
    /// The `vcpu` field of its records: [`DEVICE_THREAD_BASE`]` + n` for device thread `n`.
    pub fn id(&self) -> u32 {
        self.stream.vcpu
    }

    /// The guest memory for its devices: every write through it is a `guest_write` record
    /// of this device thread, written when the write is made.
    pub fn memory(&self) -> RecordingMemory<GuestMemoryMmap> {
        self.memory.clone()
    }

    /// Records that the device wrote `data` at `gpa` itself (not through [`Self::memory`]).
    ///
    /// # Errors
    /// The writer's error.
    pub fn record_guest_write(&self, gpa: u64, data: &[u8]) -> Result<(), EmbedError> {
        Ok(self.stream.guest_write(gpa, data)?)
    }

    /// Records that the device raised GSI `gsi` through an irqfd (call it right after
    /// writing the eventfd). KVM delivers that interrupt inside the kernel at an instant no
    /// exit records, so replay does not inject it: the record says what happened and
    /// where, for the reader: an `IRQ_LINE` record (format 1.2) of this device thread,
    /// `level` pulse, `via` irqfd.
    ///
    /// # Errors
    /// The writer's error.
    pub fn record_irqfd(&self, gsi: u32) -> Result<(), EmbedError> {
        self.irqs.fetch_add(1, Ordering::Relaxed);
        let line = vmrr_format::IrqLine {
            gsi,
            level: vmrr_format::IRQ_LEVEL_PULSE,
            via: vmrr_format::IRQ_VIA_IRQFD,
        };
        let mut s = self.stream.stream.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        s.append(self.stream.vcpu, vmrr_format::Body::IrqLine(line), None)?;
        Ok(())
    }

    /// Hands what this thread recorded to the trace now: call it before the thread blocks
    /// for long (waiting on its ioeventfd), so its records reach the disk.
    ///
    /// # Errors
    /// The writer's error.
    pub fn flush(&self) -> Result<(), EmbedError> {
        let mut s = self.stream.stream.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(s.poll_flush()?)
    }
}

impl Embedded {
    /// Starts recording a VM with several vCPUs on KVM's in-kernel irqchip into `trace`,
    /// as [`Embedded::start`] does for one: gives vCPU `i` its CPUID
    /// ([`EmbedOptions::cpuid`], by default the deterministic profile with the local APIC;
    /// each vCPU's APIC ID and topology set by [`crate::kvm::cpuid::for_vcpu`]), writes the
    /// prelude (the host's annotations, `vmrr.vcpus` = N, `vmrr.irqchip` = `kernel`, the
    /// CPUID), turns the trace into one the threads share, and takes the initial snapshot
    /// (every vCPU, each local APIC, the PIC, IOAPIC, PIT and clock). Returns the recording
    /// and one [`EmbeddedVcpu`] per vCPU, in index order. Call it after the VMM has
    /// created the irqchip and PIT, loaded the guest and set the vCPUs' registers, before
    /// the first `KVM_RUN`.
    ///
    /// # Errors
    /// No vCPU ([`EmbedError::VcpuCount`]), and as for [`Embedded::start`].
    pub fn start_smp(
        parts: SmpParts<'_>,
        memory: &GuestMemoryMmap,
        slots: &[GuestSlot],
        trace: &std::path::Path,
        opts: EmbedOptions,
    ) -> Result<(Self, Vec<EmbeddedVcpu>), EmbedError> {
        let n = u32::try_from(parts.vcpus.len()).unwrap_or(u32::MAX);
        if n == 0 || n > crate::kvm::vm::MAX_VCPUS {
            return Err(EmbedError::VcpuCount { expected: crate::kvm::vm::MAX_VCPUS, got: n });
        }
        let (mut e, shared) = Embedded::open(parts.kvm, parts.vcpus, memory, slots, trace, opts, true)?;
        let shared = shared.ok_or(EmbedError::NotSmp)?;
        let mut handles = Vec::with_capacity(parts.vcpus.len());
        let mut exits = Vec::with_capacity(parts.vcpus.len());
        for (index, fd) in (0u32..).zip(parts.vcpus) {
            let recorder = Recorder::on_stream(parts.kvm, fd, index, shared.stream())?;
            let count = Arc::new(AtomicU64::new(0));
            exits.push(Arc::clone(&count));
            handles.push(EmbeddedVcpu { recorder, index, exits: count, synced: false });
        }
        e.smp = Some(Team { trace: shared, exits, devices: 0 });
        e.checkpoint_smp(parts)?;
        Ok((e, handles))
    }

    /// A new device thread's handle (device threads are numbered from 0 in the order they
    /// are asked for): its own stream of the trace and a [`RecordingMemory`] on it.
    ///
    /// # Errors
    /// [`EmbedError::NotSmp`] on a recording made with [`Embedded::start`].
    pub fn device_thread(&mut self) -> Result<DeviceThread, EmbedError> {
        let team = self.smp.as_mut().ok_or(EmbedError::NotSmp)?;
        let vcpu = DEVICE_THREAD_BASE + team.devices;
        team.devices += 1;
        let stream = Arc::new(DeviceStream {
            stream: Mutex::new(team.trace.stream()),
            vcpu,
            pages: Arc::clone(&self.device_pages),
        });
        let memory = RecordingMemory::new(self.memory.clone(), Sink::Stream(Arc::clone(&stream)));
        Ok(DeviceThread { stream, memory, irqs: Arc::default() })
    }

    /// Takes a snapshot of every vCPU, each local APIC, the PIC, IOAPIC, PIT and KVM clock,
    /// and guest memory (incremental when every slot logs dirty pages; the device threads'
    /// writes added), and records its checkpoint. Call it while every vCPU thread has
    /// parked ([`EmbeddedVcpu::park`]) and the device threads write nothing. Returns its
    /// id.
    ///
    /// # Errors
    /// [`EmbedError::NotSmp`], a vCPU count other than the start's
    /// ([`EmbedError::VcpuCount`]), and as for [`Embedded::checkpoint`].
    pub fn checkpoint_smp(&mut self, parts: SmpParts<'_>) -> Result<u64, EmbedError> {
        let team = self.smp.as_ref().ok_or(EmbedError::NotSmp)?;
        let (expected, got) = (team.exits.len(), parts.vcpus.len());
        if expected != got {
            let n = |x: usize| u32::try_from(x).unwrap_or(u32::MAX);
            return Err(EmbedError::VcpuCount { expected: n(expected), got: n(got) });
        }
        let exits = team.exits();
        self.recorder.set_exits(exits);
        self.take_checkpoint(parts.vm, snapshot::Vcpus::Kernel(parts.vcpus))
    }

    /// Ends a recording of several vCPUs: when `failed` names the vCPU that failed and the
    /// sequence number of its failing exit (what its [`EmbeddedVcpu::record_exit`]
    /// returned), records them (`failure.vcpu`, `failure.seq`: replay runs that vCPU from
    /// the failure point), then takes the final snapshot (with a failure `reason`, the
    /// failure point replay restores), writes the end-of-run record and finishes the trace,
    /// every thread's records collected. `reason` and `status` as for
    /// [`Embedded::finish`]. Call it with every vCPU thread parked.
    ///
    /// # Errors
    /// As for [`Self::checkpoint_smp`].
    pub fn finish_smp(
        mut self,
        parts: SmpParts<'_>,
        reason: u32,
        status: u64,
        failed: Option<(u32, u64)>,
    ) -> Result<WriterSummary, EmbedError> {
        if self.smp.is_none() {
            return Err(EmbedError::NotSmp);
        }
        if let Some((vcpu, seq)) = failed {
            self.recorder.annotate("failure.vcpu", &vcpu.to_string())?;
            self.recorder.annotate("failure.seq", &seq.to_string())?;
        }
        self.checkpoint_smp(parts)?;
        Ok(self.recorder.finish(reason, status)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thread_handles_can_move_to_their_threads() {
        fn send<T: Send>() {}
        send::<EmbeddedVcpu>();
        send::<DeviceThread>();
        send::<Kicker>();
    }
}

//! Recording a VM that another VMM runs, so that vmrr replays it without that VMM.
//!
//! [`crate::Recorder`] alone records a foreign vCPU loop's exits; replay needs three more
//! things, which [`Embedded`] adds:
//!
//! - **The machine's starting point**: the VMM hands over its guest memory once (a
//!   `vm_memory::GuestMemoryMmap` and the KVM slot of each region, [`slots_of`]) and
//!   [`Embedded::start`] writes the initial snapshot, in the same format as vmrr's own
//!   machine (`<trace>.snapshots/snap-000000`: `run.vmrr.snapshots/` for `run.vmrr`), with the vCPU state read from the VMM's
//!   `VcpuFd`. [`Embedded::checkpoint`] adds snapshots on the way and
//!   [`Embedded::finish`] the final one.
//! - **What the devices wrote into guest memory** (DMA, which never exits): each write
//!   becomes a `guest_write` record at its place in the exit sequence, through
//!   [`Embedded::record_guest_write`] or through a [`RecordingMemory`], a `vm-memory`
//!   wrapper that records every write a device makes through it.
//! - **The interrupts**, injected from userspace at exit boundaries:
//!   [`Embedded::inject_interrupt`] (or [`Embedded::record_interrupt`] for a VMM that
//!   injects them itself), and the interrupt-window requests that time them
//!   ([`Embedded::request_interrupt_window`]).
//!
//! Everything an embedder names comes from this crate: [`end_reason`], [`WriterOptions`]
//! and [`WriterSummary`] are re-exported here, so a VMM needs no `vmrr-format` dependency
//! of its own.
//!
//! ```no_run
//! use vmrr_engine::embed::{EmbedOptions, Embedded, VmParts, slots_of};
//! # fn demo(kvm: &kvm_ioctls::Kvm, vm: &kvm_ioctls::VmFd, vcpu: &mut kvm_ioctls::VcpuFd,
//! #         mem: &vm_memory::GuestMemoryMmap) -> Result<(), Box<dyn std::error::Error>> {
//! let slots = slots_of(mem);
//! let mut rec = Embedded::start(VmParts { kvm, vm, vcpu }, mem, &slots, "run.vmrr".as_ref(), EmbedOptions::default())?;
//! let dma = rec.recording_memory(); // give this to the devices instead of `mem`
//! loop {
//!     match rec.run(vcpu)? {
//!         kvm_ioctls::VcpuExit::IoIn(_port, data) => data.fill(0),
//!         kvm_ioctls::VcpuExit::Hlt => break,
//!         _ => {}
//!     }
//!     rec.record_exit()?;
//! }
//! rec.record_exit()?;
//! # let _ = dma;
//! rec.finish(VmParts { kvm, vm, vcpu }, vmrr_engine::embed::end_reason::HLT, 0)?;
//! # Ok(()) }
//! ```
//!
//! # The guest's CPUID
//!
//! Give the guest [`crate::kvm::cpuid::build`]`(kvm, `[`CpuidProfile::Deterministic`]`,
//! false)`, which is what [`EmbedOptions::cpuid`] defaults to: the host's supported set
//! without RDRAND and RDSEED (random numbers that never exit), the TSC family (TSC,
//! RDTSCP, invariant TSC, TSC deadline: guests that honour CPUID then use a timer that
//! exits) and KVM's paravirtual clock (written into guest memory with no exit), and
//! without the local APIC (`false`: interrupts come from userspace, see below). Nothing
//! the guest then reads bypasses the trace, and its path replays. [`CpuidProfile::Host`]
//! hides none of them: the recording works, but a guest that reads the TSC or RDRAND
//! diverges in replay where it used the value. `start` sets the CPUID on the vCPU and
//! records that same set; replay gives the guest the recorded set and warns (or, with
//! `--strict-cpu`, refuses) when its host lacks a feature the set holds. On a host that
//! does not enforce CPUID masks (the trace's `kvm.cpuid_enforced=false`) the guest sees
//! the host's bits whatever the set says; replay notes it.
//!
//! # Interrupts and interrupt windows
//!
//! Inject an interrupt only at an exit boundary (after [`Embedded::record_exit`], before
//! the next [`Embedded::run`]) and only when [`Embedded::can_take_interrupt`] says the
//! guest can take it. When it cannot (interrupts disabled, an instruction shadow), call
//! [`Embedded::request_interrupt_window`]`(vcpu, true)`: it sets `request_interrupt_window`
//! in `kvm_run` and records an `interrupt_window` record, so KVM exits with
//! `KVM_EXIT_IRQ_WINDOW_OPEN` as soon as the guest can take one. Record that exit like any
//! other, inject, and withdraw the request (`false`, recorded too). Replay sets and clears
//! the flag at the same records, so the window exit and the injection happen at the same
//! instruction. A VMM that sets `request_interrupt_window` itself must record each change
//! with [`Recorder::record_window`] through [`Embedded::recorder_mut`], or replay
//! diverges at the first window exit.
//!
//! # Memory slots
//!
//! Register the slots with `KVM_SET_USER_MEMORY_REGION` or `KVM_SET_USER_MEMORY_REGION2`:
//! vmrr only reads guest memory through the `GuestMemoryMmap` handed over and, for
//! checkpoints, each slot's dirty log by slot number (`KVM_GET_DIRTY_LOG`), which both
//! ioctls set up alike. A replay maps the memory its own way and never needs the VMM's
//! slot layout beyond what the snapshot records.
//!
//! # Ending the recording
//!
//! [`Embedded::finish`]`(parts, reason, status)` writes the final snapshot and the trace's
//! `END_OF_RUN` record: `reason` is one of [`end_reason`] (why the run ended: the guest
//! halted for good, [`end_reason::HLT`]; wrote its exit status,
//! [`end_reason::GUEST_EXIT`]; failed, [`end_reason::EMULATION_FAILURE`],
//! [`end_reason::INTERNAL_ERROR`], [`end_reason::SHUTDOWN`] or
//! [`end_reason::FAIL_ENTRY`]; the VMM stopped it, [`end_reason::STOPPED`] or
//! [`end_reason::VMM_ERROR`]), and `status` is the guest's exit status with
//! `GUEST_EXIT` (0 otherwise). A failure reason ([`end_reason::is_failure`]) makes the
//! trace a repro: replay then checks that the failure happens again and reports
//! `reproduced` or `no_longer_fails`; any other reason makes a replay that matches every
//! exit `completed`. `vmrr inspect` and `vmrr stats` show both.
//!
//! # Several vCPUs, KVM's irqchip, ioeventfds and irqfds
//!
//! A VMM that runs one thread per vCPU on KVM's in-kernel irqchip (`KVM_CREATE_IRQCHIP`,
//! `KVM_CREATE_PIT2`) records with [`Embedded::start_smp`]`(`[`SmpParts`]`, memory, slots,
//! trace, opts)`, which returns the recording and one [`EmbeddedVcpu`] per vCPU. The trace
//! is shared: each vCPU thread records through its own handle, on its own stream (no lock
//! shared with another thread on the per-record path):
//!
//! - a vCPU thread calls [`EmbeddedVcpu::run`] and [`EmbeddedVcpu::record_exit`] around each
//!   exit, as with one vCPU ([`EmbeddedVcpu::failure`] says whether the exit is a failure
//!   that ends the run), and [`EmbeddedVcpu::park`] before it stops for a checkpoint or the
//!   end (it completes the exit's pending I/O). A vCPU halted inside KVM never exits on its
//!   own: the VMM kicks it out of `KVM_RUN` with the [`Kicker`] its thread took
//!   ([`EmbeddedVcpu::kicker`]), and `KVM_RUN` returns `EINTR` (an AP woken by INIT/SIPI
//!   returns `EAGAIN` once): no exit to record, run again or park;
//! - a device thread gets a [`DeviceThread`] ([`Embedded::device_thread`]): writes through
//!   its [`DeviceThread::memory`] (a [`RecordingMemory`]) or
//!   [`DeviceThread::record_guest_write`] become `guest_write` records of that device thread
//!   (`vcpu` = [`DEVICE_THREAD_BASE`]` + n`), written at the instant it wrote;
//!   [`DeviceThread::record_irqfd`] records an interrupt it raised through an irqfd (an
//!   `IRQ_LINE` record, format 1.2). An ioeventfd's doorbell is consumed inside KVM: nothing exits, nothing
//!   is recorded; the device thread's answer (its writes, its interrupt) is;
//! - with every vCPU thread parked and the device threads quiet,
//!   [`Embedded::checkpoint_smp`] snapshots every vCPU, each local APIC and the PIC,
//!   IOAPIC, PIT and KVM clock, and [`Embedded::finish_smp`] names the failed vCPU and its
//!   failing exit's record (`failure.vcpu`, `failure.seq`), takes the final (failure-point)
//!   snapshot and ends the trace.
//!
//! The prelude says `vmrr.vcpus` = N and `vmrr.irqchip` = `kernel`, and replay acts on it:
//! such a recording's **path is not replayed deterministically** (KVM delivers the irqfds'
//! and timers' interrupts at instants no exit records, the vCPUs' interleaving on shared
//! memory is not recorded, a device thread's write lands at an instant of its own), and
//! `vmrr replay` says so and goes to the failure point: it restores the failure-point
//! snapshot into a fresh VM with the same vCPUs and irqchip and runs the failing vCPU,
//! which reproduces the failure (`docs/REPLAY.md`, "Another VMM on several vCPUs"). The
//! single-vCPU calls ([`Embedded::run`], [`Embedded::inject_interrupt`],
//! [`Embedded::checkpoint`], [`Embedded::finish`]) are for [`Embedded::start`]'s
//! recordings only.
//!
//! Memory is handed over as a `GuestMemoryMmap` only, never as raw host addresses: vmrr reads
//! guest memory through it, so the API needs no `unsafe` from the VMM or from vmrr. A VMM
//! that keeps raw mappings (an address and an fd per slot) wraps them once with
//! vm-memory's `MmapRegion::build_raw` / `GuestRegionMmap::new`.
//!
//! Checkpoints are incremental (only the pages written since the previous snapshot) when
//! every slot was registered with `KVM_MEM_LOG_DIRTY_PAGES` ([`GuestSlot::dirty_log`]):
//! KVM's dirty log gives the pages the guest wrote, the recorded guest writes the pages
//! the devices wrote. Otherwise every checkpoint is a full copy of guest memory.

mod marks;
mod memory;
mod smp;
mod snapshot;

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use kvm_bindings::CpuId;
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmrr_format::{TraceWriter, WriteError};

use marks::PageMarks;
pub use memory::RecordingMemory;
pub use smp::{DEVICE_THREAD_BASE, DeviceThread, EmbeddedVcpu, Kicker, SmpParts};
/// Why a run ended, for [`Embedded::finish`] (the trace format's `END_OF_RUN` reasons).
pub use vmrr_format::end_reason;
pub use vmrr_format::{WriterOptions, WriterSummary};

use crate::checkpoint::{CheckpointError, Checkpointed, Checkpointer, Policy};
use crate::devices::bus::{Bus, BusState};
use crate::kvm::KvmError;
use crate::kvm::cpuid::{self, CpuidProfile};
use crate::persist::Persist;
use crate::record::{Recorder, RecorderError};
use crate::snapshot::{CaptureStats, Identity, SnapshotError};

/// The VMM's KVM objects, borrowed for a call.
#[derive(Debug)]
pub struct VmParts<'a> {
    /// `/dev/kvm`.
    pub kvm: &'a Kvm,
    /// The VM.
    pub vm: &'a VmFd,
    /// Its one vCPU (vmrr replays single-vCPU guests).
    pub vcpu: &'a mut VcpuFd,
}

/// One KVM memory slot of the VMM: which region of the guest memory it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestSlot {
    /// The KVM slot number the VMM registered it as.
    pub slot: u32,
    /// Guest physical address.
    pub gpa: u64,
    /// Size in bytes (a multiple of 4 KiB).
    pub size: u64,
    /// Registered with `KVM_MEM_LOG_DIRTY_PAGES`: checkpoints read its dirty log.
    pub dirty_log: bool,
}

/// The slots of `mem` as a VMM that registers region `i` as KVM slot `i`, without dirty
/// logging, has them (set [`GuestSlot::dirty_log`] on the ones registered with it).
pub fn slots_of(mem: &GuestMemoryMmap) -> Vec<GuestSlot> {
    mem.iter()
        .zip(0u32..)
        .map(|(r, slot)| GuestSlot { slot, gpa: r.start_addr().0, size: r.len(), dirty_log: false })
        .collect()
}

/// How an embedded recording is written.
#[derive(Debug, Clone)]
pub struct EmbedOptions {
    /// The trace writer's settings; `guest_writes` is always set (the trace is format 1.1).
    pub writer: WriterOptions,
    /// Annotations to add to the trace's prelude (after the host's).
    pub annotations: Vec<(String, String)>,
    /// The port of the VMM's 16550 console, if it has one: replay shows what the guest
    /// writes there as the replayed console (replay never answers the guest from a
    /// device; the trace does).
    pub console_port: Option<u16>,
    /// The CPUID the guest is given. [`Embedded::start`] sets it on the vCPU
    /// (`KVM_SET_CPUID2`) and records that same set, so the trace holds what the guest was
    /// given (not what `KVM_GET_CPUID2` reads back, which on some hosts holds more bits
    /// than were set) and replay compares it with the replay host's supported CPUID, like
    /// with like. `None` (the default): the deterministic profile,
    /// [`crate::kvm::cpuid::build`]`(kvm, `[`CpuidProfile::Deterministic`]`, false)`, the
    /// one vmrr's own machine gives its guests. A VMM that builds its own set passes it
    /// here rather than setting it itself: `start` replaces a CPUID set before it.
    pub cpuid: Option<CpuId>,
    /// Replace a trace that exists at the output and its snapshots directory (only vmrr's:
    /// never a directory or another kind of file); by default an existing one is refused
    /// ([`EmbedError::Output`]), as `vmrr record` refuses it without `--force`.
    pub replace: bool,
}

impl Default for EmbedOptions {
    fn default() -> Self {
        EmbedOptions {
            writer: WriterOptions::default(),
            annotations: Vec::new(),
            console_port: Some(0x3f8),
            cpuid: None,
            replace: false,
        }
    }
}

/// An embedded recording failed.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The recorder could not be set up.
    #[error(transparent)]
    Recorder(#[from] RecorderError),
    /// The trace could not be written.
    #[error("cannot write the trace")]
    Write(#[from] WriteError),
    /// The output may not be written: the trace or its snapshots directory exists (and
    /// `replace` is off), or is not vmrr's.
    #[error("cannot record there")]
    Output(#[from] vmrr_format::output::PrepareError),
    /// A slot is not one region of the guest memory handed over.
    #[error("slot {slot}: {gpa:#x}+{size:#x} is not a region of the guest memory handed over")]
    Slot {
        /// The slot.
        slot: u32,
        /// Its address.
        gpa: u64,
        /// Its size.
        size: u64,
    },
    /// A snapshot could not be taken.
    #[error("cannot take snapshot {id}")]
    Snapshot {
        /// Its id.
        id: u64,
        /// Why.
        #[source]
        source: SnapshotError,
    },
    /// The guest's CPUID could not be built (`KVM_GET_SUPPORTED_CPUID`) or given to the
    /// vCPU (`KVM_SET_CPUID2`).
    #[error("cannot give the vCPU its CPUID")]
    Cpuid(#[source] KvmError),
    /// `KVM_RUN` failed.
    #[error("KVM_RUN failed")]
    Run(#[source] kvm_ioctls::Error),
    /// `KVM_INTERRUPT` failed.
    #[error("KVM_INTERRUPT of vector {vector:#x} failed")]
    Interrupt {
        /// The vector.
        vector: u8,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A call for several vCPUs on a recording of one ([`Embedded::start`]).
    #[error("this recording has one vCPU (Embedded::start): use the single-vCPU calls")]
    NotSmp,
    /// The vCPUs handed over are not as many as the recording's.
    #[error("{got} vCPUs handed over, the recording has {expected}")]
    VcpuCount {
        /// The recording's count (at most, for `start_smp`).
        expected: u32,
        /// How many were handed over.
        got: u32,
    },
    /// Completing a parking vCPU's pending I/O failed.
    #[error("cannot park the vCPU")]
    Park(#[source] KvmError),
    /// The kick signal's handler could not be installed.
    #[error("cannot install the vCPU kick signal's handler")]
    Kick(#[source] std::io::Error),
}

/// A recording of a VM another VMM runs: see the module docs.
pub struct Embedded {
    recorder: Recorder,
    memory: GuestMemoryMmap,
    slots: Vec<GuestSlot>,
    log: memory::WriteLog,
    /// Its snapshots, the same checkpoints vmrr's own machine takes (stopping the vCPU).
    checkpoints: Checkpointer,
    msrs: Vec<u32>,
    bus: BusState,
    interrupts: u64,
    /// Whether `request_interrupt_window` is set for the next entries.
    window: bool,
    /// Pages the devices wrote since the last snapshot (KVM's dirty log does not see writes
    /// from userspace); shared with the device threads' memories on several vCPUs.
    device_pages: Arc<Mutex<PageMarks>>,
    /// Several vCPUs: the shared trace and what the vCPU threads count (see [`smp`]).
    smp: Option<smp::Team>,
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedded")
            .field("root", &self.checkpoints.root())
            .field("next_id", &self.checkpoints.next_id())
            .finish()
    }
}

impl Embedded {
    /// Starts recording the VM of `parts` into `trace` (its snapshots go to
    /// `run.vmrr.snapshots/` for `run.vmrr`; neither may exist unless
    /// [`EmbedOptions::replace`]): gives the vCPU its CPUID ([`EmbedOptions::cpuid`]),
    /// writes the prelude (host annotations, that CPUID), the initial snapshot of `memory`
    /// and the vCPU, and its checkpoint record. Call it after the VMM has loaded the guest
    /// and set the vCPU's registers, before the first `KVM_RUN`. It turns on
    /// `KVM_SYNC_X86_REGS` on the vCPU, so every exit record
    /// carries a register sample (RIP, RSP, RFLAGS) that replay checks.
    ///
    /// # Errors
    /// An output that exists ([`EmbedError::Output`]), a slot that is not a region of
    /// `memory`, the recorder's set-up, or the snapshot.
    pub fn start(
        parts: VmParts<'_>,
        memory: &GuestMemoryMmap,
        slots: &[GuestSlot],
        trace: &Path,
        opts: EmbedOptions,
    ) -> Result<Self, EmbedError> {
        parts.vcpu.set_sync_valid_reg(kvm_ioctls::SyncReg::Register);
        let (mut e, _) = Embedded::open(parts.kvm, &[&*parts.vcpu], memory, slots, trace, opts, false)?;
        e.checkpoint(parts)?;
        Ok(e)
    }

    /// Everything [`Self::start`] and [`Self::start_smp`] share, up to the first snapshot:
    /// the output, the prelude, each vCPU's CPUID. With `kernel` (KVM's in-kernel irqchip,
    /// any number of vCPUs) the CPUID keeps the local APIC, the prelude says `vmrr.vcpus`
    /// and `vmrr.irqchip`, and the trace is returned shared by `vcpus.len() + 1` threads.
    fn open(
        kvm: &Kvm,
        vcpus: &[&VcpuFd],
        memory: &GuestMemoryMmap,
        slots: &[GuestSlot],
        trace: &Path,
        opts: EmbedOptions,
        kernel: bool,
    ) -> Result<(Self, Option<vmrr_format::SharedTrace>), EmbedError> {
        let Some(&vcpu0) = vcpus.first() else {
            return Err(EmbedError::VcpuCount { expected: 1, got: 0 });
        };
        let smp = kernel;
        for s in slots {
            let whole = memory.iter().any(|r| r.start_addr().0 == s.gpa && r.len() == s.size);
            if !whole || s.size % crate::page::PAGE_SIZE != 0 {
                return Err(EmbedError::Slot { slot: s.slot, gpa: s.gpa, size: s.size });
            }
        }
        vmrr_format::output::prepare_trace(trace, opts.replace, true)?;
        let writer = TraceWriter::create_new(
            trace,
            WriterOptions { guest_writes: true, threads: smp, irq_lines: smp, ..opts.writer },
        )?;
        let mut recorder = Recorder::new(kvm, vcpu0, 0, writer)?;
        let caps = crate::kvm::caps::HostCaps::query(kvm);
        let mut annotations = crate::record::prelude::host_annotations(&caps, false);
        annotations.push(("vmrr.recorder".into(), "embedded".into()));
        if smp {
            annotations.push(("vmrr.vcpus".into(), vcpus.len().to_string()));
            annotations.push(("vmrr.irqchip".into(), "kernel".into()));
        }
        annotations.extend(opts.annotations);
        let cpuid = match opts.cpuid {
            Some(c) => c,
            None => cpuid::build(kvm, CpuidProfile::Deterministic, smp)
                .map_err(|e| EmbedError::Cpuid(KvmError::on("KVM_GET_SUPPORTED_CPUID")(e)))?,
        };
        let count = u32::try_from(vcpus.len()).unwrap_or(u32::MAX);
        for (index, fd) in (0u32..).zip(vcpus) {
            fd.set_cpuid2(&cpuid::for_vcpu(&cpuid, index, count))
                .map_err(|e| EmbedError::Cpuid(KvmError::on("KVM_SET_CPUID2")(e)))?;
        }
        // What the guest was given, not a read-back: see `EmbedOptions::cpuid`.
        recorder.write_prelude(&annotations, &cpuid)?;
        let msrs = crate::kvm::vcpu_state::msr_list(kvm, vcpu0, false)
            .map_err(|e| EmbedError::Snapshot { id: 0, source: e.into() })?;
        let mut bus = Bus::new();
        if let Some(port) = opts.console_port {
            let serial =
                crate::devices::legacy::serial::Serial::new(crate::devices::console::Console::capture_only());
            bus.add_pio(port, 8, Box::new(serial));
        }
        let device_pages = Arc::new(Mutex::new(PageMarks::new(slots)));
        let root = vmrr_format::layout::snapshots_of(trace);
        let checkpoints = Checkpointer::new(root, Policy::default(), recorder.trace_id(), annotations);
        let (recorder, shared) = if smp {
            let (r, t) = recorder.into_shared()?;
            (r, Some(t))
        } else {
            (recorder, None)
        };
        let e = Embedded {
            recorder,
            memory: memory.clone(),
            slots: slots.to_vec(),
            log: memory::WriteLog::default(),
            checkpoints,
            msrs,
            bus: Persist::save(&bus, 0),
            interrupts: 0,
            window: false,
            device_pages,
            smp: None,
        };
        Ok((e, shared))
    }

    /// A guest memory for the VMM's devices: writes through it are recorded (see
    /// [`RecordingMemory`]).
    pub fn recording_memory(&self) -> RecordingMemory<GuestMemoryMmap> {
        RecordingMemory::new(self.memory.clone(), memory::Sink::Log(self.log.clone()))
    }

    /// Runs the vCPU once (`KVM_RUN`), recording when it entered and exited. Guest writes
    /// noted since the last exit was recorded are written to the trace first.
    ///
    /// # Errors
    /// The writer's error, or `KVM_RUN`'s (`EINTR` when a signal interrupted it).
    pub fn run<'v>(&mut self, vcpu: &'v mut VcpuFd) -> Result<VcpuExit<'v>, EmbedError> {
        self.flush_guest_writes()?;
        self.recorder.run(vcpu).map_err(EmbedError::Run)
    }

    /// Records the exit now in `kvm_run` with the VMM's reply (call it after handling the
    /// exit, before the next `KVM_RUN`), then what the devices wrote into guest memory
    /// while handling it.
    ///
    /// # Errors
    /// The writer's error (a full disk).
    pub fn record_exit(&mut self) -> Result<u64, EmbedError> {
        let seq = self.recorder.record_exit()?;
        self.flush_guest_writes()?;
        Ok(seq)
    }

    /// Records that a device wrote `data` into guest memory at `gpa` (the VMM wrote it
    /// itself). Written to the trace after the exit being handled, or before the next
    /// entry: replay writes the same bytes at the same point.
    pub fn record_guest_write(&mut self, gpa: u64, data: &[u8]) {
        self.log.push(gpa, data.to_vec());
    }

    /// True when the vCPU can take an external interrupt at the next entry (interrupts
    /// enabled and KVM ready for an injection): the condition replay checks too.
    pub fn can_take_interrupt(&self) -> bool {
        let v = self.recorder.view();
        v.ready_for_interrupt_injection() && v.if_flag()
    }

    /// Injects external interrupt `vector` for the next entry (`KVM_INTERRUPT`) and records
    /// it. Call only when [`Self::can_take_interrupt`]; otherwise request an interrupt
    /// window and inject at the `IRQ_WINDOW_OPEN` exit.
    ///
    /// # Errors
    /// The ioctl or the writer failed.
    pub fn inject_interrupt(&mut self, vcpu: &VcpuFd, vector: u8) -> Result<(), EmbedError> {
        self.flush_guest_writes()?;
        crate::sys::vcpu_ioctl::interrupt(vcpu, vector)
            .map_err(|source| EmbedError::Interrupt { vector, source })?;
        self.record_interrupt(vector)
    }

    /// Asks KVM to exit with `KVM_EXIT_IRQ_WINDOW_OPEN` as soon as the guest can take an
    /// interrupt (`request`), or withdraws the request: sets `request_interrupt_window` in
    /// the vCPU's `kvm_run` for the next entries and records the change (an
    /// `interrupt_window` record), which replay applies at the same point. Call it at an
    /// exit boundary; asking for what is already set records nothing.
    ///
    /// # Errors
    /// The writer's error.
    pub fn request_interrupt_window(&mut self, vcpu: &mut VcpuFd, request: bool) -> Result<(), EmbedError> {
        self.flush_guest_writes()?;
        if request == self.window {
            return Ok(());
        }
        vcpu.get_kvm_run().request_interrupt_window = u8::from(request);
        self.recorder.record_window(request)?;
        self.window = request;
        Ok(())
    }

    /// Records an external interrupt the VMM injected itself (`KVM_INTERRUPT`) before the
    /// next entry.
    ///
    /// # Errors
    /// The writer's error.
    pub fn record_interrupt(&mut self, vector: u8) -> Result<(), EmbedError> {
        self.flush_guest_writes()?;
        self.recorder.record_interrupt(vector, vmrr_format::INTERRUPT_EXTERNAL)?;
        self.interrupts += 1;
        Ok(())
    }

    /// Takes a snapshot now (at an exit boundary, after [`Self::record_exit`]) and records
    /// its checkpoint: incremental on the previous one when every slot logs dirty pages,
    /// a full copy otherwise. Returns its id.
    ///
    /// # Errors
    /// KVM, vCPU state or file-system failures, or the writer's.
    pub fn checkpoint(&mut self, parts: VmParts<'_>) -> Result<u64, EmbedError> {
        self.flush_guest_writes()?;
        self.take_checkpoint(parts.vm, snapshot::Vcpus::One(parts.vcpu))
    }

    /// Takes a snapshot of the VM with `vcpus` and records its checkpoint (see
    /// [`Self::checkpoint`] and [`Self::checkpoint_smp`]).
    fn take_checkpoint(&mut self, vm: &VmFd, vcpus: snapshot::Vcpus<'_>) -> Result<u64, EmbedError> {
        let exits = self.recorder.exits();
        let mut marks = self.device_pages.lock().unwrap_or_else(PoisonError::into_inner);
        let mut vm = Vm {
            recorder: &mut self.recorder,
            chains: self.slots.iter().all(|s| s.dirty_log),
            capture: snapshot::Capture {
                kvm_vm: vm,
                vcpus,
                memory: &self.memory,
                slots: &self.slots,
                device_pages: marks.bits(),
                msrs: &self.msrs,
                bus: &self.bus,
                exits,
                interrupts: self.interrupts,
            },
        };
        let taken = self.checkpoints.checkpoint(&mut vm).map_err(|e| match e {
            CheckpointError::Snapshot { id, source } => EmbedError::Snapshot { id, source },
            CheckpointError::Record { source, .. } => EmbedError::Write(source),
        })?;
        marks.clear();
        Ok(taken.id)
    }

    /// Ends the recording: writes the final snapshot (the machine as the run left it, so
    /// a replay's end can be compared with it), the end-of-run record, and finishes the
    /// trace. `reason` is one of [`end_reason`] and `status` the guest's exit status with
    /// [`end_reason::GUEST_EXIT`] (0 otherwise): see "Ending the recording" in the module
    /// docs for what replay makes of them.
    ///
    /// # Errors
    /// As for [`Self::checkpoint`].
    pub fn finish(
        mut self,
        parts: VmParts<'_>,
        reason: u32,
        status: u64,
    ) -> Result<WriterSummary, EmbedError> {
        self.checkpoint(parts)?;
        Ok(self.recorder.finish(reason, status)?)
    }

    /// The id the next snapshot gets.
    pub fn next_snapshot_id(&self) -> u64 {
        self.checkpoints.next_id()
    }

    /// The recorder (annotations, the trace's id, the writer).
    pub fn recorder_mut(&mut self) -> &mut Recorder {
        &mut self.recorder
    }

    /// Writes the guest writes noted so far, in order, and marks their pages for the next
    /// incremental snapshot.
    fn flush_guest_writes(&mut self) -> Result<(), WriteError> {
        for (gpa, data) in self.log.drain() {
            self.device_pages.lock().unwrap_or_else(PoisonError::into_inner).mark(gpa, data.len());
            self.recorder.record_guest_write(gpa, &data)?;
        }
        Ok(())
    }
}

/// An embedded VM as its checkpoints see it, for one call: the recorder, whether its
/// slots log dirty pages, and what a capture reads.
struct Vm<'a> {
    recorder: &'a mut Recorder,
    chains: bool,
    capture: snapshot::Capture<'a>,
}

impl Checkpointed for Vm<'_> {
    fn recorder(&mut self) -> Option<&mut Recorder> {
        Some(self.recorder)
    }

    fn exits(&self) -> u64 {
        self.recorder.exits()
    }

    fn chains(&self) -> bool {
        self.chains
    }

    fn capture(&mut self, dir: &Path, who: &Identity<'_>) -> Result<CaptureStats, SnapshotError> {
        crate::snapshot::capture(&mut self.capture, dir, who)
    }

    fn machine(&mut self) -> Option<&mut crate::machine::Machine> {
        None
    }
}

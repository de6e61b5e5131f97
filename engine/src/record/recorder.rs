//! Recording: one trace record per `kvm_run` exit, plus the events replay needs.
//!
//! The recorder works for any VMM that owns its vCPU loop: create it from the vCPU fd, and
//! after each exit has been handled (IN data, MMIO read data, RDMSR values filled in),
//! call [`Recorder::record_exit`] before the next `KVM_RUN`. It reads the exit and the
//! reply from its own read-only mapping of the vCPU's `kvm_run` region, so the VMM passes
//! nothing else. The hot path only encodes bytes into the writer's chunk buffer: no
//! syscall, no allocation, no compression (the writer's thread does those).
//!
//! ```no_run
//! use vmrr_engine::Recorder;
//! use vmrr_format::{TraceWriter, WriterOptions};
//! # fn demo(kvm: &kvm_ioctls::Kvm, vcpu: &mut kvm_ioctls::VcpuFd) -> Result<(), Box<dyn std::error::Error>> {
//! let writer = TraceWriter::create("run.vmrr".as_ref(), WriterOptions::default())?;
//! let mut rec = Recorder::new(kvm, vcpu, 0, writer)?;
//! loop {
//!     match vcpu.run()? {
//!         kvm_ioctls::VcpuExit::IoIn(_port, data) => data.fill(0),
//!         kvm_ioctls::VcpuExit::Hlt => break,
//!         _ => {}
//!     }
//!     rec.record_exit()?;
//! }
//! rec.record_exit()?; // the HLT
//! rec.finish(vmrr_format::end_reason::HLT, 0)?;
//! # Ok(()) }
//! ```
//!
//! ## Timing
//!
//! With [`RecorderOptions::timing`] (the default when the writer was created with
//! `WriterOptions::timing`), every exit record also says how long the vCPU ran in
//! `KVM_RUN` before the exit and how long the VMM took to handle the previous one
//! (`docs/FORMAT.md` §5.4; `vmrr profile` reads them). The recorder cannot see `KVM_RUN`
//! itself, so the VMM says when it enters and when it gets an exit: [`Recorder::entering`]
//! just before `KVM_RUN`, [`Recorder::exited`] as soon as it returns with an exit, or
//! [`Recorder::run`], which does both around `VcpuFd::run`:
//!
//! ```no_run
//! # use vmrr_engine::{Recorder, RecorderOptions};
//! # use vmrr_format::{TraceWriter, WriterOptions};
//! # fn demo(kvm: &kvm_ioctls::Kvm, vcpu: &mut kvm_ioctls::VcpuFd) -> Result<(), Box<dyn std::error::Error>> {
//! let opts = WriterOptions { timing: true, ..Default::default() };
//! let writer = TraceWriter::create("run.vmrr".as_ref(), opts)?;
//! let mut rec = Recorder::with_options(kvm, vcpu, 0, writer, RecorderOptions { timing: true })?;
//! loop {
//!     let halted = match rec.run(vcpu)? {
//!         kvm_ioctls::VcpuExit::IoIn(_port, data) => { data.fill(0); false }
//!         kvm_ioctls::VcpuExit::Hlt => true,
//!         _ => false,
//!     };
//!     rec.record_exit()?;
//!     if halted { break; }
//! }
//! rec.finish(vmrr_format::end_reason::HLT, 0)?;
//! # Ok(()) }
//! ```
//!
//! Both calls cost one `CLOCK_MONOTONIC` read (vDSO, no syscall on hosts with a stable
//! TSC); without timing they return at once. Handler time is everything between the exit
//! and the next entry: the device model, the recorder itself, interrupt injection, and
//! any work the VMM does there (vmrr's own checkpoints, waiting in `HLT` for a timer).

use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};
use vmrr_format::{
    Annotation, Body, Checkpoint, CpuidEntries, CpuidEntry, EndOfRun, Interrupt, RegsSample, TraceWriter,
    WriteError, WriterSummary,
};

use super::clock::ExitClock;
use super::out::Out;
use crate::exit::{RipConvention, RunView};
use crate::kvm::cpuid;
use crate::sys::run_page::RunPage;

/// Creating a recorder failed.
#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    /// The vCPU's `kvm_run` region could not be mapped.
    #[error("cannot map the vCPU's kvm_run region")]
    Map(#[source] std::io::Error),
    /// The host's RIP reporting could not be probed.
    #[error("cannot probe how this host reports RIP at exits: {0}")]
    Probe(String),
    /// The trace's prelude could not be written.
    #[error("cannot write the trace's prelude")]
    Write(#[from] WriteError),
    /// `KVM_GET_VCPU_MMAP_SIZE` failed.
    #[error("KVM_GET_VCPU_MMAP_SIZE failed")]
    MmapSize(#[source] kvm_ioctls::Error),
    /// Timing was asked for but the trace's header does not announce it.
    #[error("timing asked for, but the trace writer was created without WriterOptions::timing")]
    TimingUndeclared,
}

/// How a recorder records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecorderOptions {
    /// Put a timing payload on every exit record (the writer must have been created with
    /// `WriterOptions::timing`). The VMM then calls [`Recorder::entering`] and
    /// [`Recorder::exited`] around `KVM_RUN`, or uses [`Recorder::run`].
    pub timing: bool,
}

impl RecorderOptions {
    /// Timing exactly when `writer`'s trace announces it.
    pub fn for_writer(writer: &TraceWriter) -> Self {
        RecorderOptions { timing: writer.header().has_timing() }
    }
}

/// Records one vCPU's exits into a trace.
pub struct Recorder {
    writer: Out,
    run: RunPage,
    vcpu_id: u32,
    conv: RipConvention,
    system_event_data: bool,
    exits: u64,
    clock: Option<ExitClock>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").field("vcpu_id", &self.vcpu_id).field("exits", &self.exits).finish()
    }
}

impl Recorder {
    /// A recorder for `vcpu` (numbered `vcpu_id` in the trace) writing to `writer`; it
    /// records timing when the writer's trace announces it
    /// ([`RecorderOptions::for_writer`]).
    ///
    /// # Errors
    /// The `kvm_run` region cannot be mapped, or the host probe fails.
    pub fn new(kvm: &Kvm, vcpu: &VcpuFd, vcpu_id: u32, writer: TraceWriter) -> Result<Self, RecorderError> {
        let opts = RecorderOptions::for_writer(&writer);
        Self::with_options(kvm, vcpu, vcpu_id, writer, opts)
    }

    /// A recorder with explicit options.
    ///
    /// # Errors
    /// As for [`Self::new`], and [`RecorderError::TimingUndeclared`] when timing is asked
    /// for but the writer's header does not announce it.
    pub fn with_options(
        kvm: &Kvm,
        vcpu: &VcpuFd,
        vcpu_id: u32,
        writer: TraceWriter,
        opts: RecorderOptions,
    ) -> Result<Self, RecorderError> {
        if opts.timing && !writer.header().has_timing() {
            return Err(RecorderError::TimingUndeclared);
        }
        let size = kvm.get_vcpu_mmap_size().map_err(RecorderError::MmapSize)?;
        let run = RunPage::map(vcpu, size, false).map_err(RecorderError::Map)?;
        let conv = crate::kvm::probe::rip_convention().map_err(RecorderError::Probe)?;
        let system_event_data =
            kvm.check_extension_raw(libc::c_ulong::from(kvm_bindings::KVM_CAP_SYSTEM_EVENT_DATA)) > 0;
        let clock = opts.timing.then(ExitClock::new);
        Ok(Recorder { writer: Out::Whole(writer), run, vcpu_id, conv, system_event_data, exits: 0, clock })
    }

    /// A recorder for `vcpu` (numbered `vcpu_id`) on `stream`, its thread's stream of a
    /// trace several vCPUs share (see [`Self::into_shared`]); timing as the trace's header
    /// announces it.
    ///
    /// # Errors
    /// As for [`Self::new`].
    pub fn on_stream(
        kvm: &Kvm,
        vcpu: &VcpuFd,
        vcpu_id: u32,
        stream: vmrr_format::TraceStream,
    ) -> Result<Self, RecorderError> {
        let size = kvm.get_vcpu_mmap_size().map_err(RecorderError::MmapSize)?;
        let run = RunPage::map(vcpu, size, false).map_err(RecorderError::Map)?;
        let conv = crate::kvm::probe::rip_convention().map_err(RecorderError::Probe)?;
        let system_event_data =
            kvm.check_extension_raw(libc::c_ulong::from(kvm_bindings::KVM_CAP_SYSTEM_EVENT_DATA)) > 0;
        let clock = stream.header().has_timing().then(ExitClock::new);
        let writer = Out::Stream { stream, trace: None };
        Ok(Recorder { writer, run, vcpu_id, conv, system_event_data, exits: 0, clock })
    }

    /// Turns this recorder's trace into one several threads append to (one per vCPU, one
    /// per device thread; the writer announces it with `WriterOptions::threads`): this recorder records on a stream of it and keeps it (its
    /// [`Self::finish`] closes it, every stream's records collected); the other threads
    /// record on [`vmrr_format::SharedTrace::stream`]s of the trace returned.
    ///
    /// # Errors
    /// The trace's writer failed.
    pub fn into_shared(self) -> Result<(Self, vmrr_format::SharedTrace), WriteError> {
        let Recorder { writer, run, vcpu_id, conv, system_event_data, exits, clock } = self;
        let (writer, trace) = writer.share()?;
        Ok((Recorder { writer, run, vcpu_id, conv, system_event_data, exits, clock }, trace))
    }

    /// True when exit records carry timing.
    pub fn timing(&self) -> bool {
        self.clock.is_some()
    }

    /// The VMM is about to call `KVM_RUN`: the handler of the last exit ends here. Only the
    /// first call after an exit counts (a `KVM_RUN` interrupted by a signal before any exit
    /// is re-entered without ending anything). Does nothing without timing.
    #[inline]
    pub fn entering(&mut self) {
        if let Some(c) = self.clock.as_mut() {
            c.entering();
        }
    }

    /// `KVM_RUN` just returned with an exit: its handler starts here. Call it before
    /// handling the exit; without it, the exit's instant is taken when it is recorded and
    /// its handler time is not measured. Does nothing without timing.
    #[inline]
    pub fn exited(&mut self) {
        if let Some(c) = self.clock.as_mut() {
            c.exited();
        }
    }

    /// Runs `vcpu` once with [`Self::entering`] before `KVM_RUN` and [`Self::exited`]
    /// after it returns with an exit.
    ///
    /// # Errors
    /// `KVM_RUN`'s error (`EINTR` when a signal interrupted it).
    #[inline]
    pub fn run<'a>(&mut self, vcpu: &'a mut VcpuFd) -> Result<VcpuExit<'a>, kvm_ioctls::Error> {
        self.entering();
        let exit = vcpu.run();
        if exit.is_ok() {
            self.exited();
        }
        exit
    }

    /// How this host reports RIP (recorded in every register sample).
    pub fn rip_convention(&self) -> RipConvention {
        self.conv
    }

    /// The current exit, as the bytes of the `kvm_run` region show it.
    pub fn view(&self) -> RunView<'_> {
        RunView::new(self.run.bytes()).expect("RunPage::map checked that struct kvm_run fits")
    }

    /// Records the exit now in `kvm_run`, with the VMM's reply and the register sample.
    /// Call after handling the exit, before the next `KVM_RUN`.
    ///
    /// # Errors
    /// The writer's error (a full disk).
    #[inline]
    pub fn record_exit(&mut self) -> Result<u64, WriteError> {
        let view = RunView::new(self.run.bytes()).expect("RunPage::map checked that struct kvm_run fits");
        let exit = view.exit(self.system_event_data, self.conv);
        let body = exit.body(self.run.bytes());
        Self::append_exit(&mut self.writer, &mut self.clock, &mut self.exits, self.vcpu_id, body, exit.regs())
    }

    /// Records an exit the caller decoded (with [`RunView::exit`]) and answered: the hot
    /// path of a VMM that keeps the decoded exit, as vmrr's own machine does.
    ///
    /// # Errors
    /// The writer's error (a full disk).
    #[inline]
    pub fn record(&mut self, body: Body<'_>, regs: Option<RegsSample>) -> Result<u64, WriteError> {
        Self::append_exit(&mut self.writer, &mut self.clock, &mut self.exits, self.vcpu_id, body, regs)
    }

    #[inline]
    fn append_exit(
        writer: &mut Out,
        clock: &mut Option<ExitClock>,
        exits: &mut u64,
        vcpu_id: u32,
        body: Body<'_>,
        regs: Option<RegsSample>,
    ) -> Result<u64, WriteError> {
        *exits += 1;
        match clock.as_mut() {
            Some(c) => writer.append_timed(vcpu_id, body, regs, c.take()),
            None => writer.append(vcpu_id, body, regs),
        }
    }

    /// Records that the VMM changed a line of KVM's in-kernel irqchip (`KVM_IRQ_LINE`, or
    /// an irqfd a device thread wrote) after the exit just recorded (format 1.2; the
    /// writer must announce `WriterOptions::irq_lines`).
    ///
    /// # Errors
    /// The writer's error.
    pub fn record_irq_line(&mut self, line: vmrr_format::IrqLine) -> Result<u64, WriteError> {
        self.writer.append(self.vcpu_id, Body::IrqLine(line), None)
    }

    /// Records an interrupt injected with `KVM_INTERRUPT` (or an NMI) before the next entry.
    ///
    /// # Errors
    /// The writer's error.
    pub fn record_interrupt(&mut self, vector: u8, source: u32) -> Result<u64, WriteError> {
        self.writer.append(
            self.vcpu_id,
            Body::Interrupt(Interrupt { vector: u32::from(vector), source }),
            None,
        )
    }

    /// Records that `request_interrupt_window` was set or withdrawn.
    ///
    /// # Errors
    /// The writer's error.
    pub fn record_window(&mut self, request: bool) -> Result<u64, WriteError> {
        let w = vmrr_format::InterruptWindow { request: u32::from(request) };
        self.writer.append(self.vcpu_id, Body::InterruptWindow(w), None)
    }

    /// Records a key/value annotation.
    ///
    /// # Errors
    /// The writer's error (including a key or value over the format's limits).
    pub fn annotate(&mut self, key: &str, value: &str) -> Result<u64, WriteError> {
        self.writer.append(self.vcpu_id, Body::Annotation(Annotation { key, value }), None)
    }

    /// Writes the trace's prelude: the run's `annotations` (how to rebuild it, where it
    /// ran: see [`super::prelude`]), with timing the clock it reads (`host.timing_clock`),
    /// then the CPUID set the guest sees. Replay reads both
    /// back; any VMM that embeds the recorder writes the same prelude.
    ///
    /// # Errors
    /// The writer's error.
    pub fn write_prelude(
        &mut self,
        annotations: &[(String, String)],
        cpuid: &kvm_bindings::CpuId,
    ) -> Result<(), WriteError> {
        for (k, v) in annotations {
            self.annotate(k, v)?;
        }
        if self.clock.is_some() {
            // Where the timing payloads' nanoseconds come from, measured on this host.
            self.annotate("host.timing_clock", &super::clock::TimeSource::host().describe())?;
        }
        self.record_cpuid(&cpuid::to_format(cpuid))?;
        Ok(())
    }

    /// Records the CPUID set the guest sees.
    ///
    /// # Errors
    /// The writer's error.
    pub fn record_cpuid(&mut self, entries: &[CpuidEntry]) -> Result<u64, WriteError> {
        self.writer.append(self.vcpu_id, Body::Cpuid(CpuidEntries::Native(entries)), None)
    }

    /// Records that snapshot `snapshot_id` was taken now.
    ///
    /// # Errors
    /// The writer's error.
    pub fn record_checkpoint(&mut self, snapshot_id: u64) -> Result<u64, WriteError> {
        let exit_seq = self.writer.next_seq().saturating_sub(1);
        let c = Checkpoint { snapshot_id, exit_seq, exits: self.exits };
        self.writer.append(self.vcpu_id, Body::Checkpoint(c), None)
    }

    /// Records checkpoint `snapshot_id` taken earlier, after record `exit_seq` and
    /// `exits` exits (a background capture's record, appended once its snapshot is
    /// durable, which may be several records after its position).
    ///
    /// # Errors
    /// The trace could not take the record.
    pub fn record_checkpoint_at(
        &mut self,
        snapshot_id: u64,
        exit_seq: u64,
        exits: u64,
    ) -> Result<u64, WriteError> {
        let c = Checkpoint { snapshot_id, exit_seq, exits };
        self.writer.append(self.vcpu_id, Body::Checkpoint(c), None)
    }

    /// The trace's id (snapshots name their trace by it).
    pub fn trace_id(&self) -> [u8; 16] {
        self.writer.header().trace_id
    }

    /// Exits recorded.
    pub fn exits(&self) -> u64 {
        self.exits
    }

    /// Sets the count of exits its checkpoint and end records say (a recorder that keeps a
    /// shared trace for vCPU threads recording on their own streams: their total).
    pub(crate) fn set_exits(&mut self, exits: u64) {
        self.exits = exits;
    }

    /// Sequence number the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.writer.next_seq()
    }

    /// Continues the trace in `writer` (a new segment file): sequence numbers carry on.
    /// Returns the previous writer, not yet finished.
    ///
    /// # Errors
    /// The new writer already holds later records.
    pub fn replace_writer(&mut self, mut writer: TraceWriter) -> Result<TraceWriter, WriteError> {
        let Out::Whole(current) = &mut self.writer else {
            return Err(WriteError::Unencodable {
                field: "writer",
                detail:
                    "a recorder on a stream of a shared trace (several vCPUs) cannot move to a new segment"
                        .into(),
            });
        };
        if self.clock.is_some() && !writer.header().has_timing() {
            return Err(WriteError::Unencodable {
                field: "timing",
                detail: "the new segment's writer does not announce timing (WriterOptions::timing)".into(),
            });
        }
        writer.continue_from(current.next_seq())?;
        Ok(std::mem::replace(current, writer))
    }

    /// Records that a device wrote `data` into guest memory at `gpa` (a `guest_write`
    /// record, split when longer than a record holds).
    ///
    /// # Errors
    /// The writer's error.
    pub fn record_guest_write(&mut self, gpa: u64, data: &[u8]) -> Result<(), WriteError> {
        self.writer.append_guest_write(self.vcpu_id, gpa, data).map(|_| ())
    }

    /// Waits until everything recorded so far is durable (written and synced), whatever
    /// the writer's sync mode: a checkpoint's record is synced with its snapshot.
    ///
    /// # Errors
    /// The writer's error.
    pub fn sync(&mut self) -> Result<(), WriteError> {
        self.writer.sync()
    }

    /// Hands the records buffered so far to the writer's thread once the writer's flush
    /// interval has passed: call it when the guest is about to block (waiting in `HLT`), so
    /// a quiet guest's last records reach the disk without waiting for a full chunk.
    ///
    /// # Errors
    /// The writer's error.
    pub fn poll_flush(&mut self) -> Result<(), WriteError> {
        self.writer.poll_flush()
    }

    /// Records the end of the run and finishes the trace (index, trailer, sync).
    ///
    /// # Errors
    /// The writer's error.
    pub fn finish(mut self, reason: u32, status: u64) -> Result<WriterSummary, WriteError> {
        let end = EndOfRun { reason, exits: self.exits, status };
        self.writer.append(self.vcpu_id, Body::EndOfRun(end), None)?;
        self.writer.finish()
    }
}

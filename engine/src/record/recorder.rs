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

use kvm_ioctls::{Kvm, VcpuFd};
use vmrr_format::{
    Annotation, Body, Checkpoint, CpuidEntries, CpuidEntry, EndOfRun, Interrupt, TraceWriter, WriteError,
    WriterSummary,
};

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
}

/// Records one vCPU's exits into a trace.
pub struct Recorder {
    writer: TraceWriter,
    run: RunPage,
    vcpu_id: u32,
    conv: RipConvention,
    system_event_data: bool,
    exits: u64,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").field("vcpu_id", &self.vcpu_id).field("exits", &self.exits).finish()
    }
}

impl Recorder {
    /// A recorder for `vcpu` (numbered `vcpu_id` in the trace) writing to `writer`.
    ///
    /// # Errors
    /// The `kvm_run` region cannot be mapped, or the host probe fails.
    pub fn new(kvm: &Kvm, vcpu: &VcpuFd, vcpu_id: u32, writer: TraceWriter) -> Result<Self, RecorderError> {
        let size = kvm.get_vcpu_mmap_size().map_err(RecorderError::MmapSize)?;
        let run = RunPage::map(vcpu, size, false).map_err(RecorderError::Map)?;
        let conv = crate::kvm::probe::rip_convention().map_err(RecorderError::Probe)?;
        let system_event_data =
            kvm.check_extension_raw(libc::c_ulong::from(kvm_bindings::KVM_CAP_SYSTEM_EVENT_DATA)) > 0;
        Ok(Recorder { writer, run, vcpu_id, conv, system_event_data, exits: 0 })
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
        let body = view.body(self.system_event_data);
        let regs = view.regs_sample(self.conv);
        self.exits += 1;
        self.writer.append(self.vcpu_id, body, regs)
    }

    /// Records an interrupt injected before the next entry.
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
    /// ran: see [`super::prelude`]), then the CPUID set the guest sees. Replay reads both
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

    /// The trace's id (snapshots name their trace by it).
    pub fn trace_id(&self) -> [u8; 16] {
        self.writer.header().trace_id
    }

    /// Exits recorded.
    pub fn exits(&self) -> u64 {
        self.exits
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
        writer.continue_from(self.writer.next_seq())?;
        Ok(std::mem::replace(&mut self.writer, writer))
    }

    /// The writer (to flush before the guest blocks, or to sync).
    pub fn writer_mut(&mut self) -> &mut TraceWriter {
        &mut self.writer
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

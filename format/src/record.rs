//! Records: one per `kvm_run` exit, plus the events replay needs.
//!
//! A record is a 24-byte header, a fixed body whose size the header states, the body's
//! variable data (sized by counts in the fixed body), then optional payloads announced by
//! flag bits, in ascending bit order. See `docs/FORMAT.md` §4 for byte tables.
//!
//! Decoded records borrow their variable-length parts from the chunk buffer: decoding
//! copies nothing.

use crate::kind;
pub use crate::timing::{FLAG_TIMING, TIMING_PAYLOAD_SIZE, Timing};

/// Size of the record header.
pub const RECORD_HEADER_SIZE: usize = 24;
/// Largest record a reader accepts and a writer produces.
pub const MAX_RECORD_SIZE: usize = 1 << 20;

/// Record flag: a [`RegsSample`] payload (32 bytes) follows the body's variable data.
pub const FLAG_REGS: u32 = 1 << 0;
/// Every flag this version knows (`FLAG_TIMING`: see [`crate::timing`]).
pub const KNOWN_FLAGS: u32 = FLAG_REGS | FLAG_TIMING;
/// Size of the register-sample payload.
pub const REGS_PAYLOAD_SIZE: usize = 32;

/// The fixed-body size this version writes for `kind`, or `None` for kinds it does not know.
pub const fn body_size(kind: u16) -> Option<usize> {
    Some(match kind {
        kind::IO => 8,
        kind::MMIO => 24,
        kind::HLT | kind::SHUTDOWN | kind::IRQ_WINDOW_OPEN | kind::INTR => 0,
        kind::FAIL_ENTRY => 16,
        kind::INTERNAL_ERROR => 8,
        kind::SYSTEM_EVENT => 8,
        kind::X86_RDMSR | kind::X86_WRMSR => 24,
        kind::HYPERCALL => 72,
        kind::DEBUG => 32,
        kind::RAW_EXIT => 8,
        kind::INTERRUPT => 8,
        kind::CHECKPOINT => 24,
        kind::ANNOTATION => 8,
        kind::END_OF_RUN => 24,
        kind::CPUID => 8,
        kind::INTERRUPT_WINDOW => 8,
        kind::GUEST_WRITE => 16,
        kind::IRQ_LINE => 16,
        _ => return None,
    })
}

/// A vCPU register sample taken at the exit (the optional `FLAG_REGS` payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegsSample {
    /// Instruction pointer.
    pub rip: u64,
    /// Stack pointer.
    pub rsp: u64,
    /// Flags register.
    pub rflags: u64,
    /// Sample flags ([`RegsSample::RIP_AFTER_INSN`]); unknown bits are preserved.
    pub flags: u64,
}

impl RegsSample {
    /// `rip` is past the exiting instruction (the host completed it before the exit), rather
    /// than at it. Hosts differ for port I/O (hardware VMX/SVM report the instruction, some
    /// paravirtual hosts report the next one); replay normalises with this bit.
    pub const RIP_AFTER_INSN: u64 = 1;
}

/// Port I/O direction, with KVM's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `KVM_EXIT_IO_IN` (0): the VMM supplied the data.
    In,
    /// `KVM_EXIT_IO_OUT` (1): the guest wrote the data.
    Out,
}

impl Direction {
    /// The on-disk value.
    pub const fn raw(self) -> u8 {
        match self {
            Direction::In => 0,
            Direction::Out => 1,
        }
    }
    /// Lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
}

/// A sequence of little-endian 64-bit words: either borrowed from a trace or from memory.
#[derive(Debug, Clone, Copy)]
pub enum Words<'a> {
    /// Little-endian bytes from a file (length a multiple of 8).
    Le(&'a [u8]),
    /// Native words (for encoding).
    Native(&'a [u64]),
}

impl<'a> Words<'a> {
    /// Number of words.
    pub fn len(&self) -> usize {
        match self {
            Words::Le(b) => b.len() / 8,
            Words::Native(w) => w.len(),
        }
    }
    /// True when there are no words.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Word `i`, or `None` past the end.
    pub fn get(&self, i: usize) -> Option<u64> {
        match self {
            Words::Le(b) => crate::cursor::u64_at(b, i.checked_mul(8)?),
            Words::Native(w) => w.get(i).copied(),
        }
    }
    /// Iterates over the words.
    pub fn iter(&self) -> impl Iterator<Item = u64> + 'a {
        let w = *self;
        (0..w.len()).filter_map(move |i| w.get(i))
    }
}

impl Default for Words<'_> {
    fn default() -> Self {
        Words::Native(&[])
    }
}

impl PartialEq for Words<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}
impl Eq for Words<'_> {}

/// `KVM_EXIT_IO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Io<'a> {
    /// In or out.
    pub direction: Direction,
    /// Access size in bytes (1, 2 or 4).
    pub size: u8,
    /// Port number.
    pub port: u16,
    /// Repetitions (string I/O); `data` holds `size * count` bytes.
    pub count: u32,
    /// Written by the guest (out) or supplied to it (in).
    pub data: &'a [u8],
}

/// `KVM_EXIT_MMIO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mmio {
    /// Guest physical address.
    pub phys_addr: u64,
    /// Access length, 1..=8.
    pub len: u32,
    /// True for a guest write.
    pub is_write: bool,
    /// Written by the guest, or supplied to it; bytes past `len` are zero.
    pub data: [u8; 8],
}

impl Mmio {
    /// The `len` meaningful bytes of `data`.
    pub fn bytes(&self) -> &[u8] {
        let n = usize::try_from(self.len).unwrap_or(8).min(8);
        &self.data[..n]
    }
}

/// `KVM_EXIT_FAIL_ENTRY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailEntry {
    /// Hardware's reason.
    pub hardware_entry_failure_reason: u64,
    /// Host CPU.
    pub cpu: u32,
}

/// `KVM_INTERNAL_ERROR_EMULATION`.
pub const SUBERROR_EMULATION: u32 = 1;
/// `KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES`.
pub const EMULATION_FLAG_INSTRUCTION_BYTES: u64 = 1;

/// `KVM_EXIT_INTERNAL_ERROR`: `suberror`, and `ndata` data words, exactly as in `kvm_run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InternalError<'a> {
    /// `KVM_INTERNAL_ERROR_*`.
    pub suberror: u32,
    /// `data[0..ndata]`.
    pub data: Words<'a>,
}

/// The `emulation_failure` view of an internal error (`suberror` 1), as KVM lays it out
/// over the data words: word 0 is `flags`; with the instruction-bytes flag, words 1-2 hold
/// `insn_size` and `insn_bytes[15]`; further words follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmulationFailure {
    /// `flags`.
    pub flags: u64,
    /// `insn_size` (KVM reports the fetch window, not necessarily the instruction length).
    pub insn_size: u8,
    /// `insn_bytes`; only valid when the instruction-bytes flag is set.
    pub insn_bytes: [u8; 15],
    /// Whether `insn_size`/`insn_bytes` are valid.
    pub has_insn_bytes: bool,
}

impl EmulationFailure {
    /// The valid instruction bytes (empty without the flag).
    pub fn bytes(&self) -> &[u8] {
        if self.has_insn_bytes { &self.insn_bytes[..usize::from(self.insn_size).min(15)] } else { &[] }
    }
}

impl InternalError<'_> {
    /// The emulation-failure view, for `suberror == 1` with at least the flags word.
    pub fn emulation_failure(&self) -> Option<EmulationFailure> {
        if self.suberror != SUBERROR_EMULATION {
            return None;
        }
        let flags = self.data.get(0)?;
        let mut ef = EmulationFailure { flags, insn_size: 0, insn_bytes: [0; 15], has_insn_bytes: false };
        if flags & EMULATION_FLAG_INSTRUCTION_BYTES != 0 {
            if let (Some(w1), Some(w2)) = (self.data.get(1), self.data.get(2)) {
                let mut raw = [0u8; 16];
                raw[..8].copy_from_slice(&w1.to_le_bytes());
                raw[8..].copy_from_slice(&w2.to_le_bytes());
                ef.insn_size = raw[0];
                ef.insn_bytes.copy_from_slice(&raw[1..]);
                ef.has_insn_bytes = true;
            }
        }
        Some(ef)
    }
}

/// `KVM_EXIT_SYSTEM_EVENT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SystemEvent<'a> {
    /// `type` (`KVM_SYSTEM_EVENT_*`).
    pub event_type: u32,
    /// `data[0..ndata]`; empty when the host lacks `KVM_CAP_SYSTEM_EVENT_DATA`.
    pub data: Words<'a>,
}

/// `KVM_EXIT_X86_RDMSR` / `KVM_EXIT_X86_WRMSR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Msr {
    /// MSR index.
    pub index: u32,
    /// `KVM_MSR_EXIT_REASON_*`.
    pub reason: u32,
    /// Written by the guest (WRMSR) or supplied to it (RDMSR).
    pub data: u64,
    /// Non-zero when the VMM answered with #GP.
    pub error: u8,
}

/// `KVM_EXIT_HYPERCALL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hypercall {
    /// Hypercall number.
    pub nr: u64,
    /// The six argument registers.
    pub args: [u64; 6],
    /// Value returned to the guest.
    pub ret: u64,
    /// `flags` (`longmode` in older kernels).
    pub flags: u64,
}

/// `KVM_EXIT_DEBUG` (x86 `kvm_debug_exit_arch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebugExit {
    /// Exception vector.
    pub exception: u32,
    /// Guest PC.
    pub pc: u64,
    /// DR6.
    pub dr6: u64,
    /// DR7.
    pub dr7: u64,
}

/// Most bytes a [`RawExit`] carries: the size of `kvm_run`'s exit union.
pub const MAX_RAW_EXIT_DATA: usize = 256;

/// An exit this version does not structure: the exit reason and raw union bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawExit<'a> {
    /// `kvm_run.exit_reason`.
    pub exit_reason: u32,
    /// The bytes of the `kvm_run` exit union (at most [`MAX_RAW_EXIT_DATA`]).
    pub data: &'a [u8],
}

/// Interrupt source: `KVM_INTERRUPT` (external interrupt).
pub const INTERRUPT_EXTERNAL: u32 = 0;
/// Interrupt source: `KVM_NMI`.
pub const INTERRUPT_NMI: u32 = 1;

/// An interrupt injected before re-entering the guest, after the preceding exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupt {
    /// The interrupt vector.
    pub vector: u32,
    /// [`INTERRUPT_EXTERNAL`] or [`INTERRUPT_NMI`].
    pub source: u32,
}

/// A snapshot was taken after the record `exit_seq`, before re-entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Snapshot identifier (its directory name is derived from it).
    pub snapshot_id: u64,
    /// Sequence number of the last record before the snapshot.
    pub exit_seq: u64,
    /// Exits recorded before the snapshot.
    pub exits: u64,
}

/// The VMM set (`request` = 1) or cleared (0) `kvm_run.request_interrupt_window` before
/// re-entering after the preceding exit: KVM then exits with `IRQ_WINDOW_OPEN` as soon as
/// the guest can take an interrupt, so replay must make the same request at the same point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterruptWindow {
    /// 1 to request the window, 0 to withdraw the request.
    pub request: u32,
}

/// What the recording VMM's devices wrote into guest memory (DMA: a disk read, a network
/// packet, a virtio ring update) after the preceding exit, before re-entry. Replay writes
/// `data` at `gpa` at this point in the sequence; nothing of the recording VMM is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestWrite<'a> {
    /// Guest physical address of the first byte.
    pub gpa: u64,
    /// The bytes written (at most [`MAX_GUEST_WRITE_DATA`]; `len` on disk).
    pub data: &'a [u8],
}

/// IRQ_LINE `level`: the line was lowered.
pub const IRQ_LEVEL_LOW: u32 = 0;
/// IRQ_LINE `level`: the line was raised.
pub const IRQ_LEVEL_HIGH: u32 = 1;
/// IRQ_LINE `level`: the line was pulsed (raised, then lowered).
pub const IRQ_LEVEL_PULSE: u32 = 2;
/// IRQ_LINE `via`: the `KVM_IRQ_LINE` ioctl.
pub const IRQ_VIA_IOCTL: u32 = 0;
/// IRQ_LINE `via`: an irqfd (an eventfd write bound to the GSI).
pub const IRQ_VIA_IRQFD: u32 = 1;

/// The VMM changed an interrupt line of KVM's in-kernel irqchip (format 1.2, feature
/// `irq-line`): a vCPU thread after the exit that precedes this record in the same thread,
/// or a device thread. `level` and `via` values this version does not define are kept as
/// read; a replayer refuses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqLine {
    /// Global system interrupt number.
    pub gsi: u32,
    /// [`IRQ_LEVEL_LOW`], [`IRQ_LEVEL_HIGH`] or [`IRQ_LEVEL_PULSE`].
    pub level: u32,
    /// [`IRQ_VIA_IOCTL`] or [`IRQ_VIA_IRQFD`].
    pub via: u32,
}

/// First record-header `vcpu` value that names a device thread (format 1.2): `vcpu` values
/// below it are vCPU indexes, `DEVICE_THREAD_BASE + n` is device thread `n`. Device threads
/// write events only (`GUEST_WRITE`, `IRQ_LINE`, `ANNOTATION`).
pub const DEVICE_THREAD_BASE: u32 = 0x8000_0000;

/// Who appended a record, from its header's `vcpu` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appender {
    /// vCPU thread with this index.
    Vcpu(u32),
    /// Device thread with this number (`vcpu - DEVICE_THREAD_BASE`).
    Device(u32),
}

impl Appender {
    /// Classifies a record header's `vcpu` field.
    pub const fn of(vcpu: u32) -> Self {
        if vcpu >= DEVICE_THREAD_BASE {
            Appender::Device(vcpu - DEVICE_THREAD_BASE)
        } else {
            Appender::Vcpu(vcpu)
        }
    }

    /// The record header's `vcpu` field for this appender (device numbers wrap into
    /// `0..0x8000_0000`).
    pub const fn field(self) -> u32 {
        match self {
            Appender::Vcpu(v) => v,
            Appender::Device(n) => DEVICE_THREAD_BASE | n,
        }
    }
}

/// Most bytes one `GUEST_WRITE` record holds: the record limit less its header (24) and
/// fixed body (16). Larger writes are split into consecutive records.
pub const MAX_GUEST_WRITE_DATA: usize = MAX_RECORD_SIZE - RECORD_HEADER_SIZE - 16;

/// Key/value text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Annotation<'a> {
    /// Key (at most [`MAX_ANNOTATION_KEY`] bytes).
    pub key: &'a str,
    /// Value (at most [`MAX_ANNOTATION_VALUE`] bytes).
    pub value: &'a str,
}

/// Longest annotation key a writer produces.
pub const MAX_ANNOTATION_KEY: usize = 256;
/// Longest annotation value a writer produces.
pub const MAX_ANNOTATION_VALUE: usize = 64 * 1024;

/// Why a run ended.
pub mod end_reason {
    /// The guest wrote its status to the debug-exit port.
    pub const GUEST_EXIT: u32 = 1;
    /// The guest halted with interrupts disabled (nothing can wake it).
    pub const HLT: u32 = 2;
    /// Triple fault (`KVM_EXIT_SHUTDOWN`).
    pub const SHUTDOWN: u32 = 3;
    /// KVM could not emulate an instruction.
    pub const EMULATION_FAILURE: u32 = 4;
    /// Another `KVM_EXIT_INTERNAL_ERROR`.
    pub const INTERNAL_ERROR: u32 = 5;
    /// `KVM_EXIT_FAIL_ENTRY`.
    pub const FAIL_ENTRY: u32 = 6;
    /// `--max-exits` reached.
    pub const MAX_EXITS: u32 = 7;
    /// `--max-seconds` reached.
    pub const MAX_SECONDS: u32 = 8;
    /// Stopped by a signal or the embedding VMM.
    pub const STOPPED: u32 = 9;
    /// The VMM failed (an ioctl error).
    pub const VMM_ERROR: u32 = 10;
    /// `KVM_EXIT_SYSTEM_EVENT` (shutdown, reset, crash).
    pub const SYSTEM_EVENT: u32 = 11;
    /// Recording stopped because vmrr's own output (a snapshot, the trace) could not be
    /// written, typically a full disk. The guest itself was healthy.
    pub const OUTPUT_ERROR: u32 = 12;

    /// True for the failures a repro is for: emulation failure, internal error, triple
    /// fault, failed entry.
    pub fn is_failure(reason: u32) -> bool {
        matches!(reason, EMULATION_FAILURE | INTERNAL_ERROR | SHUTDOWN | FAIL_ENTRY)
    }

    /// Lower-case name.
    pub fn name(reason: u32) -> &'static str {
        match reason {
            GUEST_EXIT => "guest_exit",
            HLT => "hlt",
            SHUTDOWN => "shutdown",
            EMULATION_FAILURE => "emulation_failure",
            INTERNAL_ERROR => "internal_error",
            FAIL_ENTRY => "fail_entry",
            MAX_EXITS => "max_exits",
            MAX_SECONDS => "max_seconds",
            STOPPED => "stopped",
            VMM_ERROR => "vmm_error",
            SYSTEM_EVENT => "system_event",
            OUTPUT_ERROR => "output_error",
            _ => "unknown",
        }
    }
}

/// The run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndOfRun {
    /// One of [`end_reason`].
    pub reason: u32,
    /// Exits recorded in the run.
    pub exits: u64,
    /// Guest status (debug-exit port value), where the reason has one.
    pub status: u64,
}

/// One CPUID leaf as the guest saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuidEntry {
    /// Leaf (EAX input).
    pub function: u32,
    /// Sub-leaf (ECX input).
    pub index: u32,
    /// `KVM_CPUID_FLAG_*`.
    pub flags: u32,
    /// EAX output.
    pub eax: u32,
    /// EBX output.
    pub ebx: u32,
    /// ECX output.
    pub ecx: u32,
    /// EDX output.
    pub edx: u32,
}

/// Size of one CPUID entry on disk.
pub const CPUID_ENTRY_SIZE: usize = 32;

/// CPUID entries, borrowed from a trace or from memory.
#[derive(Debug, Clone, Copy)]
pub enum CpuidEntries<'a> {
    /// Bytes from a file ([`CPUID_ENTRY_SIZE`] each).
    Le(&'a [u8]),
    /// Native entries (for encoding).
    Native(&'a [CpuidEntry]),
}

impl<'a> CpuidEntries<'a> {
    /// Number of entries.
    pub fn len(&self) -> usize {
        match self {
            CpuidEntries::Le(b) => b.len() / CPUID_ENTRY_SIZE,
            CpuidEntries::Native(e) => e.len(),
        }
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Entry `i`.
    pub fn get(&self, i: usize) -> Option<CpuidEntry> {
        match self {
            CpuidEntries::Le(b) => {
                let e = b.get(i.checked_mul(CPUID_ENTRY_SIZE)?..)?.get(..CPUID_ENTRY_SIZE)?;
                let w = |o| crate::cursor::u32_at(e, o).unwrap_or(0);
                Some(CpuidEntry {
                    function: w(0),
                    index: w(4),
                    flags: w(8),
                    eax: w(12),
                    ebx: w(16),
                    ecx: w(20),
                    edx: w(24),
                })
            }
            CpuidEntries::Native(e) => e.get(i).copied(),
        }
    }
    /// Iterates over entries.
    pub fn iter(&self) -> impl Iterator<Item = CpuidEntry> + 'a {
        let s = *self;
        (0..s.len()).filter_map(move |i| s.get(i))
    }
}

impl PartialEq for CpuidEntries<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}
impl Eq for CpuidEntries<'_> {}

/// The kind-specific part of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body<'a> {
    /// Port I/O.
    Io(Io<'a>),
    /// Memory-mapped I/O.
    Mmio(Mmio),
    /// `KVM_EXIT_HLT`.
    Hlt,
    /// `KVM_EXIT_SHUTDOWN`.
    Shutdown,
    /// `KVM_EXIT_IRQ_WINDOW_OPEN`.
    IrqWindowOpen,
    /// `KVM_EXIT_INTR`.
    Intr,
    /// `KVM_EXIT_FAIL_ENTRY`.
    FailEntry(FailEntry),
    /// `KVM_EXIT_INTERNAL_ERROR`.
    InternalError(InternalError<'a>),
    /// `KVM_EXIT_SYSTEM_EVENT`.
    SystemEvent(SystemEvent<'a>),
    /// `KVM_EXIT_X86_RDMSR`.
    RdMsr(Msr),
    /// `KVM_EXIT_X86_WRMSR`.
    WrMsr(Msr),
    /// `KVM_EXIT_HYPERCALL`.
    Hypercall(Hypercall),
    /// `KVM_EXIT_DEBUG`.
    Debug(DebugExit),
    /// An exit kept as raw bytes.
    RawExit(RawExit<'a>),
    /// Interrupt injected.
    Interrupt(Interrupt),
    /// Checkpoint marker.
    Checkpoint(Checkpoint),
    /// A key/value note about the run.
    Annotation(Annotation<'a>),
    /// End of run.
    EndOfRun(EndOfRun),
    /// CPUID set.
    Cpuid(CpuidEntries<'a>),
    /// Interrupt-window request changed.
    InterruptWindow(InterruptWindow),
    /// Bytes a device wrote into guest memory.
    GuestWrite(GuestWrite<'a>),
    /// An interrupt line of the in-kernel irqchip changed (format 1.2).
    IrqLine(IrqLine),
    /// A kind this version does not know: its header fields and everything after the
    /// header, kept verbatim (payloads included: a copy re-emits `bytes`, not the record's
    /// `regs` and `timing`, which are what a reader located in them; FORMAT.md §5.2).
    Unknown {
        /// The kind.
        kind: u16,
        /// The header's `body_size`.
        body_size: u16,
        /// The header's flags (their meaning for this kind is unknown).
        flags: u32,
        /// Bytes after the header.
        bytes: &'a [u8],
    },
}

impl Body<'_> {
    /// The record kind.
    pub fn kind(&self) -> u16 {
        match self {
            Body::Io(_) => kind::IO,
            Body::Mmio(_) => kind::MMIO,
            Body::Hlt => kind::HLT,
            Body::Shutdown => kind::SHUTDOWN,
            Body::IrqWindowOpen => kind::IRQ_WINDOW_OPEN,
            Body::Intr => kind::INTR,
            Body::FailEntry(_) => kind::FAIL_ENTRY,
            Body::InternalError(_) => kind::INTERNAL_ERROR,
            Body::SystemEvent(_) => kind::SYSTEM_EVENT,
            Body::RdMsr(_) => kind::X86_RDMSR,
            Body::WrMsr(_) => kind::X86_WRMSR,
            Body::Hypercall(_) => kind::HYPERCALL,
            Body::Debug(_) => kind::DEBUG,
            Body::RawExit(_) => kind::RAW_EXIT,
            Body::Interrupt(_) => kind::INTERRUPT,
            Body::Checkpoint(_) => kind::CHECKPOINT,
            Body::Annotation(_) => kind::ANNOTATION,
            Body::EndOfRun(_) => kind::END_OF_RUN,
            Body::Cpuid(_) => kind::CPUID,
            Body::InterruptWindow(_) => kind::INTERRUPT_WINDOW,
            Body::GuestWrite(_) => kind::GUEST_WRITE,
            Body::IrqLine(_) => kind::IRQ_LINE,
            Body::Unknown { kind, .. } => *kind,
        }
    }

    /// True for exit records.
    pub fn is_exit(&self) -> bool {
        kind::is_exit(self.kind())
    }
}

/// Parts of a record written by a newer writer that this version does not understand.
///
/// They are kept so nothing is lost: a tool that copies records re-emits them verbatim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Unknown<'a> {
    /// Fixed-body bytes past this version's layout (fields a newer minor appended).
    pub body: &'a [u8],
    /// Flag bits this version does not know.
    pub flags: u32,
    /// Bytes after the last payload this version knows (payloads of unknown flags).
    pub tail: &'a [u8],
}

impl Unknown<'_> {
    /// True when nothing unknown is present.
    pub fn is_empty(&self) -> bool {
        self.body.is_empty() && self.flags == 0 && self.tail.is_empty()
    }
}

/// One decoded record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// Monotonically increasing sequence number (exits and events share it).
    pub seq: u64,
    /// vCPU the record belongs to.
    pub vcpu: u32,
    /// Kind-specific content.
    pub body: Body<'a>,
    /// Register sample, when present.
    pub regs: Option<RegsSample>,
    /// Timing payload, when present (exit records of a trace recorded with timing).
    pub timing: Option<Timing>,
    /// What this version could not interpret.
    pub unknown: Unknown<'a>,
}

impl<'a> Record<'a> {
    /// A record with no register sample and nothing unknown.
    pub fn new(seq: u64, vcpu: u32, body: Body<'a>) -> Self {
        Record { seq, vcpu, body, regs: None, timing: None, unknown: Unknown::default() }
    }

    /// Adds a register sample.
    pub fn with_regs(mut self, regs: RegsSample) -> Self {
        self.regs = Some(regs);
        self
    }

    /// Adds a timing payload.
    pub fn with_timing(mut self, timing: Timing) -> Self {
        self.timing = Some(timing);
        self
    }
}

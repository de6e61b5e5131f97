//! One vCPU's side of a machine: everything its thread touches at each exit. Its
//! `kvm_run` page, the exit it stands at (decoded once after `KVM_RUN`, then shared by the
//! devices, the recorder, an answer from the trace and replay's matching), its recorder,
//! and its exit and interrupt counts. The devices and guest memory are the machine's.
//!
//! Nothing here is shared with another vCPU: with several, each gets one of these on its
//! own thread, recording its own exits without a lock on the per-exit path.

use kvm_bindings::kvm_regs;
use kvm_ioctls::VcpuFd;
use vmrr_format::{Body, WriteError};

use crate::devices::bus::{Answer, Bus};
use crate::exit::answer::{self, AnswerError};
use crate::exit::{Exit, RipConvention, RunView};
use crate::kvm::entry::{self, Entry};
use crate::kvm::system::KvmError;
use crate::page::PAGE_BYTES;
use crate::record::Recorder;
use crate::sys::run_page::{RunPage, off};

/// `KVM_SYNC_X86_REGS`.
const SYNC_X86_REGS: u64 = 1;
/// `KVM_SYNC_X86_EVENTS`.
const SYNC_X86_EVENTS: u64 = 4;

/// A vCPU's per-exit state (see the module docs).
pub(crate) struct Vcpu {
    page: RunPage,
    exit: Exit,
    recorder: Option<Recorder>,
    rip: RipConvention,
    system_event_data: bool,
    exits: u64,
    interrupts: u64,
    window_requested: bool,
    /// The sequence number of the last exit recorded.
    last_seq: Option<u64>,
    /// Where the devices' answers go: the largest access one exit makes (string I/O
    /// fills at most the port-I/O data page).
    reply: Box<[u8]>,
}

impl Vcpu {
    /// The vCPU whose `kvm_run` region `page` maps (writable), on a host with this RIP
    /// convention and `KVM_CAP_SYSTEM_EVENT_DATA` answer.
    pub(crate) fn new(page: RunPage, rip: RipConvention, system_event_data: bool) -> Self {
        let exit = RunView::new(page.bytes())
            .expect("RunPage::map checked that struct kvm_run fits")
            .exit(system_event_data, rip);
        Vcpu {
            page,
            exit,
            recorder: None,
            rip,
            system_event_data,
            exits: 0,
            interrupts: 0,
            window_requested: false,
            last_seq: None,
            reply: vec![0; PAGE_BYTES].into_boxed_slice(),
        }
    }

    /// The `kvm_run` page as it is now (the interrupt flag and injection readiness change
    /// without an exit: see `entry::complete_pending`).
    pub(crate) fn view(&self) -> RunView<'_> {
        RunView::new(self.page.bytes()).expect("RunPage::map checked that struct kvm_run fits")
    }

    /// Enters the guest until its next exit and decodes that exit, telling the recorder
    /// when the guest ran (per-exit timing). `false`: the entry was interrupted before any
    /// exit (a watchdog's kick), nothing to handle or record.
    ///
    /// # Errors
    /// `KVM_RUN` failed.
    #[inline]
    pub(crate) fn enter(&mut self, fd: &mut VcpuFd) -> Result<bool, KvmError> {
        if let Some(r) = self.recorder.as_mut() {
            r.entering();
        }
        if entry::enter(fd)? == Entry::Interrupted {
            return Ok(false);
        }
        if let Some(r) = self.recorder.as_mut() {
            r.exited();
        }
        self.exit = self.view().exit(self.system_event_data, self.rip);
        Ok(true)
    }

    /// The exit the vCPU stands at (before its first, what its page held when mapped).
    pub(crate) fn exit(&self) -> &Exit {
        &self.exit
    }

    /// The exit as a trace body, as answered so far.
    pub(crate) fn body(&self) -> Body<'_> {
        self.exit.body(self.page.bytes())
    }

    /// Hands the exit to `bus` and writes what the devices answer into the page and the
    /// decoded exit (a recording or plain run).
    ///
    /// # Errors
    /// The page is read-only or too short (it never is).
    #[inline]
    pub(crate) fn serve(&mut self, bus: &mut Bus) -> Result<(), AnswerError> {
        let answer = bus.handle_exit(&self.exit.body(self.page.bytes()), &mut self.reply);
        let page = self.page.bytes_mut().ok_or(AnswerError::ReadOnly)?;
        match answer {
            Answer::Nothing => Ok(()),
            Answer::Data(n) => answer::data(page, &mut self.exit, &self.reply[..n]),
            Answer::Msr { value, error } => answer::msr(page, &mut self.exit, value, error),
        }
    }

    /// Answers the exit with `reply` (a recorded exit's body), then shows `bus` the access
    /// as answered, so the devices' guest-visible state follows the recording; what they
    /// would answer is discarded.
    ///
    /// # Errors
    /// The reply does not fit the exit (nothing is written then).
    pub(crate) fn answer(&mut self, reply: &Body<'_>, bus: &mut Bus) -> Result<(), AnswerError> {
        let page = self.page.bytes_mut().ok_or(AnswerError::ReadOnly)?;
        answer::write(page, &mut self.exit, reply)?;
        bus.handle_exit(&self.exit.body(self.page.bytes()), &mut self.reply);
        Ok(())
    }

    /// Records the exit, as answered, when recording.
    ///
    /// # Errors
    /// The trace's.
    #[inline]
    pub(crate) fn record(&mut self) -> Result<(), WriteError> {
        if let Some(rec) = self.recorder.as_mut() {
            self.last_seq = Some(rec.record(self.exit.body(self.page.bytes()), self.exit.regs())?);
        }
        Ok(())
    }

    /// The sequence number of the last exit recorded, if any.
    pub(crate) fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }

    /// Counts an exit handled.
    pub(crate) fn count_exit(&mut self) {
        self.exits += 1;
    }

    /// Counts a line pulsed into KVM's in-kernel irqchip (`KVM_IRQ_LINE`, raised then
    /// lowered, as an edge-triggered ISA device does) and records it, when recording.
    ///
    /// # Errors
    /// The trace's.
    pub(crate) fn pulsed(&mut self, gsi: u32) -> Result<(), WriteError> {
        self.interrupts += 1;
        if let Some(rec) = self.recorder.as_mut() {
            let line = vmrr_format::IrqLine {
                gsi,
                level: vmrr_format::IRQ_LEVEL_PULSE,
                via: vmrr_format::IRQ_VIA_IOCTL,
            };
            rec.record_irq_line(line)?;
        }
        Ok(())
    }

    /// Exits handled.
    pub(crate) fn exits(&self) -> u64 {
        self.exits
    }

    /// Interrupts injected.
    pub(crate) fn interrupts(&self) -> u64 {
        self.interrupts
    }

    /// Sets both counters (a restore).
    pub(crate) fn set_counters(&mut self, exits: u64, interrupts: u64) {
        self.exits = exits;
        self.interrupts = interrupts;
    }

    /// Whether the vCPU can take an external interrupt before its next entry
    /// (`ready_for_interrupt_injection` and IF set).
    pub(crate) fn can_take_interrupt(&self) -> bool {
        let v = self.view();
        v.ready_for_interrupt_injection() && v.if_flag()
    }

    /// Queues external interrupt `vector` for the next entry (`KVM_INTERRUPT`) and records
    /// it. The caller has checked that the vCPU can take it.
    ///
    /// # Errors
    /// The ioctl's, or the trace's.
    pub(crate) fn inject(&mut self, fd: &VcpuFd, vector: u8) -> Result<(), InjectError> {
        crate::sys::vcpu_ioctl::interrupt(fd, vector).map_err(InjectError::Kvm)?;
        self.interrupts += 1;
        if let Some(rec) = self.recorder.as_mut() {
            rec.record_interrupt(vector, vmrr_format::INTERRUPT_EXTERNAL).map_err(InjectError::Trace)?;
        }
        Ok(())
    }

    /// Sets or withdraws `request_interrupt_window` for the next entry, recording changes.
    ///
    /// # Errors
    /// The trace's.
    pub(crate) fn set_interrupt_window(&mut self, request: bool) -> Result<(), WriteError> {
        if request == self.window_requested {
            return Ok(());
        }
        self.window_requested = request;
        if let Some(b) = self.page.bytes_mut().and_then(|p| p.get_mut(off::REQUEST_INTERRUPT_WINDOW)) {
            *b = u8::from(request);
        }
        if let Some(rec) = self.recorder.as_mut() {
            rec.record_window(request)?;
        }
        Ok(())
    }

    /// Stages `regs` and `events` in the `kvm_run` page's synced registers and marks them
    /// dirty (`KVM_SYNC_X86_REGS | KVM_SYNC_X86_EVENTS` in `kvm_dirty_regs`): the next
    /// `KVM_RUN` sets them before anything else, as `KVM_SET_REGS` and
    /// `KVM_SET_VCPU_EVENTS` would. Returns `false` (nothing staged) when the page is not
    /// writable.
    pub(crate) fn stage_synced(&mut self, regs: &kvm_regs, events: &kvm_bindings::kvm_vcpu_events) -> bool {
        use zerocopy::IntoBytes;
        let Some(page) = self.page.bytes_mut() else { return false };
        let put = |page: &mut [u8], at: usize, b: &[u8]| match page.get_mut(at..at + b.len()) {
            Some(dst) => {
                dst.copy_from_slice(b);
                true
            }
            None => false,
        };
        let dirty = page
            .get(off::DIRTY_REGS..off::DIRTY_REGS + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map_or(0, u64::from_ne_bytes);
        let mask = SYNC_X86_REGS | SYNC_X86_EVENTS;
        put(page, off::SYNC_REGS, regs.as_bytes())
            && put(page, off::SYNC_EVENTS, events.as_bytes())
            && put(page, off::DIRTY_REGS, &(dirty | mask).to_ne_bytes())
    }

    /// Whether registers staged by [`Self::stage_synced`] are still waiting for a
    /// `KVM_RUN` to apply them (KVM clears the bits it applied); clears the marks.
    pub(crate) fn synced_pending(&mut self) -> bool {
        let Some(page) = self.page.bytes_mut() else { return false };
        let Some(b) = page.get_mut(off::DIRTY_REGS..off::DIRTY_REGS + 8) else { return false };
        let dirty = <[u8; 8]>::try_from(&*b).map_or(0, u64::from_ne_bytes);
        b.copy_from_slice(&0u64.to_ne_bytes());
        dirty & (SYNC_X86_REGS | SYNC_X86_EVENTS) != 0
    }

    /// The recorder, when recording.
    pub(crate) fn recorder_mut(&mut self) -> Option<&mut Recorder> {
        self.recorder.as_mut()
    }

    /// Starts or stops recording: the previous recorder, if any.
    pub(crate) fn set_recorder(&mut self, recorder: Option<Recorder>) -> Option<Recorder> {
        std::mem::replace(&mut self.recorder, recorder)
    }
}

/// Injecting an interrupt failed.
#[derive(Debug)]
pub(crate) enum InjectError {
    /// `KVM_INTERRUPT` failed.
    Kvm(std::io::Error),
    /// The trace could not take the record.
    Trace(WriteError),
}

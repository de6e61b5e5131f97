//! How a run ends, and the limits that end it cleanly.

use std::time::Duration;

use vmrr_format::end_reason;

use crate::devices::StopRequest;
use crate::machine::fatal::FatalReport;

/// Limits that end a run cleanly.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// Stop after this many exits.
    pub max_exits: Option<u64>,
    /// Stop after this much wall-clock time.
    pub max_duration: Option<Duration>,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The guest wrote its status to the debug-exit port.
    GuestExit(u64),
    /// The guest halted with nothing that could wake it.
    Halted,
    /// Triple fault.
    Shutdown(Box<FatalReport>),
    /// KVM could not emulate an instruction.
    EmulationFailure(Box<FatalReport>),
    /// Another internal error.
    InternalError(Box<FatalReport>),
    /// VM entry failed.
    FailEntry(Box<FatalReport>),
    /// `KVM_EXIT_SYSTEM_EVENT` (type).
    SystemEvent(u32),
    /// An exit vmrr does not handle (recorded raw).
    Unhandled(u32),
    /// `max_exits` reached.
    MaxExits,
    /// `max_duration` passed.
    MaxDuration,
    /// Stopped on request.
    Stopped,
}

impl From<StopRequest> for Outcome {
    /// The outcome a device's stop request ends the run with: a power-off or a reset is the
    /// `KVM_EXIT_SYSTEM_EVENT` KVM itself would report for it.
    fn from(stop: StopRequest) -> Self {
        match stop {
            StopRequest::GuestExit(status) => Outcome::GuestExit(status),
            StopRequest::PowerOff => Outcome::SystemEvent(kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN),
            StopRequest::Reset => Outcome::SystemEvent(kvm_bindings::KVM_SYSTEM_EVENT_RESET),
        }
    }
}

impl Outcome {
    /// The trace's end-of-run reason.
    pub fn end_reason(&self) -> u32 {
        match self {
            Outcome::GuestExit(_) => end_reason::GUEST_EXIT,
            Outcome::Halted => end_reason::HLT,
            Outcome::Shutdown(_) => end_reason::SHUTDOWN,
            Outcome::EmulationFailure(_) => end_reason::EMULATION_FAILURE,
            Outcome::InternalError(_) => end_reason::INTERNAL_ERROR,
            Outcome::FailEntry(_) => end_reason::FAIL_ENTRY,
            Outcome::SystemEvent(_) => end_reason::SYSTEM_EVENT,
            Outcome::Unhandled(_) => end_reason::VMM_ERROR,
            Outcome::MaxExits => end_reason::MAX_EXITS,
            Outcome::MaxDuration => end_reason::MAX_SECONDS,
            Outcome::Stopped => end_reason::STOPPED,
        }
    }

    /// The status word for the end-of-run record.
    pub fn status(&self) -> u64 {
        match self {
            Outcome::GuestExit(s) => *s,
            Outcome::SystemEvent(t) | Outcome::Unhandled(t) => u64::from(*t),
            _ => 0,
        }
    }

    /// True for failures a repro is for (emulation failure, internal error, triple fault,
    /// failed entry, unhandled exit).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Outcome::Shutdown(_)
                | Outcome::EmulationFailure(_)
                | Outcome::InternalError(_)
                | Outcome::FailEntry(_)
                | Outcome::Unhandled(_)
        )
    }

    /// True when the guest asked for a reset (a Linux guest after a panic, with vmrr's
    /// default `panic=-1`): vmrr ends the run there rather than boot the guest again.
    pub fn is_reset(&self) -> bool {
        matches!(self, Outcome::SystemEvent(kvm_bindings::KVM_SYSTEM_EVENT_RESET))
    }

    /// True when `vmrr record` exits 5: a fatal exit, or a reset the guest asked for.
    pub fn is_guest_failure(&self) -> bool {
        self.is_fatal() || self.is_reset()
    }

    /// The fatal report, where there is one.
    pub fn report(&self) -> Option<&FatalReport> {
        match self {
            Outcome::Shutdown(r)
            | Outcome::EmulationFailure(r)
            | Outcome::InternalError(r)
            | Outcome::FailEntry(r) => Some(r),
            _ => None,
        }
    }

    /// Short name.
    pub fn name(&self) -> &'static str {
        end_reason::name(self.end_reason())
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// How it ended.
    pub outcome: Outcome,
    /// Exits handled.
    pub exits: u64,
    /// Interrupts injected.
    pub interrupts: u64,
    /// Wall-clock time in the run loop.
    pub elapsed: Duration,
}

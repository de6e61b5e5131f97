//! Which exits end a run ([`Ending`], [`ending_of`]): decided the same way for the
//! bootstrap processor's loop and the APs' threads.

use vmrr_format::{Body, kind};

/// A run-ending exit, before it is recorded and reported.
#[derive(Debug)]
pub(crate) enum Ending {
    Shutdown,
    InternalError,
    FailEntry,
    SystemEvent(u32),
    Unhandled,
}

/// Whether the exit `cpu` stands at ends the run (`Some(Some(..))`), is one the devices
/// handle (`Some(None)`), or is a debug stop (`None`).
pub(crate) fn ending_of(cpu: &crate::machine::vcpu::Vcpu) -> Option<Option<Ending>> {
    Some(match cpu.exit().kind() {
        kind::IO | kind::MMIO | kind::X86_RDMSR | kind::X86_WRMSR => None,
        kind::HLT | kind::IRQ_WINDOW_OPEN | kind::INTR => None,
        kind::SHUTDOWN => Some(Ending::Shutdown),
        kind::INTERNAL_ERROR => Some(Ending::InternalError),
        kind::FAIL_ENTRY => Some(Ending::FailEntry),
        kind::SYSTEM_EVENT => match cpu.body() {
            Body::SystemEvent(e) => Some(Ending::SystemEvent(e.event_type)),
            _ => Some(Ending::Unhandled),
        },
        kind::DEBUG => return None,
        _ => Some(Ending::Unhandled),
    })
}

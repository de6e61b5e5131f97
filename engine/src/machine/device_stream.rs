//! A device thread's records: [`StreamEvents`] turns the queue device's events
//! ([`DeviceEvents`]) into records on its own stream of the shared trace, under the
//! record-header `vcpu` value `DEVICE_THREAD_BASE + n` of device thread `n` (format 1.2):
//! each buffer write a `GUEST_WRITE`, each completion an `IRQ_LINE` (a pulse, through an
//! irqfd). The writer must announce both (`WriterOptions::guest_writes`, `irq_lines` and
//! `threads`: [`crate::session::SessionConfig::device_threads`] says when).

use vmrr_format::{Appender, Body, IRQ_LEVEL_PULSE, IRQ_VIA_IRQFD, IrqLine, TraceStream, WriteError};

use crate::machine::queue_device::DeviceEvents;

/// Device thread `thread`'s events as records on `stream` (see the module docs).
pub struct StreamEvents {
    stream: TraceStream,
    vcpu: u32,
}

impl std::fmt::Debug for StreamEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamEvents").field("vcpu", &format_args!("{:#x}", self.vcpu)).finish()
    }
}

impl StreamEvents {
    /// Records for device thread `thread` (0 and up) on `stream`.
    pub fn new(stream: TraceStream, thread: u32) -> Self {
        StreamEvents { stream, vcpu: Appender::Device(thread).field() }
    }
}

impl DeviceEvents for StreamEvents {
    fn guest_write(&mut self, gpa: u64, data: &[u8]) -> Result<(), WriteError> {
        self.stream.append_guest_write(self.vcpu, gpa, data).map(|_| ())
    }

    fn irq_line(&mut self, gsi: u32) -> Result<(), WriteError> {
        let line = IrqLine { gsi, level: IRQ_LEVEL_PULSE, via: IRQ_VIA_IRQFD };
        self.stream.append(self.vcpu, Body::IrqLine(line), None).map(|_| ())
    }
}

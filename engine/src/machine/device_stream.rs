//! A device thread's records: [`StreamEvents`] turns the queue device's events
//! ([`DeviceEvents`]) into records on its own stream of the shared trace, under the
//! record-header `vcpu` value [`DEVICE_THREAD_BASE`] `+ n` of device thread `n`.
//!
//! Guest writes are `GUEST_WRITE` records. The completion interrupt has no record yet: the
//! format's `IRQ_LINE` body (1.2) is not in this build's format crate. When it is, the
//! one line to add is in [`StreamEvents::irq_line`]: append
//! `Body::IrqLine(IrqLine { gsi, level: IRQ_LEVEL_PULSE, via: IRQ_VIA_IRQFD })`, with the
//! writer's `irq_lines` (and `threads`) options set where `guest_writes` is
//! (`SessionConfig::device_threads`).

use vmrr_format::{TraceStream, WriteError};

use crate::machine::queue_device::DeviceEvents;

/// The first record-header `vcpu` value that names a device thread (format 1.2): device
/// thread `n` records as `DEVICE_THREAD_BASE + n`, below it are vCPU indexes.
pub const DEVICE_THREAD_BASE: u32 = 0x8000_0000;

/// Device thread `thread`'s events as records on `stream` (see the module docs).
#[derive(Debug)]
pub struct StreamEvents {
    stream: TraceStream,
    vcpu: u32,
}

impl StreamEvents {
    /// Records for device thread `thread` (0 and up) on `stream`.
    pub fn new(stream: TraceStream, thread: u32) -> Self {
        StreamEvents { stream, vcpu: DEVICE_THREAD_BASE | thread }
    }
}

impl DeviceEvents for StreamEvents {
    fn guest_write(&mut self, gpa: u64, data: &[u8]) -> Result<(), WriteError> {
        self.stream.append_guest_write(self.vcpu, gpa, data).map(|_| ())
    }

    fn irq_line(&mut self, _gsi: u32) -> Result<(), WriteError> {
        // No IRQ_LINE body in this format version (see the module docs): nothing to append.
        Ok(())
    }
}

//! One exit, decoded once: what the devices, the recorder, an answer from the trace and
//! replay's matching all look at.

use vmrr_format::{Body, InternalError, Io, RawExit, RegsSample, SystemEvent, Words};

/// An exit as [`super::RunView::exit`] decoded it from its vCPU's `kvm_run` page, kept
/// while the vCPU stands at it. The trace body's fixed fields are held here; its
/// variable-length part (port I/O data, internal-error or system-event words, a raw exit
/// union) stays in the page, where an answer writes an IN's data, and [`Exit::body`]
/// borrows it from there. Nothing is decoded again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    reason: u32,
    /// The body, its page-borrowed part empty.
    body: Body<'static>,
    /// Where that part lies in the page: offset and length.
    span: (usize, usize),
    regs: Option<RegsSample>,
}

impl Exit {
    #[inline]
    pub(super) fn new(
        reason: u32,
        body: Body<'static>,
        span: (usize, usize),
        regs: Option<RegsSample>,
    ) -> Self {
        Exit { reason, body, span, regs }
    }

    /// The exit as a trace body; `page` is the `kvm_run` page it was decoded from (an IN
    /// shows the data it was answered with).
    #[inline]
    pub fn body<'a>(&self, page: &'a [u8]) -> Body<'a> {
        let bytes = self.span.0.checked_add(self.span.1).and_then(|end| page.get(self.span.0..end));
        let bytes = bytes.unwrap_or(&[]);
        match self.body {
            Body::Io(io) => Body::Io(Io { data: bytes, ..io }),
            Body::InternalError(e) => Body::InternalError(InternalError { data: Words::Le(bytes), ..e }),
            Body::SystemEvent(e) => Body::SystemEvent(SystemEvent { data: Words::Le(bytes), ..e }),
            Body::RawExit(r) => Body::RawExit(RawExit { data: bytes, ..r }),
            other => other,
        }
    }

    /// The record kind (`vmrr_format::kind`).
    #[inline]
    pub fn kind(&self) -> u16 {
        self.body.kind()
    }

    /// `kvm_run.exit_reason`.
    pub fn reason(&self) -> u32 {
        self.reason
    }

    /// RIP, RSP and RFLAGS at the exit, with this host's RIP convention, when KVM synced
    /// them.
    #[inline]
    pub fn regs(&self) -> Option<RegsSample> {
        self.regs
    }

    /// The fixed fields, the variable-length part empty.
    pub(super) fn fixed(&self) -> Body<'static> {
        self.body
    }

    /// The fixed fields (an answer updates an MMIO read's bytes, an MSR's value and error,
    /// a hypercall's return value here, beside the page).
    pub(super) fn fixed_mut(&mut self) -> &mut Body<'static> {
        &mut self.body
    }

    /// Offset and length of the variable-length part in the page.
    pub(super) fn span(&self) -> (usize, usize) {
        self.span
    }
}

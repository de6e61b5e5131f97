//! Where a recorder's records go: a trace of its own (one vCPU: the writer's chunk buffer
//! directly), or its stream of a trace several threads share (one per vCPU and device
//! thread: `vmrr_format::SharedTrace`). The recorder's hot path is the same call either way.

use vmrr_format::{
    Body, FileHeader, RegsSample, SharedTrace, Timing, TraceStream, TraceWriter, WriteError, WriterSummary,
};

/// A recorder's output (see the module docs).
// One per recorder, on no hot path by size: boxing the writer would add an indirection per
// append.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Out {
    /// The whole trace.
    Whole(TraceWriter),
    /// One stream of a shared trace; `trace` is kept by the recorder that finishes it.
    Stream {
        /// This thread's stream.
        stream: TraceStream,
        /// The trace, when this recorder closes it.
        trace: Option<SharedTrace>,
    },
}

impl Out {
    #[inline]
    pub(crate) fn append(
        &mut self,
        vcpu: u32,
        body: Body<'_>,
        regs: Option<RegsSample>,
    ) -> Result<u64, WriteError> {
        match self {
            Out::Whole(w) => w.append(vcpu, body, regs),
            Out::Stream { stream, .. } => stream.append(vcpu, body, regs),
        }
    }

    #[inline]
    pub(crate) fn append_timed(
        &mut self,
        vcpu: u32,
        body: Body<'_>,
        regs: Option<RegsSample>,
        timing: Timing,
    ) -> Result<u64, WriteError> {
        match self {
            Out::Whole(w) => w.append_timed(vcpu, body, regs, timing),
            Out::Stream { stream, .. } => stream.append_timed(vcpu, body, regs, timing),
        }
    }

    pub(crate) fn append_guest_write(&mut self, vcpu: u32, gpa: u64, data: &[u8]) -> Result<u64, WriteError> {
        match self {
            Out::Whole(w) => w.append_guest_write(vcpu, gpa, data),
            Out::Stream { stream, .. } => stream.append_guest_write(vcpu, gpa, data),
        }
    }

    pub(crate) fn header(&self) -> &FileHeader {
        match self {
            Out::Whole(w) => w.header(),
            Out::Stream { stream, .. } => stream.header(),
        }
    }

    pub(crate) fn next_seq(&self) -> u64 {
        match self {
            Out::Whole(w) => w.next_seq(),
            Out::Stream { stream, .. } => stream.next_seq(),
        }
    }

    pub(crate) fn sync(&mut self) -> Result<(), WriteError> {
        match self {
            Out::Whole(w) => w.sync(),
            Out::Stream { stream, .. } => stream.sync(),
        }
    }

    pub(crate) fn poll_flush(&mut self) -> Result<(), WriteError> {
        match self {
            Out::Whole(w) => w.poll_flush(),
            Out::Stream { stream, .. } => stream.poll_flush(),
        }
    }

    /// Finishes the trace: this recorder's own, or the shared one it keeps (every stream's
    /// records collected first). A stream without the trace hands its records over.
    pub(crate) fn finish(self) -> Result<WriterSummary, WriteError> {
        match self {
            Out::Whole(w) => w.finish(),
            Out::Stream { stream, trace: Some(t) } => {
                drop(stream);
                t.finish()
            }
            Out::Stream { mut stream, trace: None } => {
                stream.flush()?;
                Err(WriteError::Unencodable {
                    field: "finish",
                    detail: "a stream of a shared trace is finished by the recorder that keeps the trace"
                        .into(),
                })
            }
        }
    }

    /// The trace a whole writer becomes, shared by several streams: this recorder keeps
    /// one stream and the trace. Already shared: the trace it keeps.
    pub(crate) fn share(self) -> Result<(Out, SharedTrace), WriteError> {
        match self {
            Out::Whole(w) => {
                let t = w.into_shared();
                Ok((Out::Stream { stream: t.stream(), trace: Some(t.clone()) }, t))
            }
            Out::Stream { stream, trace: Some(t) } => Ok((Out::Stream { stream, trace: Some(t.clone()) }, t)),
            Out::Stream { trace: None, .. } => Err(WriteError::Unencodable {
                field: "share",
                detail: "only the recorder that keeps a shared trace can hand out its streams".into(),
            }),
        }
    }
}

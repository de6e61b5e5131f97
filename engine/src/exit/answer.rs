//! Answering an exit: writing a reply (an IN's data, an MMIO read's bytes, an RDMSR's
//! value and #GP, a WRMSR's #GP, a hypercall's return value) into the `kvm_run` page, where
//! KVM completes the instruction from at the next entry.

use vmrr_format::cursor::ShortRead;
use vmrr_format::{Body, Direction};

use crate::exit::view::RunView;
use crate::sys::run_page::off;

/// A reply that does not fit the exit it was given for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// The reply is for another kind of exit.
    #[error("a {reply} record cannot answer a {live} exit")]
    Kind {
        /// The reply's kind.
        reply: &'static str,
        /// The live exit's kind.
        live: &'static str,
    },
    /// The page was mapped read-only (a recorder's view, not the VMM's).
    #[error("the kvm_run page is mapped read-only")]
    ReadOnly,
    /// The page is too short for the field (a `kvm_run` page never is).
    #[error(transparent)]
    Short(#[from] ShortRead),
}

fn put(page: &mut [u8], at: usize, bytes: &[u8]) -> Result<(), AnswerError> {
    let short = ShortRead { offset: at, need: bytes.len(), have: page.len().saturating_sub(at) };
    let end = at.checked_add(bytes.len()).ok_or(short)?;
    page.get_mut(at..end).ok_or(short)?.copy_from_slice(bytes);
    Ok(())
}

/// Writes `reply` into the page of the exit it shows. A reply of the exit's own kind that
/// carries nothing to answer (an OUT, an MMIO write, a HLT) writes nothing. An IN gets the
/// reply's bytes (fewer than the guest asked for: the rest reads as all ones, as from an
/// unclaimed port).
///
/// # Errors
/// The reply is of another kind, or for another direction, than the exit.
pub fn write(page: &mut [u8], reply: &Body<'_>) -> Result<(), AnswerError> {
    let view = RunView::new(page)?;
    let live = view.body(false);
    let mismatch = || AnswerError::Kind {
        reply: vmrr_format::kind::name(reply.kind()),
        live: vmrr_format::kind::name(live.kind()),
    };
    if reply.kind() != live.kind() {
        return Err(mismatch());
    }
    match (live, reply) {
        (Body::Io(l), Body::Io(r)) if l.direction == Direction::In && r.direction == Direction::In => {
            let len = l.data.len();
            let at = usize::try_from(view.io_data_offset()).unwrap_or(usize::MAX);
            let n = len.min(r.data.len());
            put(page, at, &r.data[..n])?;
            let fill = vec![0xff; len - n];
            put(page, at + n, &fill)
        }
        (Body::Io(l), Body::Io(r)) if l.direction != r.direction => Err(mismatch()),
        (Body::Mmio(l), Body::Mmio(r)) if !l.is_write && !r.is_write => {
            let n = usize::try_from(l.len).unwrap_or(8).min(8);
            put(page, off::EXIT + off::mmio::DATA, &r.data[..n])
        }
        (Body::Mmio(l), Body::Mmio(r)) if l.is_write != r.is_write => Err(mismatch()),
        (Body::RdMsr(_), Body::RdMsr(r)) => {
            put(page, off::EXIT + off::msr::DATA, &r.data.to_le_bytes())?;
            put(page, off::EXIT + off::msr::ERROR, &[r.error])
        }
        (Body::WrMsr(_), Body::WrMsr(r)) => put(page, off::EXIT + off::msr::ERROR, &[r.error]),
        (Body::Hypercall(_), Body::Hypercall(r)) => {
            put(page, off::EXIT + off::hypercall::RET, &r.ret.to_le_bytes())
        }
        _ => Ok(()),
    }
}

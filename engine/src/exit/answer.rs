//! Answering an exit: writing a reply (an IN's data, an MMIO read's bytes, an RDMSR's
//! value and #GP, a WRMSR's #GP, a hypercall's return value) into the `kvm_run` page, where
//! KVM completes the instruction from at the next entry, and into the decoded [`Exit`], so
//! that what is recorded or matched afterwards is the exit as answered. The devices'
//! answers (a recording run) and the trace's (replay) are written the same way.

use vmrr_format::cursor::ShortRead;
use vmrr_format::{Body, Direction};

use super::decoded::Exit;
use crate::sys::run_page::off;

/// A reply that does not fit the exit it was given for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// The reply is for another kind of exit, or another direction.
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

/// Whether `reply` can answer `live`: the same kind and, for port I/O and MMIO, the same
/// direction. Replay checks this before answering (a difference is a divergence).
pub fn fits(live: &Exit, reply: &Body<'_>) -> bool {
    match (live.fixed(), reply) {
        (Body::Io(l), Body::Io(r)) => l.direction == r.direction,
        (Body::Mmio(l), Body::Mmio(r)) => l.is_write == r.is_write,
        (l, r) => l.kind() == r.kind(),
    }
}

/// Writes `reply` into `page` (the page `live` was decoded from) and `live`. A reply of the
/// exit's own kind that carries nothing to answer (an OUT, an MMIO write, a HLT) writes
/// nothing. An IN gets the reply's bytes (fewer than the guest asked for: the rest reads as
/// all ones, as from an unclaimed port).
///
/// # Errors
/// The reply does not [fit](fits) the exit; nothing is written then.
pub fn write(page: &mut [u8], live: &mut Exit, reply: &Body<'_>) -> Result<(), AnswerError> {
    if !fits(live, reply) {
        return Err(AnswerError::Kind {
            reply: vmrr_format::kind::name(reply.kind()),
            live: vmrr_format::kind::name(live.kind()),
        });
    }
    match (live.fixed(), reply) {
        (Body::Io(l), Body::Io(r)) if l.direction == Direction::In => data(page, live, r.data),
        (Body::Mmio(l), Body::Mmio(r)) if !l.is_write => {
            let n = usize::try_from(l.len).unwrap_or(8).min(8);
            data(page, live, &r.data[..n])
        }
        (Body::RdMsr(_) | Body::WrMsr(_), Body::RdMsr(r) | Body::WrMsr(r)) => {
            msr(page, live, r.data, r.error)
        }
        (Body::Hypercall(_), Body::Hypercall(r)) => {
            put(page, off::EXIT + off::hypercall::RET, &r.ret.to_le_bytes())?;
            if let Body::Hypercall(h) = live.fixed_mut() {
                h.ret = r.ret;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Answers an IN or an MMIO read with `bytes`: fewer than the access reads leave the rest
/// all ones (as an unclaimed port or address reads), more are cut. Other exits: nothing.
///
/// # Errors
/// The page is too short for the exit's data.
pub fn data(page: &mut [u8], live: &mut Exit, bytes: &[u8]) -> Result<(), AnswerError> {
    let (at, len) = live.span();
    match live.fixed_mut() {
        Body::Io(io) if io.direction == Direction::In => {
            let n = len.min(bytes.len());
            put(page, at, &bytes[..n])?;
            let rest = page.get_mut(at + n..at + len).ok_or(ShortRead { offset: at, need: len, have: 0 })?;
            rest.fill(0xff);
            Ok(())
        }
        Body::Mmio(m) if !m.is_write => {
            let len = usize::try_from(m.len).unwrap_or(8).min(8);
            let mut answered = [0xffu8; 8];
            let n = len.min(bytes.len());
            answered[..n].copy_from_slice(&bytes[..n]);
            answered[len..].fill(0);
            put(page, off::EXIT + off::mmio::DATA, &answered[..len])?;
            m.data = answered;
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Answers an RDMSR with `value` and `error` (non-zero: #GP), or a WRMSR with `error`.
/// Other exits: nothing.
///
/// # Errors
/// The page is too short (it never is).
pub fn msr(page: &mut [u8], live: &mut Exit, value: u64, error: u8) -> Result<(), AnswerError> {
    match live.fixed_mut() {
        Body::RdMsr(m) => {
            put(page, off::EXIT + off::msr::DATA, &value.to_le_bytes())?;
            put(page, off::EXIT + off::msr::ERROR, &[error])?;
            m.data = value;
            m.error = error;
        }
        Body::WrMsr(m) => {
            put(page, off::EXIT + off::msr::ERROR, &[error])?;
            m.error = error;
        }
        _ => {}
    }
    Ok(())
}

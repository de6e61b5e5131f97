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

#[cfg(test)]
mod tests {
    use vmrr_format::{Hypercall, Io, Mmio, Msr};

    use super::*;
    use crate::exit::page;
    use crate::exit::{RipConvention, RunView};

    fn decoded(p: &[u8]) -> Exit {
        RunView::new(p).expect("page").exit(true, RipConvention::default())
    }

    /// Answers the exit `live` shows with `reply`; checks that the decoded exit, as
    /// answered, is what decoding the page afresh gives; returns the answered body.
    fn answered(live: Body<'_>, reply: Body<'_>) -> (Vec<u8>, Result<(), AnswerError>) {
        let mut p = page::with(&live, None);
        let mut e = decoded(&p);
        let r = write(&mut p, &mut e, &reply);
        assert_eq!(e.body(&p), decoded(&p).body(&p), "the decoded exit follows its page");
        (p, r)
    }

    fn body(p: &[u8]) -> Body<'_> {
        RunView::new(p).expect("page").body(true)
    }

    fn io(direction: Direction, data: &[u8]) -> Body<'_> {
        let count = u32::try_from(data.len()).expect("short");
        Body::Io(Io { direction, size: 1, port: 0x3f8, count, data })
    }

    fn mmio(is_write: bool, len: u32, data: [u8; 8]) -> Body<'static> {
        Body::Mmio(Mmio { phys_addr: 0xd000_0000, len, is_write, data })
    }

    #[test]
    fn an_in_reads_the_reply_and_all_ones_past_it() {
        let (p, r) = answered(io(Direction::In, &[0; 4]), io(Direction::In, b"ab"));
        r.expect("fits");
        assert_eq!(body(&p), io(Direction::In, b"ab\xff\xff"));
        assert_eq!(p[page::PIO..page::PIO + 4], *b"ab\xff\xff", "at the data offset");
        let (p, r) = answered(io(Direction::In, &[0; 2]), io(Direction::In, b"wxyz"));
        r.expect("fits");
        assert_eq!(body(&p), io(Direction::In, b"wx"), "a longer reply is cut");
    }

    #[test]
    fn an_mmio_read_gets_its_length_of_the_reply() {
        let (p, r) = answered(mmio(false, 2, [0; 8]), mmio(false, 2, [7, 8, 9, 0, 0, 0, 0, 0]));
        r.expect("fits");
        assert_eq!(body(&p), mmio(false, 2, [7, 8, 0, 0, 0, 0, 0, 0]));
        assert_eq!(p[off::EXIT + off::mmio::DATA..][..3], [7, 8, 0]);
    }

    #[test]
    fn msrs_and_hypercalls_get_their_values() {
        let m = Msr { index: 0x10, reason: 8, data: 0, error: 0 };
        let (p, r) = answered(Body::RdMsr(m), Body::RdMsr(Msr { data: 0xabcd, error: 1, ..m }));
        r.expect("fits");
        assert_eq!(body(&p), Body::RdMsr(Msr { data: 0xabcd, error: 1, ..m }));
        let w = Msr { data: 0x55, ..m };
        let (p, r) = answered(Body::WrMsr(w), Body::WrMsr(Msr { data: 0x66, error: 1, ..w }));
        r.expect("fits");
        assert_eq!(body(&p), Body::WrMsr(Msr { error: 1, ..w }), "only #GP is a WRMSR's answer");
        let h = Hypercall { nr: 1, args: [0; 6], ret: 0, flags: 0 };
        let (p, r) = answered(Body::Hypercall(h), Body::Hypercall(Hypercall { ret: 42, ..h }));
        r.expect("fits");
        assert_eq!(body(&p), Body::Hypercall(Hypercall { ret: 42, ..h }));
    }

    #[test]
    fn exits_without_an_answer_are_left_as_they_are() {
        for (live, reply) in [
            (io(Direction::Out, b"hi"), io(Direction::Out, b"no")),
            (mmio(true, 4, [1; 8]), mmio(true, 4, [2; 8])),
            (Body::Hlt, Body::Hlt),
        ] {
            let before = page::with(&live, None);
            let (p, r) = answered(live, reply);
            r.expect("fits");
            assert!(p == before, "{live:?}");
        }
    }

    #[test]
    fn a_reply_of_another_kind_or_direction_writes_nothing() {
        let m = Msr { index: 0x10, reason: 8, data: 0, error: 0 };
        for (live, reply) in [
            (io(Direction::In, &[0]), io(Direction::Out, b"x")),
            (mmio(false, 4, [0; 8]), mmio(true, 4, [1; 8])),
            (Body::RdMsr(m), Body::WrMsr(m)),
            (Body::Hlt, io(Direction::In, b"x")),
        ] {
            let before = page::with(&live, None);
            assert!(!fits(&decoded(&before), &reply));
            let (p, r) = answered(live, reply);
            assert!(matches!(r, Err(AnswerError::Kind { .. })), "{live:?}");
            assert!(p == before, "{live:?}");
        }
    }

    #[test]
    fn the_devices_answers_go_the_same_way() {
        let mut p = page::with(&io(Direction::In, &[0; 3]), None);
        let mut e = decoded(&p);
        data(&mut p, &mut e, &[5]).expect("in");
        assert_eq!(e.body(&p), io(Direction::In, &[5, 0xff, 0xff]));
        let mut p = page::with(&Body::RdMsr(Msr { index: 0x10, reason: 8, data: 0, error: 0 }), None);
        let mut e = decoded(&p);
        msr(&mut p, &mut e, 9, 0).expect("rdmsr");
        assert_eq!(e.body(&p), body(&p));
        assert!(matches!(body(&p), Body::RdMsr(m) if m.data == 9));
    }
}

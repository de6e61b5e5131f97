//! The seal every fixed structure of a trace ends with: the CRC32C of the bytes before it
//! (file header, chunk header, index block, trailer), written by one function and checked
//! by another, so the four structures cannot drift apart.

use crate::bytes::u64_from;
use crate::cursor::u32_at;
use crate::error::{DecodeError, Reason};

/// Appends the CRC32C of `out[start..]`: the structure that began at `start` is sealed.
#[inline]
pub(crate) fn seal(out: &mut Vec<u8>, start: usize) {
    let crc = crc32c::crc32c(out.get(start..).unwrap_or(&[]));
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Checks the CRC32C stored at `crc_off` in `block` against the bytes `[0, crc_off)`.
/// `block` starts at file offset `at`; the error names the CRC's own offset.
///
/// # Errors
/// [`Reason::Checksum`] for `what` when they differ, [`Reason::Truncated`] when `block` is
/// shorter than `crc_off + 4`.
pub(crate) fn check(block: &[u8], crc_off: usize, what: &'static str, at: u64) -> Result<(), DecodeError> {
    let (Some(covered), Some(stored)) = (block.get(..crc_off), u32_at(block, crc_off)) else {
        return Err(DecodeError::at(
            at,
            Reason::Truncated {
                what,
                need: u64_from(crc_off.saturating_add(4)),
                have: u64_from(block.len()),
            },
        ));
    };
    let computed = crc32c::crc32c(covered);
    if stored != computed {
        return Err(DecodeError::at(at + u64_from(crc_off), Reason::Checksum { what, stored, computed }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_block_checks_and_a_flipped_bit_does_not() {
        let mut b = b"prefix".to_vec();
        let start = b.len();
        b.extend_from_slice(b"structure");
        seal(&mut b, start);
        let block = &b[start..];
        assert_eq!(check(block, block.len() - 4, "thing", 100), Ok(()));
        let mut bad = block.to_vec();
        bad[0] ^= 1;
        let e = check(&bad, bad.len() - 4, "thing", 100).expect_err("flipped");
        assert_eq!(e.location.offset, 100 + 9);
        assert!(matches!(e.reason, Reason::Checksum { what: "thing", .. }));
        assert!(matches!(
            check(&bad[..5], 9, "thing", 0),
            Err(DecodeError { reason: Reason::Truncated { .. }, .. })
        ));
    }
}

//! Entry points for fuzzers (`fuzz/`) and the stable mutation tests: each reads untrusted
//! bytes the way vmrr does and must return, without panicking and in bounded memory, for
//! every input.

use crate::{TraceReader, decode, describe, encode, verify};

/// Reads `data` as a whole trace file: every record (described as text and JSON, and
/// re-encoded: what decodes must encode to a record that decodes equal), then `verify`.
pub fn read_trace(data: &[u8]) {
    let Ok(mut r) = TraceReader::from_bytes(data.to_vec(), "fuzz") else { return };
    let mut buf = Vec::new();
    let mut n = 0u32;
    while let Some(item) = r.next_record_raw() {
        let Ok((rec, raw)) = item else { continue };
        let _ = describe::record_line(&rec);
        let _ = describe::record_json(&rec);
        let _ = raw;
        buf.clear();
        if encode(&rec, &mut buf).is_ok() {
            // What was read writes back to a record that reads the same.
            let again = decode(&buf).map(|(r, _)| r);
            assert_eq!(again.as_ref().ok(), Some(&rec), "a decoded record survives re-encoding");
        }
        n += 1;
        if n > 1_000_000 {
            break;
        }
    }
    if let Ok(mut r) = TraceReader::from_bytes(data.to_vec(), "fuzz") {
        let _ = verify(&mut r);
    }
}

/// Decodes `data` as one record (the part of the reader that runs inside a chunk).
pub fn decode_record(data: &[u8]) {
    if let Ok((rec, used)) = decode(data) {
        assert!(used <= data.len());
        let _ = describe::record_json(&rec);
    }
}

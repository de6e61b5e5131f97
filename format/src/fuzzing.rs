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

/// Reads `data` as a bundle the way `vmrr replay` does, offline: manifest, unpack (memory
/// files capped at 64 MiB so a run stays small), then the trace's overview and, through
/// `check`, every snapshot it names (the engine passes its chain loader). Must return
/// without panicking and in bounded memory for every input; nothing is written outside a
/// private temporary directory.
///
/// The input is tried as given and again with every checksum recomputed (see
/// [`fix_bundle_checksums`]), so mutations reach what lies behind them.
pub fn read_bundle(data: &[u8], check: &dyn Fn(&std::path::Path)) {
    read_bundle_once(data, check);
    let mut fixed = data.to_vec();
    if fix_bundle_checksums(&mut fixed) {
        read_bundle_once(&fixed, check);
    }
}

fn read_bundle_once(data: &[u8], check: &dyn Fn(&std::path::Path)) {
    use crate::{bundle, layout, overview};
    let Ok(dir) = tempfile::tempdir() else { return };
    let src = dir.path().join("fuzz.vmrrb");
    let out = dir.path().join("out");
    if std::fs::write(&src, data).is_err() || std::fs::create_dir(&out).is_err() {
        return;
    }
    let budgets = bundle::Budgets { max_mem: 64 << 20, max_extract: 256 << 20 };
    let Ok(u) = bundle::unpack(&src, &out, &budgets, None) else { return };
    if bundle::arrange(&out).is_err() {
        return;
    }
    if let Ok(o) = overview::scan(&u.trace) {
        let root = layout::snapshots_of(&u.trace);
        for c in o.checkpoints.iter().take(16) {
            check(&layout::snapshot_dir(&root, c.snapshot_id));
        }
    }
}

/// Recomputes a bundle's checksums in place: each entry's payload CRC (when the manifest
/// parses and the payload lies inside the file; the manifest is rewritten only when that
/// keeps its length), the manifest's and the header's. For fuzzing and crafted test files.
/// False when `b` is too short or its manifest does not fit.
pub fn fix_bundle_checksums(b: &mut [u8]) -> bool {
    const HEADER: usize = 32;
    if b.len() < HEADER {
        return false;
    }
    let Some(mlen) = crate::cursor::u64_at(b, 16) else { return false };
    let Some(mend) = usize::try_from(mlen).ok().and_then(|m| m.checked_add(HEADER)).filter(|e| *e <= b.len())
    else {
        return false;
    };
    if let Ok(mut m) = serde_json::from_slice::<crate::bundle::Manifest>(&b[HEADER..mend]) {
        for e in &mut m.entries {
            let range = usize::try_from(e.offset)
                .ok()
                .zip(usize::try_from(e.stored).ok())
                .and_then(|(o, l)| Some(o..o.checked_add(l)?))
                .filter(|r| r.end <= b.len());
            if let Some(r) = range {
                e.crc32c = crc32c::crc32c(&b[r]);
            }
        }
        if let Ok(json) = serde_json::to_vec(&m) {
            if json.len() == mend - HEADER {
                b[HEADER..mend].copy_from_slice(&json);
            }
        }
    }
    let mcrc = crc32c::crc32c(&b[HEADER..mend]);
    b[24..28].copy_from_slice(&mcrc.to_le_bytes());
    let hcrc = crc32c::crc32c(&b[..28]);
    b[28..32].copy_from_slice(&hcrc.to_le_bytes());
    true
}

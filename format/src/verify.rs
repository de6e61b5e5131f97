//! Whole-file checks (`vmrr verify`) and summaries (`vmrr stats`).
//!
//! Both stream the file once in bounded memory.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::error::{DecodeError, ReadError};
use crate::kind;
use crate::reader::TraceReader;
use crate::record::Body;

/// One damaged region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Damage {
    /// File offset (the chunk's, for damage inside a chunk payload).
    pub offset: u64,
    /// Offset inside the chunk's decompressed payload, where the damage is there.
    pub in_chunk: Option<u64>,
    /// Sequence number concerned, where known.
    pub seq: Option<u64>,
    /// What is wrong.
    pub reason: String,
}

impl Damage {
    fn from(e: &DecodeError) -> Self {
        Damage {
            offset: e.location.offset,
            in_chunk: e.location.in_chunk,
            seq: e.location.seq,
            reason: e.reason.to_string(),
        }
    }
}

/// Result of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// True when the file is intact: every chunk valid and, when there is an index, an
    /// index that agrees with the chunks. A missing index (a writer that did not finish,
    /// FORMAT.md §2) and gaps in sequence numbers between intact records (§4.1) do not make
    /// a file damaged; both are reported.
    pub ok: bool,
    /// `"MAJOR.MINOR"`.
    pub format_version: String,
    /// Records that decoded.
    pub records_readable: u64,
    /// Chunks that were intact.
    pub chunks_ok: u64,
    /// Damaged regions, in file order.
    pub damaged_chunks: Vec<Damage>,
    /// `"ok"`, `"missing"` (the writer did not finish) or `"damaged"`.
    pub index: String,
    /// Ranges of sequence numbers missing between readable records (`[first, last]`). Where
    /// a damaged region lies between them, those records were lost; otherwise the writer
    /// skipped the numbers (§4.1).
    pub sequence_gaps: Vec<[u64; 2]>,
    /// First and last readable sequence numbers.
    pub first_seq: Option<u64>,
    /// Last readable sequence number.
    pub last_seq: Option<u64>,
    /// True when an end-of-run record was read.
    pub ended: bool,
}

/// Reads every record of the trace and reports what is intact and what is not.
///
/// # Errors
/// Only I/O errors; damage is reported in the result.
pub fn verify(reader: &mut TraceReader) -> Result<VerifyReport, ReadError> {
    let mut rep = VerifyReport {
        ok: false,
        format_version: format!("{}.{}", reader.header().version_major, reader.header().version_minor),
        records_readable: 0,
        chunks_ok: 0,
        damaged_chunks: Vec::new(),
        index: match (reader.index(), reader.index_damage()) {
            (Some(_), _) => "ok",
            (None, Some(_)) => "damaged",
            (None, None) => "missing",
        }
        .to_string(),
        sequence_gaps: Vec::new(),
        first_seq: None,
        last_seq: None,
        ended: false,
    };
    if let Some(e) = reader.index_damage() {
        rep.damaged_chunks.push(Damage::from(e));
    }
    // Held once (taken, not cloned): it can be 64 MiB.
    let index = reader.take_index();
    let mut prev: Option<u64> = None;
    while let Some(item) = reader.next_record() {
        match item {
            Ok(rec) => {
                rep.records_readable += 1;
                if let Some(p) = prev {
                    if rec.seq > p + 1 && rep.sequence_gaps.len() < 10_000 {
                        rep.sequence_gaps.push([p + 1, rec.seq - 1]);
                    }
                }
                rep.first_seq.get_or_insert(rec.seq);
                prev = Some(rec.seq);
                if matches!(rec.body, Body::EndOfRun(_)) {
                    rep.ended = true;
                }
            }
            Err(ReadError::Invalid { error, .. }) => {
                if rep.damaged_chunks.len() < 10_000 {
                    rep.damaged_chunks.push(Damage::from(&error));
                }
            }
            Err(e @ (ReadError::Io { .. } | ReadError::NotRegular { .. })) => return Err(e),
        }
    }
    rep.last_seq = prev;
    rep.chunks_ok = reader.chunk_stats().chunks;
    if let Some(ix) = &index {
        // A checksummed index can still lie (a hostile edit): every chunk header that is
        // intact must be listed with the same sequence range, and nothing else listed.
        if let Some(why) = index_disagreement(reader, ix)? {
            rep.index = "damaged".into();
            rep.damaged_chunks.push(Damage {
                offset: reader.data_end(),
                in_chunk: None,
                seq: None,
                reason: why,
            });
        }
    }
    rep.ok = rep.damaged_chunks.is_empty() && rep.index != "damaged";
    Ok(rep)
}

/// Compares the index with the chunk headers in the file; `Some(reason)` when they
/// disagree. Chunks whose header is damaged are not held against the index.
fn index_disagreement(
    reader: &mut TraceReader,
    ix: &crate::index::Index,
) -> Result<Option<String>, ReadError> {
    reader.rewind();
    let mut listed = ix.entries.iter().peekable();
    while let Some(found) = reader.next_chunk_header()? {
        let Ok(info) = found else { continue };
        // Entries for chunks the scan could not see (damaged headers) are skipped over.
        while listed.peek().is_some_and(|e| e.chunk_offset < info.offset) {
            listed.next();
        }
        match listed.next() {
            Some(e) if entry_agrees(e, &info) => {}
            Some(e) => {
                let h = &info.header;
                return Ok(Some(format!(
                    "index entry at chunk {:#x} (seq {}, {} records, raw {} / stored {} bytes) disagrees with the chunk at {:#x} (seq {}, {} records, raw {} / stored {} bytes)",
                    e.chunk_offset,
                    e.first_seq,
                    e.record_count,
                    e.raw_size,
                    e.stored_size,
                    info.offset,
                    h.first_seq,
                    h.record_count,
                    h.raw_size,
                    h.stored_size
                )));
            }
            None => return Ok(Some(format!("chunk at {:#x} is missing from the index", info.offset))),
        }
    }
    let total: u64 = ix.entries.iter().map(|e| u64::from(e.record_count)).sum();
    if total != ix.record_count {
        return Ok(Some(format!("index record_count {} but its entries sum to {total}", ix.record_count)));
    }
    Ok(None)
}

/// An index entry agrees with the chunk header found at its offset when all five fields
/// it repeats are equal (FORMAT.md §8.5).
fn entry_agrees(e: &crate::index::IndexEntry, found: &crate::reader::ChunkInfo) -> bool {
    let h = &found.header;
    (e.chunk_offset, e.first_seq, e.record_count, e.raw_size, e.stored_size)
        == (found.offset, h.first_seq, h.record_count, h.raw_size, h.stored_size)
}

/// Result of [`stats`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    /// `"MAJOR.MINOR"`.
    pub format_version: String,
    /// Trace id (hex).
    pub trace_id: String,
    /// Records read.
    pub records: u64,
    /// Exit records among them.
    pub exits: u64,
    /// Count per kind name.
    pub by_kind: BTreeMap<String, u64>,
    /// Distinct vCPU ids seen.
    pub vcpus: u64,
    /// Intact chunks.
    pub chunks: u64,
    /// Uncompressed record bytes.
    pub bytes: u64,
    /// Stored (compressed) payload bytes.
    pub compressed_bytes: u64,
    /// File size.
    pub file_bytes: u64,
    /// Stored bytes per exit.
    pub bytes_per_exit: f64,
    /// First sequence number.
    pub first_seq: Option<u64>,
    /// Last sequence number.
    pub last_seq: Option<u64>,
    /// Damaged regions skipped.
    pub damaged_chunks: u64,
    /// The first problem found (file, offset, reason), including a damaged index.
    pub first_damage: Option<String>,
}

/// Largest number of distinct vCPU ids tracked (a hostile file cannot grow memory past it).
pub const MAX_TRACKED_VCPUS: usize = 65_536;

/// Reads every record and counts them.
///
/// # Errors
/// Only I/O errors; damaged regions are skipped and counted.
pub fn stats(reader: &mut TraceReader) -> Result<Stats, ReadError> {
    let h = reader.header();
    let mut st = Stats {
        format_version: format!("{}.{}", h.version_major, h.version_minor),
        trace_id: h.trace_id_hex(),
        records: 0,
        exits: 0,
        by_kind: BTreeMap::new(),
        vcpus: 0,
        chunks: 0,
        bytes: 0,
        compressed_bytes: 0,
        file_bytes: reader.file_len(),
        bytes_per_exit: 0.0,
        first_seq: None,
        last_seq: None,
        damaged_chunks: 0,
        first_damage: reader
            .index_damage()
            .map(|e| ReadError::Invalid { path: reader.name().to_string(), error: e.clone() }.to_string()),
    };
    let mut vcpus = BTreeSet::new();
    let mut counts = [0u64; 0x20];
    while let Some(item) = reader.next_record() {
        match item {
            Ok(rec) => {
                st.records += 1;
                let k = rec.body.kind();
                if kind::is_exit(k) {
                    st.exits += 1;
                }
                match counts.get_mut(usize::from(k)) {
                    Some(c) => *c += 1,
                    None => *st.by_kind.entry(kind::name(k).to_string()).or_default() += 1,
                }
                if vcpus.len() < MAX_TRACKED_VCPUS {
                    vcpus.insert(rec.vcpu);
                }
                st.first_seq.get_or_insert(rec.seq);
                st.last_seq = Some(rec.seq);
            }
            Err(e @ ReadError::Invalid { .. }) => {
                st.damaged_chunks += 1;
                if st.first_damage.is_none() {
                    st.first_damage = Some(e.to_string());
                }
            }
            Err(e @ (ReadError::Io { .. } | ReadError::NotRegular { .. })) => return Err(e),
        }
    }
    for (k, c) in counts.iter().enumerate() {
        if *c > 0 {
            let name = kind::name(u16::try_from(k).unwrap_or(u16::MAX));
            *st.by_kind.entry(name.to_string()).or_default() += c;
        }
    }
    let cs = reader.chunk_stats();
    st.chunks = cs.chunks;
    st.bytes = cs.raw_bytes;
    st.compressed_bytes = cs.stored_bytes;
    st.vcpus = u64::try_from(vcpus.len()).unwrap_or(u64::MAX);
    if st.exits > 0 {
        #[allow(clippy::cast_precision_loss)] // a ratio for display
        {
            st.bytes_per_exit = st.compressed_bytes as f64 / st.exits as f64;
        }
    }
    Ok(st)
}

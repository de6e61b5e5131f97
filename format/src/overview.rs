//! One pass over a whole trace: what a replayer or a packer needs to know before it
//! starts (the guest's description, the CPUID it saw, where the checkpoints are, how the
//! run ended), in bounded memory whatever the trace holds: what is kept is capped
//! ([`MAX_ANNOTATIONS`], [`MAX_ANNOTATION_BYTES`], [`MAX_CHECKPOINTS`]) and a trace over a
//! cap is refused, naming it.

use std::path::Path;

/// Most annotation records a trace may hold (a recording writes about 30).
pub const MAX_ANNOTATIONS: usize = 4096;
/// Most bytes of annotation keys and values together (a recording writes about 2 KiB).
pub const MAX_ANNOTATION_BYTES: usize = 1 << 20;
/// Most checkpoint records a trace may hold (each is a snapshot directory on disk; a
/// bundle holds at most 100,000 files).
pub const MAX_CHECKPOINTS: usize = 100_000;

use crate::{Body, CpuidEntry, DecodeError, EndOfRun, ReadError, TraceReader, end_reason, kind};

/// A checkpoint record.
///
/// A checkpoint's position is where the guest was paused: after record `after_seq`. A
/// stopped-world checkpoint's record follows it directly (`record_seq == after_seq + 1`);
/// a background checkpoint's record is appended only once its snapshot is durable, so
/// later records (exits the guest made meanwhile) may come between. Replay starts from a
/// checkpoint at [`CheckpointMark::at`], never at `record_seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointMark {
    /// The checkpoint record's own sequence number.
    pub record_seq: u64,
    /// The last record before the snapshot (the record's `exit_seq`): its position.
    pub after_seq: u64,
    /// Snapshot id.
    pub snapshot_id: u64,
    /// Exits before it.
    pub exits: u64,
}

impl CheckpointMark {
    /// The last record whose effects a restore of this checkpoint holds, as a replay
    /// position: the checkpoint's own record when it follows its position directly (a
    /// stopped-world checkpoint), otherwise `after_seq` (a background one). Replay from
    /// it continues with record `at() + 1`.
    pub fn at(&self) -> u64 {
        if self.record_seq == self.after_seq.saturating_add(1) || self.record_seq <= self.after_seq {
            self.record_seq
        } else {
            self.after_seq
        }
    }
}

/// What a trace says about its run.
#[derive(Debug, Clone)]
pub struct TraceOverview {
    /// The trace's id.
    pub trace_id: [u8; 16],
    /// Annotations, in order.
    pub annotations: Vec<(String, String)>,
    /// The CPUID set the guest saw.
    pub cpuid: Vec<CpuidEntry>,
    /// The sequence number of the CPUID record (the last one, which is what counts).
    pub cpuid_seq: Option<u64>,
    /// Checkpoints, in order.
    pub checkpoints: Vec<CheckpointMark>,
    /// The end-of-run record and its sequence number.
    pub end: Option<(u64, EndOfRun)>,
    /// Exit records.
    pub exits: u64,
    /// The last exit record's sequence number.
    pub last_exit_seq: Option<u64>,
    /// Records of every kind.
    pub records: u64,
    /// The last record's sequence number (`None`: no record).
    pub last_seq: Option<u64>,
    /// The file has no index or a torn last chunk (its writer did not finish); what is
    /// intact was read.
    pub unfinished: bool,
}

impl TraceOverview {
    /// The value of annotation `key` (the last one).
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// True when the recorded run ended in a failure a repro is for.
    pub fn ended_in_failure(&self) -> bool {
        self.end.is_some_and(|(_, e)| end_reason::is_failure(e.reason))
    }

    /// The failure-point snapshot: a checkpoint taken after the fatal exit a failing run
    /// ended with (the vCPU as KVM reported it at the failure, and the memory then).
    pub fn failure_point(&self) -> Option<CheckpointMark> {
        let last = self.last_exit_seq?;
        if !self.ended_in_failure() {
            return None;
        }
        self.checkpoints.iter().rev().find(|c| c.record_seq > last).copied()
    }
}

/// Why a trace cannot be replayed or packed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum OverviewError {
    /// The trace is unreadable or damaged where no crash could have damaged it.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Damage in the middle: a later record is readable, so this is not a torn tail.
    #[error("the trace is damaged in the middle (later records are readable); `vmrr verify` shows what is")]
    DamagedMiddle(#[source] ReadError),
    /// The trace holds more of something than a reader keeps.
    #[error(
        "{path}: record seq {seq}: {what} over the cap of {cap} (what a reader keeps of a trace; a recording stays far below)"
    )]
    OverCap {
        /// The trace.
        path: String,
        /// The record that crossed the cap.
        seq: u64,
        /// What is counted.
        what: &'static str,
        /// The cap.
        cap: String,
    },
    /// Records are missing where no checkpoint starts a kept stretch.
    #[error("{path}: records {first}..={last} are missing")]
    Missing {
        /// The trace.
        path: String,
        /// First missing sequence number.
        first: u64,
        /// Last missing sequence number.
        last: u64,
    },
}

/// Reads the whole trace once.
///
/// A flight recording keeps its prologue and the trace from its oldest kept checkpoint: a
/// gap in sequence numbers is allowed only right before a checkpoint's position, that is
/// right before a checkpoint record or before the record following the `exit_seq` of a
/// checkpoint record that comes later (a background checkpoint's record is appended once
/// its snapshot is durable).
///
/// # Errors
/// The trace is unreadable, or damaged other than a torn tail (which a killed writer
/// leaves and which loses only what was never complete).
pub fn scan(path: &Path) -> Result<TraceOverview, OverviewError> {
    let mut r = TraceReader::open(path)?;
    if let Some(e) = r.index_damage().filter(|e| !e.could_be_torn_write()) {
        // A checksummed trailer or index that makes impossible claims was written that
        // way: refuse the file rather than guess. (A torn index is read around.)
        return Err(ReadError::Invalid { path: r.name().to_string(), error: e.clone() }.into());
    }
    let mut f = TraceOverview {
        trace_id: r.header().trace_id,
        annotations: Vec::new(),
        cpuid: Vec::new(),
        cpuid_seq: None,
        checkpoints: Vec::new(),
        end: None,
        exits: 0,
        last_exit_seq: None,
        records: 0,
        last_seq: None,
        unfinished: r.index().is_none(),
    };
    let mut last: Option<u64> = None;
    // Gaps `(first, last)` not yet justified by a checkpoint record.
    let mut gaps: Vec<(u64, u64)> = Vec::new();
    let mut annotation_bytes = 0usize;
    let over = |seq: u64, what: &'static str, cap: String| OverviewError::OverCap {
        path: path.display().to_string(),
        seq,
        what,
        cap,
    };
    while let Some(item) = r.next_record() {
        let rec = match item {
            Ok(rec) => rec,
            Err(e @ ReadError::Invalid { .. }) => {
                // Damage no crash can cause is fatal, and so is damage in the middle (a
                // later record exists); a torn tail is what a killed writer leaves.
                if e.decode_error().is_some_and(|d: &DecodeError| !d.could_be_torn_write()) {
                    return Err(e.into());
                }
                if r.next_record().is_some() {
                    return Err(OverviewError::DamagedMiddle(e));
                }
                f.unfinished = true;
                break;
            }
            Err(e) => return Err(e.into()),
        };
        f.records += 1;
        if let Some(p) = last {
            if rec.seq != p + 1 && !matches!(rec.body, Body::Checkpoint(_)) {
                if gaps.len() > MAX_CHECKPOINTS {
                    return Err(OverviewError::Missing {
                        path: path.display().to_string(),
                        first: p + 1,
                        last: rec.seq.saturating_sub(1),
                    });
                }
                gaps.push((p + 1, rec.seq.saturating_sub(1)));
            }
        }
        last = Some(rec.seq);
        f.last_seq = last;
        if kind::is_exit(rec.body.kind()) {
            f.exits += 1;
            f.last_exit_seq = Some(rec.seq);
        }
        match rec.body {
            Body::Annotation(a) => {
                annotation_bytes = annotation_bytes.saturating_add(a.key.len() + a.value.len());
                if f.annotations.len() == MAX_ANNOTATIONS {
                    return Err(over(rec.seq, "annotation records", MAX_ANNOTATIONS.to_string()));
                }
                if annotation_bytes > MAX_ANNOTATION_BYTES {
                    return Err(over(rec.seq, "annotation bytes", format!("{MAX_ANNOTATION_BYTES} bytes")));
                }
                f.annotations.push((a.key.to_string(), a.value.to_string()));
            }
            Body::Cpuid(c) => {
                f.cpuid = c.iter().collect();
                f.cpuid_seq = Some(rec.seq);
            }
            Body::Checkpoint(c) => {
                if f.checkpoints.len() == MAX_CHECKPOINTS {
                    return Err(over(rec.seq, "checkpoint records", MAX_CHECKPOINTS.to_string()));
                }
                f.checkpoints.push(CheckpointMark {
                    record_seq: rec.seq,
                    after_seq: c.exit_seq,
                    snapshot_id: c.snapshot_id,
                    exits: c.exits,
                });
            }
            Body::EndOfRun(e) => f.end = Some((rec.seq, e)),
            _ => {}
        }
    }
    // A gap ending right before a checkpoint's position is what a flight recording keeps.
    if let Some(&(first, last)) =
        gaps.iter().find(|(_, end)| !f.checkpoints.iter().any(|c| c.after_seq == *end))
    {
        return Err(OverviewError::Missing { path: path.display().to_string(), first, last });
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Annotation, Checkpoint, Record, TraceWriter, WriterOptions};

    /// Writes records with sequence numbers `seqs`; a `Some(position)` entry is a
    /// checkpoint record whose `exit_seq` is that position, `None` an annotation.
    fn trace(name: &str, recs: &[(u64, Option<u64>)]) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("vmrr-overview-{}-{name}.vmrr", std::process::id()));
        let mut w = TraceWriter::create(&path, WriterOptions::default()).expect("writer");
        for (i, &(seq, cp)) in recs.iter().enumerate() {
            let body = match cp {
                Some(exit_seq) => Body::Checkpoint(Checkpoint { snapshot_id: i as u64, exit_seq, exits: 0 }),
                None => Body::Annotation(Annotation { key: "k", value: "v" }),
            };
            w.append_record(&Record::new(seq, 0, body)).expect("append");
        }
        w.finish().expect("finish");
        path
    }

    #[test]
    fn a_gap_must_end_at_a_checkpoint_position() {
        // Stopped world: the gap ends right before the checkpoint record.
        let p = trace("before-record", &[(0, None), (1, None), (5, Some(4)), (6, None)]);
        let f = scan(&p).expect("gap before a checkpoint record");
        assert_eq!(f.checkpoints[0].at(), 5);
        // Background: the kept stretch starts after the position; the record comes later.
        let p2 = trace("late-record", &[(0, None), (1, None), (5, None), (6, None), (7, Some(4)), (8, None)]);
        let f = scan(&p2).expect("gap before a later checkpoint's position");
        assert_eq!((f.checkpoints[0].after_seq, f.checkpoints[0].at()), (4, 4));
        // A gap no checkpoint explains is missing records.
        let p3 = trace("unexplained", &[(0, None), (1, None), (5, None), (6, None), (7, Some(5))]);
        assert!(matches!(scan(&p3), Err(OverviewError::Missing { first: 2, last: 4, .. })));
        for p in [p, p2, p3] {
            let _ = std::fs::remove_file(p);
        }
    }
}

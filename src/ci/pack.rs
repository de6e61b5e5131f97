//! `vmrr pack TRACE --segments N -o DIR`: one self-contained bundle per segment
//! (`DIR/seg-K-of-N.vmrrb`), so a runner fetches only its part.
//!
//! Segment K's bundle holds: the trace's prologue (annotations, CPUID), its records from
//! its first checkpoint's position to its last checkpoint's record (the last segment: to
//! the trace's end), and two annotations appended after them (`vmrr.segment` = `K/N`); its
//! first checkpoint flattened into a full snapshot; each later checkpoint of the segment
//! as it is when its parent is in the bundle, flattened otherwise; and the guest's image
//! or firmware. The trace keeps its id and sequence numbers (its gap before the first
//! checkpoint is the one a flight recording has), so `vmrr replay seg-K-of-N.vmrrb`
//! replays exactly segment K and reports it as such, and `vmrr merge` combines the N
//! reports into the sequential replay's.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use vmrr_engine::snapshot;
use vmrr_format::overview::CheckpointMark;
use vmrr_format::{Body, Record, TraceReader, TraceWriter, WriterOptions};

use crate::exit_code::{CliError, CliResult, INVALID_INPUT};

/// The annotation naming a segment trace's place: `K/N`.
pub const SEGMENT_KEY: &str = vmrr_replay::segment::SEGMENT_ANNOTATION;

/// The bundle file of segment `k` of `n`.
pub fn bundle_name(k: usize, n: usize) -> String {
    format!("seg-{k:03}-of-{n:03}.vmrrb")
}

fn invalid(message: String) -> CliError {
    CliError::Coded { code: INVALID_INPUT, message }
}

/// Runs `vmrr pack TRACE --segments N -o DIR`.
pub fn run(
    trace: &Path,
    dir: &Path,
    n: usize,
    guest_file: Option<PathBuf>,
    initrd_file: Option<PathBuf>,
    force: bool,
    max_mem: u64,
) -> CliResult {
    if !trace.exists() {
        return Err(CliError::Usage(format!("{}: no such file", trace.display())));
    }
    if dir.exists() && !(force && vmrr_format::input::is_dir(dir)) {
        return Err(CliError::Usage(format!(
            "{}: exists (with --force an existing directory is written into, its seg-*.vmrrb replaced)",
            dir.display()
        )));
    }
    crate::output::not_an_input(dir, &[trace])?;
    let f = vmrr_format::overview::scan(trace).map_err(|e| invalid(crate::exit_code::chain(&e)))?;
    let spans = vmrr_replay::segment::plan(&f, n).map_err(|e| CliError::Usage(e.to_string()))?;
    std::fs::create_dir_all(dir)
        .map_err(|source| CliError::Output { context: format!("creating {}", dir.display()), source })?;
    let root = vmrr_format::layout::find_snapshots(trace).unwrap_or_else(|| snapshot::dir_for_trace(trace));
    for s in &spans {
        let staging =
            tempfile::Builder::new().prefix(".vmrr-segment-").tempdir_in(dir).map_err(|source| {
                CliError::Output { context: format!("creating a directory in {}", dir.display()), source }
            })?;
        let seg_trace = staging.path().join("trace.vmrr");
        let kept = write_trace(trace, &seg_trace, s, &f)?;
        let seg_root = snapshot::dir_for_trace(&seg_trace);
        write_snapshots(&root, &seg_root, s.from.snapshot_id, &kept, max_mem)?;
        let out = dir.join(bundle_name(s.index, n));
        crate::cmd::pack::run(
            &seg_trace,
            &out,
            guest_file.clone().or_else(|| guest_of(&f)),
            initrd_file.clone().or_else(|| f.annotation("vmrr.initrd").map(PathBuf::from)),
            force,
            false,
        )?;
    }
    Ok(())
}

/// The guest file the original trace names (this is the recording host).
fn guest_of(f: &vmrr_format::overview::TraceOverview) -> Option<PathBuf> {
    f.annotation("vmrr.image")
        .or(f.annotation("vmrr.firmware"))
        .or(f.annotation("vmrr.kernel"))
        .map(PathBuf::from)
}

/// Writes segment `s` of `src` as a trace at `dst`; returns the checkpoints it keeps.
fn write_trace(
    src: &Path,
    dst: &Path,
    s: &vmrr_replay::segment::Span,
    f: &vmrr_format::overview::TraceOverview,
) -> Result<Vec<CheckpointMark>, CliError> {
    let lo = s.from.record_seq.min(s.from.at() + 1);
    let hi =
        if s.last { u64::MAX } else { s.checks.iter().map(|c| c.record_seq.max(c.at())).max().unwrap_or(lo) };
    let mut r = TraceReader::open(src).map_err(|e| invalid(crate::exit_code::chain(&e)))?;
    let opts = WriterOptions {
        trace_id: Some(r.header().trace_id),
        guest_writes: r.header().has_guest_writes(),
        timing: r.header().has_timing(),
        ..Default::default()
    };
    let werr = |e: vmrr_format::WriteError| CliError::Output {
        context: format!("writing {}", dst.display()),
        source: std::io::Error::other(e),
    };
    let mut w = TraceWriter::create(dst, opts).map_err(werr)?;
    let mut last = 0u64;
    let mut kept_ids = HashSet::new();
    while let Some(item) = r.next_record() {
        let rec = item.map_err(|e| invalid(crate::exit_code::chain(&e)))?;
        let prologue = rec.seq < lo && matches!(rec.body, Body::Annotation(_) | Body::Cpuid(_));
        if !(prologue || (lo..=hi).contains(&rec.seq)) {
            continue;
        }
        if let Body::Checkpoint(c) = &rec.body {
            kept_ids.insert(c.snapshot_id);
        }
        last = rec.seq;
        w.append_record(&rec).map_err(werr)?;
    }
    let place = format!("{}/{}", s.index, s.count);
    for (i, (key, value)) in
        [(SEGMENT_KEY, place.as_str()), ("vmrr.segment.of", &vmrr_format::describe::hex(&f.trace_id))]
            .into_iter()
            .enumerate()
    {
        let rec =
            Record::new(last + 1 + i as u64, 0, Body::Annotation(vmrr_format::Annotation { key, value }));
        w.append_record(&rec).map_err(werr)?;
    }
    w.finish().map_err(werr)?;
    Ok(f.checkpoints.iter().filter(|c| kept_ids.contains(&c.snapshot_id)).copied().collect())
}

/// Writes the segment's snapshots into `dst`: `from` flattened, the others copied when
/// their parent is in the segment, flattened otherwise.
fn write_snapshots(src: &Path, dst: &Path, from: u64, kept: &[CheckpointMark], max_mem: u64) -> CliResult {
    let snap_err = |e: snapshot::SnapshotError| invalid(crate::exit_code::chain(&e));
    let io = |what: String| move |source| CliError::Output { context: what, source };
    std::fs::create_dir_all(dst).map_err(io(format!("creating {}", dst.display())))?;
    let mut have: HashSet<u64> = HashSet::new();
    let mut ids: Vec<u64> = kept.iter().map(|c| c.snapshot_id).collect();
    ids.sort_unstable();
    ids.dedup();
    // The first checkpoint first, then the rest in id order (a parent's id is lower).
    ids.retain(|i| *i != from);
    ids.insert(0, from);
    for id in ids {
        let from_dir = snapshot::snapshot_dir(src, id);
        let to_dir = snapshot::snapshot_dir(dst, id);
        if !from_dir.is_dir() {
            return Err(invalid(format!(
                "checkpoint {id}: its snapshot {} is missing; the segment cannot be packed",
                from_dir.display()
            )));
        }
        let st = snapshot::load(&from_dir, max_mem).map_err(snap_err)?;
        match st.state.parent {
            Some(p) if id != from && have.contains(&p) => {
                std::fs::create_dir_all(&to_dir).map_err(io(format!("creating {}", to_dir.display())))?;
                for e in
                    std::fs::read_dir(&from_dir).map_err(io(format!("reading {}", from_dir.display())))?
                {
                    let e = e.map_err(io(format!("reading {}", from_dir.display())))?;
                    std::fs::copy(e.path(), to_dir.join(e.file_name()))
                        .map_err(io(format!("copying {}", e.path().display())))?;
                }
            }
            _ => {
                snapshot::flatten_dir(&from_dir, &to_dir, false, max_mem).map_err(snap_err)?;
            }
        }
        have.insert(id);
    }
    Ok(())
}

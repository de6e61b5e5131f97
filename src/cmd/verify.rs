//! `vmrr verify`: is the trace intact, and what is readable when it is not.

use std::path::Path;

use vmrr_format::describe::count;
use vmrr_format::{TraceReader, verify};

use super::print_json;
use crate::exit_code::{CliError, CliResult, INVALID_INPUT};

/// Writes every readable record of `file` into a new trace `out` (same trace id, sequence
/// numbers kept; lost ranges stay gaps) and checks the result. `out` may not be `file`
/// (nor exist, unless `force`); it is written under a unique temporary name beside it and
/// renamed into place once it verifies, so a failure or a signal leaves nothing behind.
fn repair(file: &Path, out: &Path, json: bool, force: bool) -> CliResult {
    use vmrr_format::output::{self, OutputKind};
    output::check(out, &[file], force, OutputKind::File).map_err(|e| CliError::Usage(e.to_string()))?;
    let mut r = TraceReader::open(file)?;
    let opts = vmrr_format::WriterOptions {
        trace_id: Some(r.header().trace_id),
        created_unix_ns: Some(r.header().created_unix_ns),
        timing: r.header().has_timing(),
        guest_writes: r.header().has_guest_writes(),
        irq_lines: r.header().has_irq_lines(),
        threads: r.header().has_threads(),
        ..Default::default()
    };
    if let Some((bit, desc)) = r.header().unknown_replay_required().first() {
        // The repairer cannot vouch that a feature it does not know still describes the
        // rewritten file, and dropping it would make the copy look replayable.
        // Exit 3, as for every trace that needs a feature this vmrr lacks (README).
        return Err(CliError::Coded {
            code: INVALID_INPUT,
            message: format!(
                "{}: cannot repair: replay-required feature {} (bit {bit}) is unknown to this vmrr",
                file.display(),
                desc.map_or_else(|| "?".to_string(), |d| format!("'{}'", d.name)),
            ),
        });
    }
    let dir = output::directory_of(out);
    let (tmp, f) =
        vmrr_format::scratch::Scratch::file_in(dir, &output::scratch_prefix(out)).map_err(|source| {
            CliError::Output { context: format!("creating a file in {}", dir.display()), source }
        })?;
    let mut w = vmrr_format::TraceWriter::with_sink(f, tmp.path().display().to_string(), opts)?;
    let (mut kept, mut damaged) = (0u64, 0u64);
    let mut first_seq = None;
    while let Some(item) = r.next_record() {
        match item {
            Ok(rec) => {
                w.append_record(&rec)?;
                first_seq.get_or_insert(rec.seq);
                kept += 1;
            }
            Err(vmrr_format::ReadError::Invalid { .. }) => damaged += 1,
            Err(e) => return Err(e.into()),
        }
    }
    w.finish()?;
    let mut check = TraceReader::open_as(tmp.path(), out.display().to_string())?;
    let rep = verify(&mut check)?;
    drop(check);
    tmp.publish(out, force).map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => {
            CliError::Usage(output::OutputError::Exists { out: out.to_path_buf() }.to_string())
        }
        _ => CliError::Output { context: format!("renaming into {}", out.display()), source },
    })?;
    if json {
        print_json(&serde_json::json!({"repaired": out.display().to_string(), "records": kept,
            "damaged_regions_dropped": damaged, "ok": rep.ok, "sequence_gaps": rep.sequence_gaps}))?;
    } else {
        println!(
            "{}: {} of {} written ({} dropped){}",
            out.display(),
            count(kept, "readable record"),
            file.display(),
            count(damaged, "damaged region"),
            if rep.sequence_gaps.is_empty() {
                String::new()
            } else {
                format!("; {}", count(rep.sequence_gaps.len() as u64, "gap"))
            }
        );
    }
    if let Some(first) = first_seq.filter(|s| *s > 0) {
        eprintln!(
            "vmrr: records 0..={} were lost with the first chunk, and with them the trace's prelude (the guest \
             to rebuild, its CPUID): {} replays only from a checkpoint after them. Put the original's snapshots \
             beside it ({} as {}) and run `vmrr replay {}`.",
            first - 1,
            out.display(),
            vmrr_format::layout::find_snapshots(file)
                .unwrap_or_else(|| vmrr_format::layout::snapshots_of(file))
                .display(),
            vmrr_format::layout::snapshots_of(out).display(),
            out.display()
        );
    }
    // Gaps are what was lost; the file itself is intact.
    if rep.ok { Ok(()) } else { Err(CliError::Reported { code: INVALID_INPUT }) }
}

/// Exit 0 when intact, 3 when damaged (with the report saying what is still readable).
/// With `repair`, writes the readable records to a new trace instead.
pub fn run(file: &Path, json: bool, repair_to: Option<&Path>, force: bool) -> CliResult {
    super::trace_file::not_a_directory(file)?;
    let bundled = super::trace_file::is_bundle(file);
    if let Some(out) = repair_to {
        if bundled {
            return Err(CliError::Usage(format!(
                "{}: a bundle: --repair writes a trace from a trace (`vmrr verify {}` checks the bundle)",
                file.display(),
                file.display()
            )));
        }
        return repair(file, out, json, force);
    }
    if bundled {
        return verify_bundle(file, json);
    }
    let mut r = TraceReader::open(file)?;
    let bar = vmrr_format::progress::Progress::for_file("verifying", file);
    let rep = verify(&mut r)?;
    drop(bar);
    if json {
        print_json(&rep)?;
    } else if rep.ok {
        println!(
            "{}: ok, {}, {}, format {}{}{}",
            file.display(),
            count(rep.records_readable, "record"),
            count(rep.chunks_ok, "chunk"),
            rep.format_version,
            if rep.index == "missing" {
                "; no index (the writer did not finish; read by scanning)"
            } else {
                ""
            },
            match rep.sequence_gaps.len() {
                0 => String::new(),
                n => format!("; {} in sequence numbers", count(n as u64, "gap")),
            }
        );
    } else {
        eprintln!(
            "{}: damaged: {} readable, {} intact, index {}",
            file.display(),
            count(rep.records_readable, "record"),
            count(rep.chunks_ok, "chunk"),
            rep.index
        );
        for d in &rep.damaged_chunks {
            match d.in_chunk {
                Some(p) => eprintln!("  {}: offset {:#x} + {:#x}: {}", file.display(), d.offset, p, d.reason),
                None => eprintln!("  {}: offset {:#x}: {}", file.display(), d.offset, d.reason),
            }
        }
        for [a, b] in &rep.sequence_gaps {
            eprintln!("  records {a}..={b} missing");
        }
        eprintln!(
            "vmrr: to keep what is readable, write it into a new trace: vmrr verify {} --repair OUT",
            file.display()
        );
    }
    if rep.ok { Ok(()) } else { Err(CliError::Reported { code: INVALID_INPUT }) }
}

/// A bundle: its manifest and every entry (checksums, sizes, and that the trace or a
/// snapshot references it: what extracting it for a replay checks), its trace end to end,
/// and each snapshot with its chain. Exit 3 naming the entry at fault.
fn verify_bundle(file: &Path, json: bool) -> CliResult {
    use vmrr_format::bundle;
    let budgets = super::trace_file::budgets();
    let dir = super::trace_file::scratch_dir()?;
    let u = bundle::unpack(file, dir.path(), &budgets, Some(&vmrr_engine::snapshot::memory_files))
        .map_err(super::bundle_err)?;
    bundle::arrange(dir.path()).map_err(super::bundle_err)?;
    let name = format!("{}, entry {}", file.display(), bundle::TRACE_ENTRY);
    let mut r = TraceReader::open_as(&u.trace, name.clone())?;
    let rep = verify(&mut r)?;
    let chains = vmrr_engine::snapshot::ChainCheck::new(budgets.max_mem);
    let root = vmrr_format::layout::snapshots_of(&u.trace);
    for id in &u.manifest.snapshots {
        let snap = vmrr_format::layout::snapshot_dir(&root, *id);
        chains.check(&snap).map_err(|e| {
            let entry = format!("snapshots/{}", vmrr_format::layout::snapshot_dir_name(*id));
            let text = crate::exit_code::chain(e.as_ref()).replace(&snap.display().to_string(), &entry);
            CliError::Invalid(format!("{}, entry {entry}: {text}", file.display()))
        })?;
    }
    if json {
        print_json(&serde_json::json!({"bundle": file.display().to_string(), "ok": rep.ok,
            "entries": u.manifest.entries.len(), "snapshots": u.manifest.snapshots, "trace": rep}))?;
    } else if rep.ok {
        println!(
            "{}: ok, {} entries (checksums, sizes, references), {} snapshots and their chains; trace: {} records, {} chunks, format {}",
            file.display(),
            u.manifest.entries.len(),
            u.manifest.snapshots.len(),
            rep.records_readable,
            rep.chunks_ok,
            rep.format_version
        );
    } else {
        eprintln!(
            "{name}: damaged: {} records readable, {} chunks intact",
            rep.records_readable, rep.chunks_ok
        );
        for d in &rep.damaged_chunks {
            eprintln!("  {name}: offset {:#x}: {}", d.offset, d.reason);
        }
    }
    if rep.ok { Ok(()) } else { Err(CliError::Reported { code: INVALID_INPUT }) }
}

//! `vmrr stats`: counts per kind, sizes, compression.

use std::path::Path;

use vmrr_format::stats;

use super::print_json;
use crate::exit_code::{CliError, CliResult, INVALID_INPUT};

/// Prints the summary of what is readable; exit 3 (naming the first problem) when damaged
/// regions had to be skipped or the index is damaged.
pub fn run(file: &Path, json: bool) -> CliResult {
    let t = super::trace_file::TraceFile::open(file)?;
    let mut r = t.reader()?;
    let st = stats(&mut r)?;
    if json {
        print_json(&st)?;
    } else {
        println!("{}: format {}, trace {}", file.display(), st.format_version, st.trace_id);
        println!("  records {} ({} exits), vCPUs {}, chunks {}", st.records, st.exits, st.vcpus, st.chunks);
        println!(
            "  {} bytes of records, {} stored, {} on disk ({:.2} stored bytes per exit)",
            st.bytes, st.compressed_bytes, st.file_bytes, st.bytes_per_exit
        );
        for (k, n) in &st.by_kind {
            println!("  {k:<16} {n}");
        }
        if st.damaged_chunks > 0 {
            println!("  damaged regions skipped: {}", st.damaged_chunks);
        }
    }
    match &st.first_damage {
        Some(d) => {
            eprintln!("vmrr: error: {d}");
            Err(CliError::Reported { code: INVALID_INPUT })
        }
        None => Ok(()),
    }
}

//! `vmrr inspect`: one line per record.

use std::io::Write;
use std::path::Path;

use vmrr_format::{ReadError, describe};

use super::out_line;
use crate::exit_code::{CliError, CliResult, INVALID_INPUT};

/// Prints records `from..from+count`. Damaged regions (and a damaged trailer or index) are
/// reported on stderr and skipped; the exit code is then 3 after everything readable was
/// printed.
pub fn run(file: &Path, from: Option<u64>, count: Option<u64>, json: bool) -> CliResult {
    let t = super::trace_file::TraceFile::open(file)?;
    let mut r = t.reader()?;
    if let Some(seq) = from {
        r.seek_seq(seq)?;
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut printed = 0u64;
    // A trailer or index that fails its own checks is damage too (FORMAT.md §8.7), though
    // every record still reads by scanning.
    let mut damaged = false;
    if let Some(e) = r.index_damage() {
        damaged = true;
        eprintln!("vmrr: damaged: {}", ReadError::Invalid { path: r.name().to_string(), error: e.clone() });
    }
    while count.is_none_or(|c| printed < c) {
        let Some(item) = r.next_record() else { break };
        match item {
            Ok(rec) => {
                let line =
                    if json { describe::record_json(&rec).to_string() } else { describe::record_line(&rec) };
                if !out_line(&mut out, &line)? {
                    return Ok(());
                }
                printed += 1;
            }
            Err(e @ ReadError::Invalid { .. }) => {
                damaged = true;
                eprintln!("vmrr: damaged: {e}");
            }
            Err(e) => return Err(e.into()),
        }
    }
    out.flush().map_err(|source| CliError::Output { context: "writing to stdout".into(), source })?;
    if damaged { Err(CliError::Reported { code: INVALID_INPUT }) } else { Ok(()) }
}

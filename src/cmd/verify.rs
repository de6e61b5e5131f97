//! `vmrr verify`: is the trace intact, and what is readable when it is not.

use std::path::Path;

use vmrr_format::{TraceReader, verify};

use super::print_json;
use crate::exit::{CliError, CliResult, INVALID_INPUT};

/// Exit 0 when intact, 3 when damaged (with the report saying what is still readable).
pub fn run(file: &Path, json: bool) -> CliResult {
    let mut r = TraceReader::open(file)?;
    let rep = verify(&mut r)?;
    if json {
        print_json(&rep)?;
    } else if rep.ok {
        println!(
            "{}: ok, {} records, {} chunks, format {}",
            file.display(),
            rep.records_readable,
            rep.chunks_ok,
            rep.format_version
        );
    } else {
        eprintln!(
            "{}: damaged: {} records readable, {} chunks intact, index {}",
            file.display(),
            rep.records_readable,
            rep.chunks_ok,
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
    }
    if rep.ok { Ok(()) } else { Err(CliError::Reported { code: INVALID_INPUT }) }
}

//! `vmrr pack`: one file to ship.

use std::path::Path;

use super::print_json;
use crate::exit_code::{CliError, CliResult};

/// Packs `trace` (and the snapshots its checkpoints reference) into `out`.
pub fn run(trace: &Path, out: &Path, json: bool) -> CliResult {
    if !trace.exists() {
        return Err(CliError::Usage(format!("{}: no such file", trace.display())));
    }
    let m = vmrr_format::bundle::pack(trace, out, &vmrr_engine::snapshot::check_chain)
        .map_err(super::bundle_err)?;
    let size = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    if json {
        print_json(&serde_json::json!({
            "bundle": out.display().to_string(), "bytes": size, "entries": m.entries.len(),
            "snapshots": m.snapshots, "trace_id": m.trace_id,
        }))
    } else {
        println!(
            "{}: {} bytes, {} files, snapshots {:?} (trace {})",
            out.display(),
            size,
            m.entries.len(),
            m.snapshots,
            m.trace_id
        );
        Ok(())
    }
}

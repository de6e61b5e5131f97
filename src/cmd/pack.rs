//! `vmrr pack`: one file to ship.

use std::path::{Path, PathBuf};

use vmrr_format::describe::count;

use super::print_json;
use crate::exit_code::{CliError, CliResult};

/// Packs `trace`, the snapshots its checkpoints reference and the guest image, firmware or
/// kernel and initramfs it runs (`guest_file` and `initrd_file`, or the paths the trace
/// names: this is the recording host, and the files are the user's; a kernel or initramfs
/// is checked against the SHA-256 the trace recorded) into `out`; `force` replaces an
/// existing bundle.
pub fn run(
    trace: &Path,
    out: &Path,
    guest_file: Option<PathBuf>,
    initrd_file: Option<PathBuf>,
    force: bool,
    json: bool,
) -> CliResult {
    if !trace.exists() {
        return Err(CliError::Usage(format!("{}: no such file", trace.display())));
    }
    let chains = vmrr_engine::snapshot::ChainCheck::new(u64::MAX);
    let opts = vmrr_format::bundle::PackOptions {
        check: &|dir| chains.check(dir),
        guest_file,
        initrd_file,
        identity: Some(&vmrr_engine::guests::linux::check_identity_boxed),
        replace: force,
    };
    let bar = vmrr_format::progress::Progress::for_file("packing", trace);
    let m = vmrr_format::bundle::pack(trace, out, &opts).map_err(super::bundle_err)?;
    drop(bar);
    let size = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    if json {
        print_json(&serde_json::json!({
            "bundle": out.display().to_string(), "bytes": size, "entries": m.entries.len(),
            "snapshots": m.snapshots, "trace_id": m.trace_id,
        }))
    } else {
        println!(
            "{}: {}, {}, {} (trace {})",
            out.display(),
            count(size, "byte"),
            count(m.entries.len() as u64, "file"),
            count(m.snapshots.len() as u64, "snapshot"),
            m.trace_id
        );
        Ok(())
    }
}

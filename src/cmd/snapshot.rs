//! `vmrr snapshot info|flatten`.

use std::path::{Path, PathBuf};

use vmrr_engine::snapshot::{self, SnapshotError, StoredSnapshot};

use super::print_json;
use crate::exit_code::{CliError, CliResult};

/// `vmrr snapshot` subcommands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum SnapshotCmd {
    /// Show what a snapshot (or every snapshot of a trace's directory) holds.
    Info {
        /// A snapshot directory (`snap-NNNNNN`) or a snapshots root (`run.vmrr.snapshots`).
        path: PathBuf,
        /// Print JSON on stdout instead of text.
        ///
        /// One object: what the snapshot holds.
        #[arg(long)]
        json: bool,
    },
    /// Write a snapshot and its parent chain as one full snapshot.
    Flatten {
        /// The (incremental) snapshot directory.
        src: PathBuf,
        /// The directory to create (refused when it exists, unless --force).
        dst: PathBuf,
        /// Replace an existing DST that is a snapshot directory and not in SRC's chain.
        #[arg(long)]
        force: bool,
    },
}

/// Maps snapshot errors to CLI errors (damaged input: exit 3; an output that may not be
/// written, or an input that does not exist: 2).
pub fn cli_err(e: SnapshotError) -> CliError {
    match e {
        SnapshotError::Output(o) => CliError::Usage(o.to_string()),
        SnapshotError::Input(i) | SnapshotError::Codec(snapshot::codec::CodecError::Input(i))
            if i.is_not_found() =>
        {
            CliError::Usage(crate::exit_code::chain(&i))
        }
        e if e.is_invalid_input() => CliError::Invalid(crate::exit_code::chain(&e)),
        e => CliError::Snapshot(e),
    }
}

fn info_json(c: &snapshot::Checked) -> serde_json::Value {
    let l: &StoredSnapshot = &c.top;
    let s = &l.state;
    serde_json::json!({
        "path": l.dir.display().to_string(),
        "id": s.id,
        "parent": s.parent,
        "chain_length": c.chain_len,
        "base": c.base,
        "version": format!("{}.{}", snapshot::codec::MAJOR, snapshot::codec::MINOR),
        "trace_id": vmrr_format::describe::hex(&s.trace_id),
        "exit_seq": s.exit_seq,
        "exits": s.exits,
        "interrupts": s.interrupts,
        "created_unix_ns": s.created_unix_ns,
        "mem_bytes": s.vm.mem_bytes,
        "slots": s.slots.iter().map(|x| serde_json::json!({
            "id": x.id, "gpa": x.gpa, "size": x.size, "kind": format!("{:?}", x.kind).to_lowercase(),
            "full": x.full, "changed_pages": x.changed_pages(), "stored_pages": x.stored_pages, "file": x.file,
        })).collect::<Vec<_>>(),
        "vcpus": s.vcpus.iter().map(|v| serde_json::json!({"rip": v.regs.rip, "rsp": v.regs.rsp, "rflags": v.regs.rflags})).collect::<Vec<_>>(),
        "devices": s.bus.devices.iter().map(|d| d.state.kind()).collect::<Vec<_>>(),
    })
}

fn snapshot_dirs(path: &Path) -> Result<Vec<PathBuf>, CliError> {
    if std::fs::symlink_metadata(path.join(snapshot::STATE_FILE)).is_ok() {
        return Ok(vec![path.to_path_buf()]);
    }
    let rd = std::fs::read_dir(path).map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("snap-") && !n.ends_with(".tmp"))
        })
        .collect();
    v.sort();
    if v.is_empty() {
        return Err(CliError::Usage(format!("{}: no snapshot here", path.display())));
    }
    Ok(v)
}

/// Runs a `vmrr snapshot` subcommand.
pub fn run(cmd: &SnapshotCmd, max_mem: u64) -> CliResult {
    match cmd {
        SnapshotCmd::Info { path, json } => {
            // Every snapshot of a directory is read and validated once, whatever the
            // chains (linear in their number).
            let chains = snapshot::ChainCheck::new(max_mem);
            let mut out = Vec::new();
            for dir in snapshot_dirs(path)? {
                out.push(info_json(&chains.top(&dir).map_err(cli_err)?));
            }
            if *json {
                if out.len() == 1 { print_json(&out[0])? } else { print_json(&out)? }
            } else {
                for v in &out {
                    println!(
                        "{}: snapshot {} (format {}), {}, after {} (record seq {}), trace {}",
                        v["path"].as_str().unwrap_or(""),
                        v["id"],
                        v["version"].as_str().unwrap_or(""),
                        match v["parent"].as_u64() {
                            Some(p) => format!(
                                "incremental on {p} (a chain of {} from full snapshot {})",
                                v["chain_length"], v["base"]
                            ),
                            None => "full".to_string(),
                        },
                        vmrr_format::describe::count(v["exits"].as_u64().unwrap_or(0), "exit"),
                        v["exit_seq"],
                        v["trace_id"].as_str().unwrap_or("")
                    );
                    for s in v["slots"].as_array().into_iter().flatten() {
                        println!(
                            "  slot {} {} at {:#x}, {} MiB: {} changed, {} stored",
                            s["id"],
                            s["kind"].as_str().unwrap_or(""),
                            s["gpa"].as_u64().unwrap_or(0),
                            s["size"].as_u64().unwrap_or(0) >> 20,
                            vmrr_format::describe::count(s["changed_pages"].as_u64().unwrap_or(0), "page"),
                            s["stored_pages"]
                        );
                    }
                    for (i, c) in v["vcpus"].as_array().into_iter().flatten().enumerate() {
                        println!("  vcpu {i}: rip {:#x}", c["rip"].as_u64().unwrap_or(0));
                    }
                }
            }
            Ok(())
        }
        SnapshotCmd::Flatten { src, dst, force } => {
            // The output first: nothing is read if it may not be written.
            vmrr_format::output::check(dst, &[src], *force, vmrr_format::output::OutputKind::SnapshotDir)
                .map_err(|e| CliError::Usage(e.to_string()))?;
            if let Some(newest) = newest_snapshot_in(src) {
                return Err(CliError::Usage(format!(
                    "{}: a snapshots directory, not a snapshot: name the snapshot to flatten, e.g. the newest, {}",
                    src.display(),
                    newest.display()
                )));
            }
            let len = snapshot::flatten_dir(src, dst, *force, max_mem).map_err(cli_err)?;
            println!("{}: full snapshot of {} ({} in the chain)", dst.display(), src.display(), len);
            Ok(())
        }
    }
}

/// The newest snapshot (`snap-NNNNNN`) in `dir` when `dir` is a snapshots directory (it
/// holds snapshots and no state of its own); `None` otherwise.
fn newest_snapshot_in(dir: &std::path::Path) -> Option<PathBuf> {
    if dir.join(vmrr_format::layout::STATE_FILE).exists() {
        return None;
    }
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str().is_some_and(vmrr_format::layout::is_snapshot_dir_name))
        .map(|e| e.path())
        .max()
}

//! Where a replay starts: the machine restored from a checkpoint's snapshot, or rebuilt
//! from the trace's description of its guest.

use vmrr_engine::devices::console::Console;
use vmrr_engine::machine::Machine;
use vmrr_engine::snapshot::{self, snapshot_dir};
use vmrr_format::overview::{CheckpointMark, TraceOverview};

use crate::error::ReplayError;
use crate::options::{Options, StartFrom};
use crate::report::Start;
use crate::source::Source;

fn unreplayable(s: impl Into<String>) -> ReplayError {
    ReplayError::Unreplayable(s.into())
}

/// The checkpoint to start from, if any: the one asked for; with `--goto`, the nearest at
/// or before it; otherwise the first (initial) snapshot present.
fn checkpoint(
    src: &Source,
    f: &TraceOverview,
    opts: &Options,
) -> Result<Option<CheckpointMark>, ReplayError> {
    match opts.start {
        StartFrom::Rebuild => Ok(None),
        StartFrom::Checkpoint(id) => f
            .checkpoints
            .iter()
            .find(|c| c.snapshot_id == id)
            .copied()
            .map(Some)
            .ok_or_else(|| unreplayable(format!("the trace has no checkpoint {id}"))),
        StartFrom::Auto => {
            let present = |c: &&CheckpointMark| {
                src.snapshots.as_ref().is_some_and(|r| snapshot_dir(r, c.snapshot_id).is_dir())
            };
            Ok(match opts.goto {
                Some(g) => f.checkpoints.iter().rev().filter(|c| c.at() <= g).find(present).copied(),
                None => f.checkpoints.iter().find(present).copied(),
            })
        }
    }
}

/// Builds the machine and says where it starts.
///
/// # Errors
/// The snapshot or the trace's description is unusable, or KVM failed.
pub fn prepare(src: &Source, f: &TraceOverview, opts: &Options) -> Result<(Machine, Start), ReplayError> {
    let debugcon = Console::capture_only();
    if let Some(c) = checkpoint(src, f, opts)? {
        let root = src.snapshots.as_ref().ok_or_else(|| {
            unreplayable(format!("checkpoint {} needs the snapshot directory", c.snapshot_id))
        })?;
        let chain = snapshot::load_chain(&snapshot_dir(root, c.snapshot_id), opts.max_mem)?;
        if chain.last().is_some_and(|l| l.state.trace_id != f.trace_id) {
            return Err(unreplayable(format!("snapshot {} belongs to another trace", c.snapshot_id)));
        }
        let m = snapshot::restore(&chain, opts.serial.clone(), debugcon, opts.dirty_log)?;
        return Ok((m, Start { snapshot: Some(c.snapshot_id), seq: c.at() + 1 }));
    }
    // The guest file is the user's (`--image`, `--firmware`, `--kernel`, `--initrd`) or
    // the bundle's: never a path the trace names.
    let files = vmrr_engine::session::GuestFiles {
        image: opts.image.as_deref().or(src.image.as_deref()),
        firmware: opts.firmware.as_deref().or(src.firmware.as_deref()),
        kernel: opts.kernel.as_deref().or(src.kernel.as_deref()),
        initrd: opts.initrd.as_deref().or(src.initrd.as_deref()),
    };
    let mut cfg = vmrr_engine::session::from_annotations(&f.annotations, files, opts.max_mem)
        .map_err(|error| ReplayError::Rebuild { trace: src.trace.display().to_string(), error })?;
    cfg.dirty_log = opts.dirty_log;
    let mut m = cfg.build(opts.serial.clone(), debugcon)?;
    if !f.cpuid.is_empty() {
        // The guest must see the CPUID it saw when recorded, not this host's.
        m.set_cpuid(&f.cpuid).map_err(|source| ReplayError::Cpuid {
            trace: src.trace.display().to_string(),
            seq: f.cpuid_seq.unwrap_or_default(),
            source,
        })?;
    }
    Ok((m, Start { snapshot: None, seq: 0 }))
}

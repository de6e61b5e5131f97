//! `vmrr replay`: re-run a recorded guest and check it against its trace.

use std::path::{Path, PathBuf};
use std::time::Duration;

use vmrr_engine::devices::console::Console;
use vmrr_format::bundle::Budgets;
use vmrr_format::output::{self, OutputKind};
use vmrr_replay::{Options, StartFrom, replay, source};

use super::print_json;
use crate::exit_code::{CliError, CliResult};

/// `vmrr replay` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct ReplayArgs {
    /// A trace (its snapshots beside it in `<trace>.snapshots/`), a directory holding one,
    /// or a bundle made by `vmrr pack`.
    pub src: PathBuf,
    /// Stop after the record with this sequence number (starting from the nearest
    /// checkpoint at or before it).
    #[arg(long, value_parser = super::record::parse_u64)]
    pub goto: Option<u64>,
    /// With a sequence number and a directory: stop there and write a full snapshot of the
    /// replayed machine into the directory (refused when it exists, unless --force).
    #[arg(long, num_args = 2, value_names = ["SEQ", "DIR"], conflicts_with = "goto")]
    pub snapshot_at: Option<Vec<String>>,
    /// Start from this checkpoint (snapshot id).
    #[arg(long, conflicts_with = "rebuild")]
    pub from_checkpoint: Option<u64>,
    /// Ignore snapshots: rebuild the guest from the trace's description (a built-in
    /// guest, or the image or firmware a bundle carries or --image / --firmware names).
    #[arg(long)]
    pub rebuild: bool,
    /// The flat image a rebuilt guest runs: needed to rebuild a bare trace recorded with
    /// `--image` (vmrr never opens the path a trace names; a bundle carries its image).
    #[arg(long, conflicts_with = "firmware")]
    pub image: Option<PathBuf>,
    /// The firmware a rebuilt guest runs (as for --image).
    #[arg(long)]
    pub firmware: Option<PathBuf>,
    /// Replace existing outputs (--snapshot-at DIR when it is a snapshot directory,
    /// --serial FILE when it is a regular file); never an input.
    #[arg(long)]
    pub force: bool,
    /// Refuse to replay when this host lacks a CPU feature the recorded guest saw.
    #[arg(long)]
    pub strict_cpu: bool,
    /// The replayed guest's serial output: `none` (default), `-` (stderr), or a file.
    #[arg(long, default_value = "none")]
    pub serial: String,
    /// Give up when the replayed guest makes no exit for this many seconds.
    #[arg(long, default_value_t = 60)]
    pub stall_seconds: u64,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Opens the serial output file `p`: new, or with `force` an existing regular file that is
/// none of `inputs` (checked before anything is truncated).
fn serial_file(p: &Path, inputs: &[&Path], force: bool) -> Result<std::fs::File, CliError> {
    output::check(p, inputs, force, OutputKind::File).map_err(|e| CliError::Usage(e.to_string()))?;
    let mut o = std::fs::OpenOptions::new();
    o.write(true);
    if force {
        o.create(true).truncate(true);
    } else {
        o.create_new(true);
    }
    o.open(p).map_err(|source| CliError::Output { context: format!("creating {}", p.display()), source })
}

/// Runs `vmrr replay`.
pub fn run(args: &ReplayArgs, budgets: &Budgets) -> CliResult {
    let (goto, snapshot_at) = match &args.snapshot_at {
        Some(v) => {
            let seq = super::record::parse_u64(&v[0]).map_err(CliError::Usage)?;
            (Some(seq), Some(PathBuf::from(&v[1])))
        }
        None => (args.goto, None),
    };
    if !args.src.exists() {
        return Err(CliError::Usage(format!("{}: no such file or directory", args.src.display())));
    }
    // Outputs are checked before anything is read or extracted.
    let mut inputs: Vec<&Path> = vec![&args.src];
    inputs.extend(args.image.as_deref());
    inputs.extend(args.firmware.as_deref());
    if let Some(dir) = &snapshot_at {
        output::check(dir, &inputs, args.force, OutputKind::SnapshotDir)
            .map_err(|e| CliError::Usage(e.to_string()))?;
    }
    let serial = match args.serial.as_str() {
        "none" => Console::capture_only(),
        "-" => Console::with_output(Box::new(std::io::stderr())),
        p => Console::with_output(Box::new(serial_file(Path::new(p), &inputs, args.force)?)),
    };
    let opts = Options {
        goto,
        snapshot_at,
        start: match (args.rebuild, args.from_checkpoint) {
            (true, _) => StartFrom::Rebuild,
            (false, Some(id)) => StartFrom::Checkpoint(id),
            (false, None) => StartFrom::Auto,
        },
        strict_cpu: args.strict_cpu,
        serial,
        image: args.image.clone(),
        firmware: args.firmware.clone(),
        max_mem: budgets.max_mem,
        replace_output: args.force,
        stall: Duration::from_secs(args.stall_seconds.max(1)),
        progress: !args.json,
    };
    let src = source::open(&args.src, budgets).map_err(super::replay_err)?;
    let report = replay(&src, &opts).map_err(|e| super::replay_err(src.explain(e)))?;
    if args.json {
        print_json(&report)?;
    } else {
        print!("{}", report.human());
    }
    match report.outcome.exit_code() {
        0 => Ok(()),
        code => Err(CliError::Reported { code }),
    }
}

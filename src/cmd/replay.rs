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
    /// A trace (its snapshots beside it in `<trace>.snapshots/`: `run.vmrr.snapshots/`), a directory holding one,
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
    #[arg(long, conflicts_with = "kernel")]
    pub firmware: Option<PathBuf>,
    /// The kernel a rebuilt guest boots: needed to rebuild a bare trace recorded with
    /// `--kernel` (checked against the SHA-256 the trace recorded; a bundle carries it).
    #[arg(long, conflicts_with = "image")]
    pub kernel: Option<PathBuf>,
    /// The initramfs a rebuilt guest boots with (as for --kernel).
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Replace existing outputs (--snapshot-at DIR when it is a snapshot directory,
    /// --serial FILE when it is a regular file); never an input.
    #[arg(long)]
    pub force: bool,
    /// Refuse to replay when this host lacks a CPU feature the recorded guest saw.
    #[arg(long)]
    pub strict_cpu: bool,
    /// The replayed guest's serial output: `none` (default), `-` (stderr here, not stdout:
    /// stdout carries the report), or a file.
    #[arg(long, default_value = "none")]
    pub serial: String,
    /// Give up when the replayed guest makes no exit for this many seconds.
    #[arg(long, default_value_t = 60)]
    pub stall_seconds: u64,
    /// On a divergence, single-step at most this many instructions looking for its cause
    /// (instructions whose result bypasses the trace: RDTSC, RDRAND, ...).
    #[arg(long, default_value_t = vmrr_replay::DEFAULT_EXPLAIN_STEPS, value_name = "N")]
    pub explain_steps: u64,
    /// Report a divergence without searching for its cause.
    #[arg(long)]
    pub no_explain: bool,
    /// Do not run the failure-point snapshot of a trace that ended in a failure.
    #[arg(long)]
    pub no_failure_point: bool,
    /// Replay the recorded path even when the recording says it cannot be deterministic
    /// (a machine on KVM's in-kernel irqchip: by default such a trace goes straight to its
    /// failure point).
    #[arg(long)]
    pub path: bool,
    /// The guest kernel's System.map (Debian: /usr/lib/debug/boot/System.map-VERSION from
    /// its -dbg package): reports name the failing RIP, the suspects and the registers
    /// that point into the kernel as `function+offset`; with --gdb, `monitor sym` does
    /// and an ELF symbol file is written for `symbol-file`.
    #[arg(long, value_name = "FILE")]
    pub system_map: Option<PathBuf>,
    /// Print JSON on stdout instead of text.
    ///
    /// One object: the report (docs/REPLAY.md lists its keys); for a corpus, one per repro
    /// and one line of summary.
    #[arg(long, conflicts_with = "gdb")]
    pub json: bool,
    /// Serve the replay to gdb on this address (e.g. `127.0.0.1:1234`; port 0 picks a
    /// free one) and wait for it before the guest's first instruction: step, continue and
    /// break forwards and backwards (`reverse-stepi`, `reverse-continue`). See
    /// docs/DEBUGGING.md.
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["goto", "snapshot_at"])]
    pub gdb: Option<String>,
    /// Corpora, shards and segments (see docs/CI.md).
    #[command(flatten)]
    pub ci: super::corpus_args::CorpusArgs,
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
    inputs.extend(args.kernel.as_deref());
    inputs.extend(args.initrd.as_deref());
    inputs.extend(args.system_map.as_deref());
    // The map is read and checked before anything else.
    let system_map = match &args.system_map {
        None => None,
        Some(p) if !p.exists() => {
            return Err(CliError::Usage(format!("{}: no such file (--system-map)", p.display())));
        }
        Some(p) => Some(std::sync::Arc::new(
            vmrr_replay::symbols::SymbolMap::read(p)
                .map_err(|e| CliError::Invalid(crate::exit_code::chain(&e)))?,
        )),
    };
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
        kernel: args.kernel.clone(),
        initrd: args.initrd.clone(),
        max_mem: budgets.max_mem,
        replace_output: args.force,
        stall: Duration::from_secs(args.stall_seconds.max(1)),
        progress: !args.json,
        explain_steps: (!args.no_explain).then_some(args.explain_steps),
        failure_point: !args.no_failure_point,
        force_path: args.path,
        system_map,
        dirty_log: args.gdb.is_some(),
        verify_checkpoints: args.ci.verify_checkpoints,
    };
    let src = source::open(&args.src, budgets).map_err(super::replay_err)?;
    if let Some(addr) = &args.gdb {
        return debug(src, &opts, addr);
    }
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

/// `vmrr replay --gdb ADDR`: serves the replay to gdb until it detaches.
fn debug(src: vmrr_replay::source::Source, opts: &Options, addr: &str) -> CliResult {
    use vmrr_replay::debugger::{DebugError, Session, Settings};
    use vmrr_replay::gdb::{self, GdbError};
    let session = Session::open(src, opts, Settings::default()).map_err(|e| match e {
        DebugError::Replay(e) => super::replay_err(e),
        other => CliError::Replay(crate::exit_code::chain(&other)),
    })?;
    let at = session.position().to_string();
    // The symbols as an ELF file gdb loads, in a directory removed when vmrr exits.
    let symbols = match session.system_map() {
        None => None,
        Some(map) => {
            let tmp = std::env::temp_dir();
            let dir = vmrr_format::scratch::Scratch::dir_in(&tmp, "vmrr-symbols-").map_err(|source| {
                CliError::Output { context: format!("creating a directory in {}", tmp.display()), source }
            })?;
            let file = dir.path().join("kernel-symbols.elf");
            std::fs::write(&file, map.to_elf()).map_err(|source| CliError::Output {
                context: format!("writing {}", file.display()),
                source,
            })?;
            Some((dir, file))
        }
    };
    let sym_arg =
        symbols.as_ref().map(|(_, f)| format!(" -ex 'symbol-file {}'", f.display())).unwrap_or_default();
    let ended = gdb::serve(session, addr, |a| {
        eprintln!("vmrr: replay ready at {at}; waiting for gdb on {a}");
        eprintln!("vmrr:   gdb{sym_arg} -ex 'target remote {a}'");
    })
    .map_err(|e| match e {
        GdbError::Listen { .. } => CliError::Usage(crate::exit_code::chain(&e)),
        other => CliError::Replay(crate::exit_code::chain(&other)),
    })?;
    eprintln!("vmrr: gdb session over ({ended:?})");
    Ok(())
}

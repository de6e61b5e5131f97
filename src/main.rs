//! The `vmrr` command line: record, snapshot and replay KVM guests; read and check traces.
//!
//! Exit codes are listed in [`exit_code`] and in the README.

mod bench;
mod ci;
mod cmd;
mod exit_code;
mod output;
mod profile;
mod stop;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The `--help` heading of the limits every command puts on hostile input, apart from the
/// command's own options.
const BUDGETS: &str = "Input budgets (limits on hostile input, every command)";

/// vmrr: record-and-replay and snapshots for KVM virtual machines.
#[derive(Parser, Debug)]
#[command(name = "vmrr", version, about, long_about = None)]
struct Cli {
    /// Largest guest memory a snapshot, a bundle's snapshot or a rebuilt guest may have,
    /// in MiB (a snapshot's memory files together).
    #[arg(long, global = true, default_value_t = 16384, value_name = "MIB", help_heading = BUDGETS)]
    max_mem_mib: u64,
    /// Most bytes extracting a bundle may write, all its files together, in MiB.
    #[arg(long, global = true, default_value_t = 32768, value_name = "MIB", help_heading = BUDGETS)]
    max_extract_mib: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Record a failing guest, pack it, and reproduce the failure from the bundle.
    #[command(display_order = 14)]
    Demo {
        /// Where to put the trace, snapshots and bundle (default: a new temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Replace the files of an earlier demo in --dir.
        #[arg(long, requires = "dir")]
        force: bool,
    },
    /// Print a trace's records, one per line.
    #[command(display_order = 6)]
    Inspect {
        /// Trace file.
        file: PathBuf,
        /// First sequence number to print.
        #[arg(long)]
        from: Option<u64>,
        /// Number of records to print.
        #[arg(long)]
        count: Option<u64>,
        /// Print JSON on stdout instead of text.
        ///
        /// One object per record, one per line.
        #[arg(long)]
        json: bool,
    },
    /// Summarise a trace: records per kind, sizes, compression.
    #[command(display_order = 7)]
    Stats {
        /// Trace file.
        file: PathBuf,
        /// Print JSON on stdout instead of text.
        ///
        /// One object.
        #[arg(long)]
        json: bool,
    },
    /// Run a guest on KVM and record every exit into a trace.
    #[command(display_order = 1)]
    Record(Box<cmd::record::RecordArgs>),
    /// Replay a recorded guest deterministically and check it against its trace.
    #[command(display_order = 2)]
    Replay(Box<cmd::replay::ReplayArgs>),
    /// Measure exit throughput (plain, record, replay), trace cost, snapshot cost.
    #[command(display_order = 13)]
    Bench {
        /// Fewer repetitions (every figure still reported); under a minute.
        #[arg(long)]
        quick: bool,
        /// Print JSON on stdout instead of text.
        ///
        /// One object with every figure.
        #[arg(long)]
        json: bool,
        /// Write SVG charts into this directory.
        #[arg(long = "svg", alias = "plot", value_name = "DIR")]
        plot: Option<PathBuf>,
        /// With --svg: replace the charts that exist in the directory.
        #[arg(long, requires = "plot")]
        force: bool,
        /// Seconds each comparison (an exit storm's modes, the checkpoint overhead) may keep
        /// repeating to bring its 95% intervals within 2 points (default: 10 s per storm
        /// and one repetition of the checkpoint overhead with --quick; 180 s per storm and
        /// 1,200 s for the checkpoint overhead otherwise).
        #[arg(long)]
        allowance: Option<f64>,
    },
    /// Pack a trace, the snapshots it needs and the guest image or firmware it runs into
    /// one checksummed, compressed file.
    #[command(display_order = 5)]
    Pack {
        /// The trace.
        trace: PathBuf,
        /// The bundle to write (refused when it exists, unless --force).
        #[arg(long, short)]
        out: PathBuf,
        /// The guest image to ship, when it is no longer where the trace says it was.
        #[arg(long, conflicts_with = "firmware")]
        image: Option<PathBuf>,
        /// The firmware to ship, when it is no longer where the trace says it was.
        #[arg(long, conflicts_with = "kernel")]
        firmware: Option<PathBuf>,
        /// The kernel to ship, when it is no longer where the trace says it was (checked
        /// against the SHA-256 the trace recorded).
        #[arg(long, conflicts_with = "image")]
        kernel: Option<PathBuf>,
        /// The initramfs to ship, when it is no longer where the trace says it was (checked
        /// likewise).
        #[arg(long)]
        initrd: Option<PathBuf>,
        /// Replace an existing bundle (never an input, a directory or a special file).
        #[arg(long)]
        force: bool,
        /// Print JSON on stdout instead of text.
        ///
        /// One object: the bundle, its size, entries and snapshots.
        #[arg(long)]
        json: bool,
        /// Write one self-contained bundle per segment into the directory --out names
        /// (`seg-K-of-N.vmrrb`): a runner replaying segment K fetches only its bundle.
        #[arg(long, value_name = "N")]
        segments: Option<usize>,
    },
    /// Inspect or flatten snapshots.
    #[command(subcommand, display_order = 9)]
    Snapshot(cmd::snapshot::SnapshotCmd),
    /// List the built-in guests.
    #[command(display_order = 10)]
    Guests {
        /// Print JSON on stdout instead of text.
        ///
        /// One array of the guests.
        #[arg(long)]
        json: bool,
    },
    /// Where exit-handling time goes: per exit kind, port, MMIO address, MSR or vCPU (count,
    /// share, handler time percentiles, guest time), two runs compared (`--vs`), pictures.
    #[command(display_order = 11)]
    Profile(Box<cmd::profile::ProfileArgs>),
    /// Write a trace as Chrome trace-event JSON for Perfetto or chrome://tracing: a track
    /// per vCPU and per device thread.
    #[command(display_order = 12)]
    Timeline(Box<cmd::timeline::TimelineArgs>),
    /// Merge shard reports of a corpus (or segment reports of a trace) into one verdict,
    /// one summary and one JUnit file.
    #[command(display_order = 3)]
    Merge(Box<ci::merge::MergeArgs>),
    /// Print a ready manifest that replays a corpus in shards: a Kubernetes Indexed Job or
    /// a GitHub Actions workflow.
    #[command(subcommand, display_order = 4)]
    Ci(ci::command::CiCmd),
    /// Check a trace end to end; exit 3 when damaged.
    #[command(display_order = 8)]
    Verify {
        /// Trace file.
        file: PathBuf,
        /// Print JSON on stdout instead of text.
        ///
        /// One object: the verification report.
        #[arg(long)]
        json: bool,
        /// Write every readable record into a new, intact trace (a recording killed or
        /// damaged); refused when OUT is the trace or exists, unless --force.
        #[arg(long, value_name = "OUT")]
        repair: Option<PathBuf>,
        /// With --repair: replace an existing OUT (never the trace itself).
        #[arg(long, requires = "repair")]
        force: bool,
    },
}

/// The file a command reads first, for the one "no such file" message.
fn input_of(c: &Command) -> Option<&std::path::Path> {
    match c {
        Command::Inspect { file, .. } | Command::Stats { file, .. } | Command::Verify { file, .. } => {
            Some(file)
        }
        Command::Pack { trace, .. } => Some(trace),
        Command::Profile(a) => Some(&a.trace),
        Command::Timeline(a) => Some(&a.trace),
        Command::Replay(a) => Some(&a.src),
        _ => None,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let budgets = vmrr_format::bundle::Budgets {
        max_mem: cli.max_mem_mib.saturating_mul(1 << 20),
        max_extract: cli.max_extract_mib.saturating_mul(1 << 20),
    };
    cmd::trace_file::set_budgets(budgets);
    // Told to stop, or reading a closed pipe, a command removes its temporary files and
    // ends quietly (`stop`); `record` keeps the default (its trace survives any kill).
    if !matches!(&cli.command, Command::Record(_)) {
        if let Err(e) = stop::install() {
            return exit_code::CliError::Replay(format!("cannot install signal handlers: {e}")).report();
        }
    }
    // One message for a missing input, whichever command reads it.
    if let Some(p) = input_of(&cli.command).filter(|p| std::fs::symlink_metadata(p).is_err()) {
        return exit_code::CliError::Usage(format!("{}: no such file", p.display())).report();
    }
    let res = match cli.command {
        Command::Inspect { file, from, count, json } => cmd::inspect::run(&file, from, count, json),
        Command::Stats { file, json } => cmd::stats::run(&file, json),
        Command::Verify { file, json, repair, force } => {
            cmd::verify::run(&file, json, repair.as_deref(), force)
        }
        Command::Record(args) => cmd::record::run(&args),
        Command::Profile(args) => cmd::profile::run(&args),
        Command::Timeline(args) => cmd::timeline::run(&args),
        Command::Guests { json } => cmd::guests::run(json),
        Command::Bench { quick, json, plot, force, allowance } => {
            bench::run(quick, json, plot.as_deref(), force, allowance.map(std::time::Duration::from_secs_f64))
        }
        Command::Demo { dir, force } => cmd::demo::run(dir.as_deref(), force, &budgets),
        Command::Pack { trace, out, image, firmware, kernel, initrd, force, json, segments: Some(n) } => {
            let _ = json;
            ci::pack::run(&trace, &out, n, image.or(firmware).or(kernel), initrd, force, budgets.max_mem)
        }
        Command::Pack { trace, out, image, firmware, kernel, initrd, force, json, segments: None } => {
            cmd::pack::run(&trace, &out, image.or(firmware).or(kernel), initrd, force, json)
        }
        Command::Replay(args) => {
            ci::dispatch(&args, &budgets).unwrap_or_else(|| cmd::replay::run(&args, &budgets))
        }
        Command::Snapshot(c) => cmd::snapshot::run(&c, budgets.max_mem),
        Command::Merge(args) => ci::merge::run(&args),
        Command::Ci(c) => ci::command::run(&c),
    };
    // A stop signal that interrupted the command's system calls: die of it as the watcher
    // would, rather than report what the interruption looked like.
    if let Some(s) = stop::caught() {
        stop::stop(s);
    }
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.report(),
    }
}

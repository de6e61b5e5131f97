//! The `vmrr` command line: record, snapshot and replay KVM guests; read and check traces.
//!
//! Exit codes are listed in [`exit`] and in the README.

mod cmd;
mod exit;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// vmrr: record-and-replay and snapshots for KVM virtual machines.
#[derive(Parser, Debug)]
#[command(name = "vmrr", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a trace's records, one per line.
    Inspect {
        /// Trace file.
        file: PathBuf,
        /// First sequence number to print.
        #[arg(long)]
        from: Option<u64>,
        /// Number of records to print.
        #[arg(long)]
        count: Option<u64>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Summarise a trace: records per kind, sizes, compression.
    Stats {
        /// Trace file.
        file: PathBuf,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Run a guest on KVM and record every exit into a trace.
    Record(Box<cmd::record::RecordArgs>),
    /// List the built-in guests.
    Guests {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a trace end to end; exit 3 when damaged.
    Verify {
        /// Trace file.
        file: PathBuf,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.command {
        Command::Inspect { file, from, count, json } => cmd::inspect::run(&file, from, count, json),
        Command::Stats { file, json } => cmd::stats::run(&file, json),
        Command::Verify { file, json } => cmd::verify::run(&file, json),
        Command::Record(args) => cmd::record::run(&args),
        Command::Guests { json } => cmd::guests::run(json),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.report(),
    }
}

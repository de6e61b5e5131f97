//! `vmrr record`: run a guest on KVM and record every exit.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use vmrr_engine::checkpoint::{CaptureMode, Checkpointer, Policy};
use vmrr_engine::devices::console::Console;
use vmrr_engine::guests::boot::BootMode;
use vmrr_engine::guests::linux::{BootProtocol, LinuxSpec};
use vmrr_engine::kvm::cpuid::CpuidProfile;
use vmrr_engine::kvm::irqchip::IrqchipKind;
use vmrr_engine::machine::RunError;
use vmrr_engine::machine::{Limits, Machine, RunSummary};
use vmrr_engine::recording::{Closed, RecordError, Runner, Snapshots};
use vmrr_engine::session::{GuestSpec, SessionConfig};
use vmrr_engine::snapshot;
use vmrr_format::describe::count;
use vmrr_format::progress::Progress;
use vmrr_format::{SyncMode, TraceWriter, WriterOptions, end_reason};

use super::print_json;
use crate::exit_code::{CliError, CliResult, GUEST_FATAL};

/// `vmrr record` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct RecordArgs {
    /// A built-in guest (see `vmrr guests`).
    #[arg(long, conflicts_with_all = ["image", "firmware", "kernel"])]
    pub guest: Option<String>,
    /// A flat binary image to run.
    #[arg(long, conflicts_with_all = ["firmware", "kernel"], requires_all = ["load_addr", "entry", "mode"])]
    pub image: Option<PathBuf>,
    /// Guest-physical load address of `--image` (hex with 0x, or decimal).
    #[arg(long, value_parser = parse_u64)]
    pub load_addr: Option<u64>,
    /// Entry point of `--image`.
    #[arg(long, value_parser = parse_u64)]
    pub entry: Option<u64>,
    /// CPU mode of `--image`: real or long.
    #[arg(long, value_parser = ["real", "long"])]
    pub mode: Option<String>,
    /// Privilege level for `--mode long`: 0 or 3.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=3))]
    pub ring: u8,
    /// A BIOS ROM (e.g. /usr/share/seabios/bios.bin) started at the reset vector.
    #[arg(long, conflicts_with = "kernel")]
    pub firmware: Option<PathBuf>,
    /// A Linux kernel: an ELF vmlinux, or a bzImage such as Debian's /boot/vmlinuz-*
    /// (its lz4, gzip, xz or zstd payload is unpacked here and entered through PVH). Runs
    /// with KVM's in-kernel irqchip and PIT, ACPI tables, and `--cpuid host` by default.
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// The initramfs for `--kernel`.
    #[arg(long, requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// The kernel command line, replacing vmrr's default (`vmrr record --help` shows it in
    /// docs/LINUX.md: serial console, nokaslr, panic=-1, reboot=acpi).
    #[arg(long, requires = "kernel")]
    pub cmdline: Option<String>,
    /// How `--kernel` is entered: auto (PVH when the ELF has the note, else the 64-bit
    /// boot protocol), pvh, or linux64.
    #[arg(long, default_value = "auto", value_parser = ["auto", "pvh", "linux64"], requires = "kernel")]
    pub boot_protocol: String,
    /// Trace file to write.
    #[arg(long, short, required_unless_present = "no_trace")]
    pub out: Option<PathBuf>,
    /// Replace an existing trace at --out and its snapshots directory (only vmrr's: never a
    /// directory, another kind of file or an input).
    #[arg(long)]
    pub force: bool,
    /// Run without recording (the benchmark baseline).
    #[arg(long, conflicts_with = "out")]
    pub no_trace: bool,
    /// Iterations for guests that take them.
    #[arg(long)]
    pub iterations: Option<u64>,
    /// Guest memory in MiB (default 128; 512 with --kernel).
    #[arg(long)]
    pub mem_mib: Option<u64>,
    /// CPUID profile: deterministic (the default, except with --kernel: Linux needs the
    /// TSC the deterministic profile hides) or host (warns: replay may diverge).
    #[arg(long, value_parser = ["deterministic", "host"])]
    pub cpuid: Option<String>,
    /// vCPUs (1 to 8). More than one needs KVM's in-kernel irqchip (the default then); each
    /// vCPU runs on its own thread and records its own exits.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=8))]
    pub vcpus: u32,
    /// Where the interrupt controllers live: `user` (vmrr's own 8259 pair; interrupts
    /// injected at exits and recorded: the path replays) or `kernel` (KVM's in-kernel
    /// PIC, IOAPIC, local APICs and PIT: Linux and several vCPUs need it; a failure
    /// reproduces from its failure point). Default: `kernel` with --kernel or --vcpus above
    /// 1, `user` otherwise.
    #[arg(long, value_parser = ["user", "kernel"])]
    pub irqchip: Option<String>,
    /// End the run after this many exits (of all vCPUs).
    #[arg(long)]
    pub max_exits: Option<u64>,
    /// End the run after this many seconds.
    #[arg(long)]
    pub max_seconds: Option<f64>,
    /// Serial console output: `-` (stdout), `none`, or a file.
    #[arg(long, default_value = "-")]
    pub serial: String,
    /// Debug console (port 0x402) output: `-` (stderr here, not stdout: stdout carries the
    /// serial console), `none` (default), or a file.
    #[arg(long, default_value = "none")]
    pub debugcon: String,
    /// zstd level for trace chunks.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(-7..=19))]
    pub zstd_level: i32,
    /// Store chunks uncompressed.
    #[arg(long)]
    pub no_compress: bool,
    /// Durability: always (every record synced), chunk (default), never (until the end).
    #[arg(long, default_value = "chunk", value_parser = ["always", "chunk", "never"])]
    pub sync: String,
    /// Take a checkpoint (an incremental snapshot) every N exits.
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Take a checkpoint at the first exit after T milliseconds since the last one.
    #[arg(long)]
    pub checkpoint_interval_ms: Option<u64>,
    /// Checkpoints stop the guest until every dirty page is written and synced (the
    /// behaviour before background capture; by default the guest is paused only to
    /// write-protect the pages, which a writer thread stores while it runs).
    #[arg(long)]
    pub stop_world_checkpoints: bool,
    /// Background checkpoints: most MiB of old page contents held aside for pages the
    /// guest writes before they are stored; beyond it the writing vCPU waits for its page
    /// (`pages_waited` in the run summary).
    #[arg(long, default_value_t = 64)]
    pub checkpoint_buffer_mib: u64,
    /// Do not write snapshots (by default the initial state is saved next to the trace,
    /// in `<trace>.snapshots/`: `run.vmrr.snapshots/` for `run.vmrr`, so the trace can be
    /// replayed anywhere).
    #[arg(long, conflicts_with_all = ["checkpoint_every", "checkpoint_interval_ms"])]
    pub no_snapshot: bool,
    /// Flight recorder: keep only the last `--keep` checkpoints and the trace since the
    /// oldest of them (bounded disk, whatever the run's length); on an emulation failure,
    /// internal error, triple fault or SIGUSR1, write a bundle to `--out` that replays to
    /// that moment. Checkpoints default to one per second.
    #[arg(long, conflicts_with_all = ["no_snapshot", "no_trace"])]
    pub flight_recorder: bool,
    /// Checkpoints the flight recorder keeps.
    #[arg(long, default_value_t = 3, requires = "flight_recorder")]
    pub keep: usize,
    /// Record per-exit timing (handler time and time in the guest, from CLOCK_MONOTONIC)
    /// for `vmrr profile` and `vmrr timeline`: 8 bytes per exit before compression.
    #[arg(long)]
    pub timing: bool,
    /// Print JSON on stdout instead of text.
    ///
    /// One object: the run summary. The serial console then goes to stderr.
    #[arg(long)]
    pub json: bool,
}

/// Parses `0x`-prefixed hex or decimal.
pub fn parse_u64(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("{s}: {e}"))
}

/// A console file follows the output rule (never an existing file, nor an input or the
/// trace, without `--force`); it is written as the guest prints, at its own name, so what
/// the guest printed before a crash of vmrr is there.
fn console(
    spec: &str,
    default_stderr: bool,
    args: &RecordArgs,
    cfg: &SessionConfig,
) -> Result<Console, CliError> {
    Ok(match spec {
        "none" => Console::capture_only(),
        "-" if default_stderr => Console::with_output(Box::new(std::io::stderr())),
        "-" => Console::with_output(Box::new(std::io::stdout())),
        path => {
            let mut inputs = guest_inputs(cfg);
            inputs.extend(args.out.as_deref());
            crate::output::check_file(std::path::Path::new(path), &inputs, args.force)?;
            let mut open = std::fs::OpenOptions::new();
            open.write(true);
            if args.force {
                open.create(true).truncate(true);
            } else {
                open.create_new(true);
            }
            let f = open
                .open(path)
                .map_err(|source| CliError::Output { context: format!("creating {path}"), source })?;
            Console::with_output(Box::new(std::io::BufWriter::new(f)))
        }
    })
}

/// The guest's files: inputs no output may be.
fn guest_inputs(cfg: &SessionConfig) -> Vec<&std::path::Path> {
    match &cfg.guest {
        GuestSpec::Kernel(k) => {
            [Some(k.kernel.as_path()), k.initrd.as_deref()].into_iter().flatten().collect()
        }
        GuestSpec::Image { path, .. } | GuestSpec::Firmware { path } => vec![path.as_path()],
        GuestSpec::Builtin { .. } => Vec::new(),
    }
}

impl RecordArgs {
    /// The session this asks for.
    ///
    /// # Errors
    /// Usage errors.
    pub fn session(&self) -> Result<SessionConfig, CliError> {
        let guest = match (&self.guest, &self.image, &self.firmware) {
            (None, None, None) if self.kernel.is_some() => GuestSpec::Kernel(LinuxSpec {
                kernel: self.kernel.clone().unwrap_or_default(),
                initrd: self.initrd.clone(),
                cmdline: self.cmdline.clone(),
                protocol: BootProtocol::parse(&self.boot_protocol).unwrap_or_default(),
            }),
            (Some(name), None, None) => {
                GuestSpec::Builtin { name: name.clone(), iterations: self.iterations }
            }
            (None, Some(path), None) => {
                let mode = match self.mode.as_deref() {
                    Some("real") => BootMode::Real,
                    _ => BootMode::Long { ring: self.ring },
                };
                if self.ring != 0 && self.ring != 3 {
                    return Err(CliError::Usage("--ring must be 0 or 3".into()));
                }
                GuestSpec::Image {
                    path: path.clone(),
                    load_addr: self.load_addr.unwrap_or(0),
                    entry: self.entry.unwrap_or(0),
                    mode,
                }
            }
            (None, None, Some(path)) => GuestSpec::Firmware { path: path.clone() },
            _ => return Err(CliError::Usage("give one of --guest, --image, --firmware or --kernel".into())),
        };
        let kernel = matches!(guest, GuestSpec::Kernel(_));
        let mem_mib = self.mem_mib.unwrap_or(if kernel { 512 } else { 128 });
        let mem_bytes = mem_mib
            .checked_mul(1 << 20)
            .ok_or_else(|| CliError::Usage(format!("--mem-mib {mem_mib} is too large")))?;
        let cpuid = match self.cpuid.as_deref() {
            Some(p) => CpuidProfile::parse(p).unwrap_or_default(),
            None if kernel => CpuidProfile::Host,
            None => CpuidProfile::Deterministic,
        };
        let max_duration = match self.max_seconds {
            Some(s) if !(s > 0.0 && s.is_finite()) => {
                return Err(CliError::Usage(format!("--max-seconds {s} must be positive")));
            }
            Some(s) => Some(Duration::from_secs_f64(s)),
            None => None,
        };
        let irqchip = self.irqchip.as_deref().and_then(IrqchipKind::parse);
        if self.vcpus > 1 && irqchip == Some(IrqchipKind::User) {
            return Err(CliError::Usage(format!(
                "--vcpus {} needs --irqchip kernel: the APs are started by their local APICs (INIT/SIPI)",
                self.vcpus
            )));
        }
        if self.vcpus > 1 && self.flight_recorder {
            return Err(CliError::Usage(format!(
                "--flight-recorder records one vCPU: its segments continue one writer, and --vcpus {} shares the trace between threads",
                self.vcpus
            )));
        }
        if kernel && irqchip == Some(IrqchipKind::User) {
            return Err(CliError::Usage(
                "--kernel needs --irqchip kernel: Linux uses the local APICs and the IOAPIC".into(),
            ));
        }
        let cfg = SessionConfig {
            guest,
            mem_bytes,
            cpuid,
            vcpus: self.vcpus,
            irqchip,
            limits: Limits { max_exits: self.max_exits, max_duration },
            // Snapshots after the first are incremental, the failure point's too.
            dirty_log: !self.no_snapshot && !self.no_trace,
        };
        if cfg.device_threads() > 0 && self.flight_recorder {
            return Err(CliError::Usage(
                "--flight-recorder records one thread: its segments continue one writer, and the virtqueue guest's device thread shares the trace".into(),
            ));
        }
        Ok(cfg)
    }

    /// The checkpoint policy.
    pub fn policy(&self) -> Policy {
        let p = Policy {
            every_exits: self.checkpoint_every.filter(|n| *n > 0),
            interval: self.checkpoint_interval_ms.map(Duration::from_millis),
        };
        if self.flight_recorder && p.is_none() {
            Policy { interval: Some(Duration::from_secs(1)), ..p }
        } else {
            p
        }
    }

    /// How checkpoints capture memory.
    pub fn capture_mode(&self) -> CaptureMode {
        if self.stop_world_checkpoints {
            CaptureMode::StopWorld
        } else {
            CaptureMode::Background { budget_bytes: self.checkpoint_buffer_mib.saturating_mul(1 << 20) }
        }
    }

    /// Writer options.
    pub fn writer_options(&self) -> WriterOptions {
        let device_threads = self.session().is_ok_and(|c| c.device_threads() > 0);
        WriterOptions {
            zstd_level: (!self.no_compress).then_some(self.zstd_level),
            sync: SyncMode::parse(&self.sync).unwrap_or_default(),
            timing: self.timing,
            // Several vCPUs, or a device thread (the virtqueue guest's), append from their
            // own threads; lines pulsed into KVM's in-kernel irqchip, and a device thread's
            // irqfd completions, are recorded (format 1.2); a device thread's guest writes
            // are records of their own.
            guest_writes: device_threads,
            threads: self.vcpus > 1 || device_threads,
            irq_lines: self.vcpus > 1
                || device_threads
                || self.kernel.is_some()
                || self.irqchip.as_deref() == Some("kernel"),
            ..Default::default()
        }
    }
}

/// Runs `vmrr record`.
pub fn run(args: &RecordArgs) -> CliResult {
    let cfg = args.session()?;
    check_outputs(args, &cfg)?;
    // Configuration problems (missing image, memory too large, bad placement) are found
    // here, before the output file is created and before KVM is touched.
    cfg.prepare().map_err(|e| CliError::Session(e.into()))?;
    let serial = console(&args.serial, args.json, args, &cfg)?;
    let debugcon = console(&args.debugcon, true, args, &cfg)?;
    if cfg.cpuid == CpuidProfile::Host {
        if matches!(cfg.guest, GuestSpec::Kernel(_)) {
            eprintln!(
                "vmrr: note: the kernel sees this host's CPUID (Linux needs the TSC, which --cpuid deterministic hides): its path replay may diverge; a failure reproduces from its failure point"
            );
        } else {
            eprintln!("vmrr: warning: --cpuid host exposes TSC, RDRAND and RDSEED: replay may diverge");
        }
    }
    if args.flight_recorder {
        return flight(args, &cfg, serial, debugcon);
    }
    let writer = match (&args.out, args.no_trace) {
        (Some(path), false) => {
            vmrr_format::output::prepare_trace(path, args.force, !args.no_snapshot).map_err(prepare_err)?;
            Some(TraceWriter::create_new(path, args.writer_options())?)
        }
        _ => None,
    };
    let m = build(&cfg, serial.clone(), debugcon.clone())?;
    let mut runner = match writer {
        None => Runner::plain(m),
        Some(w) => {
            let snapshots = match (args.no_snapshot, &args.out) {
                (false, Some(out)) => {
                    let root = snapshot::dir_for_trace(out);
                    Snapshots::Checkpoints { root, policy: args.policy(), capture: args.capture_mode() }
                }
                _ => Snapshots::None,
            };
            Runner::start(m, &cfg, w, snapshots).map_err(stopped)?
        }
    };
    if let Some(note) = runner.capture_note() {
        eprintln!("vmrr: note: {note}");
    }
    // A recording bounded by --max-seconds shows how much of it has run (on a terminal).
    let bar = cfg.limits.max_duration.map_or_else(Progress::hidden, |d| Progress::timed("recording", d));
    let summary = runner.run().map_err(stopped)?;
    drop(bar);
    let done = runner.finish(summary).map_err(stopped)?;
    report(args, &done.summary, done.trace.as_ref(), done.checkpoints.as_ref());
    if done.summary.outcome.is_guest_failure() {
        Err(CliError::Reported { code: GUEST_FATAL })
    } else {
        Ok(())
    }
}

/// The output rule (`vmrr_format::output`), checked before the guest is built: the trace
/// and its snapshots directory, or the flight recorder's bundle, exist only with --force
/// and never are an input (the guest's files).
fn check_outputs(args: &RecordArgs, cfg: &SessionConfig) -> CliResult {
    use vmrr_format::output::{self, OutputKind};
    let Some(out) = args.out.as_deref().filter(|_| !args.no_trace) else { return Ok(()) };
    let inputs = guest_inputs(cfg);
    let refused = |e: output::OutputError| CliError::Usage(e.to_string());
    if args.flight_recorder {
        output::check(out, &inputs, args.force, OutputKind::File).map_err(refused)?;
        let staging = vmrr_engine::checkpoint::flight::FlightRecorder::dir_for(out);
        if staging.exists() && !args.force {
            return Err(refused(output::OutputError::Exists { out: staging }));
        }
        return Ok(());
    }
    output::check_trace(out, &inputs, args.force, !args.no_snapshot).map_err(refused)
}

fn prepare_err(e: vmrr_format::output::PrepareError) -> CliError {
    match e {
        vmrr_format::output::PrepareError::Refused(e) => CliError::Usage(e.to_string()),
        vmrr_format::output::PrepareError::Remove { path, source } => {
            CliError::Output { context: format!("removing {}", path.display()), source }
        }
    }
}

/// Builds the machine and prints the notes it made (fallbacks taken, capabilities missing).
fn build(cfg: &SessionConfig, serial: Console, debugcon: Console) -> Result<Machine, CliError> {
    let m = cfg.build(serial, debugcon)?;
    for n in m.vm().notes() {
        eprintln!("vmrr: note: {n}");
    }
    Ok(m)
}

/// A recording that vmrr itself could not continue (a full disk, a failed ioctl) still
/// leaves a complete trace: an END_OF_RUN record says why, then the index and trailer. When
/// the trace itself can no longer be written, its writer has already sealed the file at the
/// last complete chunk; either way `vmrr verify` passes on what is left. Says which.
fn stopped(e: RecordError) -> CliError {
    let (e, closed) = match e {
        RecordError::Start(e) => return CliError::Recorder(e),
        RecordError::Stopped { error, closed } => (error, closed),
    };
    match closed {
        Closed::NotRecording => {}
        Closed::Closed { exits, records, reason } => eprintln!(
            "vmrr: recording stopped after {}; the trace was closed ({}, {})",
            count(exits, "exit"),
            count(records, "record"),
            end_reason::name(reason)
        ),
        Closed::Sealed { exits } => eprintln!(
            "vmrr: recording stopped after {}; the trace was sealed at its last complete chunk",
            count(exits, "exit")
        ),
    }
    if crate::exit_code::is_disk_full(&e) {
        eprintln!(
            "vmrr: the disk is full: what was recorded so far is intact (`vmrr verify` checks it); free \
             space, or bound disk use with --flight-recorder"
        );
    }
    CliError::Run(e)
}

fn report(
    args: &RecordArgs,
    s: &RunSummary,
    trace: Option<&vmrr_format::WriterSummary>,
    cp: Option<&Checkpointer>,
) {
    let checkpoints = cp.map(|c| {
        let max_pause = c.taken.iter().map(|t| t.stats.pause).max().unwrap_or_default();
        let max_durable = c.taken.iter().map(|t| t.stats.durable).max().unwrap_or_default();
        let bg = c.background_totals();
        serde_json::json!({
            "dir": c.root().display().to_string(),
            "count": c.taken.len(),
            "max_pause_ms": max_pause.as_secs_f64() * 1000.0,
            "max_durable_ms": max_durable.as_secs_f64() * 1000.0,
            "capture": c.capture_name(),
            "capture_note": c.capture_note(),
            "pages_saved": bg.pages_saved,
            "pages_waited": bg.pages_waited,
            "peak_saved_pages": bg.peak_saved_pages,
            "ids": c.taken.iter().map(|t| t.id).collect::<Vec<_>>(),
            "taken": c.taken.iter().map(|t| serde_json::json!({
                "id": t.id,
                "exits": t.exits,
                "pause_ms": t.stats.pause.as_secs_f64() * 1000.0,
                "durable_ms": t.stats.durable.as_secs_f64() * 1000.0,
                "pages_considered": t.stats.pages_considered,
                "pages_written": t.stats.pages_written,
                "background": t.stats.background,
            })).collect::<Vec<_>>(),
        })
    });
    let secs = s.elapsed.as_secs_f64();
    let rate = if secs > 0.0 { s.exits as f64 / secs } else { 0.0 };
    if let Some(r) = s.outcome.report() {
        eprintln!("vmrr: the guest failed: {}", s.outcome.name());
        for line in r.to_string().lines() {
            eprintln!("  {line}");
        }
    }
    if args.json {
        let v = serde_json::json!({
            "outcome": s.outcome.name(),
            "status": s.outcome.status(),
            "exits": s.exits,
            "interrupts": s.interrupts,
            "seconds": secs,
            "exits_per_s": rate,
            "trace": trace.map(|t| serde_json::json!({
                "file": args.out.as_ref().map(|p| p.display().to_string()),
                "records": t.records, "chunks": t.chunks, "raw_bytes": t.raw_bytes,
                "stored_bytes": t.stored_bytes, "file_bytes": t.file_bytes })),
            "checkpoints": checkpoints,
            "emulation_failure": s.outcome.report().map(|r| serde_json::json!({
                "rip": r.rip, "insn_bytes": vmrr_format::describe::hex(r.insn()),
                "disassembly": r.disassembly, "vcpu": r.vcpu })),
        });
        let _ = print_json(&v);
    } else {
        let mut line = format!(
            "vmrr: {} after {} ({}) in {:.3} s ({:.0} exits/s)",
            s.outcome.name(),
            count(s.exits, "exit"),
            count(s.interrupts, "interrupt"),
            secs,
            rate
        );
        if let vmrr_engine::machine::Outcome::GuestExit(st) = s.outcome {
            line.push_str(&format!(", guest status {st}"));
        }
        if let (Some(t), Some(p)) = (trace, &args.out) {
            line.push_str(&format!(
                "; trace {}: {}, {} ({:.2} bytes/exit)",
                p.display(),
                count(t.records, "record"),
                count(t.file_bytes, "byte"),
                t.stored_bytes as f64 / s.exits.max(1) as f64
            ));
        }
        if let Some(c) = &checkpoints {
            line.push_str(&format!(
                "; {} in {} ({} capture, longest pause {:.2} ms, longest until durable {:.2} ms",
                count(c["count"].as_u64().unwrap_or(0), "snapshot"),
                c["dir"].as_str().unwrap_or(""),
                c["capture"].as_str().unwrap_or(""),
                c["max_pause_ms"].as_f64().unwrap_or(0.0),
                c["max_durable_ms"].as_f64().unwrap_or(0.0)
            ));
            let waited = c["pages_waited"].as_u64().unwrap_or(0);
            if waited > 0 {
                line.push_str(&format!(
                    "; {} over --checkpoint-buffer-mib: the guest waited for them as if paused",
                    count(waited, "page")
                ));
            }
            line.push(')');
        }
        eprintln!("{line}");
    }
    let _ = std::io::stderr().flush();
}

/// `--flight-recorder`: record into a bounded ring of segments and snapshots; pack a
/// bundle when the run ends in a failure or SIGUSR1 asks for one.
fn flight(args: &RecordArgs, cfg: &SessionConfig, serial: Console, debugcon: Console) -> CliResult {
    use vmrr_engine::checkpoint::flight::{FlightError, FlightRecorder, FlightSettings};
    let out = args.out.clone().ok_or_else(|| CliError::Usage("--flight-recorder needs --out".into()))?;
    let dir = FlightRecorder::dir_for(&out);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|source| CliError::Output {
            context: format!("removing old {}", dir.display()),
            source,
        })?;
    }
    std::fs::create_dir_all(&dir)
        .map_err(|source| CliError::Output { context: format!("creating {}", dir.display()), source })?;
    let mut m = build(cfg, serial, debugcon)?;
    let w = TraceWriter::create(&FlightRecorder::prologue_path(&dir), args.writer_options())?;
    m.stop_when(
        vmrr_engine::machine::signals::sigusr1_flag()
            .map_err(|e| CliError::Capability(format!("SIGUSR1: {e}")))?,
    );
    let settings = FlightSettings {
        policy: args.policy(),
        keep: args.keep,
        opts: args.writer_options(),
        capture: args.capture_mode(),
    };
    let mut runner =
        Runner::start(m, cfg, w, Snapshots::Flight { dir: dir.clone(), settings }).map_err(stopped)?;
    if let Some(note) = runner.capture_note() {
        eprintln!("vmrr: note: {note}");
    }
    // A recording bounded by --max-seconds shows how much of it has run (on a terminal).
    let bar = cfg.limits.max_duration.map_or_else(Progress::hidden, |d| Progress::timed("recording", d));
    let summary = runner.run().map_err(stopped)?;
    drop(bar);
    let done = runner.finish(summary).map_err(stopped)?;
    let fr = done.flight.expect("a recording started with Snapshots::Flight is kept by its flight recorder");
    let summary = done.summary;
    let triggered =
        summary.outcome.is_fatal() || matches!(summary.outcome, vmrr_engine::machine::Outcome::Stopped);
    let secs = summary.elapsed.as_secs_f64();
    let cp = fr.checkpointer();
    let bg = cp.background_totals();
    let max_pause = cp.taken.iter().map(|t| t.stats.pause).max().unwrap_or_default();
    eprintln!(
        "vmrr: flight recorder: {} ({} capture), longest pause {:.2} ms; {} set aside \
         (peak {}), {} over --checkpoint-buffer-mib (pages_waited: the guest waited for them)",
        count(cp.taken.len() as u64, "checkpoint"),
        cp.capture_name(),
        max_pause.as_secs_f64() * 1000.0,
        count(bg.pages_saved, "page"),
        bg.peak_saved_pages,
        count(bg.pages_waited, "page")
    );
    if triggered {
        let man = fr.write_bundle(&out).map_err(|e| match e {
            FlightError::Pack(e) => super::bundle_err(e),
            other => CliError::Run(RunError::Hook {
                hook: "flight recorder",
                exit: summary.exits,
                source: Box::new(other),
            }),
        })?;
        let _ = std::fs::remove_dir_all(&dir);
        eprintln!(
            "vmrr: flight recorder: {} after {} in {secs:.1} s; bundle {} holds checkpoints {:?} ({} older dropped)",
            summary.outcome.name(),
            count(summary.exits, "exit"),
            out.display(),
            man.snapshots,
            fr.dropped
        );
    } else {
        let _ = std::fs::remove_dir_all(&dir);
        eprintln!(
            "vmrr: flight recorder: {} after {} in {secs:.1} s; no failure, nothing kept",
            summary.outcome.name(),
            count(summary.exits, "exit")
        );
    }
    if let Some(r) = summary.outcome.report() {
        for line in r.to_string().lines() {
            eprintln!("  {line}");
        }
    }
    if summary.outcome.is_guest_failure() { Err(CliError::Reported { code: GUEST_FATAL }) } else { Ok(()) }
}

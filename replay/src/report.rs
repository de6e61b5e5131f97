//! The replay report: stable JSON for CI, and a human rendering.

use serde::Serialize;

/// How the replay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Every recorded exit was reproduced (up to `--goto`, when given).
    Completed,
    /// The recorded failure (emulation failure, internal error, triple fault, failed entry)
    /// happened again.
    Reproduced,
    /// The guest did something other than what the trace recorded.
    Diverged,
}

impl Outcome {
    /// CLI exit code: 0 completed or reproduced, 1 diverged.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Completed | Outcome::Reproduced => 0,
            Outcome::Diverged => 1,
        }
    }
}

/// Where the replayed run departed from the recorded one.
#[derive(Debug, Clone, Serialize)]
pub struct Divergence {
    /// Sequence number of the record that did not match.
    pub seq: u64,
    /// What differs.
    pub reason: String,
    /// The most recent recorded input the guest consumed before diverging (an IN, MMIO
    /// read, RDMSR or hypercall answer): an input's effect shows at a later exit, so an
    /// edited or wrong input is found here.
    pub after_input: Option<u64>,
    /// The recorded record (as `vmrr inspect --json` prints it).
    pub expected: serde_json::Value,
    /// The exit the replayed guest made, in the same field names (null when it made none).
    pub actual: serde_json::Value,
    /// The last records that matched, oldest first.
    pub last_matching: Vec<serde_json::Value>,
    /// Guest registers at the divergence.
    pub registers: serde_json::Value,
}

/// A reproduced failure.
#[derive(Debug, Clone, Serialize)]
pub struct FailureReport {
    /// `KVM_EXIT_*` name.
    pub exit: String,
    /// Internal-error suberror.
    pub suberror: u32,
    /// Emulation-failure flags.
    pub flags: u64,
    /// Guest RIP.
    pub rip: u64,
    /// The instruction's bytes (its true length).
    pub insn_bytes: String,
    /// KVM's `insn_size` (its fetch window).
    pub insn_size: u8,
    /// The instruction in Intel syntax.
    pub disassembly: Option<String>,
    /// Its length.
    pub insn_len: Option<usize>,
    /// The memory operand's address, where known.
    pub memory_operand: Option<u64>,
    /// What is at that address: `"mmio (no memory slot)"` or 16 bytes of guest RAM in hex.
    pub memory: Option<String>,
    /// General registers at the failure (hex strings).
    pub registers: serde_json::Value,
    /// The records that led there, oldest first.
    pub exits_before: Vec<serde_json::Value>,
}

impl FailureReport {
    /// Whether the failure is KVM's emulation failure (`KVM_INTERNAL_ERROR_EMULATION`).
    pub fn is_emulation_failure(&self) -> bool {
        self.exit == vmrr_format::kind::kvm_exit_name(u32::from(vmrr_format::kind::INTERNAL_ERROR))
            && self.suberror == vmrr_format::SUBERROR_EMULATION
    }
}

/// Where the replay started.
#[derive(Debug, Clone, Serialize)]
pub struct Start {
    /// The snapshot restored, or `None` when the guest was rebuilt from the trace.
    pub snapshot: Option<u64>,
    /// First record replayed.
    pub seq: u64,
}

/// Everything `vmrr replay --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// How it ended.
    pub outcome: Outcome,
    /// Exits the replayed guest made.
    pub exits_replayed: u64,
    /// Where it started.
    pub start: Start,
    /// `--goto`: the sequence number it stopped after.
    pub stopped_at: Option<u64>,
    /// The divergence, when it diverged.
    pub divergence: Option<Divergence>,
    /// The reproduced emulation failure, when there was one.
    pub emulation_failure: Option<FailureReport>,
    /// Another reproduced fatal exit (internal error, triple fault, failed entry).
    pub failure: Option<FailureReport>,
    /// The guest printed exactly what it printed while recording (over the replayed span).
    pub serial_output_matches: bool,
    /// Bytes the replayed guest printed.
    pub serial_bytes: u64,
    /// CPU features the recorded guest saw that this host lacks.
    pub cpu_warnings: Vec<String>,
    /// Notes (for example an unfinished trace).
    pub notes: Vec<String>,
    /// The snapshot written by `--snapshot-at`.
    pub snapshot_written: Option<String>,
    /// Wall-clock seconds, set-up (trace scan, restore) included.
    pub seconds: f64,
    /// Seconds in the replay loop alone.
    pub loop_seconds: f64,
    /// Exits per second of the replay loop.
    pub exits_per_s: f64,
}

fn hexu(v: u64) -> String {
    format!("{v:#x}")
}

impl Report {
    /// A few lines for a person.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let start = match self.start.snapshot {
            Some(id) => format!("snapshot {id}"),
            None => "the guest rebuilt from the trace".into(),
        };
        s.push_str(&format!(
            "replay: {} after {} exits from {start} (record {}) in {:.2} s ({:.0} exits/s)\n",
            match self.outcome {
                Outcome::Completed => "completed",
                Outcome::Reproduced => "REPRODUCED the recorded failure",
                Outcome::Diverged => "DIVERGED",
            },
            self.exits_replayed,
            self.start.seq,
            self.seconds,
            self.exits_per_s
        ));
        for w in &self.cpu_warnings {
            s.push_str(&format!("  warning: this host lacks {w}, which the recorded guest saw\n"));
        }
        for n in &self.notes {
            s.push_str(&format!("  note: {n}\n"));
        }
        if let Some(d) = &self.divergence {
            s.push_str(&format!("  at record {}: {}\n", d.seq, d.reason));
            if let Some(i) = d.after_input {
                s.push_str(&format!("  the last input the guest consumed before it was record {i}\n"));
            }
            s.push_str(&format!("  recorded: {}\n", d.expected));
            s.push_str(&format!("  replayed: {}\n", d.actual));
            s.push_str("  last matching records:\n");
            for r in &d.last_matching {
                s.push_str(&format!("    {r}\n"));
            }
            s.push_str(&format!("  registers: {}\n", d.registers));
        }
        for f in self.emulation_failure.iter().chain(self.failure.iter()) {
            s.push_str(&format!("  {} at rip {}: ", f.exit, hexu(f.rip)));
            match (&f.disassembly, f.insn_len) {
                (Some(d), Some(n)) => s.push_str(&format!(
                    "{d}  ({n} bytes: {}; KVM reported a {}-byte fetch window)\n",
                    f.insn_bytes, f.insn_size
                )),
                _ => s.push_str(&format!("bytes {}\n", f.insn_bytes)),
            }
            if let Some(a) = f.memory_operand {
                s.push_str(&format!("  accessing {}: {}\n", hexu(a), f.memory.as_deref().unwrap_or("?")));
            }
            s.push_str(&format!("  registers: {}\n", f.registers));
            s.push_str("  the exits that led there:\n");
            for r in &f.exits_before {
                s.push_str(&format!("    {r}\n"));
            }
        }
        s.push_str(&format!(
            "  serial output {}\n",
            if self.serial_output_matches { "matches the recording" } else { "DIFFERS from the recording" }
        ));
        if let Some(p) = &self.snapshot_written {
            s.push_str(&format!("  snapshot written to {p}\n"));
        }
        s
    }
}

/// Registers as JSON.
pub fn regs_json(r: &kvm_bindings::kvm_regs) -> serde_json::Value {
    serde_json::json!({
        "rax": hexu(r.rax), "rbx": hexu(r.rbx), "rcx": hexu(r.rcx), "rdx": hexu(r.rdx),
        "rsi": hexu(r.rsi), "rdi": hexu(r.rdi), "rsp": hexu(r.rsp), "rbp": hexu(r.rbp),
        "r8": hexu(r.r8), "r9": hexu(r.r9), "r10": hexu(r.r10), "r11": hexu(r.r11),
        "r12": hexu(r.r12), "r13": hexu(r.r13), "r14": hexu(r.r14), "r15": hexu(r.r15),
        "rip": hexu(r.rip), "rflags": hexu(r.rflags),
    })
}

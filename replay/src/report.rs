//! The replay report: stable JSON for CI, and a human rendering.

use serde::{Deserialize, Serialize};

/// How the replay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Every recorded exit was reproduced.
    Completed,
    /// `--goto SEQ` (or `--snapshot-at SEQ`): every recorded exit up to SEQ was reproduced
    /// and the replay stopped there, as asked; what lies after SEQ was not replayed.
    Stopped,
    /// The recorded failure (emulation failure, internal error, triple fault, failed entry)
    /// happened again.
    Reproduced,
    /// The guest did something other than what the trace recorded.
    Diverged,
}

impl Outcome {
    /// CLI exit code: 0 completed, stopped where asked, or reproduced; 1 diverged.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Completed | Outcome::Stopped | Outcome::Reproduced => 0,
            Outcome::Diverged => 1,
        }
    }
}

/// What a replay says about a repro.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The recorded failure happened again (on the replayed path or from the
    /// failure-point snapshot).
    Reproduced,
    /// The trace recorded no failure and every recorded exit happened again.
    Completed,
    /// The recorded failure did not happen again, and the guest reached it: either the
    /// path matched every record before the failing exit and the guest then made another,
    /// non-fatal exit, or the failure-point snapshot, restored at the failing instruction,
    /// ran without a fatal exit.
    NoLongerFails,
    /// The replayed guest did something the trace did not record, before any failure.
    Diverged,
}

impl Verdict {
    /// Every verdict, in the order reports list them.
    pub const ALL: [Verdict; 4] =
        [Verdict::Reproduced, Verdict::Completed, Verdict::NoLongerFails, Verdict::Diverged];

    /// The verdict's name, as JSON spells it.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Reproduced => "reproduced",
            Verdict::Completed => "completed",
            Verdict::NoLongerFails => "no_longer_fails",
            Verdict::Diverged => "diverged",
        }
    }

    /// The verdict named `s` (as [`Verdict::name`] spells it).
    pub fn parse(s: &str) -> Option<Verdict> {
        Verdict::ALL.into_iter().find(|v| v.name() == s)
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One check of the replayed machine against a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointCheck {
    /// The checkpoint's snapshot id.
    pub snapshot: u64,
    /// Its position (the last record whose effects it holds).
    pub seq: u64,
    /// The machine equalled it.
    pub equal: bool,
    /// Pages compared (those that could differ, or every page when `whole`).
    pub pages_compared: u64,
    /// Pages that differed.
    pub pages_differing: u64,
    /// Every page was compared.
    pub whole: bool,
    /// What differed, in one line (empty when equal).
    pub differences: String,
    /// Seconds the check took (loading the snapshot's state and comparing).
    pub seconds: f64,
}

/// What a segment's report says about the segment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmentInfo {
    /// Its index (0-based).
    pub index: usize,
    /// The number of segments.
    pub count: usize,
    /// The trace's id (hex): segments of one trace only are merged.
    pub trace_id: String,
    /// The checkpoint it started from.
    pub from_snapshot: u64,
    /// The checkpoint it ended at (`None`: the trace's end).
    pub to_snapshot: Option<u64>,
    /// Exits recorded in it.
    pub exits: u64,
    /// The checks it made, in order.
    pub checks: Vec<CheckpointCheck>,
    /// How the segment ended: `completed`, `diverged`, or `error` (it could not run).
    pub path: String,
    /// Why it could not run (with `path` `error`).
    pub error: Option<String>,
    /// Seconds it took.
    pub seconds: f64,
}

impl SegmentInfo {
    /// One line for the segment, and one for a check that found a difference.
    pub fn human(&self) -> String {
        let to =
            self.to_snapshot.map_or_else(|| "the trace's end".to_string(), |t| format!("checkpoint {t}"));
        let equal = self.checks.iter().filter(|c| c.equal).count();
        let compare: f64 = self.checks.iter().map(|c| c.seconds).sum();
        let mut s = format!(
            "  segment {} of {}: checkpoint {} to {to}, {} exits, {}; {equal} of {} checkpoints equal (checked in {:.3} s), {:.2} s\n",
            self.index,
            self.count,
            self.from_snapshot,
            self.exits,
            self.error.as_deref().unwrap_or(&self.path),
            self.checks.len(),
            compare,
            self.seconds
        );
        for c in self.checks.iter().filter(|c| !c.equal) {
            s.push_str(&format!(
                "    checkpoint {} (record {}) differs: {}\n",
                c.snapshot, c.seq, c.differences
            ));
        }
        s
    }
}

/// Where the replayed run departed from the recorded one.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// What differs, as a person reads it (`debugcon 0x402 wrote '2', recorded '4'`).
    pub summary: String,
    /// The replayed console's last line before the divergence (it printed what the
    /// recorded console did up to there).
    pub console: Option<ConsoleTail>,
    /// One sentence naming the cause (set when the divergence was explained).
    pub cause: Option<String>,
    /// Instructions whose results bypass the trace, found by single-stepping to the
    /// divergence, most likely first.
    pub suspects: Vec<Suspect>,
    /// Why no suspect was found, and what the cause can be then.
    pub why_none: Option<String>,
    /// The search that looked for suspects (`None`: not searched).
    pub search: Option<Search>,
}

/// One instruction that may explain a divergence.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Suspect {
    /// Where it is (guest RIP, hex).
    pub rip: String,
    /// The instruction in Intel syntax.
    pub instruction: String,
    /// Times it ran in the window searched.
    pub count: u64,
    /// Why its result can differ between recording and replay.
    pub why: String,
    /// What kind of value it reads.
    #[serde(skip, default = "unknown_source")]
    pub source: vmrr_engine::disasm::Unrecorded,
    /// The step at which it last ran (later is closer to the divergence).
    #[serde(skip)]
    pub last_step: u64,
    /// `function+offset` of `rip`, from `--system-map`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symbol: Option<String>,
}

/// A console's text before a divergence.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConsoleTail {
    /// Which console (`serial`, `debugcon`).
    pub device: String,
    /// Its last line (at most 160 characters; the line being written when it diverged).
    pub text: String,
}

/// What the search for a divergence's cause covered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Search {
    /// Single-stepping began after this record.
    pub from_seq: u64,
    /// The search replay stopped at this record.
    pub to_seq: u64,
    /// Instructions single-stepped.
    pub steps: u64,
    /// The step limit (`--explain-steps`) ended it.
    pub cut: bool,
    /// Stretches of ring-3 code run unstepped (this host cannot single-step ring 3).
    pub unstepped: u64,
    /// Seconds it took.
    pub seconds: f64,
}

/// A reproduced failure.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// `function+offset` of `rip`, from `--system-map`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symbol: Option<String>,
    /// Registers that point into the kernel, named from `--system-map`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub register_symbols: std::collections::BTreeMap<String, String>,
}

impl FailureReport {
    /// Whether the failure is KVM's emulation failure (`KVM_INTERNAL_ERROR_EMULATION`).
    pub fn is_emulation_failure(&self) -> bool {
        self.exit == vmrr_format::kind::kvm_exit_name(u32::from(vmrr_format::kind::INTERNAL_ERROR))
            && self.suberror == vmrr_format::SUBERROR_EMULATION
    }
}

/// How the replay of the recorded path ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Path {
    /// Every recorded exit happened again (to `--goto`, when given).
    Completed,
    /// The guest did something other than what the trace recorded.
    Diverged,
    /// Not replayed: the recording says its path cannot replay deterministically
    /// ([`Report::path_not_deterministic`]), and its failure point was run instead.
    Skipped,
}

/// The failure-point snapshot, run on its own.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailurePoint {
    /// Its snapshot id.
    pub snapshot: u64,
    /// The vCPU that failed and was run from it (0 on a machine with one vCPU).
    #[serde(default)]
    pub vcpu: u32,
    /// vCPUs the snapshot holds (all restored; only `vcpu` runs).
    #[serde(default = "one")]
    pub vcpus: u32,
    /// The recorded failure happened again from it.
    pub reproduced: bool,
    /// The failing instruction's bytes are the recorded ones.
    pub insn_bytes_match: bool,
    /// RIP, RSP and RFLAGS at the failure are the recorded ones.
    pub registers_match: bool,
    /// What the restored guest did, in one sentence.
    pub detail: String,
    /// The failure, decoded, when it happened again.
    pub failure: Option<FailureReport>,
    /// The kind of exit the restored guest made (`internal_error`, `mmio`, ...; as `vmrr
    /// inspect` names kinds), `None` when it made none within the stall limit.
    pub live_exit: Option<String>,
    /// Why `--system-map` does not fit the recorded guest, when it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_map_warning: Option<String>,
}

fn one() -> u32 {
    1
}

/// Where the replay started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Start {
    /// The snapshot restored, or `None` when the guest was rebuilt from the trace.
    pub snapshot: Option<u64>,
    /// First record replayed.
    pub seq: u64,
}

/// Everything `vmrr replay --json` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The replayed trace's id (hex, as `vmrr inspect` and `vmrr pack` print it): what
    /// `vmrr timeline --replay-report` checks a report against. Absent from reports of
    /// older vmrr.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trace_id: String,
    /// How it ended.
    pub outcome: Outcome,
    /// What it says about the repro (`vmrr_replay::verdict`): `reproduced`, `completed`,
    /// `no_longer_fails` or `diverged`.
    pub verdict: Verdict,
    /// The sequence number of the fatal exit the recorded run ended with, when it ended in
    /// one.
    pub recorded_failure: Option<u64>,
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
    /// How the replay of the recorded path from its first snapshot ended: `completed`
    /// (including a recorded failure that happened again), `diverged`, or `skipped`.
    pub path: Path,
    /// Why the recorded path cannot replay deterministically on any host (empty when it
    /// can): said before anything else, since a divergence is then expected.
    pub path_not_deterministic: Vec<String>,
    /// The failure-point snapshot of a recording that ended in a fatal exit, restored and
    /// run on its own (`None`: the trace has none).
    pub failure_point: Option<FailurePoint>,
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
    /// A segment's replay (`--segment K`): which one, and the checkpoints it checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<SegmentInfo>,
    /// Segments merged into this report (`--segments N`, `vmrr merge`), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<SegmentInfo>,
}

/// The report of a replay that went straight to the failure point (the recorded path
/// cannot replay deterministically): reproduced when the failure happened again there,
/// else diverged.
pub fn skipped_path(
    fp: FailurePoint,
    path_not_deterministic: Vec<String>,
    notes: Vec<String>,
    cpu_warnings: Vec<String>,
    t0: std::time::Instant,
) -> Report {
    let outcome = if fp.reproduced { Outcome::Reproduced } else { Outcome::Diverged };
    let verdict = if fp.reproduced { Verdict::Reproduced } else { Verdict::Diverged };
    Report {
        outcome,
        verdict,
        recorded_failure: None,
        exits_replayed: 0,
        start: Start { snapshot: Some(fp.snapshot), seq: 0 },
        stopped_at: None,
        divergence: None,
        emulation_failure: None,
        failure: None,
        path: Path::Skipped,
        path_not_deterministic,
        failure_point: Some(fp),
        serial_output_matches: false,
        serial_bytes: 0,
        cpu_warnings,
        notes,
        snapshot_written: None,
        seconds: t0.elapsed().as_secs_f64(),
        loop_seconds: 0.0,
        exits_per_s: 0.0,
        trace_id: String::new(),
        segment: None,
        segments: Vec::new(),
    }
}

fn hexu(v: u64) -> String {
    format!("{v:#x}")
}

impl Report {
    /// A few lines for a person.
    pub fn human(&self) -> String {
        let mut s = String::new();
        for why in &self.path_not_deterministic {
            s.push_str(&format!("path: not deterministic: {why}\n"));
        }
        if self.path == Path::Skipped {
            if self.failure_point.as_ref().is_some_and(|p| p.vcpus > 1) {
                s.push_str("path: not replayed (several vCPUs: it cannot be); the failure point is what reproduces\n");
            } else {
                s.push_str("path: not replayed (--path replays it anyway, expecting a divergence); the failure point is what reproduces\n");
            }
        }
        if let Some(c) = self.divergence.as_ref().and_then(|d| d.cause.as_ref()) {
            s.push_str(&format!("cause: {c}\n"));
        }
        let start = match self.start.snapshot {
            Some(id) => format!("snapshot {id}"),
            None => "the guest rebuilt from the trace".into(),
        };
        let outcome = match self.outcome {
            Outcome::Completed => "completed",
            Outcome::Stopped => "stopped where asked",
            Outcome::Reproduced => "REPRODUCED the recorded failure",
            Outcome::Diverged => "DIVERGED",
        };
        if self.path == Path::Skipped {
            s.push_str(&format!("replay: {outcome} from the failure point in {:.2} s\n", self.seconds));
        } else if let (Some(at), None) = (self.stopped_at, &self.divergence) {
            s.push_str(&format!(
                "replay: stopped at record {at} (--goto) after {} exits from {start} (record {}) in {:.2} s ({:.0} exits/s)\n",
                self.exits_replayed, self.start.seq, self.seconds, self.exits_per_s
            ));
        } else {
            s.push_str(&format!(
                "replay: {outcome} after {} from {start} (record {}) in {:.2} s ({:.0} exits/s)\n",
                vmrr_format::describe::count(self.exits_replayed, "exit"),
                self.start.seq,
                self.seconds,
                self.exits_per_s
            ));
        }
        if self.verdict == Verdict::NoLongerFails {
            s.push_str(
                "  verdict: no_longer_fails: the guest reached the recorded failure and ran on without it\n",
            );
        }
        for w in &self.cpu_warnings {
            s.push_str(&format!("  warning: this host lacks {w}, which the recorded guest saw\n"));
        }
        if let Some(d) = &self.divergence {
            s.push_str(&d.human());
        }
        for f in self.emulation_failure.iter().chain(self.failure.iter()) {
            s.push_str(&f.human());
        }
        if let Some(p) = &self.failure_point {
            let which = if p.vcpus > 1 { format!(", vCPU {} of {}", p.vcpu, p.vcpus) } else { String::new() };
            s.push_str(&format!(
                "  failure point (snapshot {}{which}): {}{}\n",
                p.snapshot,
                if p.reproduced { "REPRODUCED: " } else { "not reproduced: " },
                p.detail
            ));
            if p.reproduced {
                s.push_str(&format!(
                    "    instruction bytes {}, registers {}\n",
                    if p.insn_bytes_match { "match the recording" } else { "DIFFER from the recording" },
                    if p.registers_match { "match the recording" } else { "DIFFER from the recording" }
                ));
            }
            if let Some(f) = &p.failure {
                if let (Some(d), Some(n)) = (&f.disassembly, f.insn_len) {
                    let sym = f.symbol.as_ref().map(|n| format!(" ({n})")).unwrap_or_default();
                    s.push_str(&format!(
                        "    {} at rip {}{sym}: {d}  ({n} bytes: {})\n",
                        f.exit,
                        hexu(f.rip),
                        f.insn_bytes
                    ));
                }
                s.push_str(&register_symbols(&f.register_symbols).replacen("  ", "    ", 1));
            }
        }
        for seg in self.segment.iter().chain(&self.segments) {
            s.push_str(&seg.human());
        }
        for n in &self.notes {
            s.push_str(&format!("  note: {n}\n"));
        }
        let upto = self.stopped_at.map(|at| format!(" up to record {at}")).unwrap_or_default();
        if self.divergence.is_none() && self.path != Path::Skipped {
            s.push_str(&format!(
                "  serial output {}{upto}\n",
                if self.serial_output_matches {
                    "matches the recording"
                } else {
                    "DIFFERS from the recording"
                }
            ));
        }
        if let Some(p) = &self.snapshot_written {
            s.push_str(&format!("  snapshot written to {p}\n"));
        }
        s
    }
}

impl Divergence {
    /// The divergence as `vmrr replay` prints it: where, what differs, the console's last
    /// line, the last input, the search and its suspects, and the registers.
    pub fn human(&self) -> String {
        let d = self;
        let mut s = String::new();
        s.push_str(&format!("  at record {}: {}\n", d.seq, d.summary));
        if !d.summary.contains(&d.reason) {
            s.push_str(&format!("    ({})\n", d.reason));
        }
        if let Some(c) = &d.console {
            s.push_str(&format!("  {} just before: {:?}\n", c.device, c.text));
        }
        if let Some(i) = d.after_input {
            s.push_str(&format!("  the last input the guest consumed before it was record {i}\n"));
        }
        if let Some(sr) = &d.search {
            s.push_str(&format!(
                "  searched: {} instructions single-stepped after record {} (to record {}) in {:.1} s{}\n",
                sr.steps,
                sr.from_seq,
                sr.to_seq,
                sr.seconds,
                if sr.cut { ", cut by --explain-steps" } else { "" }
            ));
        }
        for x in &d.suspects {
            let sym = x.symbol.as_ref().map(|n| format!(" ({n})")).unwrap_or_default();
            s.push_str(&format!(
                "    {:>12}{sym}  {:<24} {:>6}x  {}\n",
                x.rip, x.instruction, x.count, x.why
            ));
        }
        if let Some(w) = &d.why_none {
            s.push_str(&format!("  {w}\n"));
        }
        s.push_str(&registers_table(&d.registers));
        s
    }
}

impl FailureReport {
    /// The failure as `vmrr replay` prints it: the exit, the instruction, the memory it
    /// accessed, and the registers.
    pub fn human(&self) -> String {
        let f = self;
        let mut s = String::new();
        let sym = f.symbol.as_ref().map(|n| format!(" ({n})")).unwrap_or_default();
        s.push_str(&format!("  {} at rip {}{sym}: ", f.exit, hexu(f.rip)));
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
        s.push_str(&registers_table(&f.registers));
        s.push_str(&register_symbols(&f.register_symbols));
        s.push_str(&format!("  {} exits led there (`--json` lists them)\n", f.exits_before.len()));
        s
    }
}

/// Registers that point into the kernel, one line: `rdi=some_data+0x40 ...`.
fn register_symbols(m: &std::collections::BTreeMap<String, String>) -> String {
    if m.is_empty() {
        return String::new();
    }
    let v: Vec<String> = m.iter().map(|(r, n)| format!("{r}={n}")).collect();
    format!("  pointing into the kernel: {}\n", v.join(" "))
}

/// Registers (as [`regs_json`] holds them) as a table of four columns.
fn registers_table(regs: &serde_json::Value) -> String {
    const ORDER: [&str; 18] = [
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13",
        "r14", "r15", "rip", "rflags",
    ];
    let Some(m) = regs.as_object() else { return String::new() };
    let mut s = String::from("  registers:\n");
    for row in ORDER.chunks(4) {
        s.push_str("   ");
        for name in row {
            let v = m.get(*name).and_then(|v| v.as_str()).unwrap_or("?");
            s.push_str(&format!(" {name:>6} {v:<18}"));
        }
        s.push('\n');
    }
    s
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

/// The kind given to a suspect read back from a JSON report, which does not carry it (it
/// orders suspects and words the cause sentence before the report is written; a report
/// read back keeps both).
fn unknown_source() -> vmrr_engine::disasm::Unrecorded {
    vmrr_engine::disasm::Unrecorded::Cpuid
}

impl Report {
    /// Names the failing RIPs, the suspects and the registers that point into the kernel
    /// with `map` (`--system-map`).
    pub fn symbolize(&mut self, map: &crate::symbols::SymbolMap) {
        let fp = self.failure_point.as_mut().and_then(|p| p.failure.as_mut());
        for f in self.emulation_failure.iter_mut().chain(self.failure.iter_mut()).chain(fp) {
            f.symbolize(map);
        }
        if let Some(d) = self.divergence.as_mut() {
            for x in &mut d.suspects {
                let rip = u64::from_str_radix(x.rip.trim_start_matches("0x"), 16).ok();
                x.symbol = rip.and_then(|r| map.name(r));
            }
        }
    }
}

impl FailureReport {
    /// Names `rip` and the registers that point into the kernel with `map`.
    pub fn symbolize(&mut self, map: &crate::symbols::SymbolMap) {
        self.symbol = map.name(self.rip);
        self.register_symbols.clear();
        let Some(regs) = self.registers.as_object() else { return };
        for (name, v) in regs {
            if name == "rip" || name == "rflags" {
                continue;
            }
            let value = v.as_str().and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok());
            // Kernel addresses only: small numbers would all "point into" the first symbol.
            if let Some(n) = value.filter(|a| *a >= 0xffff_8000_0000_0000).and_then(|a| map.name(a)) {
                self.register_symbols.insert(name.clone(), n);
            }
        }
    }
}

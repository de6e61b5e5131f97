//! `monitor` commands: where the replay stands, going to a record, checkpoints, the
//! records around, the divergence or failure report, physical memory.

use std::time::{Duration, Instant};

use gdbstub::outputln;
use gdbstub::target::ext::monitor_cmd::{ConsoleOutput, MonitorCmd};

use super::target::{GdbTarget, TargetFailed};
use crate::debugger::{Origin, Stopped};

const HELP: &str = "\
vmrr monitor commands:
  where                 the replay's position: record, instructions since it, nearest checkpoint
  goto SEQ              go to the boundary right after record SEQ (then `maintenance flush register-cache`)
  records [N]           the N records up to the current one and 2 after it, decoded (default 8)
  checkpoints           the checkpoints going back can restore
  checkpoint            take a checkpoint here (at a record's boundary)
  checkpoint-interval MS  take one every MS milliseconds of replay as the session goes
  report                the divergence or failure report
  phys on|off           gdb's memory addresses are guest-physical (on) or linear (off)
  xp ADDR [LEN]         guest-physical memory, in hex
  sym ADDR|NAME         the kernel symbol at ADDR (function+offset), or NAME's address (--system-map)
  help                  this text";

/// gdb drops a `monitor` command that says nothing for 2 s: say something every second.
const KEEPALIVE: Duration = Duration::from_secs(1);

impl MonitorCmd for GdbTarget {
    fn handle_monitor_cmd(&mut self, cmd: &[u8], mut out: ConsoleOutput<'_>) -> Result<(), TargetFailed> {
        let cmd = String::from_utf8_lossy(cmd);
        let mut words = cmd.split_whitespace();
        let out = &mut out;
        match words.next() {
            Some("where") | None => self.show_where(out),
            Some("goto") => match words.next().and_then(parse_u64) {
                Some(seq) => self.monitor_goto(seq, out),
                None => outputln!(out, "usage: monitor goto SEQ"),
            },
            Some("records") => {
                let n = words.next().and_then(parse_u64).unwrap_or(8);
                match self.session.records_around(n.saturating_sub(1), 2) {
                    Ok(lines) => {
                        for l in lines {
                            outputln!(out, "{l}");
                        }
                    }
                    Err(e) => outputln!(out, "vmrr: {e}"),
                }
            }
            Some("checkpoints") => self.show_checkpoints(out),
            Some("checkpoint") => match self.session.checkpoint_here() {
                Ok(true) => outputln!(out, "checkpoint at {}", self.session.position()),
                Ok(false) => outputln!(
                    out,
                    "no checkpoint: checkpoints are taken at a record's boundary on the recorded path (this is {})",
                    self.session.position()
                ),
                Err(e) => outputln!(out, "vmrr: {e}"),
            },
            Some("checkpoint-interval") => match words.next().and_then(parse_u64) {
                Some(ms) => {
                    self.session.set_checkpoint_interval(Duration::from_millis(ms));
                    outputln!(out, "a checkpoint every {ms} ms of replay");
                }
                None => outputln!(out, "usage: monitor checkpoint-interval MS"),
            },
            Some("report") => self.show_report(out),
            Some("sym") => self.show_symbol(words.next(), out),
            Some("phys") => {
                match words.next() {
                    Some("on") => self.phys = true,
                    Some("off") => self.phys = false,
                    _ => {}
                }
                outputln!(
                    out,
                    "memory addresses are {}",
                    if self.phys { "guest-physical" } else { "linear (through the guest's page tables)" }
                );
            }
            Some("xp") => match (words.next().and_then(parse_u64), words.next().and_then(parse_u64)) {
                (Some(addr), len) => self.show_phys_memory(addr, len, out),
                _ => outputln!(out, "usage: monitor xp ADDR [LEN]"),
            },
            Some("help") => outputln!(out, "{HELP}"),
            Some(other) => outputln!(out, "unknown monitor command {other:?}\n{HELP}"),
        }
        Ok(())
    }
}

impl GdbTarget {
    /// `monitor goto SEQ`: to the boundary right after record `seq`, saying something
    /// every second on the way.
    fn monitor_goto(&mut self, seq: u64, out: &mut ConsoleOutput<'_>) {
        if let Some(last) = self.session.overview().last_seq.filter(|&last| seq > last) {
            outputln!(
                out,
                "there is no record {seq}: the trace ends at record {last} (`monitor goto {last}` goes there); staying at {}",
                self.session.position()
            );
            return;
        }
        let t0 = Instant::now();
        let mut last = Instant::now();
        let mut keepalive = || {
            if last.elapsed() >= KEEPALIVE {
                last = Instant::now();
                outputln!(out, "vmrr: replaying to record {seq} ({:.0} s)", t0.elapsed().as_secs_f64());
                out.flush();
            }
            false
        };
        let stop = self.session.goto_record(seq, &mut keepalive);
        match stop {
            Ok(Stopped::Step) => {}
            Ok(Stopped::End) => outputln!(
                out,
                "the replay ended before record {seq}: the trace ends at record {}",
                self.session.overview().last_seq.map_or("?".into(), |l| l.to_string())
            ),
            Ok(Stopped::Failure(_)) => {
                outputln!(out, "the recorded failure comes first (record {seq})")
            }
            Ok(Stopped::Diverged) => outputln!(out, "the replay diverged before record {seq}"),
            Ok(other) => outputln!(out, "stopped: {other:?}"),
            Err(e) => outputln!(out, "vmrr: goto failed: {e}"),
        }
        for n in self.take_notes() {
            outputln!(out, "{n}");
        }
        self.show_where(out);
        outputln!(out, "(gdb still shows the registers of before: run `maintenance flush register-cache`)");
    }

    /// `monitor checkpoints`.
    fn show_checkpoints(&self, out: &mut ConsoleOutput<'_>) {
        let p = self.session.policy();
        outputln!(
            out,
            "{} checkpoints ({} taken by this session; one every {} ms of replay, at most {}):",
            self.session.checkpoints().len(),
            self.session.checkpoints_taken(),
            p.every.as_millis(),
            p.max
        );
        for c in self.session.checkpoints() {
            let at = c.at.map_or("the start".to_string(), |r| format!("record {r}"));
            let who = match c.origin {
                Origin::Trace => format!("trace snapshot {}", c.snapshot_id),
                Origin::Session => "session".to_string(),
            };
            outputln!(out, "  after {at:<16} {who}");
        }
    }

    /// `monitor report`: the divergence or the failure, once reached.
    fn show_report(&self, out: &mut ConsoleOutput<'_>) {
        if let Some(d) = self.session.divergence() {
            outputln!(out, "DIVERGED:");
            out.write_raw(d.human().as_bytes());
        } else if let Some(f) = self.session.failure() {
            outputln!(out, "REPRODUCED the recorded failure:");
            out.write_raw(f.human().as_bytes());
        } else {
            outputln!(out, "no divergence or failure reached yet");
        }
    }

    /// `monitor xp ADDR [LEN]`: guest-physical memory in hex (64 bytes unless told, at
    /// most 4096).
    fn show_phys_memory(&self, addr: u64, len: Option<u64>, out: &mut ConsoleOutput<'_>) {
        let len = usize::try_from(len.unwrap_or(64).min(4096)).unwrap_or(64);
        let mut buf = vec![0u8; len];
        match self.session.machine().read_phys(addr, &mut buf) {
            Ok(()) => {
                for (i, row) in buf.chunks(16).enumerate() {
                    outputln!(out, "{:#014x}: {}", addr + 16 * i as u64, vmrr_format::describe::hex(row));
                }
            }
            Err(e) => outputln!(out, "{e}"),
        }
    }
}

impl GdbTarget {
    fn show_where(&mut self, out: &mut ConsoleOutput<'_>) {
        if let Err(e) = self.session.settle_position(&mut || false) {
            outputln!(out, "vmrr: {e}");
        }
        let s = &self.session;
        let p = s.position();
        let record = p.record.map_or("none (before the first record)".into(), |r| r.to_string());
        let since = match p.steps() {
            Some(n) => n.to_string(),
            None => format!("{p} (hits of breakpoints; counted on the next reverse step)"),
        };
        outputln!(out, "position: {p}");
        outputln!(out, "  record: {record}   instructions since it: {since}");
        let nearest = s.checkpoints().iter().rev().find(|c| c.at <= p.record);
        match nearest {
            Some(c) => outputln!(
                out,
                "  nearest checkpoint: after {} ({})",
                c.at.map_or("the start".into(), |r| format!("record {r}")),
                match c.origin {
                    Origin::Trace => format!("trace snapshot {}", c.snapshot_id),
                    Origin::Session => "session".into(),
                }
            ),
            None => outputln!(out, "  nearest checkpoint: none"),
        }
        if let (Ok(pc), Ok(sregs)) = (s.machine().linear_pc(), s.machine().sregs()) {
            let insn = s.machine().instruction_at(s.machine().regs().map(|r| r.rip).unwrap_or(pc));
            let mode = match vmrr_engine::disasm::bitness(&sregs) {
                64 => "long mode",
                32 => "32-bit protected mode",
                _ if sregs.cr0 & 1 == 0 => "real mode",
                _ => "16-bit protected mode",
            };
            outputln!(out, "  pc: {pc:#x} ({mode}): {}", insn.map_or("?".into(), |d| d.text));
            let (layout, real) = self.layout();
            let described_long = layout == super::arch::Layout::Amd64;
            let now_long = vmrr_engine::disasm::bitness(&sregs) == 64;
            if described_long != now_long || (!described_long && real != (sregs.cr0 & 1 == 0)) {
                outputln!(
                    out,
                    "  note: gdb was told another CPU mode when it connected: `disconnect`, then `target remote` again to describe this one"
                );
            }
        }
        if s.at_failure() {
            outputln!(out, "  at the recorded failure (`monitor report`)");
        } else if s.at_failing_instruction() {
            outputln!(
                out,
                "  at the instruction that failed when recording: `stepi` or `continue` runs it again"
            );
        }
        if s.divergence().is_some() {
            outputln!(out, "  the replay diverged here (`monitor report`)");
        }
        if let Some(at) = s.left_path_at() {
            outputln!(out, "  running live since a write at {at}: nothing comes from the trace");
        }
    }
}

impl GdbTarget {
    /// `monitor sym ADDR|NAME`.
    fn show_symbol(&self, arg: Option<&str>, out: &mut ConsoleOutput<'_>) {
        let Some(map) = self.session.system_map() else {
            outputln!(out, "no symbols: replay with --system-map FILE (the guest kernel's System.map)");
            return;
        };
        let Some(arg) = arg else {
            outputln!(out, "usage: monitor sym ADDR|NAME");
            return;
        };
        match parse_u64(arg) {
            Some(addr) => match map.name(addr) {
                Some(n) => outputln!(out, "{addr:#x} is {n}"),
                None => outputln!(out, "{addr:#x} is outside the kernel's symbols"),
            },
            None => match map.address_of(arg) {
                Some(a) => outputln!(out, "{arg} is at {a:#x}"),
                None => outputln!(out, "no symbol {arg}"),
            },
        }
    }
}

fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

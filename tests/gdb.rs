//! Debugging replays with gdb, forwards and backwards: Debian's gdb in batch mode against
//! `vmrr replay --gdb` of built-in guests, on real KVM.

mod common;
use common::*;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Whether gdb and KVM are here (skips with a reason otherwise; fails under
/// `VMRR_REQUIRE_KVM=1`, which CI sets and where `.ci/run` installs gdb).
fn ready() -> bool {
    if !require_kvm() {
        return false;
    }
    match Command::new("gdb").arg("--version").output() {
        Ok(o) if o.status.success() => true,
        other => {
            assert!(
                std::env::var("VMRR_REQUIRE_KVM").as_deref() != Ok("1"),
                "VMRR_REQUIRE_KVM=1 but gdb cannot run: {other:?}"
            );
            eprintln!("skipped: gdb is not installed (apt-get install gdb)");
            false
        }
    }
}

/// [`recorded`], when gdb is here too.
fn recorded_with_gdb(guest: &str, extra: &[&str]) -> Option<(tempfile::TempDir, PathBuf)> {
    if ready() { recorded(guest, extra) } else { None }
}

/// `vmrr replay SRC --gdb 127.0.0.1:0`, running.
struct Stub {
    child: Child,
    addr: String,
    log: Arc<Mutex<String>>,
}

impl Stub {
    fn start(src: &Path) -> Stub {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vmrr"))
            .args(["replay", s(src), "--gdb", "127.0.0.1:0"])
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("vmrr starts");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let log = Arc::new(Mutex::new(String::new()));
        let mut addr = None;
        for line in lines.by_ref() {
            let line = line.expect("stderr is text");
            log.lock().expect("log").push_str(&format!("{line}\n"));
            if let Some(a) = line.split("waiting for gdb on ").nth(1) {
                addr = Some(a.trim().to_string());
                break;
            }
        }
        let addr = addr.unwrap_or_else(|| panic!("vmrr did not listen: {}", log.lock().expect("log")));
        let l = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                l.lock().expect("log").push_str(&format!("{line}\n"));
            }
        });
        Stub { child, addr, log }
    }

    /// Runs gdb script `script` against the stub (one command a line; blanks around them,
    /// empty lines and `#` comments ignored; `--` for a section mark); returns what gdb
    /// printed. gdb detaches at the end, which ends the stub: it must exit 0.
    fn gdb(self, script: &str) -> String {
        self.gdb_with_file("", script)
    }

    /// As [`Stub::gdb`], with `file` (a gdb command loading symbols) before connecting.
    fn gdb_with_file(mut self, file: &str, script: &str) -> String {
        let mut args: Vec<String> =
            ["-nx", "-batch", "-ex", "set pagination off"].iter().map(|s| s.to_string()).collect();
        if !file.is_empty() {
            args.push("-ex".into());
            args.push(file.to_string());
        }
        args.push("-ex".into());
        args.push(format!("target remote {}", self.addr));
        for line in script.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            args.push("-ex".into());
            args.push(if line == "--" { MARK } else { line }.to_string());
        }
        // gdb prints a target's console output on stderr: both go to one file, in order.
        let out_path = std::env::temp_dir().join(format!(
            "vmrr-gdb-test-{}-{:?}.txt",
            std::process::id(),
            std::thread::current().id()
        ));
        let file = std::fs::File::create(&out_path).expect("gdb output file");
        let mut gdb = Command::new("gdb")
            .args(&args)
            .stdout(file.try_clone().expect("dup"))
            .stderr(file)
            .spawn()
            .expect("gdb");
        let t0 = Instant::now();
        while gdb.try_wait().expect("gdb").is_none() {
            if t0.elapsed() > Duration::from_secs(240) {
                let _ = gdb.kill();
                let _ = self.child.kill();
                panic!("gdb did not finish in 240 s; vmrr said: {}", self.log.lock().expect("log"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let text = std::fs::read_to_string(&out_path).expect("gdb output");
        let _ = std::fs::remove_file(&out_path);
        let t0 = Instant::now();
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("vmrr") {
                break st;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                let _ = self.child.kill();
                panic!("vmrr did not end after gdb detached: {text}\n{}", self.log.lock().expect("log"));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "vmrr exited {status}: {}\n{text}", self.log.lock().expect("log"));
        text
    }
}

/// Splits gdb's output at `echo @N\n` marks: section N is what came after mark N.
fn sections(out: &str) -> Vec<String> {
    let mut v = vec![String::new()];
    for line in out.lines() {
        if line.starts_with("@@") {
            v.push(String::new());
        } else if let Some(last) = v.last_mut() {
            last.push_str(line);
            last.push('\n');
        }
    }
    v
}

/// The value of register `name` in `info registers` output.
fn reg(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some(name)).then(|| w.next()).flatten()
        })
        .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
        .unwrap_or_else(|| panic!("no register {name} in:\n{text}"))
}

/// The general registers, RIP and RFLAGS in `info registers` output.
fn gprs(text: &str) -> Vec<(String, u64)> {
    const NAMES: [&str; 18] = [
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13",
        "r14", "r15", "rip", "eflags",
    ];
    NAMES.iter().map(|n| (n.to_string(), reg(text, n))).collect()
}

const MARK: &str = "echo @@\\n";

/// An exit of `kind` in the middle of the run, as the first record at its RIP (the first
/// time a breakpoint there is hit).
fn first_record_with_rip<'a>(recs: &'a [Rec], kind: &str) -> &'a Rec {
    let rip = recs.iter().filter(|r| r.kind == kind && r.rip.is_some()).nth(3).and_then(|r| r.rip);
    recs.iter().find(|r| r.kind == kind && r.rip == rip).expect("such an exit")
}

#[test]
fn registers_at_a_breakpoint_are_the_recorded_ones() {
    let Some((_d, trace)) = recorded_with_gdb("emulation-failure", &["--checkpoint-every", "20"]) else {
        return;
    };
    let recs = records(&trace);
    // A port write in the middle of the run: the guest stands at its recorded RIP with
    // its recorded RSP and RFLAGS.
    let io = first_record_with_rip(&recs, "io");
    let rip = io.rip.expect("rip");
    let out = Stub::start(&trace).gdb(&format!(
        "
        info registers rip rsp
        --
        hbreak *{rip:#x}
        continue
        --
        info registers
        --
        monitor where
        "
    ));
    let sec = sections(&out);
    assert_eq!(reg(&sec[0], "rip"), 0x10_0000, "{out}");
    assert!(sec[1].contains("Breakpoint 1,"), "{out}");
    assert_eq!(reg(&sec[2], "rip"), rip, "{out}");
    assert_eq!(reg(&sec[2], "rsp"), io.json["regs"]["rsp"].as_u64().expect("rsp"), "{out}");
    assert_eq!(reg(&sec[2], "eflags"), io.json["regs"]["rflags"].as_u64().expect("rflags"), "{out}");
    assert!(sec[3].contains("position: record"), "{out}");
}

#[test]
fn the_failure_stops_with_sigill_and_stepping_back_out_of_it_is_exact() {
    let Some((_d, trace)) = recorded_with_gdb("emulation-failure", &["--checkpoint-every", "20"]) else {
        return;
    };
    let recs = records(&trace);
    let failing =
        recs.iter().rev().find(|r| r.kind == "internal_error").and_then(|r| r.rip).expect("failure rip");
    // The guest's second instruction runs once (after a 2-byte `xor eax, eax`).
    let early = 0x10_0002u64;
    let out = Stub::start(&trace).gdb(&format!(
        "
        hbreak *{early:#x}
        info registers rip
        --
        continue
        continue
        --
        x/i $pc
        info registers
        --
        reverse-stepi
        x/i $pc
        --
        info registers
        --
        stepi
        x/i $pc
        info registers
        --
        continue
        --
        reverse-continue
        info registers rip
        --
        reverse-continue
        info registers rip
        --
        monitor records 3
        "
    ));
    let sec = sections(&out);
    assert!(sec[1].contains("Program received signal SIGILL, Illegal instruction."), "{out}");
    assert!(sec[2].contains("popcnt"), "{out}");
    assert_eq!(reg(&sec[2], "rip"), failing, "{out}");
    let at_failure = gprs(&sec[2]);
    // One instruction back: the `mov rdi, <MMIO address>` before it, with the registers
    // it had (RDI not yet loaded).
    assert!(sec[3].contains("mov"), "{out}");
    let before = gprs(&sec[4]);
    assert!(reg(&sec[4], "rip") < failing, "{out}");
    assert_ne!(reg(&sec[4], "rdi"), reg(&sec[2], "rdi"), "{out}");
    // And forward again: the failing instruction, the registers of the failure.
    assert!(sec[5].contains("popcnt"), "{out}");
    assert_eq!(gprs(&sec[5]), at_failure, "{out}");
    assert!(sec[6].contains("SIGILL"), "{out}");
    // Back to the breakpoint (its only hit), then the start.
    assert!(sec[7].contains("Breakpoint 1,"), "{out}");
    assert_eq!(reg(&sec[7], "rip"), early, "{out}");
    assert!(sec[8].contains("No more reverse-execution history."), "{out}");
    assert_eq!(reg(&sec[8], "rip"), 0x10_0000, "{out}");
    assert!(sec[9].contains("=>"), "{out}");

    // The point reverse-stepi reached, reached forwards: the same registers.
    let before_rip = before.iter().find(|(n, _)| n == "rip").map(|(_, v)| *v).expect("rip");
    let out2 = Stub::start(&trace).gdb(&format!("hbreak *{before_rip:#x}\ncontinue\n--\ninfo registers"));
    assert_eq!(gprs(&sections(&out2)[1]), before, "{out2}");
}

#[test]
fn stepping_back_crosses_an_injected_interrupt_and_checkpoints_exactly() {
    let Some((_d, trace)) =
        recorded_with_gdb("interrupts", &["--iterations", "4", "--checkpoint-every", "2"])
    else {
        return;
    };
    let recs = records(&trace);
    // Where the guest halts waiting for its timer (RIP after `hlt`), and the handler its
    // IDT names for the timer's vector (read through gdb once the IDT is written).
    let hlt = recs.iter().find(|r| r.kind == "hlt").and_then(|r| r.rip).expect("a hlt exit");
    let gate = 0x1000 + 16 * 0x20;
    let out = Stub::start(&trace).gdb(&format!(
        "
        hbreak *{hlt:#x}
        continue
        --
        x/4xw {gate:#x}
        "
    ));
    let words: Vec<u64> = sections(&out)[1]
        .split_whitespace()
        .filter(|w| w.starts_with("0x") && !w.ends_with(':'))
        .filter_map(|w| u64::from_str_radix(&w[2..], 16).ok())
        .collect();
    assert!(words.len() >= 3, "{out}");
    let handler = (words[0] & 0xffff) | (words[1] & 0xffff_0000) | (words[2] << 32);

    let out = Stub::start(&trace).gdb(&format!(
        "
        hbreak *{handler:#x}
        continue
        --
        info registers
        monitor where
        --
        continue
        --
        info registers
        monitor where
        --
        reverse-stepi
        info registers
        --
        stepi
        info registers
        --
        reverse-continue
        info registers
        monitor where
        --
        reverse-stepi
        info registers
        --
        monitor checkpoints
        "
    ));
    let sec = sections(&out);
    let record_of = |t: &str| -> u64 {
        t.lines()
            .find_map(|l| l.trim().strip_prefix("record: "))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("no position in {t}"))
    };
    assert!(sec[0].contains("Breakpoint 1,"), "{out}");
    let first = gprs(&sec[1]);
    let first_record = record_of(&sec[1]);
    assert!(sec[2].contains("Breakpoint 1,"), "{out}");
    let second = gprs(&sec[3]);
    let second_record = record_of(&sec[3]);
    assert_eq!(reg(&sec[3], "rip"), handler, "{out}");
    assert!(second_record > first_record, "{out}");
    // One instruction back from the handler's first: where the interrupt was injected
    // (after `hlt`), the stack without the interrupt frame.
    assert_eq!(reg(&sec[4], "rip"), hlt, "{out}");
    assert_eq!(reg(&sec[4], "rsp"), reg(&sec[3], "rsp") + 40, "{out}");
    // Forward again into the handler: exactly the registers of the second hit.
    assert_eq!(gprs(&sec[5]), second, "{out}");
    // Back to the first hit, across exits, an injection and at least one checkpoint.
    assert!(sec[6].contains("Breakpoint 1,"), "{out}");
    assert_eq!(gprs(&sec[6]), first, "{out}");
    assert_eq!(record_of(&sec[6]), first_record, "{out}");
    assert_eq!(reg(&sec[7], "rip"), hlt, "{out}");
    let checkpoints: Vec<u64> = sec[8]
        .lines()
        .filter_map(|l| l.trim().strip_prefix("after record "))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(
        checkpoints.iter().any(|&c| c > first_record && c < second_record),
        "no checkpoint between the hits ({first_record}, {second_record}): {out}"
    );
}

#[test]
fn a_divergence_stops_with_its_cause_and_writes_leave_the_recorded_path() {
    let Some((_d, trace)) = recorded_with_gdb("tsc", &[]) else {
        return;
    };
    let out = Stub::start(&trace).gdb(
        "
        continue
        --
        monitor report
        --
        set $rax = 1
        stepi
        --
        monitor where
        ",
    );
    let sec = sections(&out);
    assert!(sec[0].contains("vmrr: the replay diverged from the recording at record"), "{out}");
    assert!(sec[0].contains("cause: the guest read the TSC"), "{out}");
    assert!(sec[0].contains("Program received signal SIGTRAP"), "{out}");
    assert!(sec[1].contains("DIVERGED"), "{out}");
    assert!(sec[2].contains("left the recorded path"), "{out}");
    assert!(sec[3].contains("running live since a write"), "{out}");
}

#[test]
fn real_mode_is_described_as_i8086_with_linear_addresses() {
    let Some((_d, trace)) = recorded_with_gdb("hello", &[]) else {
        return;
    };
    let out = Stub::start(&trace).gdb(
        "
        show architecture
        x/i $pc
        --
        stepi
        stepi
        info registers eip
        --
        reverse-stepi
        info registers eip
        --
        monitor goto 40
        --
        monitor records 2
        ",
    );
    let sec = sections(&out);
    assert!(sec[0].contains("i8086"), "{out}");
    // 16-bit decoding: `mov $imm16,%si` is three bytes.
    assert!(sec[0].contains("mov    $0x"), "{out}");
    let two = reg(&sec[1], "eip");
    let one = reg(&sec[2], "eip");
    assert!(one < two && one > 0x7c00, "{out}");
    assert!(sec[3].contains("position: record 40"), "{out}");
    assert!(sec[4].contains("=> #40") || sec[4].contains("=> #41"), "{out}");
}

#[test]
fn the_readme_session_on_the_demo_bundle_steps_back_out_of_the_failure() {
    if !ready() {
        return;
    }
    let d = tmp();
    let dir = at(&d, "demo");
    let o = vmrr(&["demo", "--dir", s(&dir)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = Stub::start(&dir.join("repro.vmrrb")).gdb(
        "
        continue
        x/i $pc
        --
        reverse-stepi
        x/i $pc
        info registers rip rdi
        --
        stepi
        x/i $pc
        monitor where
        ",
    );
    let sec = sections(&out);
    assert!(sec[0].contains("SIGILL") && sec[0].contains("popcnt"), "{out}");
    assert!(sec[1].contains("movabs") && reg(&sec[1], "rdi") == 0, "{out}");
    assert!(sec[2].contains("popcnt") && sec[2].contains("position: record"), "{out}");
}

/// The demo's bundle (`vmrr demo --dir DIR`), for the README's sessions.
fn demo_bundle(d: &tempfile::TempDir) -> PathBuf {
    let dir = at(d, "demo");
    let o = vmrr(&["demo", "--dir", s(&dir)]);
    assert!(o.status.success(), "{}", stderr(&o));
    ["repro.vmrrb", "repro.vmrr"]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("the demo wrote no bundle in {}", dir.display()))
}

/// The position `monitor where` printed (its `position:` line).
fn position(text: &str) -> String {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("position: "))
        .unwrap_or_else(|| panic!("no position in:\n{text}"))
        .to_string()
}

/// The record a position names (`record N ...`).
fn record_of(position: &str) -> u64 {
    position
        .strip_prefix("record ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no record in {position:?}"))
}

/// The value gdb printed for a watchpoint (`New value = N`, or `Value = N` for a read).
fn watched_value(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("New value = ").or_else(|| l.strip_prefix("Value = ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no watched value in:\n{text}"))
}

#[test]
fn reverse_watchpoints_stop_at_each_writer_in_reverse_order_including_the_last() {
    if !ready() {
        return;
    }
    let d = tmp();
    let bundle = demo_bundle(&d);
    // Forward: every write to the stack slot, then the failure; back: each write again,
    // the last one first, standing at the instruction that made it.
    let script = [
        "watch *(long*)0x7fff8",
        "--",
        "continue\nx/i $pc\nmonitor where\n--\n".repeat(4).as_str(),
        "continue",
        "--",
        "reverse-continue\nx/i $pc\nmonitor where\n--\n".repeat(4).as_str(),
        "reverse-continue",
    ]
    .join("\n");
    let out = Stub::start(&bundle).gdb(&script);
    let sec = sections(&out);
    let forward: Vec<(u64, u64, String)> = sec[1..5]
        .iter()
        .map(|t| {
            assert!(t.contains("Hardware watchpoint 1"), "{out}");
            (reg_pc(t), watched_value(t), position(t))
        })
        .collect();
    assert!(sec[5].contains("SIGILL"), "{out}");
    let backward = &sec[6..10];
    for (i, t) in backward.iter().enumerate() {
        // The i-th stop back is the (4 - i)-th write forward: the same record, and the
        // instruction there is the `call` whose return address is the value written,
        // calling where the forward stop stood.
        let (fwd_pc, fwd_value, fwd_pos) = &forward[3 - i];
        assert!(t.contains("Hardware watchpoint 1"), "stop {i} back is not the watchpoint:\n{out}");
        assert!(t.contains(&format!("call   {fwd_pc:#x}")), "stop {i} back is not the writer:\n{out}");
        assert_eq!(record_of(&position(t)), record_of(fwd_pos), "{out}");
        // gdb shows the value before the write as the new one.
        let before = if i == 3 { 0 } else { forward[2 - i].1 };
        assert_eq!(watched_value(t), before, "{out}");
        assert_ne!(watched_value(t), *fwd_value, "{out}");
    }
    assert!(sec[10].contains("No more reverse-execution history."), "{out}");
}

/// The PC gdb stopped at (`0x... in ?? ()` or the `=>` line of `x/i $pc`).
fn reg_pc(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("=> "))
        .and_then(|l| l.split(':').next())
        .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
        .unwrap_or_else(|| panic!("no pc in:\n{text}"))
}

#[test]
fn read_and_access_watchpoints_go_back_from_the_failure() {
    if !ready() {
        return;
    }
    let d = tmp();
    let bundle = demo_bundle(&d);
    for (cmd, says) in
        [("rwatch", "Hardware read watchpoint 1"), ("awatch", "Hardware access (read/write) watchpoint 1")]
    {
        let out = Stub::start(&bundle).gdb(&format!(
            "
            continue
            {cmd} *(long*)0x7fff8
            --
            reverse-continue
            x/i $pc
            monitor where
            --
            reverse-continue
            x/i $pc
            --
            continue
            x/i $pc
            "
        ));
        let sec = sections(&out);
        assert!(sec[0].contains("SIGILL"), "{out}");
        assert!(!out.contains("SIGABRT") && !out.contains("did not reach it again"), "{cmd}:\n{out}");
        // The last access before the failure is the `ret` that read the return address:
        // the stop stands at it.
        assert!(sec[1].contains(says) && sec[1].contains("ret"), "{cmd}:\n{out}");
        let first = record_of(&position(&sec[1]));
        assert!(sec[2].contains(says), "{cmd}:\n{out}");
        // Forward again from an access's instruction: the boundary right after it.
        let back_pc = reg_pc(&sec[2]);
        assert!(sec[3].contains(says), "{cmd}:\n{out}");
        assert!(reg_pc(&sec[3]) != back_pc, "{cmd}:\n{out}");
        assert!(first > 0, "{out}");
    }
}

#[test]
fn the_failure_point_has_one_name_however_it_was_reached() {
    if !ready() {
        return;
    }
    let d = tmp();
    let bundle = demo_bundle(&d);
    let out = Stub::start(&bundle).gdb(
        "
        continue
        --
        monitor where
        --
        reverse-stepi
        stepi
        --
        monitor where
        --
        stepi
        --
        monitor where
        ",
    );
    let sec = sections(&out);
    assert!(sec[0].contains("SIGILL"), "{out}");
    let by_continue = position(&sec[1]);
    assert!(sec[1].contains("at the recorded failure"), "{out}");
    let by_stepping = position(&sec[3]);
    assert_eq!(by_continue, by_stepping, "{out}");
    assert!(by_continue.ends_with(" instructions"), "{out}");
    assert!(sec[3].contains("at the instruction that failed when recording"), "{out}");
    assert!(sec[4].contains("SIGILL"), "{out}");
    assert_eq!(position(&sec[5]), by_continue, "{out}");
    assert!(sec[5].contains("at the recorded failure"), "{out}");
}

#[test]
fn monitor_goto_says_where_the_trace_ends_and_names_gdbs_command_to_flush_registers() {
    let Some((_d, trace)) = recorded_with_gdb("hello", &[]) else {
        return;
    };
    let out = Stub::start(&trace).gdb(
        "
        monitor goto 20
        --
        monitor help
        --
        monitor goto 99999
        ",
    );
    let sec = sections(&out);
    // Past the end: where the trace ends, and the session stays where it was.
    assert!(sec[2].contains("there is no record 99999: the trace ends at record"), "{out}");
    assert!(sec[2].contains("staying at record 20"), "{out}");
    assert!(sec[0].contains("position: record 20"), "{out}");
    assert!(sec[0].contains("maintenance flush register-cache"), "{out}");
    assert!(sec[1].contains("maintenance flush register-cache"), "{out}");
    assert!(!out.contains("flushregs"), "{out}");
}

/// A guest with line information: assembled by GNU as with `-g`, linked at 1 MiB, run
/// from its flat image; gdb gets the ELF's symbols and lines.
const SOURCE: &str = "        .text
        .code64
        .globl _start
_start:
        mov $4, %ecx
again:
        call work
        dec %ecx
        jnz again
        mov $0, %eax
        mov $0xf4, %dx
        out %eax, %dx
spin:
        jmp spin

        .globl work
        .type work, @function
work:
        mov %ecx, %eax
        add $0x30, %al
        mov $0x5c0, %dx
        out %al, %dx
        ret
        .size work, . - work
";

fn binutils(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let run = |cmd: &str, args: &[&str]| {
        Command::new(cmd).args(args).current_dir(dir).status().is_ok_and(|s| s.success())
    };
    std::fs::write(dir.join("prog.s"), SOURCE).expect("source");
    let ok = run("as", &["-g", "--64", "-o", "prog.o", "prog.s"])
        && run("ld", &["-Ttext=0x100000", "-e", "_start", "-o", "prog.elf", "prog.o"])
        && run("objcopy", &["-O", "binary", "prog.elf", "prog.bin"]);
    if !ok {
        assert!(
            std::env::var("VMRR_REQUIRE_KVM").as_deref() != Ok("1"),
            "VMRR_REQUIRE_KVM=1 but binutils (as, ld, objcopy) cannot build the guest"
        );
        eprintln!("skipped: binutils (as, ld, objcopy) are not installed");
        return None;
    }
    Some((dir.join("prog.elf"), dir.join("prog.bin")))
}

#[test]
fn gdb_derives_reverse_next_step_and_finish_from_a_guest_with_line_information() {
    if !ready() {
        return;
    }
    let d = tmp();
    let Some((elf, bin)) = binutils(d.path()) else { return };
    let trace = at(&d, "prog.vmrr");
    let o = vmrr(
        &[&["record"][..], &image_args(&bin, "0x100000", "long"), &["-o", s(&trace), "--serial", "none"]]
            .concat(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let file = format!("file {}", s(&elf));
    let out = Stub::start(&trace).gdb_with_file(
        &file,
        "
        break 8
        continue
        continue
        info registers rcx
        --
        # Back over the call (and its port write): the call's line, same iteration.
        reverse-next
        info registers rcx
        --
        reverse-next
        info registers rcx
        --
        next
        next
        --
        # Back into the function: its last line, then out to its caller.
        reverse-step
        bt 1
        --
        reverse-finish
        ",
    );
    let sec = sections(&out);
    assert!(sec[0].contains("Breakpoint 1, again () at prog.s:8"), "{out}");
    assert_eq!(reg(&sec[0], "rcx"), 3, "{out}");
    assert!(sec[1].contains("7\t        call work"), "{out}");
    assert_eq!(reg(&sec[1], "rcx"), 3, "{out}");
    assert!(sec[2].contains("9\t        jnz again"), "{out}");
    assert!(sec[3].contains("8\t        dec %ecx"), "{out}");
    assert!(sec[4].contains("work () at prog.s:23"), "{out}");
    assert!(sec[5].contains("again () at prog.s:7") || sec[5].contains("prog.s:7"), "{out}");
}

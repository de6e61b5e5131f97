//! gdb at a failure point of several vCPUs: each vCPU is a thread (`thread k+1` is vCPU
//! k), with its own registers and its own view of memory; only the vCPU that failed runs.
//!
//! The failure point comes from Debian's Linux recorded on two vCPUs: on this project's CI
//! host (KVM emulating ring-0 code) it stops in a KVM emulation failure on vCPU 0 before it
//! starts the second CPU. On a host where it does not fail (VMX/SVM) there is no failure
//! point: the test then checks that `--gdb` refuses the trace's path, and says so.

mod common;
use common::linux::{boot, initramfs, kernel, strict};
use common::*;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const MARK: &str = "echo @@\\n";

/// Whether gdb runs here (skips with a reason otherwise; fails under `VMRR_REQUIRE_KVM=1`).
fn gdb_here() -> bool {
    match Command::new("gdb").arg("--version").output() {
        Ok(o) if o.status.success() => true,
        other => {
            assert!(!strict(), "VMRR_REQUIRE_KVM=1 but gdb cannot run: {other:?}");
            eprintln!("skipped: gdb is not installed (apt-get install gdb)");
            false
        }
    }
}

/// Serves `replay_args` with `--gdb 127.0.0.1:0`, runs `script` in gdb against it (one
/// command a line, `--` for a section mark), and returns gdb's output split at the marks,
/// and what vmrr said. vmrr must exit 0 once gdb detaches.
fn gdb_session(replay_args: &[&str], script: &str) -> (Vec<String>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmrr"))
        .args(replay_args)
        .args(["--gdb", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("vmrr starts");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut said = String::new();
    let mut addr = None;
    for line in lines.by_ref() {
        let line = line.expect("stderr is text");
        said.push_str(&format!("{line}\n"));
        if let Some(a) = line.split("waiting for gdb on ").nth(1) {
            addr = Some(a.trim().to_string());
            break;
        }
    }
    let Some(addr) = addr else {
        let _ = child.kill();
        panic!("vmrr did not listen: {said}");
    };
    let rest = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>().join("\n"));
    let mut args: Vec<String> = ["-nx", "-batch", "-ex", "set pagination off"].map(String::from).to_vec();
    args.extend(["-ex".into(), format!("target remote {addr}")]);
    for line in script.lines().map(str::trim).filter(|l| !l.is_empty()) {
        args.extend(["-ex".into(), if line == "--" { MARK } else { line }.to_string()]);
    }
    // gdb prints the target's console output on stderr: both into one stream, in order.
    let o = Command::new("sh")
        .args(["-c", "exec gdb \"$@\" 2>&1", "gdb"])
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .expect("gdb runs");
    let out = stdout(&o);
    let status = child.wait().expect("vmrr ends");
    said.push_str(&rest.join().unwrap_or_default());
    assert!(status.success(), "vmrr exited {status}: {said}\n{out}");
    let mut sections = vec![String::new()];
    for line in out.lines() {
        if line.starts_with("@@") {
            sections.push(String::new());
        } else if let Some(last) = sections.last_mut() {
            last.push_str(line);
            last.push('\n');
        }
    }
    (sections, said)
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

#[test]
fn each_vcpu_of_a_failure_point_is_a_gdb_thread() {
    if !require_kvm() || !gdb_here() {
        return;
    }
    let Some(kernel) = kernel() else { return };
    let d = tmp();
    let Some(initrd) = initramfs(d.path()) else { return };
    // Recorded once; every gdb session below replays its failure point.
    let (o, console) = boot(&d, &kernel, &initrd, "2");
    let trace = at(&d, "boot2.vmrr");
    let summary = summary(&o);
    let replay = ["replay", s(&trace), "--kernel", s(&kernel), "--initrd", s(&initrd)];
    if o.status.code() != Some(5) {
        // No failure (a VMX/SVM host): the path of several vCPUs cannot be debugged.
        assert_eq!(o.status.code(), Some(0), "{summary}\n{}", stderr(&o));
        eprintln!("the kernel did not fail on two vCPUs here (no failure point): checking the refusal only");
        let r = Command::new(env!("CARGO_BIN_EXE_vmrr"))
            .args(replay)
            .args(["--gdb", "127.0.0.1:0"])
            .output()
            .expect("vmrr runs");
        assert_eq!(r.status.code(), Some(3), "{}", stderr(&r));
        assert!(stderr(&r).contains("recorded on 2 vCPUs"), "{}", stderr(&r));
        return;
    }
    let failure = &summary["emulation_failure"];
    let rip = failure["rip"].as_u64().expect("a failing RIP");
    let vcpu = failure["vcpu"].as_u64().expect("the failing vCPU");
    let (failing, other) = (vcpu + 1, if vcpu == 0 { 2 } else { 1 });
    // Whether the kernel had started the other CPU before it failed.
    let ap_started = console.contains("Bringing up secondary CPUs");
    let (sec, said) = gdb_session(
        &replay,
        &format!(
            "
            info threads
            --
            thread {other}
            info registers rip
            p/x $cs
            x/4xb 0xfff0
            monitor xp 0xfff0 4
            --
            stepi
            info registers rip
            --
            continue
            --
            info threads
            info registers rip
            x/4xb 0xfff0
            --
            reverse-stepi
            info registers rip
            --
            thread {other}
            p/x $cs
            thread {failing}
            stepi
            "
        ),
    );
    let all = sec.join("@@\n");
    eprintln!("gdb said:\n{all}");
    // Two threads, named by vCPU.
    assert!(sec[0].contains("Thread 1.1 (vCPU 0)") && sec[0].contains("Thread 1.2 (vCPU 1)"), "{all}");
    // The other vCPU: its own registers and its own view of memory.
    assert!(sec[1].contains(&format!("Switching to thread {other} (Thread 1.{other})")), "{all}");
    let other_rip = reg(&sec[1], "rip");
    assert_ne!(other_rip, rip, "{all}");
    // Stepping it is refused: nothing moved, and vmrr said why.
    assert!(sec[2].contains(&format!("Thread {other} stopped.")), "{all}");
    assert!(sec[2].contains(&format!("thread {other} (vCPU {}) cannot step", other - 1)), "{all}");
    assert_eq!(reg(&sec[2], "rip"), other_rip, "{all}");
    // `continue` from it runs the failing vCPU to its failure, and gdb switches to its
    // thread.
    assert!(sec[3].contains(&format!("Thread {failing} received signal SIGILL")), "{all}");
    assert!(sec[3].contains(&format!("[Switching to Thread 1.{failing}]")), "{all}");
    assert!(sec[4].contains(&format!("* {failing}    Thread 1.{failing} (vCPU {vcpu})")), "{all}");
    assert_eq!(reg(&sec[4], "rip"), rip, "{all}");
    if vcpu == 0 && !ap_started {
        // The AP never received its start-up IPI: its reset state, in real mode, where
        // linear is physical (the failing vCPU's page tables map nothing there).
        assert_eq!(other_rip, 0xfff0, "{all}");
        assert!(sec[1].contains("$1 = 0xf000"), "{all}");
        assert!(sec[4].contains("Cannot access memory at address 0xfff0"), "{all}");
        let bytes: Vec<&str> = sec[1]
            .lines()
            .find(|l| l.starts_with("0xfff0:"))
            .map(|l| l.split_whitespace().skip(1).collect())
            .unwrap_or_else(|| panic!("no bytes at 0xfff0: {all}"));
        let xp = sec[1].lines().find(|l| l.starts_with("0x00000000fff0:")).expect("monitor xp");
        let hex: String = bytes.iter().map(|b| b.trim_start_matches("0x")).collect();
        assert_eq!(xp.split_whitespace().nth(1), Some(hex.as_str()), "the same bytes, physical: {all}");
    }
    // Going back stops at the failure point, before the failing instruction, which
    // stepping runs again; the other vCPU stays as the snapshot holds it.
    assert!(sec[5].contains("No more reverse-execution history."), "{all}");
    assert_eq!(reg(&sec[5], "rip"), rip, "{all}");
    assert!(sec[6].contains(&format!("Thread {failing} received signal SIGILL")), "{all}");
    if vcpu == 0 && !ap_started {
        assert!(sec[6].contains("= 0xf000"), "{all}");
    }
    assert!(said.contains("gdb session over (Detached)"), "{said}");
}

/// A trace of one vCPU is one thread, as before threads existed.
#[test]
fn one_vcpu_is_one_thread() {
    if !gdb_here() {
        return;
    }
    let Some((_d, trace)) = recorded("emulation-failure", &[]) else { return };
    let (sec, _) = gdb_session(&["replay", s(&trace)], "info threads\n--\ncontinue\n--\ninfo threads");
    let all = sec.join("@@\n");
    assert!(sec[0].contains("* 1    Thread 1.1 ") && !sec[0].contains("vCPU"), "{all}");
    assert!(sec[1].contains("Program received signal SIGILL"), "{all}");
    assert!(!sec[2].contains("Thread 1.2"), "{all}");
}

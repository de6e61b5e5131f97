//! Debian's own Linux kernel (`linux-image-cloud-amd64`, installed by `.ci/run`) booted by
//! vmrr on real KVM with a busybox initramfs, recorded, and what happened checked:
//!
//! - on a host whose KVM emulates ring-0 code (this project's CI), the kernel stops in a
//!   KVM emulation failure one to two minutes in: the failure is recorded, packed, and
//!   reproduced from the failure point by a fresh `vmrr replay` of the bundle in another
//!   directory, the instruction decoded and named from the kernel's `System.map`, and gdb
//!   stops there with SIGILL;
//! - on a VMX/SVM host the kernel reaches the initramfs, which prints a marker and powers
//!   off: the run ends cleanly and its trace replays (completed, or diverged with its
//!   cause named).
//!
//! Never skipped silently: without a kernel, busybox or cpio the test says why, and under
//! `VMRR_REQUIRE_KVM=1` (CI) it fails instead.

mod common;
use common::linux::{MARKER, boot, initramfs, kernel, strict, system_map};
use common::*;

use std::path::Path;
use std::process::{Command, Stdio};

fn json(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {} / {}", stdout(o), stderr(o)))
}

#[test]
fn debian_kernel_boot_is_recorded_and_its_end_reproduced_elsewhere() {
    if !require_kvm() {
        return;
    }
    let Some(kernel) = kernel() else { return };
    let d = tmp();
    let Some(initrd) = initramfs(d.path()) else { return };
    let map = system_map(&kernel);
    let trace = at(&d, "boot.vmrr");
    let serial = at(&d, "boot.serial");
    // 128 MiB: the kernel initialises less memory under an emulating host's KVM. The cap
    // bounds the test on a host that neither fails nor reaches /init (it then fails below).
    let o = vmrr(&[
        "record",
        "--kernel",
        s(&kernel),
        "--initrd",
        s(&initrd),
        "--mem-mib",
        "128",
        "--max-seconds",
        "200",
        "--timing",
        "--checkpoint-interval-ms",
        "20000",
        "-o",
        s(&trace),
        "--serial",
        s(&serial),
        "--json",
    ]);
    let summary = json(&o);
    let console = std::fs::read_to_string(&serial).unwrap_or_default();
    assert!(console.contains("Linux version"), "the kernel printed nothing: {}", stderr(&o));
    let outcome = summary["outcome"].as_str().unwrap_or_default().to_string();
    eprintln!("the kernel's run ended in {outcome} after {} exits", summary["exits"]);
    match o.status.code() {
        Some(5) => failure_reproduces_elsewhere(&d, &trace, &kernel, map.as_deref(), &summary),
        Some(0) => {
            assert!(
                console.contains(MARKER),
                "the run ended ({outcome}) without a failure and without /init printing its marker: {}",
                console.lines().rev().take(5).collect::<Vec<_>>().join("\n")
            );
            assert_eq!(outcome, "system_event", "the guest powered off");
            replays_or_names_why(&trace);
        }
        other => panic!("vmrr record: exit {other:?}: {}", stderr(&o)),
    }
    profile_names_what_the_kernel_used(&d, &trace);
}

/// Linux on two vCPUs (KVM's in-kernel irqchip, an ACPI MADT listing both, the AP started
/// by the kernel through INIT/SIPI when it gets that far) goes exactly as far as on one:
/// the same end, at the same instruction; its failure reproduces from the failure point,
/// whose snapshot holds both vCPUs, on the vCPU that failed.
#[test]
fn debian_kernel_on_two_vcpus_goes_as_far_as_on_one() {
    if !require_kvm() {
        return;
    }
    let Some(kernel) = kernel() else { return };
    let d = tmp();
    let Some(initrd) = initramfs(d.path()) else { return };
    // Both boots at once: the machine has two cores.
    let (one, two) = std::thread::scope(|sc| {
        let a = sc.spawn(|| boot(&d, &kernel, &initrd, "1"));
        let b = sc.spawn(|| boot(&d, &kernel, &initrd, "2"));
        (a.join().expect("one vCPU"), b.join().expect("two vCPUs"))
    });
    let (s1, s2) = (json(&one.0), json(&two.0));
    assert!(two.1.contains("smpboot: Allowing 2 CPUs"), "the kernel sees both CPUs in the MADT: {}", two.1);
    assert_eq!(one.0.status.code(), two.0.status.code(), "{s1}\n{s2}");
    assert_eq!(s1["outcome"], s2["outcome"], "{s1}\n{s2}");
    match two.0.status.code() {
        Some(5) => {
            let rip = |s: &serde_json::Value| s["emulation_failure"]["rip"].as_u64();
            assert!(rip(&s2).is_some(), "{s2}");
            assert_eq!(rip(&s1), rip(&s2), "the same failing instruction: {s1}\n{s2}");
            let trace = at(&d, "boot2.vmrr");
            let o = vmrr(&["replay", s(&trace), "--kernel", s(&kernel), "--initrd", s(&initrd), "--json"]);
            let r = json(&o);
            assert_eq!(r["outcome"], "reproduced", "{r}");
            assert!(r["path_not_deterministic"][0].is_string(), "said before any work: {r}");
            let fp = &r["failure_point"];
            assert_eq!(fp["vcpus"], 2, "{r}");
            assert_eq!(fp["vcpu"], s2["emulation_failure"]["vcpu"], "{r}");
            assert_eq!(fp["registers_match"], true, "{r}");
            assert_eq!(fp["failure"]["rip"].as_u64(), rip(&s2), "{r}");
        }
        Some(0) => {
            assert!(two.1.contains(MARKER), "/init ran on two vCPUs: {}", two.1);
            assert!(two.1.contains("smp: Brought up 1 node, 2 CPUs"), "the AP came up: {}", two.1);
        }
        other => panic!("vmrr record --vcpus 2: exit {other:?}: {}", stderr(&two.0)),
    }
}

/// An emulation failure: packed, replayed from the bundle in another directory (with no
/// kernel file around: the bundle carries it), reproduced and named; gdb stops there.
fn failure_reproduces_elsewhere(
    d: &tempfile::TempDir,
    trace: &Path,
    kernel: &Path,
    map: Option<&Path>,
    summary: &serde_json::Value,
) {
    assert_eq!(summary["outcome"], "emulation_failure", "{summary}");
    let recorded_rip = summary["emulation_failure"]["rip"].as_u64().expect("a failing RIP");
    let bundle = at(d, "boot.vmrrb");
    let o = vmrr(&["pack", s(trace), "-o", s(&bundle)]);
    assert!(o.status.success(), "pack: {}", stderr(&o));
    // The bundle carries the kernel and initramfs, checksummed.
    let elsewhere = tmp();
    let shipped = elsewhere.path().join("repro.vmrrb");
    std::fs::copy(&bundle, &shipped).expect("bundle copied");
    let mut args = vec!["replay", s(&shipped), "--json"];
    if let Some(m) = map {
        args.extend(["--system-map", s(m)]);
    }
    let o = vmrr(&args);
    let r = json(&o);
    assert_eq!(o.status.code(), Some(0), "{r}");
    assert_eq!(r["outcome"], "reproduced", "{r}");
    // The path cannot replay (KVM's in-kernel irqchip), and the report says so first.
    assert_eq!(r["path"], "skipped", "{r}");
    assert!(r["path_not_deterministic"][0].as_str().is_some_and(|s| s.contains("in-kernel irqchip")), "{r}");
    let fp = &r["failure_point"];
    assert_eq!(fp["reproduced"], true, "{r}");
    assert_eq!(fp["insn_bytes_match"], true, "{r}");
    assert_eq!(fp["registers_match"], true, "{r}");
    let f = &fp["failure"];
    assert_eq!(f["rip"].as_u64(), Some(recorded_rip), "{r}");
    assert!(f["disassembly"].as_str().is_some_and(|s| !s.is_empty()), "the instruction is decoded: {r}");
    if map.is_some() {
        let sym = f["symbol"].as_str().unwrap_or_default();
        assert!(!sym.is_empty() && !sym.starts_with("0x"), "the failing RIP is named: {r}");
        gdb_stops_at_the_failure(&shipped, map, sym);
    }
    // A bare trace needs the kernel given, and checks it is the recorded one.
    let o = vmrr(&["replay", s(trace), "--rebuild", "--json"]);
    assert_eq!(o.status.code(), Some(2), "a rebuild without --kernel is a usage error: {}", stderr(&o));
    assert!(stderr(&o).contains("--kernel"), "{}", stderr(&o));
    let other = at(d, "not-the-kernel");
    std::fs::write(&other, b"another kernel").expect("file written");
    let o = vmrr(&["replay", s(trace), "--rebuild", "--kernel", s(&other), "--initrd", s(kernel), "--json"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("SHA-256"), "{}", stderr(&o));
}

/// gdb against `vmrr replay BUNDLE --gdb`: `continue` stops with SIGILL at the failing
/// instruction, in 64-bit mode, named from the symbol file vmrr writes.
fn gdb_stops_at_the_failure(bundle: &Path, map: Option<&Path>, symbol: &str) {
    if Command::new("gdb").arg("--version").output().is_err() {
        assert!(!strict(), "VMRR_REQUIRE_KVM=1 but gdb cannot run");
        eprintln!("skipped: gdb is not installed");
        return;
    }
    let Some(map) = map else { return };
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmrr"))
        .args(["replay", s(bundle), "--system-map", s(map), "--gdb", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("vmrr starts");
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let (mut addr, mut symfile) = (None, None);
    for line in lines.by_ref() {
        let line = line.expect("text");
        if let Some(f) = line.split("symbol-file ").nth(1) {
            symfile = f.split('\'').next().map(str::to_string);
        }
        if let Some(a) = line.split("waiting for gdb on ").nth(1) {
            addr = Some(a.trim().to_string());
        }
        if addr.is_some() && symfile.is_some() {
            break;
        }
    }
    let (addr, symfile) = (addr.expect("vmrr listens"), symfile.expect("vmrr wrote a symbol file"));
    let o = Command::new("gdb")
        .args(["-q", "-batch", "-nx"])
        .args(["-ex", &format!("symbol-file {symfile}"), "-ex", &format!("target remote {addr}")])
        .args(["-ex", "continue", "-ex", "x/i $pc", "-ex", "show architecture", "-ex", "monitor sym $pc"])
        .args(["-ex", "detach"])
        .output()
        .expect("gdb runs");
    let out = format!("{}{}", stdout(&o), stderr(&o));
    assert!(child.wait().expect("vmrr ends").success(), "{out}");
    assert!(out.contains("SIGILL"), "{out}");
    assert!(out.contains("x86-64"), "64-bit mode: {out}");
    let function = symbol.split('+').next().unwrap_or(symbol);
    assert!(out.contains(&format!("<{function}")), "x/i names the function: {out}");
}

/// A run that reached /init: its trace replays, or its divergence names its cause.
fn replays_or_names_why(trace: &Path) {
    let o = vmrr(&["replay", s(trace), "--json", "--explain-steps", "100000"]);
    let r = json(&o);
    match r["outcome"].as_str() {
        Some("completed") => {}
        Some("diverged") => assert!(
            r["path_not_deterministic"].as_array().is_some_and(|a| !a.is_empty())
                || r["divergence"]["cause"].is_string(),
            "an unexplained divergence: {r}"
        ),
        other => panic!("replay: {other:?}: {r}"),
    }
}

/// `vmrr profile --by port` of the timed boot: the serial port and CMOS are there, with
/// handler times.
fn profile_names_what_the_kernel_used(d: &tempfile::TempDir, trace: &Path) {
    let o = vmrr(&["profile", s(trace), "--by", "port", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("0x3f8") || text.contains("1016"), "the serial port: {text}");
    let t = at(d, "timeline.json");
    let o = vmrr(&["timeline", s(trace), "-o", s(&t)]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn bad_kernels_are_refused_before_kvm() {
    // No KVM needed: every refusal comes before it is touched (VMRR_DENY_KVM proves it).
    let d = tmp();
    let text = at(&d, "notes.txt");
    std::fs::write(&text, b"this is not a kernel").expect("written");
    let run = |extra: &[&str]| {
        let mut args = vec!["record", "--no-trace", "--serial", "none"];
        args.extend_from_slice(extra);
        Command::new(env!("CARGO_BIN_EXE_vmrr")).args(&args).env("VMRR_DENY_KVM", "1").output().expect("runs")
    };
    let o = run(&["--kernel", s(&text)]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("notes.txt") && stderr(&o).contains("neither an ELF"), "{}", stderr(&o));
    // A bzImage cut short: its payload is named truncated.
    let bz = at(&d, "cut-vmlinuz");
    let mut hdr = vec![0u8; 0x400];
    hdr[0x1f1] = 1;
    hdr[0x202..0x206].copy_from_slice(b"HdrS");
    hdr[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    hdr[0x24c..0x250].copy_from_slice(&0x10000u32.to_le_bytes());
    std::fs::write(&bz, &hdr).expect("written");
    let o = run(&["--kernel", s(&bz)]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("payload_length") && stderr(&o).contains("truncated"), "{}", stderr(&o));
    // An unknown compression.
    hdr.extend_from_slice(&[0x42; 0x10000]);
    std::fs::write(&bz, &hdr).expect("written");
    let o = run(&["--kernel", s(&bz)]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("unknown compression"), "{}", stderr(&o));
    // A command line past the boot protocol's limit, and one with a control byte.
    let long = "x".repeat(3000);
    let o = run(&["--kernel", s(&text), "--cmdline", &long]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--cmdline") && stderr(&o).contains("3000 bytes"), "{}", stderr(&o));
    // An initramfs larger than guest memory (sparse: nothing is written).
    let Some(k) = kernel() else { return };
    let big = at(&d, "huge-initrd");
    std::fs::File::create(&big).and_then(|f| f.set_len(128 << 20)).expect("sparse file");
    let o = run(&["--kernel", s(&k), "--initrd", s(&big), "--mem-mib", "96"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("huge-initrd") && stderr(&o).contains("--mem-mib"), "{}", stderr(&o));
    // A missing file.
    let o = run(&["--kernel", "/nonexistent/vmlinuz"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

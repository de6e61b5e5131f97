//! `vmrr record` end to end on real KVM: the first eight built-in guests (the TSC, dirtying
//! and rewriting guests are recorded in `replay.rs`, which covers every one), images,
//! firmware and limits, each read back from its trace.

mod common;
use common::*;

fn record(dir: &tempfile::TempDir, name: &str, extra: &[&str]) -> (std::process::Output, std::path::PathBuf) {
    let out = at(dir, &format!("{name}.vmrr"));
    let mut args = vec!["record", "--guest", name, "-o", s(&out), "--json"];
    args.extend_from_slice(extra);
    (vmrr(&args), out)
}

#[test]
fn hello_real_and_long_mode() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    for (name, text) in
        [("hello", vmrr_engine::guests::HELLO_TEXT), ("hello-long", vmrr_engine::guests::HELLO_LONG_TEXT)]
    {
        let (o, trace) = record(&d, name, &[]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert_eq!(stderr(&o).matches(text).count(), 1, "serial output reaches the console: {}", stderr(&o));
        let recs = records(&trace);
        let ex = exits(&recs);
        assert_eq!(u64::try_from(ex.len()).unwrap(), summary(&o)["exits"].as_u64().unwrap());
        // The text the guest wrote is exactly the OUTs to the data port.
        let written: String = ex
            .iter()
            .filter(|r| r.json["port"] == 0x3f8 && r.json["direction"] == "out")
            .map(|r| char::from(u8::from_str_radix(r.json["data"].as_str().unwrap(), 16).unwrap()))
            .collect();
        assert_eq!(written, text);
        // Every exit carries a register sample; the last exit is the debug-exit write.
        assert!(ex.iter().all(|r| r.rip.is_some()));
        assert_eq!(ex.last().unwrap().json["port"], 0xf4);
        let end = recs.last().unwrap();
        assert_eq!((end.kind, end.json["reason"].as_str()), ("end_of_run", Some("guest_exit")));
        assert!(recs.iter().any(|r| r.kind == "cpuid"));
        assert!(recs.iter().any(|r| r.json["key"] == "host.kernel"));
        assert!(recs.iter().any(|r| r.json["key"] == "vmrr.guest" && r.json["value"] == name));
    }
}

#[test]
fn pio_and_mmio_storms_record_every_exit() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let n = 3000u64;
    for name in ["pio-storm", "mmio-storm"] {
        let (o, trace) = record(&d, name, &["--iterations", &n.to_string()]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let recs = records(&trace);
        let ex = exits(&recs);
        // Records equal exits: the engine's own count, and the guest's loop count + 1.
        assert_eq!(u64::try_from(ex.len()).unwrap(), summary(&o)["exits"].as_u64().unwrap());
        assert_eq!(u64::try_from(ex.len()).unwrap(), n + 1);
        let storm: Vec<_> = if name == "pio-storm" {
            ex.iter().filter(|r| r.kind == "io" && r.json["port"] == 0x5c0).collect()
        } else {
            ex.iter().filter(|r| r.kind == "mmio" && r.json["phys_addr"] == 0xd000_0000u64).collect()
        };
        assert_eq!(u64::try_from(storm.len()).unwrap(), n);
        // The guest writes its loop counter: the data of exit i is i (low byte / dword).
        for (i, r) in storm.iter().enumerate().take(300) {
            let data = r.json["data"].as_str().unwrap();
            let v = u64::from_str_radix(&data[..2], 16).unwrap();
            assert_eq!(v, (i as u64) & 0xff, "{name} exit {i}");
        }
        // Sequence numbers are contiguous.
        assert!(recs.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    }
}

#[test]
fn entropy_recorded_twice_differs_and_the_trace_says_why() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let (o1, t1) = record(&d, "entropy", &["--serial", s(&at(&d, "s1.txt"))]);
    let (o2, t2) = {
        let out = at(&d, "entropy2.vmrr");
        (
            vmrr(&[
                "record",
                "--guest",
                "entropy",
                "-o",
                s(&out),
                "--json",
                "--serial",
                s(&at(&d, "s2.txt")),
            ]),
            out,
        )
    };
    assert_eq!(o1.status.code(), Some(0), "{}", stderr(&o1));
    assert_eq!(o2.status.code(), Some(0), "{}", stderr(&o2));
    let s1 = std::fs::read_to_string(at(&d, "s1.txt")).unwrap();
    let s2 = std::fs::read_to_string(at(&d, "s2.txt")).unwrap();
    assert!(s1.starts_with("entropy digest: ") && s2.starts_with("entropy digest: "));
    assert_ne!(s1, s2, "two runs print different digests");
    // Why: the inputs differ, and each input is in the trace.
    let inputs = |t: &std::path::Path| -> Vec<String> {
        records(t)
            .iter()
            .filter(|r| {
                (r.kind == "io" && r.json["direction"] == "in" && r.json["port"] != 0x3fd)
                    || r.kind == "x86_rdmsr"
            })
            .map(|r| r.json["data"].to_string())
            .collect()
    };
    let (i1, i2) = (inputs(&t1), inputs(&t2));
    assert_eq!(i1.len(), 4 * 4, "4 rounds of entropy, clock low, clock high, MSR");
    assert_eq!(i1.len(), i2.len());
    assert_ne!(i1, i2);
    let msr = records(&t1).into_iter().find(|r| r.kind == "x86_rdmsr").unwrap();
    assert_eq!(msr.json["index"], 0x5652_0001);
}

#[test]
fn interrupts_are_recorded_after_the_exit_they_follow() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let (o, trace) = record(&d, "interrupts", &["--iterations", "5"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("timer interrupts: 0000000000000005"));
    let recs = records(&trace);
    let irqs: Vec<_> = recs.iter().enumerate().filter(|(_, r)| r.kind == "interrupt").collect();
    assert_eq!(irqs.len(), 5);
    assert_eq!(summary(&o)["interrupts"], 5);
    for (i, r) in irqs {
        assert_eq!(r.json["vector"], 0x20);
        // Injected while the guest halted: the record before it is the HLT exit.
        assert_eq!(recs[i - 1].kind, "hlt");
    }
}

#[test]
fn memory_churn_runs_natively_and_reports_a_checksum() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let (o, trace) = record(&d, "memory-churn", &["--iterations", "2", "--mem-mib", "64"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("memory-churn checksum: "));
    // One progress exit per 256 pages per round: (64 - 4) MiB = 15360 pages.
    let progress = exits(&records(&trace)).iter().filter(|r| r.json["port"] == 0x5c0).count();
    assert_eq!(progress, 2 * 15360 / 256);
}

#[test]
fn emulation_failure_ends_the_trace_with_the_instruction() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let (o, trace) = record(&d, "emulation-failure", &[]);
    assert_eq!(o.status.code(), Some(5), "fatal guest exit: {}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("popcnt rax,[rdi]")
            && err.contains("5 bytes")
            && err.contains("KVM_INTERNAL_ERROR_EMULATION"),
        "{err}"
    );
    let sum = summary(&o);
    assert_eq!(sum["emulation_failure"]["disassembly"], "popcnt rax,[rdi]");
    let recs = records(&trace);
    let last_exit = exits(&recs).last().copied().cloned().unwrap();
    assert_eq!(last_exit.kind, "internal_error");
    assert_eq!(last_exit.json["suberror"], 1);
    assert_eq!(last_exit.json["flags"].as_u64().unwrap() & 1, 1);
    assert!(last_exit.json["insn_bytes"].as_str().unwrap().starts_with("f3480fb807"));
    assert_eq!(recs.last().unwrap().json["reason"], "emulation_failure");
    // The guest did real work first, and the trace shows it.
    assert!(err.contains("fib(90) = 0x27f80ddaa1ba7878"));
}

#[test]
fn bad_arguments_exit_2_before_kvm_is_touched() {
    let d = tmp();
    let out = at(&d, "never.vmrr");
    let img = at(&d, "big.bin");
    std::fs::write(&img, vec![0x90u8; 3 << 20]).unwrap();
    let small = at(&d, "small.bin");
    std::fs::write(&small, [0xf4u8; 16]).unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            image_args(std::path::Path::new("/no/such/image.bin"), "0x100000", "long").to_vec(),
            "cannot read image",
        ),
        (vec!["--guest", "hello", "--mem-mib", "100000000"], "exceeds this host"),
        ([&image_args(&img, "0x100000", "long")[..], &["--mem-mib", "2"]].concat(), "does not fit"),
        (
            vec!["--image", s(&small), "--load-addr", "0x100000", "--entry", "0x200000", "--mode", "long"],
            "outside the image",
        ),
        (vec!["--guest", "no-such-guest"], "unknown guest"),
        (vec!["--firmware", s(&small)], "multiple of 4 KiB"),
    ];
    for (extra, msg) in cases {
        let mut args = vec!["record", "-o", s(&out)];
        args.extend(extra.iter().copied());
        let o = vmrr(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(msg), "{args:?}: {}", stderr(&o));
        assert!(!out.exists(), "nothing was created for {args:?}");
    }
    assert_eq!(vmrr(&["record", "--guest", "hello"]).status.code(), Some(2), "--out is required");
}

#[test]
fn a_guest_spinning_without_exits_is_ended_by_max_seconds() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let img = at(&d, "spin.bin");
    std::fs::write(&img, [0xeb, 0xfe]).unwrap(); // jmp $ (ring 3: runs natively everywhere)
    let out = at(&d, "spin.vmrr");
    let o = vmrr(
        &[
            &["record"][..],
            &image_args(&img, "0x100000", "long"),
            &["--ring", "3", "--max-seconds", "1", "-o", s(&out), "--json"],
        ]
        .concat(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // The limit ended the run (not its own end, which never comes), and not before it was
    // reached: a lower bound no load can break.
    let sum = summary(&o);
    assert_eq!(sum["outcome"], "max_seconds");
    assert!(sum["seconds"].as_f64().unwrap() >= 1.0, "{sum}");
    assert_eq!(records(&out).last().unwrap().json["reason"], "max_seconds");
}

#[test]
fn max_exits_ends_a_run_cleanly() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let (o, trace) = record(&d, "pio-storm", &["--iterations", "100000", "--max-exits", "500"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(exits(&records(&trace)).len(), 500);
    assert_eq!(records(&trace).last().unwrap().json["reason"], "max_exits");
}

#[test]
fn seabios_gets_to_trying_boot_devices() {
    if !require_kvm() {
        return;
    }
    let bios = seabios();
    let d = tmp();
    let out = at(&d, "bios.vmrr");
    let dcon = at(&d, "debugcon.txt");
    let o = vmrr(&[
        "record",
        "--firmware",
        s(bios),
        "-o",
        s(&out),
        // SeaBIOS reaches its boot devices in about 2,700 exits on this host (most of them
        // its debug console's bytes; its delays wait in HLT for timer interrupts, which
        // exit as often however fast the host is): the bound is work, not time.
        "--max-exits",
        "3000",
        "--debugcon",
        s(&dcon),
        "--serial",
        "none",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let log = std::fs::read_to_string(&dcon).unwrap();
    assert!(log.contains("SeaBIOS (version"), "banner: {log}");
    assert!(log.contains("Booting from Hard Disk"), "tries boot devices: {log}");
    let recs = records(&out);
    assert!(recs.iter().filter(|r| r.kind == "interrupt").count() > 10, "PIT interrupts through the PIC");
    assert!(recs.iter().any(|r| r.kind == "io" && (0x40..=0x43).contains(&r.json["port"].as_u64().unwrap())));
    assert!(recs.iter().any(|r| r.kind == "io" && r.json["port"] == 0x71));
    assert_eq!(recs.last().unwrap().json["reason"], "max_exits");
    // The bundle carries the firmware (replay never opens the path the trace names); the
    // bare trace needs --firmware to be rebuilt.
    let bundle = at(&d, "bios.vmrrb");
    let o = vmrr(&["pack", s(&out), "-o", s(&bundle)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let m = vmrr_format::bundle::read_manifest(&bundle, &Default::default()).unwrap();
    let bios_len = std::fs::metadata(bios).unwrap().len();
    assert!(m.entries.iter().any(|e| e.name == "firmware.bin" && e.size == bios_len), "{m:?}");
    let o = vmrr(&["replay", s(&out), "--rebuild", "--stall-seconds", "1"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("pass --firmware FILE"), "{}", stderr(&o));
}

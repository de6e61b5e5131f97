//! The debugging session under gdb, through its API: every point of a run reached going
//! backwards is the point reached going forwards, a run interrupted anywhere can be
//! returned to, and a write leaves the recorded path. Against real KVM.

mod common;
use common::*;

use std::path::Path;

use vmrr_replay::debugger::{Position, Session, Settings, Stopped, WatchKind, WatchPoint};
use vmrr_replay::{Options, source};

fn open(trace: &Path) -> Session {
    let src = source::open(trace, &vmrr_format::bundle::Budgets::memory_only(1 << 30)).expect("trace opens");
    Session::open(src, &Options::default(), Settings::default()).expect("session opens")
}

/// What identifies a point: its name and the registers there.
fn here(s: &Session) -> (String, [u64; 6]) {
    let r = s.machine().regs().expect("regs");
    (s.position().to_string(), [r.rip, r.rsp, r.rflags, r.rax, r.rcx, r.rdx])
}

fn never() -> impl FnMut() -> bool {
    || false
}

#[test]
fn stepping_back_visits_every_point_stepping_forward_did() {
    let Some((_d, trace)) = recorded("interrupts", &["--iterations", "3", "--checkpoint-every", "3"]) else {
        return;
    };
    let mut s = open(&trace);
    let mut forward = Vec::new();
    loop {
        forward.push(here(&s));
        match s.step(&mut never()).expect("step") {
            Stopped::Step => {}
            Stopped::End => break,
            other => panic!("unexpected stop {other:?} at {}", s.position()),
        }
        assert!(forward.len() < 5000, "the run did not end");
    }
    // The end: no instruction after the last boundary.
    forward.pop();
    assert!(forward.len() > 100, "{} points", forward.len());
    for (i, want) in forward.iter().enumerate().rev() {
        let stop = s.reverse_step(&mut never()).expect("reverse step");
        assert_eq!(&here(&s), want, "point {i} going back ({stop:?})");
    }
    assert_eq!(s.reverse_step(&mut never()).expect("at the start"), Stopped::Begin);
}

#[test]
fn a_run_interrupted_anywhere_can_be_returned_to() {
    let Some((_d, trace)) = recorded("interrupts", &["--iterations", "4", "--checkpoint-every", "4"]) else {
        return;
    };
    // A watchpoint that never fires makes `continue` single-step on this host (where
    // watchpoints are found by decoding) or run on the debug registers (elsewhere);
    // either way the interrupted point must be exact.
    // (The session asks whether to stop every few entries: a run without stops makes
    // about 90 entries here, a single-stepped one thousands.)
    for (watch, polls_before) in [(false, [1u32, 2, 4]), (true, [1, 10, 40])] {
        for after in polls_before {
            let mut s = open(&trace);
            if watch {
                assert!(s.add_watchpoint(WatchPoint { addr: 0x30_0000, len: 8, kind: WatchKind::Write }));
            }
            let mut polls = 0;
            let mut interrupt = || {
                polls += 1;
                polls >= after
            };
            let stop = s.cont(&mut interrupt).expect("continue");
            assert_eq!(stop, Stopped::Interrupted, "watch {watch}, after {after}");
            let (name, regs) = here(&s);
            let p: Position = s.position().clone();
            let start = s.start().clone();
            s.goto(&start, &mut never()).expect("to the start");
            s.goto(&p, &mut never()).expect("back");
            assert_eq!(here(&s), (name, regs), "watch {watch}, after {after}");
        }
    }
}

#[test]
fn breakpoint_hits_are_returned_to_from_either_side() {
    let Some((_d, trace)) = recorded("interrupts", &["--iterations", "4", "--checkpoint-every", "5"]) else {
        return;
    };
    let mut s = open(&trace);
    // Find the handler: the first instruction stepped into after an injection leaves the
    // stack 40 bytes (an interrupt frame) lower.
    let mut handler = None;
    for _ in 0..2000 {
        let before = s.machine().regs().expect("regs").rsp;
        assert_eq!(s.step(&mut never()).expect("step"), Stopped::Step);
        let r = s.machine().regs().expect("regs");
        if r.rsp + 40 == before {
            handler = Some(r.rip);
            break;
        }
    }
    let handler = handler.expect("an interrupt was delivered");
    let start = s.start().clone();
    s.goto(&start, &mut never()).expect("start");
    assert!(s.add_breakpoint(handler));
    let mut hits = Vec::new();
    loop {
        match s.cont(&mut never()).expect("continue") {
            Stopped::Breakpoint(a) => {
                assert_eq!(a, handler);
                hits.push(here(&s));
            }
            Stopped::End => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(hits.len(), 4, "one hit per interrupt");
    for want in hits.iter().rev() {
        assert_eq!(s.reverse_cont(&mut never()).expect("reverse-continue"), Stopped::Breakpoint(handler));
        assert_eq!(&here(&s), want);
    }
    assert_eq!(s.reverse_cont(&mut never()).expect("to the start"), Stopped::Begin);
    assert_eq!(s.position(), s.start());
}

#[test]
fn a_write_leaves_the_recorded_path_and_goto_returns_to_it() {
    let Some((_d, trace)) = recorded("emulation-failure", &["--checkpoint-every", "20"]) else {
        return;
    };
    let mut s = open(&trace);
    for _ in 0..5 {
        s.step(&mut never()).expect("step");
    }
    let recorded = here(&s);
    let mut regs = s.machine().regs().expect("regs");
    regs.rcx = 3;
    s.write_regs(&regs, None).expect("write");
    assert!(s.take_notes().iter().any(|n| n.contains("left the recorded path")));
    assert!(s.left_path_at().is_some());
    assert_eq!(s.reverse_step(&mut never()).expect("no history"), Stopped::Begin);
    // Live, the guest runs on its own devices: fewer Fibonacci rounds, then the same
    // failure (live, KVM cannot emulate it either).
    match s.cont(&mut never()).expect("live run") {
        Stopped::LiveEnded(how) => assert!(how.contains("emulation_failure"), "{how}"),
        other => panic!("{other:?}"),
    }
    let record = recorded.0.split_whitespace().nth(1).and_then(|r| r.parse().ok()).expect("record");
    s.goto_record(record, &mut never()).expect("back to the recorded path");
    assert!(s.left_path_at().is_none());
    for _ in 0..5 {
        s.step(&mut never()).expect("step");
    }
    assert_eq!(here(&s), recorded);
}

#[test]
fn breakpoints_in_ring_3_code_are_returned_to() {
    let Some((_d, trace)) = recorded("pio-storm", &["--iterations", "50"]) else {
        return;
    };
    let mut s = open(&trace);
    // The storm's loop writes a port: find its `out` by decoding from the entry.
    let mut out_insn = None;
    let mut pc = s.machine().linear_pc().expect("pc");
    for _ in 0..20 {
        let insn = s.machine().instruction_at(pc).expect("decodes");
        if insn.text.starts_with("out") {
            out_insn = Some(pc);
            break;
        }
        pc += insn.len as u64;
    }
    let out_insn = out_insn.expect("the loop's out");
    let start = s.start().clone();
    s.goto(&start, &mut never()).expect("start");
    assert!(s.add_breakpoint(out_insn));
    let mut hits = Vec::new();
    for _ in 0..3 {
        assert_eq!(s.cont(&mut never()).expect("continue"), Stopped::Breakpoint(out_insn));
        hits.push(here(&s));
    }
    // Each continue moved on: one loop iteration (RCX counts down) per hit.
    assert!(hits[0].1[4] > hits[1].1[4] && hits[1].1[4] > hits[2].1[4], "{hits:?}");
    let mut polls = 0;
    let mut guard = || {
        polls += 1;
        polls > 100_000
    };
    for want in hits.iter().rev().skip(1) {
        assert_eq!(
            s.reverse_cont(&mut guard).expect("reverse-continue"),
            Stopped::Breakpoint(out_insn),
            "{}",
            s.position()
        );
        assert_eq!(&here(&s), want);
    }
    // From the second hit too (after a fresh start), as gdb does it.
    let second = hits[1].clone();
    s.goto(&start, &mut never()).expect("start");
    assert_eq!(s.cont(&mut never()).expect("continue"), Stopped::Breakpoint(out_insn));
    assert_eq!(s.cont(&mut never()).expect("continue"), Stopped::Breakpoint(out_insn));
    assert_eq!(here(&s), second);
    assert_eq!(s.reverse_cont(&mut guard).expect("reverse-continue"), Stopped::Breakpoint(out_insn));
    assert_eq!(here(&s), hits[0]);
    // One instruction back from a hit inside ring-3 code, the breakpoint still set (gdb
    // keeps it inserted): this host cannot step ring 3, so it is the exit before (here
    // the start).
    let back = s.reverse_step(&mut never()).expect("reverse-stepi");
    assert!(matches!(back, Stopped::Step | Stopped::Begin), "{back:?}");
    assert!(s.position().path.is_empty(), "{}", s.position());
    assert!(
        s.take_notes().iter().any(|n| n.contains("cannot single-step ring-3"))
            || vmrr_engine::machine::debug::host_steps_ring3()
    );
}

#[test]
fn the_session_checkpoints_as_it_goes_and_going_back_uses_them() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    // No checkpoint in the trace but its start.
    let trace = record_guest(&d, "interrupts", &["--iterations", "6"]);
    let mut s = open(&trace);
    s.set_checkpoint_interval(std::time::Duration::ZERO);
    let mut forward = Vec::new();
    loop {
        forward.push(here(&s));
        if s.step(&mut never()).expect("step") != Stopped::Step {
            break;
        }
    }
    forward.pop();
    assert!(s.checkpoints_taken() > 5, "{} taken", s.checkpoints_taken());
    let session: Vec<_> =
        s.checkpoints().iter().filter(|c| c.origin == vmrr_replay::debugger::Origin::Session).collect();
    assert!(!session.is_empty());
    // Going back through session checkpoints lands on the same points.
    for want in forward.iter().rev().take(60) {
        s.reverse_step(&mut never()).expect("back");
        assert_eq!(&here(&s), want);
    }
}

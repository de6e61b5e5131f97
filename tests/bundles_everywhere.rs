//! Every command that reads a trace reads a bundle too (its trace entry), without KVM:
//! `verify` checks the manifest, every entry and every snapshot; `inspect`, `stats`,
//! `profile` and `timeline` print what they print for the trace, naming the bundle.

mod common;
use common::*;

use std::path::Path;
use std::process::{Command, Output};

/// `vmrr ARGS` with KVM locked away (`VMRR_DENY_KVM`) and temporary files in `tmpdir`.
fn no_kvm(args: &[&str], tmpdir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmrr"))
        .args(args)
        .env("VMRR_DENY_KVM", "1")
        .env("TMPDIR", tmpdir)
        .output()
        .expect("runs vmrr")
}

#[test]
fn trace_commands_read_a_bundle_without_kvm() {
    let Some((d, trace)) = recorded("hello", &["--timing", "--checkpoint-every", "30"]) else { return };
    let b = at(&d, "hello.vmrrb");
    let o = vmrr(&["pack", s(&trace), "-o", s(&b)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let scratch = at(&d, "tmp");
    std::fs::create_dir(&scratch).unwrap();

    // The same records, the same summary, as from the trace itself.
    let of_trace = vmrr(&["inspect", s(&trace), "--json"]);
    let of_bundle = no_kvm(&["inspect", s(&b), "--json"], &scratch);
    assert_eq!(of_bundle.status.code(), Some(0), "{}", stderr(&of_bundle));
    assert_eq!(stdout(&of_bundle), stdout(&of_trace));
    let st_trace = summary(&vmrr(&["stats", s(&trace), "--json"]));
    let st = no_kvm(&["stats", s(&b), "--json"], &scratch);
    assert_eq!(st.status.code(), Some(0), "{}", stderr(&st));
    assert_eq!(summary(&st)["records"], st_trace["records"]);
    assert_eq!(summary(&st)["trace_id"], st_trace["trace_id"]);
    let text = no_kvm(&["stats", s(&b)], &scratch);
    assert!(stdout(&text).starts_with(s(&b)), "names the bundle: {}", stdout(&text));

    let p = no_kvm(&["profile", s(&b), "--json"], &scratch);
    assert_eq!(p.status.code(), Some(0), "{}", stderr(&p));
    assert_eq!(summary(&p)["trace"], s(&b));
    let tl = at(&d, "t.json");
    let o = no_kvm(&["timeline", s(&b), "-o", s(&tl)], &scratch);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(std::fs::read_to_string(&tl).unwrap().contains("traceEvents"));
    // The bundle is an input of timeline: never its output.
    let o = no_kvm(&["timeline", s(&b), "-o", s(&b), "--force"], &scratch);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));

    let v = no_kvm(&["verify", s(&b)], &scratch);
    assert_eq!(v.status.code(), Some(0), "{}", stderr(&v));
    assert!(stdout(&v).contains(": ok,") && stdout(&v).contains("snapshots"), "{}", stdout(&v));
    let v = no_kvm(&["verify", s(&b), "--json"], &scratch);
    let j = summary(&v);
    assert_eq!(j["ok"], true, "{j}");
    assert!(j["snapshots"].as_array().is_some_and(|a| a.len() > 1), "every checkpoint's snapshot: {j}");
    assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0, "nothing extracted is left behind");
}

/// `verify` on a bundle whose snapshot entry is damaged (its checksum still right, so
/// only reading it finds the damage): exit 3 naming the entry.
#[test]
fn verify_checks_every_entry_of_a_bundle() {
    let Some((d, trace)) = recorded("hello", &[]) else { return };
    let b = at(&d, "hello.vmrrb");
    assert!(vmrr(&["pack", s(&trace), "-o", s(&b)]).status.success());
    let scratch = at(&d, "tmp");
    std::fs::create_dir(&scratch).unwrap();
    // One byte of the stored state flipped: the entry's checksum no longer matches.
    let m = vmrr_format::bundle::read_manifest(&b, &Default::default()).unwrap();
    let e = m.entries.iter().find(|e| e.name == "snapshots/snap-000000/state.bin").unwrap();
    let mut bytes = std::fs::read(&b).unwrap();
    bytes[usize::try_from(e.offset + e.stored / 2).unwrap()] ^= 0x40;
    let bad = at(&d, "bad.vmrrb");
    std::fs::write(&bad, &bytes).unwrap();
    let v = no_kvm(&["verify", s(&bad)], &scratch);
    assert_eq!(v.status.code(), Some(3), "{}", stderr(&v));
    assert!(stderr(&v).contains("snapshots/snap-000000/state.bin"), "{}", stderr(&v));
    // inspect reads only the trace entry, which is intact.
    assert_eq!(no_kvm(&["inspect", s(&bad)], &scratch).status.code(), Some(0));
    // --repair takes a trace.
    let o = no_kvm(&["verify", s(&b), "--repair", s(&at(&d, "r.vmrr"))], &scratch);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

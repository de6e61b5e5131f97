//! Exit codes and messages as the README's table says (a usage error is 2, damaged input
//! 3), one message for a missing file, and a hint where there is a next step.

mod common;
use common::*;

/// Every command that reads a file says the same thing when it is missing, exit 2.
#[test]
fn a_missing_file_is_one_message_everywhere() {
    let d = tmp();
    let missing = at(&d, "nothing.vmrr");
    let out = at(&d, "out");
    let runs: Vec<Vec<&str>> = vec![
        vec!["inspect", s(&missing)],
        vec!["stats", s(&missing)],
        vec!["verify", s(&missing)],
        vec!["replay", s(&missing)],
        vec!["pack", s(&missing), "-o", s(&out)],
        vec!["profile", s(&missing)],
        vec!["timeline", s(&missing), "-o", s(&out)],
    ];
    let want = format!("vmrr: error: {}: no such file", missing.display());
    for args in runs {
        let o = vmrr(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert_eq!(stderr(&o).trim_end(), want, "{args:?}");
    }
}

/// A trace whose tail was torn off: `verify` says it is damaged and how to keep what is
/// readable (`verify --repair`).
#[test]
fn a_torn_tail_names_verify_repair() {
    let Some((d, trace)) = recorded("pio-storm", &["--iterations", "20000"]) else { return };
    let mut bytes = std::fs::read(&trace).unwrap();
    bytes.truncate(bytes.len() - 100);
    let torn = at(&d, "torn.vmrr");
    std::fs::write(&torn, &bytes).unwrap();
    let o = vmrr(&["verify", s(&torn)]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains(&format!("vmrr verify {} --repair", torn.display())), "{}", stderr(&o));
}

/// A repaired trace that lost its first chunk says which records are gone, that the
/// prelude went with them, and how to replay it (its snapshots beside it).
#[test]
fn a_repair_that_lost_the_first_chunk_says_how_to_replay() {
    let Some((d, trace)) = recorded("pio-storm", &["--iterations", "20000"]) else { return };
    let mut bytes = std::fs::read(&trace).unwrap();
    // Inside the first chunk, just past the file header.
    bytes[300] ^= 0x55;
    let hurt = at(&d, "hurt.vmrr");
    std::fs::write(&hurt, &bytes).unwrap();
    let fixed = at(&d, "fixed.vmrr");
    let o = vmrr(&["verify", s(&hurt), "--repair", s(&fixed)]);
    let e = stderr(&o);
    assert!(e.contains("records 0..=") && e.contains("prelude"), "{e}");
    assert!(e.contains(&format!("vmrr replay {}", fixed.display())), "{e}");
    assert!(e.contains(s(&vmrr_format::layout::snapshots_of(&fixed))), "{e}");
}

/// `snapshot flatten` given a snapshots directory: a usage error that says to name a
/// snapshot, and which.
#[test]
fn flatten_of_a_snapshots_directory_says_to_name_a_snapshot() {
    let Some((d, trace)) = recorded("hello", &["--checkpoint-every", "30"]) else { return };
    let root = vmrr_format::layout::snapshots_of(&trace);
    let o = vmrr(&["snapshot", "flatten", s(&root), s(&at(&d, "flat"))]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("name the snapshot") && stderr(&o).contains("snap-0000"), "{}", stderr(&o));
    assert!(!at(&d, "flat").exists());
}

/// A directory where one trace is asked for is a usage error that lists what it holds.
#[test]
fn a_directory_of_traces_is_a_usage_error_that_lists_them() {
    let Some((d, trace)) = recorded("hello", &[]) else {
        return;
    };
    let dir = trace.parent().expect("the trace's directory").to_path_buf();
    std::fs::copy(&trace, dir.join("second.vmrr")).unwrap();
    for cmd in ["inspect", "stats", "verify", "profile"] {
        let o = vmrr(&[cmd, s(&dir)]);
        assert_eq!(o.status.code(), Some(2), "{cmd}: {}", stderr(&o));
        let e = stderr(&o);
        let name = trace.file_name().unwrap().to_str().unwrap();
        assert!(
            e.contains("is a directory holding 2 traces or bundles")
                && e.contains(name)
                && e.contains("second.vmrr"),
            "{cmd}: {e}"
        );
    }
    let o = vmrr(&["timeline", s(&dir), "-o", s(&at(&d, "t.json"))]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

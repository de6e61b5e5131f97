//! The docs say what the binary prints: every key of `vmrr replay --json`'s report is in
//! docs/REPLAY.md's table of JSON fields (a divergence's keys in its row too).

mod common;
use common::*;

use std::path::Path;

/// The first column of docs/REPLAY.md's JSON-field table: every backquoted name in it,
/// and the row of each (the text after the first column).
fn replay_table() -> Vec<(Vec<String>, String)> {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/REPLAY.md")).unwrap();
    let rows: Vec<(Vec<String>, String)> = doc
        .lines()
        .skip_while(|l| !l.starts_with("| JSON field | meaning |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let mut cells = l.trim_matches('|').splitn(2, '|');
            let names =
                cells.next().unwrap_or("").split('`').skip(1).step_by(2).map(str::to_string).collect();
            (names, cells.next().unwrap_or("").to_string())
        })
        .collect();
    assert!(rows.len() > 10, "docs/REPLAY.md's JSON table: {rows:?}");
    rows
}

fn documented(rows: &[(Vec<String>, String)], key: &str) -> Option<String> {
    rows.iter().find(|(names, _)| names.iter().any(|n| n == key)).map(|(_, row)| row.clone())
}

fn keys(v: &serde_json::Value) -> Vec<String> {
    v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
}

#[test]
fn every_key_of_the_replay_report_is_in_the_docs_table() {
    let Some((_d, hello)) = recorded("hello", &[]) else {
        return;
    };
    let rows = replay_table();
    let (code, completed) = replay_json(&hello, &[]);
    assert_eq!(code, Some(0), "{completed}");
    let (_d2, tsc) = recorded("tsc", &[]).expect("KVM is here");
    let (code, diverged) = replay_json(&tsc, &[]);
    assert_eq!(code, Some(1), "{diverged}");
    for report in [&completed, &diverged] {
        for k in keys(report) {
            assert!(documented(&rows, &k).is_some(), "`{k}` is not in docs/REPLAY.md's table");
        }
    }
    for (field, sub) in [("start", &completed["start"]), ("divergence", &diverged["divergence"])] {
        let row = documented(&rows, field).unwrap();
        for k in keys(sub) {
            assert!(row.contains(&format!("`{k}`")), "`{field}.{k}` is not in its row of docs/REPLAY.md");
        }
    }
}

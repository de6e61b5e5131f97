//! Commands as documented: every shell block of README.md runs as written, on real KVM, in
//! a fresh directory; and the replay and timeline behaviours its examples rely on.
//!
//! A block the test cannot run is marked in README.md by an HTML comment on the line
//! before it, visible in the source: `<!-- readme-test: skip: WHY -->`. A block that
//! needs a file the user brings says so (`<!-- readme-test: needs guest.bin -->`) and the
//! test writes one. A command expected to end with another code than 0 says so in its
//! trailing comment (`# exit 5: ...`).

mod common;
use common::*;

use std::path::Path;
use std::process::Command;

/// A shell block of README.md: its first line number, its marker and its commands.
struct Block {
    line: usize,
    marker: Option<String>,
    commands: Vec<String>,
}

/// The shell blocks of `text`: ```sh blocks, and transcripts (``` blocks whose commands
/// are the lines after a `$ ` prompt, the rest being what they print). Each command has
/// its `\` continuations joined; comment-only lines are dropped.
fn shell_blocks(text: &str) -> Vec<Block> {
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let transcript = lines[i].trim() == "```";
        if lines[i].trim() != "```sh" && !transcript {
            if lines[i].trim_start().starts_with("```") {
                // Another language's block: past its end.
                i += 1;
                while i < lines.len() && lines[i].trim() != "```" {
                    i += 1;
                }
            }
            i += 1;
            continue;
        }
        let marker = i
            .checked_sub(1)
            .and_then(|p| lines[p].trim().strip_prefix("<!-- readme-test:"))
            .map(|m| m.trim_end_matches("-->").trim().to_string());
        let line = i + 1;
        let mut commands = Vec::new();
        let mut current = String::new();
        i += 1;
        while i < lines.len() && lines[i].trim() != "```" {
            let mut l = lines[i].trim();
            i += 1;
            if transcript && current.is_empty() {
                // Output, unless after a prompt.
                match l.strip_prefix("$ ") {
                    Some(c) => l = c,
                    None => continue,
                }
            }
            if current.is_empty() && (l.is_empty() || l.starts_with('#')) {
                continue;
            }
            match l.strip_suffix('\\') {
                Some(head) => current.push_str(head),
                None => {
                    current.push_str(l);
                    commands.push(std::mem::take(&mut current));
                }
            }
        }
        i += 1;
        if !commands.is_empty() {
            blocks.push(Block { line, marker, commands });
        }
    }
    blocks
}

/// The exit code a command's trailing comment announces (`# exit N`), else 0.
fn expected_code(command: &str) -> i32 {
    command
        .split(" # ")
        .nth(1)
        .and_then(|c| c.trim().strip_prefix("exit "))
        .and_then(|c| c.split(|ch: char| !ch.is_ascii_digit()).next())
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// A flat long-mode image like the one README's `guest.bin` stands for: 600 port writes,
/// then vmrr's exit port.
fn write_guest_bin(dir: &Path) {
    let code: &[u8] = &[
        0xb9, 0x58, 0x02, 0x00, 0x00, // mov ecx, 600
        0x88, 0xc8, // again: mov al, cl
        0xe6, 0x80, // out 0x80, al
        0xff, 0xc9, // dec ecx
        0x75, 0xf8, // jnz again
        0x31, 0xc0, // xor eax, eax
        0x66, 0xba, 0xf4, 0x00, // mov dx, 0xf4
        0xef, // out dx, eax
        0xeb, 0xfe, // jmp $
    ];
    std::fs::write(dir.join("guest.bin"), code).expect("guest.bin");
}

#[test]
fn every_shell_block_of_the_readme_runs_as_written() {
    if !require_kvm() {
        return;
    }
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let blocks = shell_blocks(&readme);
    assert!(blocks.len() >= 2, "README.md has shell blocks");
    let bin = Path::new(env!("CARGO_BIN_EXE_vmrr")).parent().expect("bin dir").to_path_buf();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut ran = 0;
    for b in &blocks {
        if b.marker.as_deref().is_some_and(|m| m.starts_with("skip")) {
            continue;
        }
        let d = tmp();
        if b.marker.as_deref().is_some_and(|m| m.contains("needs guest.bin")) {
            write_guest_bin(d.path());
        }
        for c in &b.commands {
            let o = Command::new("bash")
                .args(["-c", c])
                .current_dir(d.path())
                .env("PATH", &path)
                .output()
                .expect("bash");
            assert_eq!(
                o.status.code(),
                Some(expected_code(c)),
                "README.md line {}: `{c}`\nstdout: {}\nstderr: {}",
                b.line,
                stdout(&o),
                stderr(&o)
            );
            ran += 1;
        }
    }
    // The repro block's nine commands and the profiling transcript's two, at least.
    assert!(ran >= 11, "only {ran} README commands ran");
}

#[test]
fn goto_reports_where_it_stopped_and_refuses_a_record_past_the_end() {
    let Some((d, trace)) = recorded("hello", &[]) else {
        return;
    };
    let last = records(&trace).last().map(|r| r.seq).expect("records");
    let o = vmrr(&["replay", s(&trace), "--goto", "20"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("replay: stopped at record 20 (--goto)"), "{text}");
    assert!(!text.contains("completed"), "{text}");
    assert!(text.contains("serial output matches the recording up to record 20"), "{text}");
    let past = (last + 1).to_string();
    for args in [vec!["--goto", past.as_str()], vec!["--snapshot-at", past.as_str(), "snap"]] {
        let mut a = vec!["replay", s(&trace)];
        a.extend(args);
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_vmrr"))
            .args(&a)
            .current_dir(d.path())
            .output()
            .expect("vmrr");
        assert_eq!(o.status.code(), Some(2), "{a:?}: {}", stderr(&o));
        assert!(
            stderr(&o)
                .contains(&format!("there is no record {past} to stop at: the trace ends at record {last}")),
            "{}",
            stderr(&o)
        );
        assert!(!d.path().join("snap").exists());
    }
}

#[test]
fn timeline_refuses_a_replay_report_of_another_trace() {
    let Some((d, hello)) = recorded("hello", &[]) else {
        return;
    };
    let other = record_guest(&d, "pio-storm", &[]);
    let report = at(&d, "other.json");
    let o = vmrr(&["replay", s(&other), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::write(&report, &o.stdout).expect("report");
    let out = at(&d, "run.json");
    let o = vmrr(&["timeline", s(&hello), "-o", s(&out), "--replay-report", s(&report)]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("a replay report of trace"), "{}", stderr(&o));
    assert!(!out.exists());
    // Its own report is taken.
    let own = at(&d, "own.json");
    let o = vmrr(&["replay", s(&hello), "--json"]);
    std::fs::write(&own, &o.stdout).expect("report");
    let o = vmrr(&["timeline", s(&hello), "-o", s(&out), "--replay-report", s(&own)]);
    assert!(o.status.success(), "{}", stderr(&o));
}

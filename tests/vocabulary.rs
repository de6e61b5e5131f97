//! One vocabulary across commands: `--help` (the input budgets under a heading of their
//! own, the commands in the README's order, one sentence for `--json`, `--svg` the one word
//! for pictures), and output (a closed pipe ends quietly, counts in the singular for one,
//! progress on a terminal only).

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The heading the input budgets are listed under in every command's `--help`.
const BUDGETS: &str = "Input budgets (limits on hostile input, every command):";

/// The commands that print JSON with `--json` (`snapshot info` stands for `snapshot`).
const JSON_COMMANDS: &[&[&str]] = &[
    &["record"],
    &["replay"],
    &["merge"],
    &["pack"],
    &["inspect"],
    &["stats"],
    &["verify"],
    &["snapshot", "info"],
    &["guests"],
    &["profile"],
    &["bench"],
];

fn help(cmd: &[&str], flag: &str) -> String {
    let mut args = cmd.to_vec();
    args.push(flag);
    let o = vmrr(&args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    stdout(&o)
}

/// The line number of the first line that `pred` accepts.
fn line_of(text: &str, pred: impl Fn(&str) -> bool) -> Option<usize> {
    text.lines().position(pred)
}

#[test]
fn help_lists_the_input_budgets_apart_from_each_commands_own_options() {
    for cmd in std::iter::once(&[][..]).chain(JSON_COMMANDS.iter().copied()) {
        let text = help(cmd, "--help");
        let heading =
            line_of(&text, |l| l == BUDGETS).unwrap_or_else(|| panic!("{cmd:?}: no heading:\n{text}"));
        for budget in ["--max-mem-mib", "--max-extract-mib"] {
            let at = line_of(&text, |l| l.trim_start().starts_with(budget))
                .unwrap_or_else(|| panic!("{cmd:?}: {budget} missing:\n{text}"));
            assert!(at > heading, "{cmd:?}: {budget} is not under the budgets' heading:\n{text}");
        }
        if !cmd.is_empty() {
            // The command's own options come first, under their usual heading.
            let json = line_of(&text, |l| l.trim_start().starts_with("--json")).expect("--json");
            let own = line_of(&text, |l| l == "Options:").expect("Options:");
            assert!(own < json && json < heading, "{cmd:?}: --json is not among the command's own:\n{text}");
        }
    }
}

#[test]
fn help_lists_the_commands_in_the_readmes_order() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let mut table: Vec<String> = Vec::new();
    for l in readme.lines() {
        let Some(rest) = l.strip_prefix("| `vmrr ") else { continue };
        let name: String = rest.chars().take_while(|c| c.is_ascii_lowercase()).collect();
        if !name.is_empty() && !table.contains(&name) {
            table.push(name);
        }
    }
    assert!(table.len() > 10, "the README's command table: {table:?}");
    let text = help(&[], "--help");
    let listed: Vec<String> = text
        .lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|n| n != "help")
        .collect();
    assert_eq!(listed, table, "vmrr --help against the README's command table");
}

#[test]
fn json_is_described_in_one_sentence_everywhere() {
    for cmd in JSON_COMMANDS {
        let text = help(cmd, "-h");
        let lines: Vec<&str> = text.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.trim_start().starts_with("--json"))
            .unwrap_or_else(|| panic!("{cmd:?}: no --json:\n{text}"));
        // Beside the flag, or on the next line when clap lays the help out that way.
        let said = match lines[at].trim_start().trim_start_matches("--json").trim() {
            "" => lines.get(at + 1).map_or("", |l| l.trim()),
            beside => beside,
        };
        assert_eq!(said, "Print JSON on stdout instead of text", "{cmd:?}");
    }
}

#[test]
fn svg_is_the_word_for_pictures_and_plot_still_works() {
    for cmd in [&["profile"][..], &["bench"]] {
        let text = help(cmd, "--help");
        assert!(text.contains("--svg <DIR>"), "{cmd:?}:\n{text}");
        assert!(!text.contains("--plot"), "{cmd:?}: the old word is a hidden alias:\n{text}");
    }
    // `--plot` is still accepted (old commands work): it is `--svg` under another name.
    let o = vmrr(&["bench", "--plot"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("'--svg <DIR>'"), "{}", stderr(&o));
}

/// Runs `vmrr ARGS` with its stdout a pipe nobody reads (closed before it starts).
fn into_closed_pipe(args: &[&str]) -> std::process::Output {
    // The write end of a pipe whose only reader (`true`) has exited.
    let mut reader = Command::new("true").stdin(Stdio::piped()).spawn().expect("runs true");
    let writer = reader.stdin.take().expect("the pipe's write end");
    reader.wait().expect("true ends");
    let child = Command::new(env!("CARGO_BIN_EXE_vmrr"))
        .args(args)
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs vmrr");
    child.wait_with_output().expect("vmrr ends")
}

/// Ended as a closed pipe ends a Unix tool: quietly, by SIGPIPE (or with success).
fn ended_quietly(args: &[&str], o: &std::process::Output) {
    use std::os::unix::process::ExitStatusExt;
    assert!(
        o.status.success() || o.status.signal() == Some(libc::SIGPIPE),
        "{args:?}: {:?}, {}",
        o.status,
        stderr(o)
    );
    assert_eq!(stderr(o), "", "{args:?}: no message, no panic");
}

#[test]
fn a_closed_pipe_ends_every_reading_command_quietly() {
    for args in [&["guests"][..], &["guests", "--json"], &["ci", "github"]] {
        ended_quietly(args, &into_closed_pipe(args));
    }
    let Some((_d, trace)) = recorded("hello", &[]) else {
        return;
    };
    let t = s(&trace);
    for args in [
        &["inspect", t][..],
        &["inspect", t, "--json"],
        &["stats", t],
        &["stats", t, "--json"],
        &["verify", t],
        &["profile", t],
        &["replay", t],
        &["replay", t, "--json"],
    ] {
        ended_quietly(args, &into_closed_pipe(args));
    }
}

#[test]
fn one_of_a_thing_is_written_in_the_singular() {
    let Some((_d, trace)) = recorded("hello", &["--max-exits", "1"]) else {
        return;
    };
    let t = s(&trace);
    let line = |args: &[&str]| {
        let o = vmrr(args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        stdout(&o)
    };
    let profile = line(&["profile", t]);
    assert!(profile.starts_with(&format!("{t}: 1 exit (0 timed) on 1 vCPU;")), "{profile}");
    assert!(profile.contains("(1 of 1 key)"), "{profile}");
    let replay = line(&["replay", t]);
    assert!(replay.contains("completed after 1 exit from snapshot 0"), "{replay}");
    let bundle = PathBuf::from(format!("{t}b"));
    let pack = line(&["pack", t, "-o", s(&bundle)]);
    assert!(pack.contains(", 1 snapshot (trace "), "{pack}");
    let d = tmp();
    let o = vmrr(&[
        "record",
        "--guest",
        "hello",
        "--max-exits",
        "1",
        "--serial",
        "none",
        "-o",
        s(&at(&d, "r.vmrr")),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains(" after 1 exit (0 interrupts) in "), "{}", stderr(&o));
    assert!(stderr(&o).contains("; 1 snapshot in "), "{}", stderr(&o));
    // A checkpoint taken after one exit.
    let c = at(&d, "c.vmrr");
    let rec =
        vmrr(&["record", "--guest", "pio-storm", "--max-exits", "3", "--checkpoint-every", "1", "-o", s(&c)]);
    assert!(rec.status.success(), "{}", stderr(&rec));
    let info = line(&["snapshot", "info", s(&c.with_extension("vmrr.snapshots").join("snap-000001"))]);
    assert!(info.contains(", after 1 exit (record seq "), "{info}");
    for text in [&profile, &replay, &pack, &stderr(&o), &info] {
        assert!(!text.contains("(s)"), "{text}");
    }
}

#[test]
fn progress_shows_on_a_terminal_and_nowhere_else() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let out = at(&d, "p.vmrr");
    let args = ["record", "--guest", "pio-storm", "--max-seconds", "2", "--serial", "none", "-o", s(&out)];
    // stderr a pipe: the summary line and notes only.
    let o = vmrr(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(!err.contains('\r') && !err.contains("\x1b[") && !err.contains("recording ["), "{err:?}");
    assert!(err.lines().all(|l| l.starts_with("vmrr: ")), "{err:?}");
    // On a terminal (util-linux `script` gives the command one), the bar shows.
    let Ok(script) = which("script") else {
        println!("SKIPPED the terminal half: no `script` (util-linux) to give vmrr a terminal");
        return;
    };
    std::fs::remove_file(&out).unwrap();
    std::fs::remove_dir_all(vmrr_engine::snapshot::dir_for_trace(&out)).unwrap();
    let mut line = format!("'{}'", env!("CARGO_BIN_EXE_vmrr"));
    for a in args {
        line.push_str(&format!(" '{a}'"));
    }
    let o = Command::new(script).args(["-qec", &line, "/dev/null"]).output().expect("runs script");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("recording ["), "{}", stdout(&o));
}

fn which(name: &str) -> Result<PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file()).ok_or(())
}

//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use vmrr_engine::testing::require_kvm;
use vmrr_format::{Body, TraceReader};

/// Runs the `vmrr` binary.
pub fn vmrr(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmrr")).args(args).output().expect("runs vmrr")
}

/// `p` as `&str`.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A record, owned, for assertions.
#[derive(Debug, Clone)]
pub struct Rec {
    pub seq: u64,
    pub kind: &'static str,
    pub json: serde_json::Value,
    pub rip: Option<u64>,
}

/// Every record of a trace (panics on damage).
pub fn records(path: &Path) -> Vec<Rec> {
    let mut r = TraceReader::open(path).expect("trace opens");
    let mut v = Vec::new();
    while let Some(item) = r.next_record() {
        let rec = item.expect("trace intact");
        v.push(Rec {
            seq: rec.seq,
            kind: vmrr_format::kind::name(rec.body.kind()),
            json: vmrr_format::describe::record_json(&rec),
            rip: rec.regs.map(|r| r.rip),
        });
        let _ = Body::Hlt;
    }
    v
}

/// Exit records only.
pub fn exits(recs: &[Rec]) -> Vec<&Rec> {
    recs.iter().filter(|r| vmrr_format::kind::is_exit(kind_number(r.kind))).collect()
}

fn kind_number(name: &str) -> u16 {
    (0..=0xffffu16).find(|k| vmrr_format::kind::name(*k) == name).unwrap_or(0)
}

/// A temporary directory.
pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// Path inside `dir`.
pub fn at(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

/// Parses the `--json` summary printed by `vmrr record`.
pub fn summary(o: &Output) -> serde_json::Value {
    serde_json::from_str(stdout(o).lines().last().unwrap_or("{}")).expect("JSON summary")
}

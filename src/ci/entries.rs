//! A corpus's entries: the repros named on the command line and found in its
//! directories, each weighed by its recorded exits, and the corpus's identity.

use std::path::{Path, PathBuf};

use vmrr_format::bundle::{self, Budgets};

use crate::exit_code::CliError;

/// One repro of a corpus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its path, as found (the directory named on the command line, joined with its path
    /// below it): what reports name it by.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Exits it recorded (its weight when sharding); 0 when it cannot be read.
    pub exits: u64,
}

/// Whether `p` is a repro's file name (a trace or a bundle).
fn is_repro_name(p: &Path) -> bool {
    p.extension().is_some_and(|x| x == "vmrr" || x == "vmrrb")
}

/// Whether `dir` holds a corpus rather than one trace with its snapshots: any bundle, more
/// than one trace, or repros in subdirectories. (A directory holding exactly one `.vmrr`
/// trace is one replay, as before.)
pub fn is_corpus_dir(dir: &Path) -> bool {
    if !vmrr_format::input::is_dir(dir) {
        return false;
    }
    let mut found = Vec::new();
    walk(dir, &mut found, 0);
    // One trace directly inside `dir`, and nothing else: a trace's directory.
    let one_trace = matches!(found.as_slice(), [t] if t.parent() == Some(dir) && t.extension().is_some_and(|x| x == "vmrr"));
    !found.is_empty() && !one_trace
}

/// Directories below a corpus directory searched, at most.
const MAX_DEPTH: usize = 16;

/// Collects the repro files below `dir`, in name order: `*.vmrrb` and `*.vmrr`, not
/// inside a trace's `*.snapshots` directory, not hidden; symbolic links to directories are
/// not followed.
fn walk(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    let mut names: Vec<(PathBuf, std::fs::FileType)> =
        rd.filter_map(|e| e.ok()).filter_map(|e| Some((e.path(), e.file_type().ok()?))).collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    for (p, t) in names {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.starts_with('.') {
            continue;
        }
        if t.is_dir() {
            if !name.ends_with(".snapshots") && depth < MAX_DEPTH {
                walk(&p, out, depth + 1);
            }
        } else if is_repro_name(&p) {
            out.push(p);
        }
    }
}

/// The corpus the command line names, in name order, each entry once. A directory gives
/// the repros found below it; a file is an entry whatever its name (a file that is no
/// repro gets an error verdict when it runs).
///
/// # Errors
/// A path that does not exist (exit 2), or no repro at all.
pub fn discover(paths: &[PathBuf], budgets: &Budgets) -> Result<Vec<Entry>, CliError> {
    let mut files = Vec::new();
    for p in paths {
        if std::fs::symlink_metadata(p).is_err() {
            return Err(CliError::Usage(format!("{}: no such file or directory", p.display())));
        }
        if vmrr_format::input::is_dir(p) {
            walk(p, &mut files, 0);
        } else {
            files.push(p.clone());
        }
    }
    let mut seen = std::collections::HashSet::new();
    files.retain(|p| seen.insert(std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())));
    files.sort();
    if files.is_empty() {
        let named: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(CliError::Usage(format!("no repro (*.vmrrb, *.vmrr) in {}", named.join(", "))));
    }
    Ok(files
        .into_iter()
        .map(|path| {
            let size = std::fs::metadata(&path).map_or(0, |m| m.len());
            let exits = recorded_exits(&path, budgets).unwrap_or(0);
            Entry { path, size, exits }
        })
        .collect())
}

/// Exits a repro recorded, read cheaply: a bundle's manifest says (since bundle 1.1 of
/// this vmrr), else its trace entry's size stands in (a trace holds a few bytes per
/// exit); a trace's end-of-run record says, else its index's record count.
fn recorded_exits(path: &Path, budgets: &Budgets) -> Option<u64> {
    let (f, md) = vmrr_format::input::open_regular(path).ok()?;
    let mut magic = [0u8; 8];
    let is_bundle = md.len() >= 8
        && std::os::unix::fs::FileExt::read_exact_at(&f, &mut magic, 0).is_ok()
        && magic == bundle::MAGIC;
    drop(f);
    if is_bundle {
        let m = bundle::read_manifest(path, budgets).ok()?;
        return m.exits.or_else(|| {
            m.entries.iter().find(|e| e.name == bundle::TRACE_ENTRY).map(|e| e.size / BYTES_PER_EXIT)
        });
    }
    let mut r = vmrr_format::TraceReader::open(path).ok()?;
    let ix = r.index()?.clone();
    let last = ix.entries.last()?;
    r.seek_seq(last.first_seq).ok()?;
    let mut exits = None;
    while let Some(Ok(rec)) = r.next_record() {
        if let vmrr_format::Body::EndOfRun(e) = rec.body {
            exits = Some(e.exits);
        }
    }
    exits.or(Some(ix.record_count))
}

/// What a trace takes per exit, to weigh an older bundle by its trace's size.
const BYTES_PER_EXIT: u64 = 8;

/// FNV-1a, 64 bits: the corpus id (not a security boundary: it tells reports of one
/// corpus from another's).
fn fnv(bytes: &[u8], mut h: u64) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The corpus's identity: a hash of its entries' paths and sizes. Runners given the same
/// corpus and command line compute the same; `vmrr merge` refuses reports of another.
pub fn corpus_id(entries: &[Entry]) -> String {
    let mut h = 0xcbf2_9ce4_8422_2325;
    for e in entries {
        h = fnv(e.path.to_string_lossy().as_bytes(), h);
        h = fnv(&[0], h);
        h = fnv(&e.size.to_le_bytes(), h);
    }
    format!("{h:016x}")
}

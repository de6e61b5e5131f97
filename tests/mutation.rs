//! The stable-toolchain mutation pass CI runs over the fuzz entry points (`fuzz/` runs the
//! same functions under libFuzzer for as long as one likes): seeds from the golden and
//! hostile corpora, mutated deterministically, each result fed to the entry point. A panic,
//! an unbounded allocation (the test binary would abort) or a hang fails the test.
//! `VMRR_MUTATIONS` scales the number of cases.

use std::path::{Path, PathBuf};
use std::time::Instant;

use vmrr_format::bundle::Manifest;

mod common;
use common::Rng;

const INTERESTING: [u64; 10] = [0, 1, 7, 8, 0x7f, 0x80, 0xffff, 0x7fff_ffff, 0xffff_ffff, u64::MAX];

/// One random edit: bit flip, interesting value over 1/2/4/8 bytes, truncation, deletion,
/// duplication of a slice.
fn mutate(rng: &mut Rng, b: &mut Vec<u8>) {
    if b.is_empty() {
        b.push(0);
        return;
    }
    let at = rng.below(b.len());
    match rng.below(6) {
        0 => b[at] ^= 1 << rng.below(8),
        1 => {
            let width = [1, 2, 4, 8][rng.below(4)];
            let v = INTERESTING[rng.below(INTERESTING.len())].to_le_bytes();
            for (i, byte) in v.iter().take(width).enumerate() {
                if let Some(x) = b.get_mut(at + i) {
                    *x = *byte;
                }
            }
        }
        2 => b.truncate(at),
        3 => {
            let n = rng.below(64).min(b.len() - at);
            b.drain(at..at + n);
        }
        4 => {
            let n = rng.below(64).min(b.len() - at);
            let slice = b[at..at + n].to_vec();
            let to = rng.below(b.len());
            b.splice(to..to, slice);
        }
        _ => b[at] = u8::try_from(rng.below(256)).unwrap(),
    }
}

/// Valid traces of a gigabyte of records (`tests/hostile.rs` checks readers stream them):
/// every mutation would read all of it again, so they seed nothing here.
const TOO_LONG_TO_MUTATE: [&str; 2] = ["annotations-1gib.vmrr", "checkpoints-2m.vmrr"];

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return out };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p, ext));
        } else if p.file_name().is_some_and(|n| TOO_LONG_TO_MUTATE.iter().any(|t| n == *t)) {
            continue;
        } else if p.extension().is_some_and(|x| x == ext) || p.file_name().is_some_and(|n| n == ext) {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(rel)
}

fn scale(default: usize) -> usize {
    std::env::var("VMRR_MUTATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn run(name: &str, seeds: &[Vec<u8>], cases: usize, seed: u64, entry: impl Fn(&[u8])) {
    assert!(!seeds.is_empty(), "{name}: seeds");
    let t = Instant::now();
    let mut rng = Rng(seed);
    for _ in 0..cases {
        let mut b = seeds[rng.below(seeds.len())].clone();
        for _ in 0..=rng.below(4) {
            mutate(&mut rng, &mut b);
        }
        entry(&b);
    }
    eprintln!(
        "mutation: {name}: {cases} cases from {} seeds in {:.1} s",
        seeds.len(),
        t.elapsed().as_secs_f64()
    );
}

#[test]
fn trace_decoder() {
    let seeds: Vec<Vec<u8>> = files(&data(""), "vmrr").iter().map(|p| std::fs::read(p).unwrap()).collect();
    run("trace", &seeds, scale(20_000), 1, vmrr_format::fuzzing::read_trace);
    let records: Vec<Vec<u8>> = seeds.iter().filter_map(|s| s.get(120..).map(<[u8]>::to_vec)).collect();
    run("record", &records, scale(20_000), 2, vmrr_format::fuzzing::decode_record);
}

#[test]
fn snapshot_state_decoder() {
    let seeds: Vec<Vec<u8>> =
        files(&data("hostile/snapshot"), "state.bin").iter().map(|p| std::fs::read(p).unwrap()).collect();
    // fuzz_state also retries with the CRC fixed, so the mutations reach bincode and the
    // validation behind it.
    run("snapshot state", &seeds, scale(5_000), 3, vmrr_engine::snapshot::fuzz_state);
}

/// The bundle entry point as `vmrr replay` reads a bundle: the format's reader, then the
/// engine's snapshot chain loader on every snapshot it names.
fn read_bundle(data: &[u8]) {
    vmrr_format::fuzzing::read_bundle(data, &|dir| {
        let _ = vmrr_engine::snapshot::load_chain(dir, 64 << 20);
    });
}

#[test]
fn bundle_reader() {
    let seeds: Vec<Vec<u8>> =
        files(&data("hostile/bundle"), "vmrrb").iter().map(|p| std::fs::read(p).unwrap()).collect();
    run("bundle bytes", &seeds, scale(300), 4, read_bundle);
    // Structure-aware: edit one manifest field of the valid bundle, re-lay it out with
    // valid checksums, so every case gets past the framing.
    let valid = std::fs::read(data("hostile/bundle/valid.vmrrb")).unwrap();
    let mlen = usize::try_from(u64::from_le_bytes(valid[16..24].try_into().unwrap())).unwrap();
    let m0: Manifest = serde_json::from_slice(&valid[32..32 + mlen]).unwrap();
    let payload = &valid[32 + mlen..];
    let names = [
        "trace.vmrr",
        "snapshots/snap-000000/state.bin",
        "snapshots/snap-000000/mem-0.raw",
        "snapshots/snap-000001/mem-0.raw",
        "snapshots/snap-0000000000000000000001/state.bin",
        "snapshots/snap-000000/mem-999.raw",
        "snapshots//state.bin",
        "snapshots/snap-000000/",
    ];
    let mut rng = Rng(5);
    let t = Instant::now();
    let cases = scale(300);
    for _ in 0..cases {
        let mut m = m0.clone();
        let i = rng.below(m.entries.len());
        let v = INTERESTING[rng.below(INTERESTING.len())];
        let e = &mut m.entries[i];
        match rng.below(6) {
            0 => e.name = names[rng.below(names.len())].into(),
            1 => e.size = v,
            2 => e.stored = e.stored.saturating_add(v % 64).saturating_sub(v % 32),
            3 => e.offset = e.offset.wrapping_add(v % 4096),
            4 => m.snapshots = vec![v],
            _ => {
                let j = rng.below(m.entries.len());
                m.entries.swap(i, j);
            }
        }
        // Re-lay: offsets shift with the manifest's length, except the one edited.
        let json = serde_json::to_vec(&m).unwrap();
        let delta = i64::try_from(json.len()).unwrap() - i64::try_from(mlen).unwrap();
        let mut m2 = m.clone();
        for e in &mut m2.entries {
            e.offset = e.offset.wrapping_add_signed(delta);
        }
        let json = serde_json::to_vec(&m2).unwrap();
        let mut b = valid[..32].to_vec();
        b[16..24].copy_from_slice(&(json.len() as u64).to_le_bytes());
        b.extend_from_slice(&json);
        b.extend_from_slice(payload);
        vmrr_format::fuzzing::fix_bundle_checksums(&mut b);
        read_bundle(&b);
    }
    eprintln!("mutation: bundle manifest: {cases} cases in {:.1} s", t.elapsed().as_secs_f64());
}

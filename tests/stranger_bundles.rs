//! Bundles from strangers: replay extracts only what the manifest and its snapshots
//! reference (anything else is damaged input, exit 3, naming the entry), and
//! leaves runs of zeros as holes; `pack X -o X` is refused before X is read.

mod common;
use common::*;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use vmrr_format::bundle::{Budgets, Entry, Manifest, Storage};

/// A bundle of this vmrr's bundle format, entries filled in ([`bundle_bytes`]).
fn bundle(m: Manifest, payloads: &[Vec<u8>]) -> Vec<u8> {
    bundle_bytes(vmrr_format::bundle::MAJOR, vmrr_format::bundle::MINOR, m, payloads, true)
}

/// A recording of `hello` packed into `DIR/hello.vmrrb`: its manifest and each entry's
/// stored bytes.
fn packed(d: &tempfile::TempDir) -> (Manifest, Vec<Vec<u8>>) {
    let trace = record_guest(d, "hello", &[]);
    let b = at(d, "hello.vmrrb");
    let o = vmrr(&["pack", s(&trace), "-o", s(&b)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = vmrr_format::bundle::read_manifest(&b, &Budgets::default()).unwrap();
    let bytes = std::fs::read(&b).unwrap();
    let payloads = m
        .entries
        .iter()
        .map(|e| {
            bytes[usize::try_from(e.offset).unwrap()..usize::try_from(e.offset + e.stored).unwrap()].to_vec()
        })
        .collect();
    (m, payloads)
}

/// Disk blocks under `dir`, in bytes.
fn disk_use(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let md = e.metadata().unwrap();
        total += if md.is_dir() { disk_use(&e.path()) } else { md.blocks() * 512 };
    }
    total
}

const GIB: u64 = 1 << 30;

/// Two 1 GiB memory entries of zeros that the snapshot's state does not name (the issue's
/// bundle had four of 2 GiB): replay refuses the bundle naming the first, exit 3, and
/// nothing of it reaches the disk.
#[test]
fn a_memory_entry_no_snapshot_references_is_refused() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let (mut m, mut payloads) = packed(&d);
    for slot in [3, 4] {
        let name = format!("snapshots/snap-000000/mem-{slot}.raw");
        m.entries.push(Entry { name, size: GIB, storage: Storage::Sparse, offset: 0, stored: 0, crc32c: 0 });
        payloads.push(zeros_extent(GIB));
    }
    let hostile = at(&d, "stranger.vmrrb");
    std::fs::write(&hostile, bundle(m, &payloads)).unwrap();
    assert!(std::fs::metadata(&hostile).unwrap().len() < 16 << 20, "a small file");

    let o = vmrr(&["replay", s(&hostile)]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("snapshots/snap-000000/mem-3.raw"), "names the entry: {}", stderr(&o));

    // The library call replay makes: refused before the entry is written.
    let out = at(&d, "unpacked");
    std::fs::create_dir(&out).unwrap();
    let e = vmrr_format::bundle::unpack(
        &hostile,
        &out,
        &Budgets::default(),
        Some(&vmrr_engine::snapshot::memory_files),
    )
    .unwrap_err();
    assert!(e.to_string().contains("mem-3.raw") && e.to_string().contains("nothing uses it"), "{e}");
    assert!(!out.join("snapshots/snap-000000/mem-3.raw").exists());
    assert!(disk_use(&out) < 64 << 20, "{} bytes on disk", disk_use(&out));
}

/// A memory entry stored densely (its zero pages written out as data, as a stranger's
/// packer may): extracted with its zeros as holes, and the bundle replays.
#[test]
fn zeros_are_extracted_as_holes() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let (mut m, mut payloads) = packed(&d);
    let mem = m.entries.iter().position(|e| e.name == "snapshots/snap-000000/mem-0.raw").unwrap();
    let size = m.entries[mem].size;
    // The slot's real bytes, unpacked once, then stored as one extent over the whole slot.
    let plain = at(&d, "plain");
    std::fs::create_dir(&plain).unwrap();
    vmrr_format::bundle::unpack(&at(&d, "hello.vmrrb"), &plain, &Budgets::default(), None).unwrap();
    let bytes = std::fs::read(plain.join("snapshots/snap-000000/mem-0.raw")).unwrap();
    assert_eq!(bytes.len() as u64, size);
    let mut p = 1u64.to_le_bytes().to_vec();
    p.extend_from_slice(&0u64.to_le_bytes());
    p.extend_from_slice(&size.to_le_bytes());
    p.extend(zstd::bulk::compress(&bytes, 3).unwrap());
    payloads[mem] = p;
    m.entries[mem].storage = Storage::Sparse;
    let dense = at(&d, "dense.vmrrb");
    std::fs::write(&dense, bundle(m, &payloads)).unwrap();

    let out = at(&d, "unpacked");
    std::fs::create_dir(&out).unwrap();
    let u = vmrr_format::bundle::unpack(
        &dense,
        &out,
        &Budgets::default(),
        Some(&vmrr_engine::snapshot::memory_files),
    )
    .unwrap();
    let file = out.join("snapshots/snap-000000/mem-0.raw");
    assert_eq!(std::fs::read(&file).unwrap(), bytes, "the same bytes");
    let on_disk = std::fs::metadata(&file).unwrap().blocks() * 512;
    let nonzero = bytes.chunks(4096).filter(|p| p.iter().any(|b| *b != 0)).count() as u64 * 4096;
    assert!(
        on_disk <= nonzero + (1 << 20),
        "{size} bytes of slot, {nonzero} of them not zero, {on_disk} on disk (written {})",
        u.written
    );
    let (code, v) = replay_json(&dense, &[]);
    assert_eq!(code, Some(0), "{v}");
}

/// `pack X -o X` is a usage error before X is read, even when X's snapshots are missing
/// (reading them first made it exit 3 for the missing snapshot); X is unchanged.
#[test]
fn packing_a_trace_over_itself_is_refused_before_reading_it() {
    let Some((d, trace)) = recorded("hello", &[]) else { return };
    std::fs::remove_dir_all(vmrr_format::layout::snapshots_of(&trace)).unwrap();
    let before = std::fs::read(&trace).unwrap();
    for extra in [&[][..], &["--force"][..]] {
        let mut args = vec!["pack", s(&trace), "-o", s(&trace)];
        args.extend_from_slice(extra);
        let o = vmrr(&args);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("also an input"), "{}", stderr(&o));
    }
    assert_eq!(std::fs::read(&trace).unwrap(), before);
    drop(d);
}

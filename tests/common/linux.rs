//! Debian's own Linux kernel and a busybox initramfs for the tests that boot it
//! (`tests/linux.rs`, `tests/gdb_threads.rs`): found or built, or skipped with a reason
//! (a failure under `VMRR_REQUIRE_KVM=1`, where `.ci/run` installs them).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::{at, s, vmrr};

/// What the initramfs's `/init` prints.
pub const MARKER: &str = "vmrr-linux-test: init reached";

pub fn strict() -> bool {
    std::env::var("VMRR_REQUIRE_KVM").as_deref() == Ok("1")
}

/// Skips (or, under CI, fails) with `why`.
pub fn missing(why: &str) -> Option<PathBuf> {
    assert!(!strict(), "VMRR_REQUIRE_KVM=1 but {why} (.ci/run installs it)");
    eprintln!("skipped: {why}");
    None
}

/// The newest `/boot/vmlinuz-*`.
pub fn kernel() -> Option<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir("/boot")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("vmlinuz-")))
        .collect();
    v.sort();
    match v.pop() {
        Some(k) => Some(k),
        None => missing("no /boot/vmlinuz-* (apt-get install linux-image-cloud-amd64)"),
    }
}

/// The real `System.map` of `kernel` (from its -dbg package), where `.ci/run` puts it.
pub fn system_map(kernel: &Path) -> Option<PathBuf> {
    let version = kernel.file_name()?.to_str()?.strip_prefix("vmlinuz-")?;
    let p = PathBuf::from(format!("/usr/lib/debug/boot/System.map-{version}"));
    if p.exists() {
        Some(p)
    } else {
        missing(&format!("{} is missing (its kernel's -dbg package holds it)", p.display()))
    }
}

/// An initramfs: busybox and an `/init` that prints [`MARKER`] and powers off.
pub fn initramfs(dir: &Path) -> Option<PathBuf> {
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        return missing("no /bin/busybox (apt-get install busybox-static)");
    }
    if Command::new("cpio").arg("--version").output().is_err() {
        return missing("no cpio (apt-get install cpio)");
    }
    let root = dir.join("initramfs");
    std::fs::create_dir_all(root.join("bin")).expect("initramfs dirs");
    std::fs::copy(busybox, root.join("bin/busybox")).expect("busybox copied");
    let init = format!("#!/bin/busybox sh\n/bin/busybox echo \"{MARKER}\"\n/bin/busybox poweroff -f\n");
    std::fs::write(root.join("init"), init).expect("init written");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("init"), std::fs::Permissions::from_mode(0o755)).expect("init mode");
    let out = dir.join("initrd.cpio");
    let list = "init\nbin\nbin/busybox\n";
    let mut cpio = Command::new("cpio")
        .args(["-o", "-H", "newc", "--quiet"])
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&out).expect("initrd file"))
        .spawn()
        .expect("cpio runs");
    {
        use std::io::Write;
        cpio.stdin.take().expect("stdin").write_all(list.as_bytes()).expect("file list");
    }
    assert!(cpio.wait().expect("cpio ends").success(), "cpio failed");
    Some(out)
}

/// Records `kernel` with `initrd` on `vcpus` vCPUs (128 MiB, at most 200 s, `--json`) into
/// `d/boot{vcpus}.vmrr`: the output and the serial console.
pub fn boot(d: &tempfile::TempDir, kernel: &Path, initrd: &Path, vcpus: &str) -> (Output, String) {
    let trace = at(d, &format!("boot{vcpus}.vmrr"));
    let serial = at(d, &format!("boot{vcpus}.serial"));
    let o = vmrr(&[
        "record",
        "--kernel",
        s(kernel),
        "--initrd",
        s(initrd),
        "--vcpus",
        vcpus,
        "--mem-mib",
        "128",
        "--max-seconds",
        "200",
        "-o",
        s(&trace),
        "--serial",
        s(&serial),
        "--json",
    ]);
    (o, std::fs::read_to_string(&serial).unwrap_or_default())
}

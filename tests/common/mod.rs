//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

pub mod linux;
pub mod schema;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[allow(unused_imports)] // not every test binary runs KVM
pub use vmrr_engine::testing::require_kvm;
use vmrr_format::{Body, Io, TraceReader, TraceWriter, WriterOptions};

/// Records built-in `guest` into `DIR/GUEST.vmrr` (no console), asserting the run ended
/// (0) or ended in the guest's fatal exit (5).
pub fn record_guest(dir: &tempfile::TempDir, guest: &str, extra: &[&str]) -> PathBuf {
    let out = at(dir, &format!("{guest}.vmrr"));
    let mut args = vec!["record", "--guest", guest, "-o", s(&out), "--serial", "none"];
    args.extend_from_slice(extra);
    let o = vmrr(&args);
    assert!(matches!(o.status.code(), Some(0 | 5)), "{guest}: {}", stderr(&o));
    out
}

/// A fresh directory holding a recording of built-in `guest` ([`record_guest`]), when KVM
/// is here; `None` once [`require_kvm`] said why it is not.
pub fn recorded(guest: &str, extra: &[&str]) -> Option<(tempfile::TempDir, PathBuf)> {
    if !require_kvm() {
        return None;
    }
    let d = tmp();
    let trace = record_guest(&d, guest, extra);
    Some((d, trace))
}

/// `vmrr replay SRC --json EXTRA...`: its exit code and its JSON report.
pub fn replay_json(src: &Path, extra: &[&str]) -> (Option<i32>, serde_json::Value) {
    let mut args = vec!["replay", s(src), "--json"];
    args.extend_from_slice(extra);
    let o = vmrr(&args);
    let v =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {} / {}", stdout(&o), stderr(&o)));
    (o.status.code(), v)
}

/// `--image IMG --load-addr AT --entry AT --mode MODE`: a flat image loaded and entered at
/// `at`, in `mode` (`real` or `long`).
pub fn image_args<'a>(img: &'a Path, at: &'a str, mode: &'a str) -> [&'a str; 8] {
    ["--image", s(img), "--load-addr", at, "--entry", at, "--mode", mode]
}

/// Debian's SeaBIOS (`.ci/run` installs it).
pub fn seabios() -> &'static Path {
    let bios = Path::new("/usr/share/seabios/bios.bin");
    assert!(bios.exists(), "SeaBIOS is installed by .ci/run (apt-get install seabios)");
    bios
}

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

/// What a measured run of `vmrr` did.
pub struct Measured {
    /// Exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// stdout.
    pub stdout: Vec<u8>,
    /// stderr as text.
    pub stderr: String,
    /// Peak resident set of the child, KiB (`ru_maxrss` from `wait4`).
    pub max_rss_kib: u64,
    /// What the child read and wrote, as the kernel counted it (`/proc/PID/io`, read when
    /// it had exited and before it was reaped): the work done, whatever the time taken.
    pub io: ChildIo,
}

/// A process's read and write system calls and the bytes they moved (`rchar`, `syscr`,
/// `wchar`, `syscw` of `/proc/PID/io`; files, pipes and sockets alike, page cache
/// included, memory mappings not).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChildIo {
    /// Bytes read.
    pub read_bytes: u64,
    /// Read calls.
    pub read_calls: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Write calls.
    pub write_calls: u64,
}

impl ChildIo {
    fn of(pid: libc::pid_t) -> Self {
        let text =
            std::fs::read_to_string(format!("/proc/{pid}/io")).expect("/proc/PID/io of the exited child");
        let field = |name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(": ")?.trim().parse().ok())
                .unwrap_or_else(|| panic!("{name} in /proc/{pid}/io: {text}"))
        };
        ChildIo {
            read_bytes: field("rchar"),
            read_calls: field("syscr"),
            write_bytes: field("wchar"),
            write_calls: field("syscw"),
        }
    }
}

/// A running `vmrr` whose own peak memory is measured when it ends.
pub struct MeasuredChild {
    pid: libc::pid_t,
    out: std::thread::JoinHandle<Vec<u8>>,
    err: std::thread::JoinHandle<Vec<u8>>,
}

impl MeasuredChild {
    /// Starts `vmrr args`.
    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_with(args, &[])
    }

    /// Starts `vmrr args` with extra environment variables.
    pub fn spawn_with(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_full(args, env, true)
    }

    /// Starts `vmrr args` with its standard output thrown away (a command that prints a
    /// lot: only its exit, stderr and memory matter).
    pub fn spawn_quiet(args: &[&str]) -> Self {
        Self::spawn_full(args, &[], false)
    }

    #[allow(clippy::zombie_processes)] // reaped by `wait4` in `wait`, which std cannot see
    fn spawn_full(args: &[&str], env: &[(&str, &str)], keep_stdout: bool) -> Self {
        use std::io::Read;
        use std::process::Stdio;
        // The child starts as a vfork of this test process, whose memory high-water mark
        // its exec records into the child's peak: reset ours to what we hold now (the
        // kernel's "5" to clear_refs), so the figure is vmrr's own, not this harness's
        // earlier peaks.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let mut child = Command::new(env!("CARGO_BIN_EXE_vmrr"))
            .args(args)
            .envs(env.iter().copied())
            .stdout(if keep_stdout { Stdio::piped() } else { Stdio::null() })
            .stderr(Stdio::piped())
            .spawn()
            .expect("runs vmrr");
        let out = child.stdout.take();
        let mut err = child.stderr.take().expect("stderr");
        let out = std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut out) = out {
                let _ = out.read_to_end(&mut v);
            }
            v
        });
        let err = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = err.read_to_end(&mut v);
            v
        });
        MeasuredChild { pid: libc::pid_t::try_from(child.id()).expect("pid"), out, err }
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        u32::try_from(self.pid).expect("pid")
    }

    /// Sends `signal` to the child.
    pub fn signal(&self, signal: i32) {
        // SAFETY: `pid` is our own unreaped child, so it names no other process.
        unsafe {
            libc::kill(self.pid, signal);
        }
    }

    /// Waits for the child: `wait4` gives the rusage of exactly this child, unlike
    /// `RUSAGE_CHILDREN`, which mixes in every other test's children. (The child's peak
    /// includes this process's own peak when it was started: spawning shares the address
    /// space until `exec`. Tests that measure keep their own memory small.)
    pub fn wait(self) -> Measured {
        // Wait for the exit without reaping, so that its counters can still be read.
        // SAFETY: all-zero is a valid `siginfo_t`.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: `pid` is our own unreaped child; `info` is valid for writes. WNOWAIT
            // leaves it to `wait4` below.
            let r = unsafe {
                libc::waitid(
                    libc::P_PID,
                    libc::id_t::try_from(self.pid).expect("pid"),
                    &mut info,
                    libc::WEXITED | libc::WNOWAIT,
                )
            };
            if r == 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "waitid: {e}");
        }
        let io = ChildIo::of(self.pid);
        let mut status = 0;
        // SAFETY: all-zero is a valid `rusage`.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `pid` is our own unreaped child (std's `Child` is never waited on);
        // `status` and `ru` are valid for writes.
        let r = unsafe { libc::wait4(self.pid, &mut status, 0, &mut ru) };
        assert_eq!(r, self.pid, "wait4: {}", std::io::Error::last_os_error());
        Measured {
            code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
            signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
            stdout: self.out.join().expect("stdout reader"),
            stderr: String::from_utf8_lossy(&self.err.join().expect("stderr reader")).into_owned(),
            max_rss_kib: u64::try_from(ru.ru_maxrss).unwrap_or(0),
            io,
        }
    }
}

/// Runs `vmrr` to the end and reports its own peak memory.
pub fn vmrr_measured(args: &[&str]) -> Measured {
    MeasuredChild::spawn(args).wait()
}

/// Resident memory of a running process, KiB (`VmRSS`), or `None` once it has gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Free bytes on the filesystem holding `p`.
pub fn free_bytes(p: &Path) -> u64 {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else { return 0 };
    // SAFETY: all-zero is a valid `statvfs`.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` is valid for writes.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    st.f_bavail.saturating_mul(st.f_frsize)
}

/// Writes `code` as a flat real-mode image named `name` in `dir` and returns the
/// `vmrr record` arguments that load and start it at 0x7c00.
pub fn real_mode_image(dir: &tempfile::TempDir, name: &str, code: &[u8]) -> Vec<String> {
    let image = at(dir, name);
    std::fs::write(&image, code).expect("image");
    ["--image", s(&image), "--load-addr", "0x7c00", "--entry", "0x7c00", "--mode", "real"]
        .map(String::from)
        .to_vec()
}

/// `vmrr record` followed by `image` (from [`real_mode_image`]) and `rest`.
pub fn record_args<'a>(image: &'a [String], rest: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["record"];
    v.extend(image.iter().map(String::as_str));
    v.extend_from_slice(rest);
    v
}

/// A deterministic generator (xorshift64*): a failure reproduces from its iteration.
pub struct Rng(pub u64);

impl Rng {
    /// The next value.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n.max(1)).expect("usize fits u64")).expect("below n")
    }
}

/// Copies `src` into `dst` applying `edit` to each record (re-encoded and re-checksummed by
/// the writer, so it reads cleanly), keeping the trace id so its snapshots still match.
pub fn rewrite(src: &Path, dst: &Path, mut edit: impl FnMut(u64, &mut Vec<u8>) -> bool) {
    let mut r = TraceReader::open(src).unwrap();
    let opts = WriterOptions {
        trace_id: Some(r.header().trace_id),
        guest_writes: r.header().has_guest_writes(),
        ..Default::default()
    };
    let mut w = TraceWriter::create(dst, opts).unwrap();
    while let Some(item) = r.next_record() {
        let rec = item.unwrap();
        match rec.body {
            Body::Io(io) => {
                let mut data = io.data.to_vec();
                if edit(rec.seq, &mut data) {
                    let mut copy = rec;
                    copy.body = Body::Io(Io { data: &data, ..io });
                    w.append_record(&copy).unwrap();
                    continue;
                }
                w.append_record(&rec).unwrap();
            }
            _ => w.append_record(&rec).unwrap(),
        }
    }
    w.finish().unwrap();
    let snaps = vmrr_engine::snapshot::dir_for_trace(src);
    if snaps.is_dir() {
        let to = vmrr_engine::snapshot::dir_for_trace(dst);
        copy_dir(&snaps, &to);
    }
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.path().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// A bundle file written by hand: header (format `major`.`minor`), manifest, payloads.
/// With `fix_offsets`, each entry's offset, stored size and CRC32C are filled in from
/// `payloads` (repeated until the manifest's own length settles); without it the manifest
/// is written as given (a bundle whose entries lie).
pub fn bundle_bytes(
    major: u16,
    minor: u16,
    mut m: vmrr_format::bundle::Manifest,
    payloads: &[Vec<u8>],
    fix_offsets: bool,
) -> Vec<u8> {
    let mut json = serde_json::to_vec(&m).unwrap();
    if fix_offsets {
        for _ in 0..4 {
            let mut off = 32 + json.len() as u64;
            for (e, p) in m.entries.iter_mut().zip(payloads) {
                e.offset = off;
                e.stored = p.len() as u64;
                e.crc32c = crc32c::crc32c(p);
                off += p.len() as u64;
            }
            json = serde_json::to_vec(&m).unwrap();
        }
    }
    let mut out = Vec::new();
    out.extend_from_slice(&vmrr_format::bundle::MAGIC);
    out.extend_from_slice(&major.to_le_bytes());
    out.extend_from_slice(&minor.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&json).to_le_bytes());
    let c = crc32c::crc32c(&out);
    out.extend_from_slice(&c.to_le_bytes());
    out.extend_from_slice(&json);
    for p in payloads {
        out.extend_from_slice(p);
    }
    out
}

/// One zstd frame of `len` zero bytes (its size declared), compressed as it is produced:
/// a payload that claims far more than it takes.
pub fn zeros_frame(len: u64) -> Vec<u8> {
    use std::io::Write;
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    enc.set_pledged_src_size(Some(len)).unwrap();
    let block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(block.len() as u64)).unwrap();
        enc.write_all(&block[..n]).unwrap();
        left -= n as u64;
    }
    enc.finish().unwrap()
}

/// A sparse memory-file payload (as a bundle stores it) of one extent `[0, len)` of
/// zeros: the extent table, then [`zeros_frame`].
pub fn zeros_extent(len: u64) -> Vec<u8> {
    let mut p = 1u64.to_le_bytes().to_vec();
    p.extend_from_slice(&0u64.to_le_bytes());
    p.extend_from_slice(&len.to_le_bytes());
    p.extend(zeros_frame(len));
    p
}

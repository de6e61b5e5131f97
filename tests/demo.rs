//! `vmrr demo`, the README's main command, runs in seconds and reproduces the failure.

mod common;
use common::*;

#[test]
fn demo_reproduces_the_failure_in_seconds() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let t = std::time::Instant::now();
    let o = vmrr(&["demo", "--dir", s(d.path())]);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    assert!(t.elapsed() < std::time::Duration::from_secs(30));
    let out = stdout(&o);
    assert!(
        out.contains(
            "failure reproduced from the start, from the last checkpoint and from the failure point"
        ),
        "{out}"
    );
    assert!(out.contains("popcnt rax,[rdi]"));
    assert!(at(&d, "repro.vmrr").exists() && at(&d, "demo.vmrr").exists());
}

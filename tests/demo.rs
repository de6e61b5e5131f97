//! `vmrr demo`, the README's main command, reproduces the failure three ways (its time is
//! the bench's business, not a test's).

mod common;
use common::*;

#[test]
fn demo_reproduces_the_failure_from_the_start_the_last_checkpoint_and_the_failure_point() {
    if !require_kvm() {
        return;
    }
    let d = tmp();
    let o = vmrr(&["demo", "--dir", s(d.path())]);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains(
            "failure reproduced from the start, from the last checkpoint and from the failure point"
        ),
        "{out}"
    );
    assert!(out.contains("popcnt rax,[rdi]"));
    assert!(at(&d, "repro.vmrrb").exists() && at(&d, "demo.vmrr").exists());
}

//! The one helper every KVM-backed test uses.

/// Whether a KVM test may run.
///
/// Returns `true` when `/dev/kvm` opens. Otherwise prints why and returns `false` (the
/// test then returns early, skipped), unless `VMRR_REQUIRE_KVM=1`, in which case it panics
/// so a broken KVM path can never pass silently. CI sets `VMRR_REQUIRE_KVM=1` wherever
/// `/dev/kvm` exists.
///
/// ```
/// if !vmrr_engine::testing::require_kvm() {
///     return;
/// }
/// ```
pub fn require_kvm() -> bool {
    match std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(_) => true,
        Err(e) => {
            assert!(
                std::env::var("VMRR_REQUIRE_KVM").as_deref() != Ok("1"),
                "VMRR_REQUIRE_KVM=1 but /dev/kvm cannot be opened: {e}"
            );
            eprintln!("skipped: /dev/kvm cannot be opened ({e}); set VMRR_REQUIRE_KVM=1 to fail instead");
            false
        }
    }
}

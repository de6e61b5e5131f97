//! Validating what vmrr writes for CI against published schemas (`tests/ci/validate.py`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The Python that validates against published schemas (`.ci/run` installs it), or `None`
/// after saying why (a failure when `VMRR_REQUIRE_SCHEMAS=1`).
pub fn schema_python() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("VMRR_SCHEMA_PYTHON").map(PathBuf::from),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("target/schema-venv/bin/python")),
    ];
    for p in candidates.into_iter().flatten() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ci/validate.py");
        let ok = Command::new(&p).arg(&script).arg("check").output().is_ok_and(|o| o.status.success());
        if ok {
            return Some(p);
        }
    }
    let why = "no Python with xmlschema, kubernetes-validate, check-jsonschema and sphinx-test-reports 1.4.0 (.ci/run installs them into target/schema-venv)";
    assert!(std::env::var("VMRR_REQUIRE_SCHEMAS").as_deref() != Ok("1"), "{why}");
    eprintln!("skipped: {why}");
    None
}

/// Runs `tests/ci/validate.py KIND FILE`, asserting it passes.
pub fn validate(py: &Path, kind: &str, file: &Path) {
    let o = run(py, kind, file);
    assert!(
        o.status.success(),
        "{kind} {} does not validate:\n{}{}\n{}",
        file.display(),
        stdout(&o),
        stderr(&o),
        std::fs::read_to_string(file).unwrap_or_default()
    );
}

fn run(py: &Path, kind: &str, file: &Path) -> std::process::Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ci/validate.py");
    Command::new(py).arg(&script).arg(kind).arg(file).output().expect("runs python")
}

/// Whether `file` validates as `kind`.
pub fn passes(py: &Path, kind: &str, file: &Path) -> bool {
    run(py, kind, file).status.success()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

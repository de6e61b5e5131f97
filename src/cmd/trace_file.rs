//! A trace argument of `inspect`, `stats`, `profile`, `timeline` and `verify`: a trace
//! file, or a bundle (`.vmrrb`), whose trace entry alone is extracted into a private
//! temporary directory (removed when done, or when a signal stops vmrr) and read under
//! the name `BUNDLE, entry trace.vmrr`. No KVM is needed for any of it.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use vmrr_format::TraceReader;
use vmrr_format::bundle::{self, Budgets};
use vmrr_format::scratch::Scratch;

use crate::exit_code::CliError;

static BUDGETS: OnceLock<Budgets> = OnceLock::new();

/// Sets the extraction budgets (`--max-mem-mib`, `--max-extract-mib`) bundles are read
/// within; the defaults until then.
pub fn set_budgets(b: Budgets) {
    let _ = BUDGETS.set(b);
}

/// The extraction budgets.
pub fn budgets() -> Budgets {
    BUDGETS.get().copied().unwrap_or_default()
}

/// Whether `path` starts with a bundle's magic (a file that cannot be read is not one:
/// its reader reports why).
pub fn is_bundle(path: &Path) -> bool {
    let Ok((f, md)) = vmrr_format::input::open_regular(path) else { return false };
    let mut magic = [0u8; 8];
    md.len() >= 8 && f.read_exact_at(&mut magic, 0).is_ok() && magic == bundle::MAGIC
}

/// A new private directory to extract a bundle into.
pub fn scratch_dir() -> Result<Scratch, CliError> {
    let tmp = std::env::temp_dir();
    Scratch::dir_in(&tmp, "vmrr-bundle-").map_err(|source| CliError::Output {
        context: format!("creating a directory to unpack into in {}", tmp.display()),
        source,
    })
}

/// A trace to read: the file itself, or a bundle's trace entry extracted.
pub struct TraceFile {
    path: PathBuf,
    name: String,
    _extracted: Option<Scratch>,
}

impl TraceFile {
    /// `file`, or its trace entry when it is a bundle.
    ///
    /// # Errors
    /// A damaged or hostile bundle (exit 3), or the temporary directory.
    pub fn open(file: &Path) -> Result<TraceFile, CliError> {
        if !is_bundle(file) {
            return Ok(TraceFile {
                path: file.to_path_buf(),
                name: file.display().to_string(),
                _extracted: None,
            });
        }
        let dir = scratch_dir()?;
        let path = bundle::unpack_trace(file, dir.path(), &budgets()).map_err(super::bundle_err)?;
        Ok(TraceFile {
            path,
            name: format!("{}, entry {}", file.display(), bundle::TRACE_ENTRY),
            _extracted: Some(dir),
        })
    }

    /// A reader of it, naming it as the user named it.
    ///
    /// # Errors
    /// The trace cannot be opened.
    pub fn reader(&self) -> Result<TraceReader, CliError> {
        Ok(TraceReader::open_as(&self.path, self.name.clone())?)
    }
}

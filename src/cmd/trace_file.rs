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

/// Refuses a directory where one trace is asked for: a usage error (exit 2) that lists
/// the traces and bundles it holds (its own entries, not its subdirectories), so the user
/// can name one.
///
/// # Errors
/// `path` is a directory.
pub fn not_a_directory(path: &Path) -> Result<(), CliError> {
    if !path.is_dir() {
        return Ok(());
    }
    let mut held: Vec<String> = std::fs::read_dir(path)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.ends_with(".vmrr") || n.ends_with(".vmrrb"))
                .collect()
        })
        .unwrap_or_default();
    held.sort();
    const SHOWN: usize = 8;
    let named = match held.len() {
        0 => "no trace or bundle".to_string(),
        n => {
            let list = held.iter().take(SHOWN).map(String::as_str).collect::<Vec<_>>().join(", ");
            let more = if n > SHOWN { format!(", and {} more", n - SHOWN) } else { String::new() };
            let what =
                if n == 1 { "1 trace or bundle".to_string() } else { format!("{n} traces or bundles") };
            format!("{what} ({list}{more})")
        }
    };
    Err(CliError::Usage(format!(
        "{} is a directory holding {named}: name one trace or bundle",
        path.display()
    )))
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
        not_a_directory(file)?;
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

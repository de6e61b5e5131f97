//! What `vmrr replay SRC` accepts: a trace (with its `.snapshots` directory beside it), a
//! directory holding one, or a bundle (extracted to a private temporary directory first).

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::ReplayError;

/// A trace and its snapshots, ready to replay.
#[derive(Debug)]
pub struct Source {
    /// The trace.
    pub trace: PathBuf,
    /// Its snapshot directory, when there is one.
    pub snapshots: Option<PathBuf>,
    /// Where a bundle was extracted (removed on drop).
    _extracted: Option<tempfile::TempDir>,
}

impl Source {
    /// A trace and an optional snapshot directory.
    pub fn new(trace: PathBuf, snapshots: Option<PathBuf>) -> Self {
        Source { trace, snapshots, _extracted: None }
    }
}

fn with_snapshots(trace: PathBuf) -> Source {
    let s = vmrr_format::layout::snapshots_of(&trace);
    let snapshots = s.is_dir().then_some(s);
    Source::new(trace, snapshots)
}

/// Resolves `src`.
///
/// # Errors
/// Nothing usable at `src`, or a damaged or hostile bundle.
pub fn open(src: &Path, max_mem: u64) -> Result<Source, ReplayError> {
    if src.is_dir() {
        let traces: Vec<PathBuf> = std::fs::read_dir(src)
            .map_err(vmrr_format::FileError::on("reading", src))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "vmrr") && p.is_file())
            .collect();
        return match traces.as_slice() {
            [t] => Ok(with_snapshots(t.clone())),
            [] => {
                Err(ReplayError::Unreplayable(format!("{}: no .vmrr trace in this directory", src.display())))
            }
            _ => Err(ReplayError::Unreplayable(format!(
                "{}: more than one .vmrr trace; name one",
                src.display()
            ))),
        };
    }
    let mut magic = [0u8; 8];
    let n = std::fs::File::open(src)
        .and_then(|mut f| f.read(&mut magic))
        .map_err(vmrr_format::FileError::on("opening", src))?;
    if n == 8 && magic == vmrr_format::bundle::MAGIC {
        let dir = tempfile::Builder::new()
            .prefix("vmrr-bundle-")
            .tempdir()
            .map_err(vmrr_format::FileError::on("creating a directory to unpack", src))?;
        let unpacked = vmrr_format::bundle::unpack(src, dir.path(), max_mem)?;
        vmrr_format::bundle::arrange(dir.path())?;
        let mut s = with_snapshots(unpacked.trace);
        s._extracted = Some(dir);
        return Ok(s);
    }
    Ok(with_snapshots(src.to_path_buf()))
}

//! What `vmrr replay SRC` accepts: a trace (with its snapshots directory beside it,
//! `run.vmrr.snapshots`, or `run.snapshots` for a trace recorded before), a
//! directory holding one, or a bundle (extracted into a private temporary directory first,
//! within the extraction budgets, and removed when the source is dropped or the process is
//! stopped by a signal).
//!
//! Only regular files are read (a FIFO, a device or a file of `/proc` is refused, see
//! `vmrr_format::input`), and no path a trace or bundle names is ever opened: a bundle
//! carries the guest image or firmware a rebuild needs; for a bare trace the user names it.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use vmrr_format::bundle::{self, Budgets};
use vmrr_format::scratch::Scratch;

use crate::error::ReplayError;

/// A trace and its snapshots, ready to replay.
#[derive(Debug)]
pub struct Source {
    /// The trace.
    pub trace: PathBuf,
    /// Its snapshot directory, when there is one.
    pub snapshots: Option<PathBuf>,
    /// The guest image a bundle carries.
    pub image: Option<PathBuf>,
    /// The firmware a bundle carries.
    pub firmware: Option<PathBuf>,
    /// The kernel a bundle carries.
    pub kernel: Option<PathBuf>,
    /// The initramfs a bundle carries.
    pub initrd: Option<PathBuf>,
    /// The bundle the trace came from.
    pub bundle: Option<PathBuf>,
    /// Where a bundle was extracted (removed on drop).
    extracted: Option<Scratch>,
}

impl Source {
    /// A trace and an optional snapshot directory.
    pub fn new(trace: PathBuf, snapshots: Option<PathBuf>) -> Self {
        Source {
            trace,
            snapshots,
            image: None,
            firmware: None,
            kernel: None,
            initrd: None,
            bundle: None,
            extracted: None,
        }
    }

    /// The files this source reads (what no output may be).
    pub fn inputs(&self) -> Vec<&Path> {
        let mut v: Vec<&Path> = vec![self.bundle.as_deref().unwrap_or(&self.trace)];
        v.extend(self.snapshots.as_deref());
        v
    }

    /// `e` with the paths of the extracted files named as what they are: the bundle and
    /// its entry (`repro.vmrrb, entry snapshots/snap-000000/state.bin`), not a temporary
    /// path that no longer exists when the message is read. Other sources: `e` itself.
    pub fn explain(&self, e: ReplayError) -> ReplayError {
        let (Some(bundle), Some(dir)) = (&self.bundle, &self.extracted) else { return e };
        let b = bundle.display().to_string();
        let tmp = dir.path().display().to_string();
        let snapshots = vmrr_format::layout::snapshots_of(Path::new(bundle::TRACE_ENTRY));
        let mut message = crate::error::chain(&e);
        for (from, to) in [
            (format!("{tmp}/{}/", snapshots.display()), format!("{b}, entry snapshots/")),
            (format!("{tmp}/{}", bundle::TRACE_ENTRY), format!("{b}, entry {}", bundle::TRACE_ENTRY)),
            (format!("{tmp}/{}", bundle::IMAGE_ENTRY), format!("{b}, entry {}", bundle::IMAGE_ENTRY)),
            (format!("{tmp}/{}", bundle::FIRMWARE_ENTRY), format!("{b}, entry {}", bundle::FIRMWARE_ENTRY)),
            (tmp.clone(), b.clone()),
        ] {
            message = message.replace(&from, &to);
        }
        ReplayError::InBundle { message, inner: Box::new(e) }
    }
}

impl Source {
    /// Whether a guest rebuilt with the user's `image` or `firmware` runs other code than
    /// the recording did: true when this source carries its own guest file (a bundle) and
    /// the user's differs from it byte for byte (a fixed firmware or image under test).
    /// Unreadable files count as different.
    pub fn guest_replaced(
        &self,
        image: Option<&Path>,
        firmware: Option<&Path>,
        kernel: Option<&Path>,
    ) -> bool {
        let differs = |given: Option<&Path>, ours: Option<&Path>| match (given, ours) {
            (Some(g), Some(o)) => match (std::fs::read(g), std::fs::read(o)) {
                (Ok(a), Ok(b)) => a != b,
                _ => true,
            },
            _ => false,
        };
        differs(image, self.image.as_deref())
            || differs(firmware, self.firmware.as_deref())
            || differs(kernel, self.kernel.as_deref())
    }
}

fn with_snapshots(trace: PathBuf) -> Source {
    let snapshots = vmrr_format::layout::find_snapshots(&trace);
    Source::new(trace, snapshots)
}

/// Resolves `src`; a bundle is extracted within `budgets` into a private directory of the
/// system's temporary directory (`$TMPDIR`).
///
/// # Errors
/// Nothing usable at `src`, an input that is not a regular file, or a damaged, hostile or
/// over-budget bundle.
pub fn open(src: &Path, budgets: &Budgets) -> Result<Source, ReplayError> {
    if vmrr_format::input::is_dir(src) {
        let traces: Vec<PathBuf> = std::fs::read_dir(src)
            .map_err(vmrr_format::FileError::on("reading", src))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "vmrr") && p.is_file())
            .collect();
        return match traces.as_slice() {
            [t] => Ok(with_snapshots(t.clone())),
            [] => Err(ReplayError::Source(format!("{}: no .vmrr trace in this directory", src.display()))),
            many => {
                let mut names: Vec<String> = many.iter().map(|p| p.display().to_string()).collect();
                names.sort();
                Err(ReplayError::Source(format!(
                    "{}: {} .vmrr traces in this directory; name one: {}",
                    src.display(),
                    names.len(),
                    names.join(", ")
                )))
            }
        };
    }
    let (f, md) = vmrr_format::input::open_regular(src)?;
    let mut magic = [0u8; 8];
    let is_bundle =
        md.len() >= 8 && f.read_exact_at(&mut magic, 0).is_ok() && magic == vmrr_format::bundle::MAGIC;
    drop(f);
    if !is_bundle {
        return Ok(with_snapshots(src.to_path_buf()));
    }
    let tmp = std::env::temp_dir();
    let dir = Scratch::dir_in(&tmp, "vmrr-bundle-")
        .map_err(vmrr_format::FileError::on("creating a directory to unpack into in", &tmp))?;
    let unpacked = bundle::unpack(src, dir.path(), budgets, Some(&vmrr_engine::snapshot::memory_files))?;
    bundle::arrange(dir.path())?;
    let mut s = with_snapshots(unpacked.trace);
    s.image = unpacked.image;
    s.firmware = unpacked.firmware;
    s.kernel = unpacked.kernel;
    s.initrd = unpacked.initrd;
    s.bundle = Some(src.to_path_buf());
    s.extracted = Some(dir);
    Ok(s)
}

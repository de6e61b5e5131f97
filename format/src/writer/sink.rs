//! Where a writer's bytes go: the [`TraceSink`] trait, for a file, memory, or nowhere.

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};

/// Where a writer's bytes go: a file, or memory in tests and benchmarks.
pub trait TraceSink: Write + Send + 'static {
    /// Makes everything written so far durable (`fdatasync` for files).
    ///
    /// # Errors
    /// The OS error.
    fn sync(&mut self) -> std::io::Result<()>;

    /// Cuts the sink back to `len` bytes and continues writing there (after a failed
    /// write, to drop a partial chunk).
    ///
    /// # Errors
    /// The OS error, or a sink that cannot be cut.
    fn truncate(&mut self, len: u64) -> std::io::Result<()>;

    /// Continues writing at `pos` without changing the sink's length (the bytes after it
    /// are overwritten by what follows).
    ///
    /// # Errors
    /// The OS error.
    fn rewind(&mut self, pos: u64) -> std::io::Result<()>;

    /// Allocates storage for `[offset, offset + len)` without changing the visible length
    /// (`fallocate(FALLOC_FL_KEEP_SIZE)`), so that later writes there cannot fail for lack
    /// of space. The writer keeps room for the next chunk *and* the index this way: when
    /// the disk fills, the reservation fails first and the index still fits.
    ///
    /// # Errors
    /// `ErrorKind::Unsupported` when the sink cannot reserve (the writer then stops trying);
    /// anything else (a full disk) ends the recording.
    fn reserve(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
        let _ = (offset, len);
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

impl TraceSink for File {
    fn sync(&mut self) -> std::io::Result<()> {
        self.sync_data()
    }
    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        use std::io::Seek;
        self.set_len(len)?;
        self.seek(std::io::SeekFrom::Start(len)).map(|_| ())
    }
    fn rewind(&mut self, pos: u64) -> std::io::Result<()> {
        use std::io::Seek;
        self.seek(std::io::SeekFrom::Start(pos)).map(|_| ())
    }
    #[cfg(target_os = "linux")]
    fn reserve(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
        use rustix::fs::{FallocateFlags, fallocate};
        match fallocate(&*self, FallocateFlags::KEEP_SIZE, offset, len) {
            Ok(()) => Ok(()),
            Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => {
                Err(std::io::ErrorKind::Unsupported.into())
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// An in-memory sink whose bytes stay readable after the writer finishes.
#[derive(Debug, Clone, Default)]
pub struct MemorySink(pub Arc<Mutex<Vec<u8>>>);

impl MemorySink {
    /// A copy of the bytes written so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

impl Write for MemorySink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.lock() {
            Ok(mut v) => {
                v.extend_from_slice(buf);
                Ok(buf.len())
            }
            Err(_) => Err(std::io::Error::other("memory sink poisoned")),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl TraceSink for MemorySink {
    fn sync(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        let mut v = self.0.lock().map_err(|_| std::io::Error::other("memory sink poisoned"))?;
        v.truncate(usize::try_from(len).unwrap_or(usize::MAX));
        Ok(())
    }
    fn rewind(&mut self, pos: u64) -> std::io::Result<()> {
        // Appending after a cut is what overwriting from `pos` leaves once the writer
        // truncates to its final length.
        self.truncate(pos)
    }
}

/// A sink that counts bytes and discards them (benchmarks).
#[derive(Debug, Default)]
pub struct NullSink;

impl Write for NullSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl TraceSink for NullSink {
    fn sync(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn truncate(&mut self, _len: u64) -> std::io::Result<()> {
        Ok(())
    }
    fn rewind(&mut self, _pos: u64) -> std::io::Result<()> {
        Ok(())
    }
}

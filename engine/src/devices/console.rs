//! Where console output goes: an optional writer (stdout, a file) plus a bounded in-memory
//! copy that reports and tests read.

use std::io::Write;
use std::sync::{Arc, Mutex};

/// Bytes kept in memory (the most recent ones).
pub const CAPTURE_LIMIT: usize = 1 << 20;

/// A console output stream.
#[derive(Clone, Default)]
pub struct Console {
    inner: Arc<Mutex<ConsoleInner>>,
}

#[derive(Default)]
struct ConsoleInner {
    out: Option<Box<dyn Write + Send>>,
    captured: Vec<u8>,
    total: u64,
    error: Option<std::io::Error>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").finish_non_exhaustive()
    }
}

impl Console {
    /// A console that only captures.
    pub fn capture_only() -> Self {
        Self::default()
    }

    /// A console that also writes to `out` (flushed at each newline).
    pub fn with_output(out: Box<dyn Write + Send>) -> Self {
        let c = Self::default();
        if let Ok(mut i) = c.inner.lock() {
            i.out = Some(out);
        }
        c
    }

    /// Appends one byte.
    pub fn put(&self, b: u8) {
        let Ok(mut i) = self.inner.lock() else { return };
        i.total += 1;
        if i.captured.len() >= CAPTURE_LIMIT {
            let half = CAPTURE_LIMIT / 2;
            i.captured.drain(..half);
        }
        i.captured.push(b);
        if i.error.is_none() {
            let res = match i.out.as_mut() {
                Some(o) => o.write_all(&[b]).and_then(|()| if b == b'\n' { o.flush() } else { Ok(()) }),
                None => Ok(()),
            };
            if let Err(e) = res {
                i.error = Some(e);
            }
        }
    }

    /// Flushes the writer.
    pub fn flush(&self) {
        if let Ok(mut i) = self.inner.lock() {
            if let Some(o) = i.out.as_mut() {
                let _ = o.flush();
            }
        }
    }

    /// The captured bytes (at most [`CAPTURE_LIMIT`], the most recent).
    pub fn captured(&self) -> Vec<u8> {
        self.inner.lock().map(|i| i.captured.clone()).unwrap_or_default()
    }

    /// Total bytes written.
    pub fn total(&self) -> u64 {
        self.inner.lock().map(|i| i.total).unwrap_or(0)
    }

    /// The first write error, if the writer failed (taken).
    pub fn take_error(&self) -> Option<std::io::Error> {
        self.inner.lock().ok().and_then(|mut i| i.error.take())
    }
}

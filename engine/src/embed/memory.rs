//! Guest-memory writes by the embedding VMM's devices: where they go (the log the one
//! vCPU's recorder drains, or a device thread's own stream of a shared trace), and
//! [`RecordingMemory`], a `vm-memory` wrapper that records every write made through it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use vm_memory::bytes::AtomicAccess;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError, ReadVolatile, WriteVolatile};

/// Guest-memory writes not yet in the trace, in the order they were made. Shared by the
/// [`super::Embedded`] recorder and every [`RecordingMemory`] it handed out; the recorder
/// drains it into `GUEST_WRITE` records at the next exit boundary.
#[derive(Debug, Clone, Default)]
pub(crate) struct WriteLog {
    inner: Arc<Mutex<Vec<Noted>>>,
}

/// A write noted: its guest-physical address and its bytes.
pub(crate) type Noted = (u64, Vec<u8>);

impl WriteLog {
    /// Notes that `data` was written at `gpa`.
    pub(crate) fn push(&self, gpa: u64, data: Vec<u8>) {
        // A poisoned lock means a device thread panicked while pushing: the log itself is
        // a plain Vec and stays usable.
        let mut v = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        v.push((gpa, data));
    }

    /// Takes every write noted so far.
    pub(crate) fn drain(&self) -> Vec<Noted> {
        let mut v = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        std::mem::take(&mut *v)
    }
}

/// Where a [`RecordingMemory`] records.
#[derive(Debug, Clone)]
pub(crate) enum Sink {
    /// One vCPU: the log its recorder drains at exit boundaries.
    Log(WriteLog),
    /// Several vCPUs: a device thread's own stream, written at once.
    Stream(Arc<DeviceStream>),
}

/// A device thread's stream of a shared trace: its records carry `vcpu`
/// (`DEVICE_THREAD_BASE + n`), and the pages they write are marked for the next
/// incremental snapshot.
#[derive(Debug)]
pub(crate) struct DeviceStream {
    /// The stream, behind a mutex so clones of the memory can be used from any thread.
    pub(crate) stream: Mutex<vmrr_format::TraceStream>,
    /// The trace's `vcpu` field of its records.
    pub(crate) vcpu: u32,
    /// The pages devices wrote since the last snapshot.
    pub(crate) pages: Arc<Mutex<super::PageMarks>>,
}

impl DeviceStream {
    /// Records `data` written at `gpa` (a `guest_write` record, split when long).
    pub(crate) fn guest_write(&self, gpa: u64, data: &[u8]) -> Result<(), vmrr_format::WriteError> {
        self.pages.lock().unwrap_or_else(std::sync::PoisonError::into_inner).mark(gpa, data.len());
        let mut s = self.stream.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        s.append_guest_write(self.vcpu, gpa, data).map(|_| ())
    }
}

impl Sink {
    /// Notes that `data` was written at `gpa`; a stream's failure (a full disk) becomes the
    /// write's error, since the bytes reached memory but not the trace.
    fn note(&self, gpa: u64, data: Vec<u8>) -> Result<(), GuestMemoryError> {
        match self {
            Sink::Log(log) => {
                log.push(gpa, data);
                Ok(())
            }
            Sink::Stream(d) => {
                d.guest_write(gpa, &data).map_err(|e| GuestMemoryError::IOError(std::io::Error::other(e)))
            }
        }
    }
}

/// A guest memory whose writes are recorded: wrap the memory a device model writes into
/// (disk reads, received packets, virtio used rings) and every byte it writes through the
/// [`Bytes`] interface lands in the trace as a `guest_write` record, at the exit boundary
/// where it happened. A VMM whose devices take `&impl Bytes<GuestAddress>` (or a generic
/// `M: Bytes<GuestAddress, E = GuestMemoryError>`) records DMA by swapping this type in.
///
/// On several vCPUs ([`super::Embedded::start_smp`]) each device thread's memory
/// ([`super::DeviceThread::memory`]) records on that thread's own stream at once, as
/// records from the device thread (`vcpu` = [`super::DEVICE_THREAD_BASE`]` + n`); a write
/// whose record cannot be written (a full disk) returns `GuestMemoryError::IOError` after
/// the bytes reached memory.
///
/// Reads are forwarded unchanged. Writes made through [`Self::inner`] (region slices,
/// `VolatileSlice`s) bypass the recording: a device that needs them calls
/// [`super::Embedded::record_guest_write`] for what it wrote.
///
/// The cost of a recorded write is one copy of its bytes into the log (and later one into
/// the trace's chunk buffer), whatever its size: see `docs/PERFORMANCE.md`.
#[derive(Debug, Clone)]
pub struct RecordingMemory<M> {
    inner: M,
    sink: Sink,
}

impl<M: GuestMemory> RecordingMemory<M> {
    pub(crate) fn new(inner: M, sink: Sink) -> Self {
        RecordingMemory { inner, sink }
    }

    /// The wrapped memory (reads, region access; writes through it are not recorded).
    pub fn inner(&self) -> &M {
        &self.inner
    }

    /// Records what `[addr, addr + len)` now holds (after a write whose bytes were not in
    /// hand: from a file or a socket).
    fn record_range(&self, addr: GuestAddress, len: usize) -> Result<(), GuestMemoryError> {
        if len == 0 {
            return Ok(());
        }
        let mut buf = vec![0u8; len];
        self.inner.read_slice(&mut buf, addr)?;
        self.sink.note(addr.0, buf)
    }
}

impl<M: GuestMemory> Bytes<GuestAddress> for RecordingMemory<M> {
    type E = GuestMemoryError;

    fn write(&self, buf: &[u8], addr: GuestAddress) -> Result<usize, Self::E> {
        let n = self.inner.write(buf, addr)?;
        if let Some(written) = buf.get(..n).filter(|w| !w.is_empty()) {
            self.sink.note(addr.0, written.to_vec())?;
        }
        Ok(n)
    }

    fn read(&self, buf: &mut [u8], addr: GuestAddress) -> Result<usize, Self::E> {
        self.inner.read(buf, addr)
    }

    fn write_slice(&self, buf: &[u8], addr: GuestAddress) -> Result<(), Self::E> {
        // A failed write is not recorded (vm-memory reports it before or after copying
        // part): the VMM's device has failed, and the run is not one to replay.
        self.inner.write_slice(buf, addr)?;
        if !buf.is_empty() {
            self.sink.note(addr.0, buf.to_vec())?;
        }
        Ok(())
    }

    fn read_slice(&self, buf: &mut [u8], addr: GuestAddress) -> Result<(), Self::E> {
        self.inner.read_slice(buf, addr)
    }

    fn read_volatile_from<F>(&self, addr: GuestAddress, src: &mut F, count: usize) -> Result<usize, Self::E>
    where
        F: ReadVolatile,
    {
        let n = self.inner.read_volatile_from(addr, src, count)?;
        self.record_range(addr, n)?;
        Ok(n)
    }

    fn read_exact_volatile_from<F>(
        &self,
        addr: GuestAddress,
        src: &mut F,
        count: usize,
    ) -> Result<(), Self::E>
    where
        F: ReadVolatile,
    {
        self.inner.read_exact_volatile_from(addr, src, count)?;
        self.record_range(addr, count)
    }

    fn write_volatile_to<F>(&self, addr: GuestAddress, dst: &mut F, count: usize) -> Result<usize, Self::E>
    where
        F: WriteVolatile,
    {
        self.inner.write_volatile_to(addr, dst, count)
    }

    fn write_all_volatile_to<F>(&self, addr: GuestAddress, dst: &mut F, count: usize) -> Result<(), Self::E>
    where
        F: WriteVolatile,
    {
        self.inner.write_all_volatile_to(addr, dst, count)
    }

    fn store<T: AtomicAccess>(&self, val: T, addr: GuestAddress, order: Ordering) -> Result<(), Self::E> {
        self.inner.store(val, addr, order)?;
        self.record_range(addr, std::mem::size_of::<T>())
    }

    fn load<T: AtomicAccess>(&self, addr: GuestAddress, order: Ordering) -> Result<T, Self::E> {
        self.inner.load(addr, order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn memory() -> (RecordingMemory<GuestMemoryMmap>, WriteLog) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x4000)]).expect("anonymous memory");
        let log = WriteLog::default();
        (RecordingMemory::new(mem, Sink::Log(log.clone())), log)
    }

    #[test]
    fn every_write_through_the_wrapper_is_logged_in_order_and_reaches_memory() {
        let (m, log) = memory();
        m.write_slice(b"disk", GuestAddress(0x1000)).expect("in range");
        m.write_obj(0x1122_3344u32, GuestAddress(0x2000)).expect("in range");
        m.store(7u8, GuestAddress(0x3000), Ordering::Relaxed).expect("in range");
        let mut src: &[u8] = b"packet";
        m.read_exact_volatile_from(GuestAddress(0x3800), &mut src, 6).expect("in range");
        let got = log.drain();
        assert_eq!(
            got,
            vec![
                (0x1000, b"disk".to_vec()),
                (0x2000, 0x1122_3344u32.to_le_bytes().to_vec()),
                (0x3000, vec![7]),
                (0x3800, b"packet".to_vec()),
            ]
        );
        let mut back = [0u8; 6];
        m.inner().read_slice(&mut back, GuestAddress(0x3800)).expect("in range");
        assert_eq!(&back, b"packet");
        assert!(log.drain().is_empty(), "drained");
    }

    #[test]
    fn reads_and_failed_writes_log_nothing() {
        let (m, log) = memory();
        let mut buf = [0u8; 4];
        m.read_slice(&mut buf, GuestAddress(0)).expect("in range");
        assert!(m.write_slice(b"x", GuestAddress(0x10_0000)).is_err());
        assert!(log.drain().is_empty());
    }
}

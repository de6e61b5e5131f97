//! Whose record it is: a record's `vcpu` field names a vCPU, or (format 1.2) a VMM device
//! thread when it is at least [`DEVICE_THREAD_BASE`]. Device threads write events only
//! (guest writes, IRQ line changes): they have no exits and no time axis.

use std::fmt;

/// The first `vcpu` value that names a device thread (`docs/FORMAT.md` §5.1, format 1.2).
pub use vmrr_format::DEVICE_THREAD_BASE;

/// The thread a record's `vcpu` field names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Thread {
    /// vCPU `n`.
    Vcpu(u32),
    /// Device thread `n` of the VMM.
    Device(u32),
}

impl Thread {
    /// The thread of a record's raw `vcpu` field.
    #[inline]
    pub const fn of(vcpu: u32) -> Thread {
        if vcpu >= DEVICE_THREAD_BASE {
            Thread::Device(vcpu - DEVICE_THREAD_BASE)
        } else {
            Thread::Vcpu(vcpu)
        }
    }

    /// True for a device thread.
    #[inline]
    pub const fn is_device(self) -> bool {
        matches!(self, Thread::Device(_))
    }

    /// The name of its timeline track: `vCPU 0`, `device 0`.
    pub fn track_name(self) -> String {
        match self {
            Thread::Vcpu(n) => format!("vCPU {n}"),
            Thread::Device(n) => format!("device {n}"),
        }
    }
}

impl fmt::Display for Thread {
    /// `vcpu0`, `device0`: as `vmrr inspect` names a record's vCPU.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Thread::Vcpu(n) => write!(f, "vcpu{n}"),
            Thread::Device(n) => write!(f, "device{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_from_the_base_are_device_threads() {
        assert_eq!(Thread::of(0), Thread::Vcpu(0));
        assert_eq!(Thread::of(DEVICE_THREAD_BASE - 1), Thread::Vcpu(0x7fff_ffff));
        assert_eq!(Thread::of(DEVICE_THREAD_BASE), Thread::Device(0));
        assert_eq!(Thread::of(u32::MAX), Thread::Device(0x7fff_ffff));
        assert_eq!(Thread::of(2).to_string(), "vcpu2");
        assert_eq!(Thread::of(DEVICE_THREAD_BASE + 1).track_name(), "device 1");
        assert!(Thread::of(DEVICE_THREAD_BASE).is_device() && !Thread::of(3).is_device());
    }
}

//! What a profile groups exits by: their kind, the port, MMIO address or MSR they
//! touched (`perf kvm stat report --event=ioport|mmio|msr`), or the vCPU that made them.

use std::fmt;

use vmrr_format::kind;
use vmrr_format::{Body, Direction, Record};

use super::thread::Thread;

/// A grouping of exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum By {
    /// Exit kind (`io`, `mmio`, `hlt`, ...).
    Kind,
    /// Port and direction of port I/O exits.
    Port,
    /// Address and direction of MMIO exits.
    Mmio,
    /// Index and direction of MSR exits.
    Msr,
    /// The vCPU (the record's `vcpu` field).
    Vcpu,
}

impl By {
    /// Every grouping.
    pub const ALL: [By; 5] = [By::Kind, By::Port, By::Mmio, By::Msr, By::Vcpu];

    /// Parses `kind`, `port`, `mmio`, `msr` or `vcpu`.
    pub fn parse(s: &str) -> Option<By> {
        By::ALL.into_iter().find(|b| b.name() == s)
    }

    /// Lower-case name (`--by` value; JSON tables are `by_<name>`).
    pub const fn name(self) -> &'static str {
        match self {
            By::Kind => "kind",
            By::Port => "port",
            By::Mmio => "mmio",
            By::Msr => "msr",
            By::Vcpu => "vcpu",
        }
    }

    /// The group the exit `rec` belongs to, or `None` when this grouping does not apply to
    /// it (a port table has no MMIO exits).
    #[inline]
    pub fn key(self, rec: &Record<'_>) -> Option<Key> {
        match self {
            By::Vcpu => Some(Key::Vcpu(rec.vcpu)),
            _ => self.body_key(&rec.body),
        }
    }

    /// The group of an exit with this `body`, for the groupings its body decides (`None`
    /// for [`By::Vcpu`]).
    #[inline]
    pub fn body_key(self, body: &Body<'_>) -> Option<Key> {
        match (self, body) {
            (By::Kind, b) => Some(Key::Kind(b.kind())),
            (By::Port, Body::Io(io)) => {
                Some(Key::Port { port: io.port, out: io.direction == Direction::Out })
            }
            (By::Mmio, Body::Mmio(m)) => Some(Key::Mmio { addr: m.phys_addr, write: m.is_write }),
            (By::Msr, Body::RdMsr(m)) => Some(Key::Msr { index: m.index, write: false }),
            (By::Msr, Body::WrMsr(m)) => Some(Key::Msr { index: m.index, write: true }),
            _ => None,
        }
    }
}

/// One group of exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// An exit kind.
    Kind(u16),
    /// A port, written (`out`) or read.
    Port {
        /// Port number.
        port: u16,
        /// True for `out`.
        out: bool,
    },
    /// An MMIO address, written or read.
    Mmio {
        /// Guest-physical address.
        addr: u64,
        /// True for a write.
        write: bool,
    },
    /// An MSR, written (WRMSR) or read (RDMSR).
    Msr {
        /// MSR index.
        index: u32,
        /// True for WRMSR.
        write: bool,
    },
    /// A vCPU, by the record's raw `vcpu` field.
    Vcpu(u32),
    /// Every group past a table's limit on distinct keys, together.
    Other,
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Key::Kind(k) => f.write_str(kind::name(k)),
            Key::Port { port, out } => write!(f, "{port:#x}:{}", if out { "out" } else { "in" }),
            Key::Mmio { addr, write } => write!(f, "{addr:#x}:{}", if write { "write" } else { "read" }),
            Key::Msr { index, write } => write!(f, "{index:#x}:{}", if write { "wrmsr" } else { "rdmsr" }),
            Key::Vcpu(v) => write!(f, "{}", Thread::of(v)),
            Key::Other => f.write_str("(other)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmrr_format::{Io, Mmio, Msr, Record};

    #[test]
    fn keys_and_names() {
        let io = Body::Io(Io { direction: Direction::Out, size: 1, port: 0x3f8, count: 1, data: b"x" });
        let io = Record::new(0, 3, io);
        assert_eq!(By::Port.key(&io).unwrap().to_string(), "0x3f8:out");
        assert_eq!(By::Kind.key(&io).unwrap().to_string(), "io");
        assert_eq!(By::Vcpu.key(&io), Some(Key::Vcpu(3)));
        assert_eq!(Key::Vcpu(3).to_string(), "vcpu3");
        assert_eq!(By::Vcpu.body_key(&io.body), None);
        assert_eq!(By::Mmio.key(&io), None);
        let m = Body::Mmio(Mmio { phys_addr: 0xd000_0000, len: 4, is_write: false, data: [0; 8] });
        assert_eq!(By::Mmio.body_key(&m).unwrap().to_string(), "0xd0000000:read");
        let r = Body::WrMsr(Msr { index: 0x10, reason: 0, data: 0, error: 0 });
        assert_eq!(By::Msr.body_key(&r).unwrap().to_string(), "0x10:wrmsr");
        assert_eq!(By::parse("mmio"), Some(By::Mmio));
        assert_eq!(By::parse("vcpu"), Some(By::Vcpu));
        assert_eq!(By::parse("disk"), None);
    }
}

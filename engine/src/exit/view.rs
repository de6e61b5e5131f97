//! Decoding a `kvm_run` exit into a trace record body.
//!
//! Everything is read from the bytes of the vCPU's `kvm_run` region at the offsets of
//! `include/uapi/linux/kvm.h` (derived from kvm-bindings), through the format's checked
//! cursor; the record borrows variable-length data (port I/O bytes, internal-error words,
//! raw unions) straight from the region: no copy before the writer.

use vmrr_format::cursor::{Cursor, ShortRead};
use vmrr_format::{
    Body, DebugExit, Direction, FailEntry, Hypercall, InternalError, Io, Mmio, Msr, RawExit, RegsSample,
    SystemEvent, Words,
};

use super::decoded::Exit;
use crate::sys::run_page::off;

/// `KVM_SYNC_X86_REGS`.
const SYNC_X86_REGS: u64 = 1;

/// A byte view of one vCPU's `kvm_run` region after an exit.
#[derive(Clone, Copy)]
pub struct RunView<'a> {
    b: &'a [u8],
}

/// A field read from the part of `kvm_run` that [`RunView::new`] checked is present.
macro_rules! field {
    ($self:ident, $read:ident, $at:expr) => {
        Cursor::at($self.b, $at).$read().expect("RunView::new checked that all of struct kvm_run is present")
    };
}

impl<'a> RunView<'a> {
    /// Wraps the region's bytes.
    ///
    /// # Errors
    /// Fewer bytes than `struct kvm_run`.
    #[inline]
    pub fn new(bytes: &'a [u8]) -> Result<Self, ShortRead> {
        if bytes.len() < off::SIZE {
            return Err(ShortRead { offset: 0, need: off::SIZE, have: bytes.len() });
        }
        Ok(RunView { b: bytes })
    }

    /// `exit_reason`.
    #[inline]
    pub fn exit_reason(&self) -> u32 {
        field!(self, read_u32, off::EXIT_REASON)
    }

    /// `ready_for_interrupt_injection`.
    pub fn ready_for_interrupt_injection(&self) -> bool {
        field!(self, read_u8, off::READY_FOR_INTERRUPT_INJECTION) != 0
    }

    /// `if_flag`.
    pub fn if_flag(&self) -> bool {
        field!(self, read_u8, off::IF_FLAG) != 0
    }

    /// A field of the exit union: `at` is relative to it.
    #[inline]
    fn exit_u8(&self, at: usize) -> u8 {
        field!(self, read_u8, off::EXIT + at)
    }
    #[inline]
    fn exit_u16(&self, at: usize) -> u16 {
        field!(self, read_u16, off::EXIT + at)
    }
    #[inline]
    fn exit_u32(&self, at: usize) -> u32 {
        field!(self, read_u32, off::EXIT + at)
    }
    #[inline]
    fn exit_u64(&self, at: usize) -> u64 {
        field!(self, read_u64, off::EXIT + at)
    }
    /// Where an I/O exit's data lies in the page (`io.data_offset`).
    pub fn io_data_offset(&self) -> u64 {
        self.exit_u64(off::io::DATA_OFFSET)
    }

    /// RIP, RSP and RFLAGS from the synced registers, when KVM filled them.
    #[inline]
    pub fn sync_regs(&self) -> Option<(u64, u64, u64)> {
        if field!(self, read_u64, off::VALID_REGS) & SYNC_X86_REGS == 0 {
            return None;
        }
        let r = off::SYNC_REGS;
        Some((
            field!(self, read_u64, r + off::regs::RIP),
            field!(self, read_u64, r + off::regs::RSP),
            field!(self, read_u64, r + off::regs::RFLAGS),
        ))
    }

    /// The exit, decoded: its trace body and register sample. `system_event_data` says
    /// whether the host's `system_event.ndata` is valid (`KVM_CAP_SYSTEM_EVENT_DATA`):
    /// without it, no data words are recorded rather than guessed. `conv` is where this
    /// host leaves RIP (see [`Self::regs_sample`]).
    #[inline]
    pub fn exit(&self, system_event_data: bool, conv: RipConvention) -> Exit {
        let (body, span) = self.decode(system_event_data);
        Exit::new(self.exit_reason(), body, span, self.regs_sample(conv))
    }

    /// The exit as a record body (see [`Self::exit`]).
    pub fn body(&self, system_event_data: bool) -> Body<'a> {
        let (body, span) = self.decode(system_event_data);
        Exit::new(self.exit_reason(), body, span, None).body(self.b)
    }

    /// The body's fixed fields, and where its variable-length part lies in the page.
    #[inline]
    fn decode(&self, system_event_data: bool) -> (Body<'static>, (usize, usize)) {
        use off::{debug, fail_entry, hypercall, internal, io, mmio, msr, system_event};
        let reason = self.exit_reason();
        let raw = (Body::RawExit(RawExit { exit_reason: reason, data: &[] }), (off::EXIT, off::EXIT_LEN));
        let fixed = |body| (body, (0, 0));
        let words = |at: usize, n: usize| (off::EXIT + at, 8 * n.min(internal::MAX_DATA));
        match reason {
            kvm_bindings::KVM_EXIT_IO => {
                let size = self.exit_u8(io::SIZE);
                let count = self.exit_u32(io::COUNT);
                let len = usize::from(size).saturating_mul(usize::try_from(count).unwrap_or(usize::MAX));
                // The data's offset comes from the kernel: checked like any other input.
                let at = usize::try_from(self.exit_u64(io::DATA_OFFSET)).unwrap_or(usize::MAX);
                if Cursor::at(self.b, at).read_slice(len).is_err() {
                    return raw;
                }
                let direction = if self.exit_u8(io::DIRECTION) == 0 { Direction::In } else { Direction::Out };
                let port = self.exit_u16(io::PORT);
                (Body::Io(Io { direction, size, port, count, data: &[] }), (at, len))
            }
            kvm_bindings::KVM_EXIT_MMIO => {
                let len = self.exit_u32(mmio::LEN).min(8);
                let mut data = [0u8; 8];
                for (i, d) in data.iter_mut().enumerate().take(usize::try_from(len).unwrap_or(8)) {
                    *d = self.exit_u8(mmio::DATA + i);
                }
                fixed(Body::Mmio(Mmio {
                    phys_addr: self.exit_u64(mmio::PHYS_ADDR),
                    len,
                    is_write: self.exit_u8(mmio::IS_WRITE) != 0,
                    data,
                }))
            }
            kvm_bindings::KVM_EXIT_HLT => fixed(Body::Hlt),
            kvm_bindings::KVM_EXIT_SHUTDOWN => fixed(Body::Shutdown),
            kvm_bindings::KVM_EXIT_IRQ_WINDOW_OPEN => fixed(Body::IrqWindowOpen),
            kvm_bindings::KVM_EXIT_INTR => fixed(Body::Intr),
            kvm_bindings::KVM_EXIT_FAIL_ENTRY => fixed(Body::FailEntry(FailEntry {
                hardware_entry_failure_reason: self.exit_u64(fail_entry::REASON),
                cpu: self.exit_u32(fail_entry::CPU),
            })),
            kvm_bindings::KVM_EXIT_INTERNAL_ERROR => {
                // internal.data has 16 words; a larger ndata is clamped to what exists.
                let n = usize::try_from(self.exit_u32(internal::NDATA)).unwrap_or(usize::MAX);
                let body =
                    InternalError { suberror: self.exit_u32(internal::SUBERROR), data: Words::Le(&[]) };
                (Body::InternalError(body), words(internal::DATA, n))
            }
            kvm_bindings::KVM_EXIT_SYSTEM_EVENT => {
                let n = if system_event_data {
                    usize::try_from(self.exit_u32(system_event::NDATA)).unwrap_or(usize::MAX)
                } else {
                    0
                };
                let body =
                    SystemEvent { event_type: self.exit_u32(system_event::TYPE), data: Words::Le(&[]) };
                (Body::SystemEvent(body), words(system_event::DATA, n))
            }
            kvm_bindings::KVM_EXIT_X86_RDMSR | kvm_bindings::KVM_EXIT_X86_WRMSR => {
                let m = Msr {
                    index: self.exit_u32(msr::INDEX),
                    reason: self.exit_u32(msr::REASON),
                    data: self.exit_u64(msr::DATA),
                    error: self.exit_u8(msr::ERROR),
                };
                fixed(if reason == kvm_bindings::KVM_EXIT_X86_RDMSR {
                    Body::RdMsr(m)
                } else {
                    Body::WrMsr(m)
                })
            }
            kvm_bindings::KVM_EXIT_HYPERCALL => {
                let mut args = [0u64; 6];
                for (i, a) in args.iter_mut().enumerate() {
                    *a = self.exit_u64(hypercall::ARGS + 8 * i);
                }
                fixed(Body::Hypercall(Hypercall {
                    nr: self.exit_u64(hypercall::NR),
                    args,
                    ret: self.exit_u64(hypercall::RET),
                    flags: self.exit_u64(hypercall::FLAGS),
                }))
            }
            kvm_bindings::KVM_EXIT_DEBUG => fixed(Body::Debug(DebugExit {
                exception: self.exit_u32(debug::EXCEPTION),
                pc: self.exit_u64(debug::PC),
                dr6: self.exit_u64(debug::DR6),
                dr7: self.exit_u64(debug::DR7),
            })),
            _ => raw,
        }
    }

    /// The register sample for this exit, with `RIP_AFTER_INSN` set when this host reports
    /// RIP past the exiting instruction for this kind of exit.
    #[inline]
    pub fn regs_sample(&self, conv: RipConvention) -> Option<RegsSample> {
        let (rip, rsp, rflags) = self.sync_regs()?;
        let after = match self.exit_reason() {
            kvm_bindings::KVM_EXIT_IO => conv.io_after,
            kvm_bindings::KVM_EXIT_MMIO => conv.mmio_after,
            kvm_bindings::KVM_EXIT_HLT => true,
            _ => false,
        };
        Some(RegsSample { rip, rsp, rflags, flags: if after { RegsSample::RIP_AFTER_INSN } else { 0 } })
    }
}

/// Where this host's KVM leaves RIP at an exit, per exit kind: at the exiting instruction
/// (hardware VMX/SVM for port I/O) or past it (some paravirtual hosts). Measured once per
/// process by [`crate::kvm::probe::rip_convention`]; recorded in every register sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RipConvention {
    /// RIP is past the instruction at `KVM_EXIT_IO`.
    pub io_after: bool,
    /// RIP is past the instruction at `KVM_EXIT_MMIO`.
    pub mmio_after: bool,
}

#[cfg(test)]
mod tests {
    use vmrr_format::{EmulationFailure, SUBERROR_EMULATION};

    use super::*;
    use crate::exit::page;

    const CONV: RipConvention = RipConvention { io_after: true, mmio_after: false };

    /// One exit of every kind the decoder structures, and a raw one.
    fn every_exit() -> Vec<Body<'static>> {
        const RAW: [u8; off::EXIT_LEN] = [0x5a; off::EXIT_LEN];
        let msr = Msr { index: 0x5652_0001, reason: 8, data: 0x1122_3344_5566_7788, error: 0 };
        let insn = [0x0f_u8, 0xb8, 0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0f, 0xf3, 0x48, 0, 0, 0, 0, 0];
        let words: &'static [u8] = Box::leak(
            [
                1u64,
                u64::from_le_bytes(insn[..8].try_into().unwrap()),
                u64::from_le_bytes(insn[8..].try_into().unwrap()),
            ]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect::<Vec<_>>()
            .into_boxed_slice(),
        );
        vec![
            Body::Io(Io { direction: Direction::In, size: 1, port: 0x3fd, count: 1, data: &[0x60] }),
            Body::Io(Io { direction: Direction::Out, size: 2, port: 0x5c0, count: 3, data: b"abcdef" }),
            Body::Mmio(Mmio {
                phys_addr: 0xd000_0000,
                len: 4,
                is_write: false,
                data: [1, 2, 3, 4, 0, 0, 0, 0],
            }),
            Body::Mmio(Mmio { phys_addr: 0xd000_0008, len: 8, is_write: true, data: [9; 8] }),
            Body::Hlt,
            Body::Shutdown,
            Body::IrqWindowOpen,
            Body::Intr,
            Body::FailEntry(FailEntry { hardware_entry_failure_reason: 0x21, cpu: 1 }),
            Body::InternalError(InternalError { suberror: SUBERROR_EMULATION, data: Words::Le(words) }),
            Body::SystemEvent(SystemEvent { event_type: 2, data: Words::Le(&[7, 0, 0, 0, 0, 0, 0, 0]) }),
            Body::RdMsr(msr),
            Body::WrMsr(Msr { error: 1, ..msr }),
            Body::Hypercall(Hypercall { nr: 12, args: [1, 2, 3, 4, 5, 6], ret: 0, flags: 1 }),
            Body::Debug(DebugExit { exception: 1, pc: 0x10_0040, dr6: 0xffff_4ff0, dr7: 0x400 }),
            Body::RawExit(RawExit { exit_reason: 0x99, data: &RAW }),
        ]
    }

    #[test]
    fn every_exit_kind_decodes_from_its_abi_layout() {
        for b in every_exit() {
            let p = page::with(&b, None);
            let v = RunView::new(&p).expect("page");
            assert_eq!(v.body(true), b, "{}", vmrr_format::kind::name(b.kind()));
            let e = v.exit(true, CONV);
            assert_eq!((e.body(&p), e.kind(), e.regs()), (b, b.kind(), None));
        }
    }

    #[test]
    fn an_emulation_failure_carries_the_instruction_bytes() {
        let b = every_exit().into_iter().find(|b| matches!(b, Body::InternalError(_))).expect("listed");
        let p = page::with(&b, None);
        let Body::InternalError(e) = RunView::new(&p).expect("page").body(true) else { panic!("kind") };
        let ef: EmulationFailure = e.emulation_failure().expect("suberror 1");
        assert_eq!(ef.bytes()[..3], [0xb8, 0x07, 0x00]);
        assert_eq!(usize::from(ef.insn_size), 0x0f);
    }

    #[test]
    fn counts_from_the_kernel_are_checked() {
        // ndata past the 16 words of the union is clamped to them.
        let mut p =
            page::with(&Body::InternalError(InternalError { suberror: 3, data: Words::Le(&[]) }), None);
        p[off::EXIT + off::internal::NDATA..][..4].copy_from_slice(&1000u32.to_le_bytes());
        let Body::InternalError(e) = RunView::new(&p).expect("page").body(true) else { panic!("kind") };
        assert_eq!(e.data.len(), off::internal::MAX_DATA);
        // System-event words are recorded only where the host says `ndata` is valid.
        let se = every_exit().into_iter().find(|b| matches!(b, Body::SystemEvent(_))).expect("listed");
        let p = page::with(&se, None);
        let Body::SystemEvent(e) = RunView::new(&p).expect("page").body(false) else { panic!("kind") };
        assert!(e.data.is_empty());
        // Port-I/O data the page does not hold: the exit is kept raw, not cut.
        let io = Io { direction: Direction::Out, size: 4, port: 0x80, count: 1, data: &[1, 2, 3, 4] };
        let mut p = page::with(&Body::Io(io), None);
        let past = p.len() as u64 - 2;
        p[off::EXIT + off::io::DATA_OFFSET..][..8].copy_from_slice(&past.to_le_bytes());
        let b = RunView::new(&p).expect("page").body(true);
        assert!(matches!(b, Body::RawExit(r) if r.exit_reason == kvm_bindings::KVM_EXIT_IO), "{b:?}");
        // A region shorter than `struct kvm_run` is refused.
        assert!(RunView::new(&p[..off::SIZE - 1]).is_err());
    }

    #[test]
    fn register_samples_say_where_rip_is() {
        let regs = RegsSample { rip: 0x10_0004, rsp: 0x8_0000, rflags: 0x202, flags: 0 };
        let after = RegsSample { flags: RegsSample::RIP_AFTER_INSN, ..regs };
        for (b, want) in [
            (Body::Io(Io { direction: Direction::Out, size: 1, port: 0x80, count: 1, data: &[0] }), after),
            (Body::Mmio(Mmio { phys_addr: 0xd000_0000, len: 1, is_write: true, data: [0; 8] }), regs),
            (Body::Hlt, after),
            (Body::Shutdown, regs),
        ] {
            let p = page::with(&b, Some(regs));
            assert_eq!(RunView::new(&p).expect("page").exit(true, CONV).regs(), Some(want));
        }
        let p = page::with(&Body::Hlt, None);
        assert_eq!(RunView::new(&p).expect("page").exit(true, CONV).regs(), None, "KVM synced nothing");
    }
}

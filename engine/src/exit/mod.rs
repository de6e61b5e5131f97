//! One `kvm_run` exit, as pure byte logic over the vCPU's `kvm_run` page: decoded once
//! into an [`Exit`] (a trace record body and register sample), answered
//! ([`answer`]: the reply written into the page and the decoded exit), and where the host
//! leaves RIP at it.

pub mod answer;
mod decoded;
pub mod view;

pub use crate::sys::run_page::off as offsets;
pub use decoded::Exit;
pub use view::{RipConvention, RunView};

/// `kvm_run` pages laid out by hand at the ABI's offsets, for the decoding and answering
/// tests: the inverse of [`RunView::exit`].
#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test pages hold a few words
mod page {
    use vmrr_format::{Body, Direction, RegsSample};

    use super::offsets as off;

    /// Where port-I/O data goes (KVM's `KVM_PIO_PAGE_OFFSET`: the page after `kvm_run`).
    pub(super) const PIO: usize = 4096;

    fn put(p: &mut [u8], at: usize, v: &[u8]) {
        p[at..at + v.len()].copy_from_slice(v);
    }

    fn words(p: &mut [u8], at: usize, w: &vmrr_format::Words<'_>) {
        for (i, x) in w.iter().enumerate() {
            put(p, off::EXIT + at + 8 * i, &x.to_le_bytes());
        }
    }

    /// A page whose exit is `body` (an exit kind), with `regs` synced when given.
    pub(super) fn with(body: &Body<'_>, regs: Option<RegsSample>) -> Vec<u8> {
        let mut p = vec![0u8; 3 * 4096];
        let reason = match body {
            Body::Io(io) => {
                put(&mut p, off::EXIT + off::io::DIRECTION, &[u8::from(io.direction == Direction::Out)]);
                put(&mut p, off::EXIT + off::io::SIZE, &[io.size]);
                put(&mut p, off::EXIT + off::io::PORT, &io.port.to_le_bytes());
                put(&mut p, off::EXIT + off::io::COUNT, &io.count.to_le_bytes());
                put(&mut p, off::EXIT + off::io::DATA_OFFSET, &(PIO as u64).to_le_bytes());
                put(&mut p, PIO, io.data);
                kvm_bindings::KVM_EXIT_IO
            }
            Body::Mmio(m) => {
                put(&mut p, off::EXIT + off::mmio::PHYS_ADDR, &m.phys_addr.to_le_bytes());
                put(&mut p, off::EXIT + off::mmio::DATA, &m.data);
                put(&mut p, off::EXIT + off::mmio::LEN, &m.len.to_le_bytes());
                put(&mut p, off::EXIT + off::mmio::IS_WRITE, &[u8::from(m.is_write)]);
                kvm_bindings::KVM_EXIT_MMIO
            }
            Body::Hlt => kvm_bindings::KVM_EXIT_HLT,
            Body::Shutdown => kvm_bindings::KVM_EXIT_SHUTDOWN,
            Body::IrqWindowOpen => kvm_bindings::KVM_EXIT_IRQ_WINDOW_OPEN,
            Body::Intr => kvm_bindings::KVM_EXIT_INTR,
            Body::FailEntry(f) => {
                put(
                    &mut p,
                    off::EXIT + off::fail_entry::REASON,
                    &f.hardware_entry_failure_reason.to_le_bytes(),
                );
                put(&mut p, off::EXIT + off::fail_entry::CPU, &f.cpu.to_le_bytes());
                kvm_bindings::KVM_EXIT_FAIL_ENTRY
            }
            Body::InternalError(e) => {
                put(&mut p, off::EXIT + off::internal::SUBERROR, &e.suberror.to_le_bytes());
                put(&mut p, off::EXIT + off::internal::NDATA, &(e.data.len() as u32).to_le_bytes());
                words(&mut p, off::internal::DATA, &e.data);
                kvm_bindings::KVM_EXIT_INTERNAL_ERROR
            }
            Body::SystemEvent(e) => {
                put(&mut p, off::EXIT + off::system_event::TYPE, &e.event_type.to_le_bytes());
                put(&mut p, off::EXIT + off::system_event::NDATA, &(e.data.len() as u32).to_le_bytes());
                words(&mut p, off::system_event::DATA, &e.data);
                kvm_bindings::KVM_EXIT_SYSTEM_EVENT
            }
            Body::RdMsr(m) | Body::WrMsr(m) => {
                put(&mut p, off::EXIT + off::msr::ERROR, &[m.error]);
                put(&mut p, off::EXIT + off::msr::REASON, &m.reason.to_le_bytes());
                put(&mut p, off::EXIT + off::msr::INDEX, &m.index.to_le_bytes());
                put(&mut p, off::EXIT + off::msr::DATA, &m.data.to_le_bytes());
                if matches!(body, Body::RdMsr(_)) {
                    kvm_bindings::KVM_EXIT_X86_RDMSR
                } else {
                    kvm_bindings::KVM_EXIT_X86_WRMSR
                }
            }
            Body::Hypercall(h) => {
                put(&mut p, off::EXIT + off::hypercall::NR, &h.nr.to_le_bytes());
                for (i, a) in h.args.iter().enumerate() {
                    put(&mut p, off::EXIT + off::hypercall::ARGS + 8 * i, &a.to_le_bytes());
                }
                put(&mut p, off::EXIT + off::hypercall::RET, &h.ret.to_le_bytes());
                put(&mut p, off::EXIT + off::hypercall::FLAGS, &h.flags.to_le_bytes());
                kvm_bindings::KVM_EXIT_HYPERCALL
            }
            Body::Debug(d) => {
                put(&mut p, off::EXIT + off::debug::EXCEPTION, &d.exception.to_le_bytes());
                put(&mut p, off::EXIT + off::debug::PC, &d.pc.to_le_bytes());
                put(&mut p, off::EXIT + off::debug::DR6, &d.dr6.to_le_bytes());
                put(&mut p, off::EXIT + off::debug::DR7, &d.dr7.to_le_bytes());
                kvm_bindings::KVM_EXIT_DEBUG
            }
            Body::RawExit(r) => {
                put(&mut p, off::EXIT, r.data);
                r.exit_reason
            }
            other => panic!("not an exit: {other:?}"),
        };
        put(&mut p, off::EXIT_REASON, &reason.to_le_bytes());
        if let Some(r) = regs {
            put(&mut p, off::VALID_REGS, &1u64.to_le_bytes());
            put(&mut p, off::SYNC_REGS + off::regs::RIP, &r.rip.to_le_bytes());
            put(&mut p, off::SYNC_REGS + off::regs::RSP, &r.rsp.to_le_bytes());
            put(&mut p, off::SYNC_REGS + off::regs::RFLAGS, &r.rflags.to_le_bytes());
        }
        p
    }
}

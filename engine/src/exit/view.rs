//! Decoding a `kvm_run` exit into a trace record body.
//!
//! Everything is read from the bytes of the vCPU's `kvm_run` region at the offsets of
//! `include/uapi/linux/kvm.h`; the record borrows variable-length data (port I/O bytes,
//! internal-error words, raw unions) straight from the region: no copy before the writer.

use vmrr_format::{
    Body, DebugExit, Direction, FailEntry, Hypercall, InternalError, Io, Mmio, Msr, RawExit, RegsSample,
    SystemEvent, Words,
};

use crate::sys::run_page::off;

/// `KVM_SYNC_X86_REGS`.
const SYNC_X86_REGS: u64 = 1;

fn u8_at(b: &[u8], o: usize) -> u8 {
    b.get(o).copied().unwrap_or(0)
}
fn u16_at(b: &[u8], o: usize) -> u16 {
    b.get(o..o + 2).and_then(|s| s.try_into().ok()).map(u16::from_le_bytes).unwrap_or(0)
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    b.get(o..o + 4).and_then(|s| s.try_into().ok()).map(u32::from_le_bytes).unwrap_or(0)
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    b.get(o..o + 8).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0)
}

/// A byte view of one vCPU's `kvm_run` region after an exit.
#[derive(Clone, Copy)]
pub struct RunView<'a> {
    b: &'a [u8],
}

impl<'a> RunView<'a> {
    /// Wraps the region's bytes.
    pub fn new(bytes: &'a [u8]) -> Self {
        RunView { b: bytes }
    }

    /// `exit_reason`.
    pub fn exit_reason(&self) -> u32 {
        u32_at(self.b, off::EXIT_REASON)
    }

    /// `ready_for_interrupt_injection`.
    pub fn ready_for_interrupt_injection(&self) -> bool {
        u8_at(self.b, off::READY_FOR_INTERRUPT_INJECTION) != 0
    }

    /// `if_flag`.
    pub fn if_flag(&self) -> bool {
        u8_at(self.b, off::IF_FLAG) != 0
    }

    fn exit(&self) -> &'a [u8] {
        self.b.get(off::EXIT..off::EXIT + off::EXIT_LEN).unwrap_or(&[])
    }

    /// RIP, RSP and RFLAGS from the synced registers, when KVM filled them.
    pub fn sync_regs(&self) -> Option<(u64, u64, u64)> {
        if u64_at(self.b, off::VALID_REGS) & SYNC_X86_REGS == 0 {
            return None;
        }
        let r = off::SYNC_REGS;
        // struct kvm_regs: rax rbx rcx rdx rsi rdi rsp rbp r8..r15 rip rflags.
        Some((u64_at(self.b, r + 16 * 8), u64_at(self.b, r + 6 * 8), u64_at(self.b, r + 17 * 8)))
    }

    /// The exit as a record body. `system_event_data` says whether the host's
    /// `system_event.ndata` is valid (`KVM_CAP_SYSTEM_EVENT_DATA`): without it, no data
    /// words are recorded rather than guessed.
    pub fn body(&self, system_event_data: bool) -> Body<'a> {
        let e = self.exit();
        let reason = self.exit_reason();
        let raw = || Body::RawExit(RawExit { exit_reason: reason, data: e });
        match reason {
            kvm_bindings::KVM_EXIT_IO => {
                let size = u8_at(e, 1);
                let count = u32_at(e, 4);
                let data_off = usize::try_from(u64_at(e, 8)).unwrap_or(usize::MAX);
                let len = usize::from(size).saturating_mul(usize::try_from(count).unwrap_or(usize::MAX));
                let Some(data) = data_off.checked_add(len).and_then(|end| self.b.get(data_off..end)) else {
                    return raw();
                };
                let direction = if u8_at(e, 0) == 0 { Direction::In } else { Direction::Out };
                Body::Io(Io { direction, size, port: u16_at(e, 2), count, data })
            }
            kvm_bindings::KVM_EXIT_MMIO => {
                let mut data = [0u8; 8];
                data.copy_from_slice(e.get(8..16).unwrap_or(&[0; 8]));
                let len = u32_at(e, 16).min(8);
                for b in &mut data[usize::try_from(len).unwrap_or(8)..] {
                    *b = 0;
                }
                Body::Mmio(Mmio { phys_addr: u64_at(e, 0), len, is_write: u8_at(e, 20) != 0, data })
            }
            kvm_bindings::KVM_EXIT_HLT => Body::Hlt,
            kvm_bindings::KVM_EXIT_SHUTDOWN => Body::Shutdown,
            kvm_bindings::KVM_EXIT_IRQ_WINDOW_OPEN => Body::IrqWindowOpen,
            kvm_bindings::KVM_EXIT_INTR => Body::Intr,
            kvm_bindings::KVM_EXIT_FAIL_ENTRY => {
                Body::FailEntry(FailEntry { hardware_entry_failure_reason: u64_at(e, 0), cpu: u32_at(e, 8) })
            }
            kvm_bindings::KVM_EXIT_INTERNAL_ERROR => {
                // internal.data has 16 words; a larger ndata is clamped to what exists.
                let n = usize::try_from(u32_at(e, 4)).unwrap_or(16).min(16);
                Body::InternalError(InternalError {
                    suberror: u32_at(e, 0),
                    data: Words::Le(&e[8..8 + 8 * n]),
                })
            }
            kvm_bindings::KVM_EXIT_SYSTEM_EVENT => {
                let n =
                    if system_event_data { usize::try_from(u32_at(e, 4)).unwrap_or(16).min(16) } else { 0 };
                Body::SystemEvent(SystemEvent { event_type: u32_at(e, 0), data: Words::Le(&e[8..8 + 8 * n]) })
            }
            kvm_bindings::KVM_EXIT_X86_RDMSR | kvm_bindings::KVM_EXIT_X86_WRMSR => {
                let m = Msr {
                    index: u32_at(e, 12),
                    reason: u32_at(e, 8),
                    data: u64_at(e, 16),
                    error: u8_at(e, 0),
                };
                if reason == kvm_bindings::KVM_EXIT_X86_RDMSR { Body::RdMsr(m) } else { Body::WrMsr(m) }
            }
            kvm_bindings::KVM_EXIT_HYPERCALL => {
                let mut args = [0u64; 6];
                for (i, a) in args.iter_mut().enumerate() {
                    *a = u64_at(e, 8 + 8 * i);
                }
                Body::Hypercall(Hypercall {
                    nr: u64_at(e, 0),
                    args,
                    ret: u64_at(e, 56),
                    flags: u64_at(e, 64),
                })
            }
            kvm_bindings::KVM_EXIT_DEBUG => Body::Debug(DebugExit {
                exception: u32_at(e, 0),
                pc: u64_at(e, 8),
                dr6: u64_at(e, 16),
                dr7: u64_at(e, 24),
            }),
            _ => raw(),
        }
    }

    /// The register sample for this exit, with `RIP_AFTER_INSN` set when this host reports
    /// RIP past the exiting instruction for this kind of exit.
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

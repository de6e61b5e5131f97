//! The debugging role: what a debugger does to a machine besides looking at it.
//!
//! - Stops through `KVM_SET_GUEST_DEBUG` (here): single-stepping and hardware breakpoints
//!   and watchpoints (the debug registers DR0-DR3 and DR7). The vCPU then stops with
//!   `KVM_EXIT_DEBUG` (exception 1) besides its own exits. Hardware breakpoints and
//!   single-stepping work on every KVM; software breakpoints (`int3` written into guest
//!   memory) are not used: they change the guest's memory and, on some hosts, do not exit.
//! - Changes to registers and memory: [`Machine::set_regs`], [`Machine::set_sregs`],
//!   [`Machine::write_phys`], [`Machine::write_linear`].
//! - Running live once those changes took the guest off its recorded path
//!   ([`Machine::live_entry`]).

mod alter;
mod live;

pub use live::LiveEntry;

use kvm_bindings::{
    KVM_GUESTDBG_BLOCKIRQ, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP,
    kvm_guest_debug,
};

use crate::kvm::system::KvmError;
use crate::machine::Machine;

/// What a hardware stop watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// Executing the instruction at the address (before it runs).
    Execute,
    /// Writing `len` bytes (1, 2, 4 or 8) at the address (after the write).
    Write {
        /// Bytes watched.
        len: u8,
    },
    /// Reading or writing `len` bytes at the address (after the access).
    Access {
        /// Bytes watched.
        len: u8,
    },
}

/// One hardware stop: a guest-virtual (linear) address and what to watch there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HwStop {
    /// The linear address.
    pub addr: u64,
    /// What to watch.
    pub watch: Watch,
}

/// Debug registers available for hardware stops.
pub const HW_STOPS: usize = 4;

/// What the vCPU stops for besides its own exits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DebugStops {
    /// Stop after every instruction (with interrupts blocked while stepping, so a step is
    /// one instruction of the code stepped).
    pub single_step: bool,
    /// Hardware breakpoints and watchpoints, one per debug register.
    pub hw: [Option<HwStop>; HW_STOPS],
}

impl DebugStops {
    /// DR7 for the hardware stops: each enabled locally, with its kind and length.
    pub fn dr7(&self) -> u64 {
        let mut dr7 = 0u64;
        for (i, s) in self.hw.iter().enumerate() {
            let Some(s) = s else { continue };
            let (rw, len) = match s.watch {
                Watch::Execute => (0b00, 1),
                Watch::Write { len } => (0b01, len),
                Watch::Access { len } => (0b11, len),
            };
            let len_bits: u64 = match len {
                2 => 0b01,
                8 => 0b10,
                4 => 0b11,
                _ => 0b00,
            };
            dr7 |= 1 << (2 * i);
            dr7 |= (rw | (len_bits << 2)) << (16 + 4 * i);
        }
        dr7
    }

    /// Whether anything is asked for.
    pub fn any(&self) -> bool {
        self.single_step || self.hw.iter().any(Option::is_some)
    }
}

/// What a debug exit reports in DR6: the single-step trap, and which hardware stops fired
/// (a step over an instruction that also triggers a watchpoint reports both).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DebugHit {
    /// The single-step trap (DR6.BS): one instruction completed.
    pub step: bool,
    /// Hardware stops that fired, bit `n` for debug register `n` (DR6.B0-B3).
    pub hw: u8,
}

impl DebugHit {
    /// The causes of a debug exit with this DR6.
    pub fn of(dr6: u64) -> Self {
        DebugHit { step: dr6 & (1 << 14) != 0, hw: u8::try_from(dr6 & 0xf).unwrap_or(0) }
    }

    /// Whether hardware stop `n` fired.
    pub fn fired(&self, n: usize) -> bool {
        n < HW_STOPS && self.hw & (1 << n) != 0
    }
}

impl Machine {
    /// Sets what the vCPU stops for (`KVM_SET_GUEST_DEBUG`); all off restores normal runs.
    ///
    /// # Errors
    /// KVM refused (a host without `KVM_CAP_SET_GUEST_DEBUG`).
    pub fn set_debug_stops(&mut self, stops: DebugStops) -> Result<(), KvmError> {
        let mut d = kvm_guest_debug::default();
        if stops.any() {
            d.control = KVM_GUESTDBG_ENABLE;
            if stops.single_step {
                d.control |= KVM_GUESTDBG_SINGLESTEP | KVM_GUESTDBG_BLOCKIRQ;
            }
            if stops.hw.iter().any(Option::is_some) {
                d.control |= KVM_GUESTDBG_USE_HW_BP;
                for (i, s) in stops.hw.iter().enumerate() {
                    d.arch.debugreg[i] = s.map_or(0, |s| s.addr);
                }
                d.arch.debugreg[7] = stops.dr7();
            }
        }
        self.vm.vcpu().set_guest_debug(&d).map_err(KvmError::on("KVM_SET_GUEST_DEBUG"))?;
        self.debug = stops;
        Ok(())
    }

    /// What the vCPU stops for now.
    pub fn debug_stops(&self) -> DebugStops {
        self.debug
    }
}

/// Whether this host's KVM single-steps guest code running at ring 3, measured once per
/// process with a tiny ring-3 guest (`nop; nop; out`): the first step must stop with a
/// debug exit. Hardware VMX/SVM hosts intercept the guest's single-step trap at every
/// privilege level; a paravirtual host that runs ring-3 guest code natively may hand the
/// trap to the guest instead (which then triple-faults), and then vmrr runs ring-3
/// stretches without stepping them.
pub fn host_steps_ring3() -> bool {
    static STEPS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let stops = DebugStops { single_step: true, ..DebugStops::default() };
    // nop; nop; out 0x80, al
    *STEPS.get_or_init(|| probe(&[0x90, 0x90, 0xe6, 0x80], 3, stops).unwrap_or(false))
}

/// Whether this host's KVM stops for hardware watchpoints (data breakpoints in DR0-DR3)
/// in ring-0 guest code, measured once per process with a tiny guest that writes a
/// watched byte and then exits: the write must stop with a debug exit first. Hardware
/// VMX/SVM hosts do (the CPU checks DR7 as the guest runs); a host whose KVM emulates
/// ring-0 code does not (KVM's instruction emulator checks code breakpoints only), and
/// then watchpoints are found by single-stepping and decoding each instruction's memory
/// accesses instead.
pub fn host_watches_ring0() -> bool {
    static WATCHES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let mut stops = DebugStops::default();
    stops.hw[0] = Some(HwStop { addr: PROBE_DATA, watch: Watch::Write { len: 1 } });
    // mov byte [PROBE_DATA], 1; out 0x80, al
    let [a, b, c, d] = u32::try_from(PROBE_DATA).unwrap_or(0).to_le_bytes();
    *WATCHES
        .get_or_init(|| probe(&[0xc6, 0x04, 0x25, a, b, c, d, 0x01, 0xe6, 0x80], 0, stops).unwrap_or(false))
}

/// Guest-physical (and, identity-mapped, linear) address the watchpoint probe writes.
const PROBE_DATA: u64 = 0x20_0000;

/// Runs `code` in a fresh long-mode machine at privilege `ring` with `stops` armed:
/// whether its first exit is a debug stop.
fn probe(code: &[u8], ring: u8, stops: DebugStops) -> Result<bool, Box<dyn std::error::Error>> {
    use crate::devices::console::Console;
    use crate::guests::{LONG_LOAD, LONG_STACK};
    use crate::kvm::vm::{Vm, VmConfig};
    let vm = Vm::new(VmConfig { mem_bytes: 4 << 20, ..VmConfig::default() })?;
    let mut m = Machine::new(vm, Console::capture_only(), Console::capture_only())?;
    m.memory().write(vm_memory::GuestAddress(LONG_LOAD), code)?;
    crate::guests::boot::setup_long_mode(m.vm().vcpu(), m.memory(), LONG_LOAD, LONG_STACK, ring)?;
    m.set_debug_stops(stops)?;
    m.run_to_exit()?;
    Ok(matches!(m.exit().body, vmrr_format::Body::Debug(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dr7_encodes_kind_and_length() {
        let mut s = DebugStops::default();
        s.hw[0] = Some(HwStop { addr: 0x1000, watch: Watch::Execute });
        s.hw[2] = Some(HwStop { addr: 0x2000, watch: Watch::Write { len: 4 } });
        // L0, L2; RW2 = 01, LEN2 = 11.
        assert_eq!(s.dr7(), 0b1 | 0b1_0000 | (0b1101 << 24));
        assert_eq!(DebugHit::of(0xffff_0ff4), DebugHit { step: false, hw: 0b100 });
        assert!(DebugHit::of(0xffff_0ff4).fired(2));
        assert_eq!(DebugHit::of(0xffff_4ff0), DebugHit { step: true, hw: 0 });
        assert_eq!(DebugHit::of(0xffff_4ff2), DebugHit { step: true, hw: 0b10 });
    }
}

//! Record kinds.
//!
//! Kinds below `0x8000` are exits: the value is the KVM exit reason (`KVM_EXIT_*` in
//! `include/uapi/linux/kvm.h`), so a future version can give any exit reason a structured
//! body without renumbering. [`RAW_EXIT`] holds exits this version does not structure.
//! Kinds from `0x8000` are events the engine and replay need. A reader skips a kind it
//! does not know by the record's size and still knows, from the range, whether it was an
//! exit.

/// `KVM_EXIT_IO`: port I/O.
pub const IO: u16 = 2;
/// `KVM_EXIT_HYPERCALL`.
pub const HYPERCALL: u16 = 3;
/// `KVM_EXIT_DEBUG`.
pub const DEBUG: u16 = 4;
/// `KVM_EXIT_HLT`.
pub const HLT: u16 = 5;
/// `KVM_EXIT_MMIO`.
pub const MMIO: u16 = 6;
/// `KVM_EXIT_IRQ_WINDOW_OPEN`.
pub const IRQ_WINDOW_OPEN: u16 = 7;
/// `KVM_EXIT_SHUTDOWN` (triple fault).
pub const SHUTDOWN: u16 = 8;
/// `KVM_EXIT_FAIL_ENTRY`.
pub const FAIL_ENTRY: u16 = 9;
/// `KVM_EXIT_INTR`.
pub const INTR: u16 = 10;
/// `KVM_EXIT_INTERNAL_ERROR` (including emulation failures).
pub const INTERNAL_ERROR: u16 = 17;
/// `KVM_EXIT_SYSTEM_EVENT`.
pub const SYSTEM_EVENT: u16 = 24;
/// `KVM_EXIT_X86_RDMSR`.
pub const X86_RDMSR: u16 = 29;
/// `KVM_EXIT_X86_WRMSR`.
pub const X86_WRMSR: u16 = 30;
/// Any exit this version does not structure, kept as the raw `kvm_run` exit union.
pub const RAW_EXIT: u16 = 0x7fff;
/// First event kind.
pub const FIRST_EVENT: u16 = 0x8000;
/// An interrupt injected before re-entry.
pub const INTERRUPT: u16 = 0x8001;
/// A snapshot was taken here.
pub const CHECKPOINT: u16 = 0x8002;
/// Key/value text.
pub const ANNOTATION: u16 = 0x8003;
/// The run ended.
pub const END_OF_RUN: u16 = 0x8004;
/// The CPUID set the guest saw.
pub const CPUID: u16 = 0x8005;
/// The VMM changed `request_interrupt_window` before re-entry.
pub const INTERRUPT_WINDOW: u16 = 0x8006;
/// The recording VMM's devices wrote into guest memory here (DMA), before re-entry
/// (format 1.1, with the required `guest-write` feature).
pub const GUEST_WRITE: u16 = 0x8007;
/// The VMM changed an interrupt line of KVM's in-kernel irqchip (format 1.2, with the
/// replay-required `irq-line` feature).
pub const IRQ_LINE: u16 = 0x8008;

/// True for exit kinds (known or not).
pub const fn is_exit(kind: u16) -> bool {
    kind < FIRST_EVENT
}

/// The lower-case name used by `vmrr inspect --json` and `vmrr stats`.
pub fn name(kind: u16) -> &'static str {
    match kind {
        IO => "io",
        HYPERCALL => "hypercall",
        DEBUG => "debug",
        HLT => "hlt",
        MMIO => "mmio",
        IRQ_WINDOW_OPEN => "irq_window_open",
        SHUTDOWN => "shutdown",
        FAIL_ENTRY => "fail_entry",
        INTR => "intr",
        INTERNAL_ERROR => "internal_error",
        SYSTEM_EVENT => "system_event",
        X86_RDMSR => "x86_rdmsr",
        X86_WRMSR => "x86_wrmsr",
        RAW_EXIT => "raw_exit",
        INTERRUPT => "interrupt",
        CHECKPOINT => "checkpoint",
        ANNOTATION => "annotation",
        END_OF_RUN => "end_of_run",
        CPUID => "cpuid",
        INTERRUPT_WINDOW => "interrupt_window",
        GUEST_WRITE => "guest_write",
        IRQ_LINE => "irq_line",
        k if is_exit(k) => "unknown_exit",
        _ => "unknown_event",
    }
}

/// The `KVM_EXIT_*` name of an exit reason (for raw exits and reports).
pub fn kvm_exit_name(reason: u32) -> &'static str {
    match reason {
        0 => "KVM_EXIT_UNKNOWN",
        1 => "KVM_EXIT_EXCEPTION",
        2 => "KVM_EXIT_IO",
        3 => "KVM_EXIT_HYPERCALL",
        4 => "KVM_EXIT_DEBUG",
        5 => "KVM_EXIT_HLT",
        6 => "KVM_EXIT_MMIO",
        7 => "KVM_EXIT_IRQ_WINDOW_OPEN",
        8 => "KVM_EXIT_SHUTDOWN",
        9 => "KVM_EXIT_FAIL_ENTRY",
        10 => "KVM_EXIT_INTR",
        11 => "KVM_EXIT_SET_TPR",
        12 => "KVM_EXIT_TPR_ACCESS",
        16 => "KVM_EXIT_NMI",
        17 => "KVM_EXIT_INTERNAL_ERROR",
        18 => "KVM_EXIT_OSI",
        19 => "KVM_EXIT_PAPR_HCALL",
        21 => "KVM_EXIT_WATCHDOG",
        23 => "KVM_EXIT_EPR",
        24 => "KVM_EXIT_SYSTEM_EVENT",
        26 => "KVM_EXIT_IOAPIC_EOI",
        27 => "KVM_EXIT_HYPERV",
        28 => "KVM_EXIT_ARM_NISV",
        29 => "KVM_EXIT_X86_RDMSR",
        30 => "KVM_EXIT_X86_WRMSR",
        31 => "KVM_EXIT_DIRTY_RING_FULL",
        32 => "KVM_EXIT_AP_RESET_HOLD",
        33 => "KVM_EXIT_X86_BUS_LOCK",
        34 => "KVM_EXIT_XEN",
        37 => "KVM_EXIT_NOTIFY",
        39 => "KVM_EXIT_MEMORY_FAULT",
        _ => "KVM_EXIT_?",
    }
}

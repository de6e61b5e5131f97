//! Built-in guests, assembled at run time with iced-x86, and flat-binary images.
//!
//! Each guest behaves the same on hardware KVM and on hosts that emulate ring-0 code:
//! loops that must be fast (the storms, memory churn) run at ring 3, where such hosts run
//! code natively; guests that need privileged instructions (RDMSR, LIDT, HLT) are short.

pub mod asm;
pub mod boot;
mod churn;
pub mod decimal;
pub mod devices;
mod dirty;
mod emulation_failure;
mod entropy;
pub mod firmware;
mod hello;
mod interrupts;
pub mod linux;
mod rewrite;
// The smp code casts fixed layout constants (offsets, page numbers) that its layout
// tests bound; none is derived from input.
#[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, clippy::cast_sign_loss)]
pub mod smp;
#[allow(clippy::cast_possible_truncation)]
mod smp_counter;
#[allow(clippy::cast_possible_truncation)]
mod smp_fail;
mod storm;
mod tsc;
pub mod virtqueue;

use std::path::{Path, PathBuf};

use vm_memory::GuestAddress;

use crate::guests::boot::{BootMode, LONG_MODE_FREE};
use crate::kvm::memory::{GuestMemory, MMIO_HOLE_START};

pub use churn::CHURN_START;
pub use emulation_failure::FAILING as EMULATION_FAILURE_INSN;
pub use hello::{LONG_TEXT as HELLO_LONG_TEXT, REAL_TEXT as HELLO_TEXT};
pub use interrupts::{PERIOD_US as INTERRUPT_PERIOD_US, VECTOR as INTERRUPT_VECTOR};
pub use smp_fail::FAILING as SMP_FAIL_INSN;

/// Loading a guest image failed (checked before KVM runs anything).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The image file could not be read.
    #[error("cannot read image {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The image file is not a regular file (a FIFO, a device, a file of /proc).
    #[error(transparent)]
    Input(#[from] vmrr_format::input::InputError),
    /// The image or its placement does not fit guest memory.
    #[error("{0}")]
    Placement(String),
    /// A built-in guest could not be assembled (a bug).
    #[error("cannot assemble guest {name}: {detail}")]
    Assemble {
        /// Guest name.
        name: &'static str,
        /// Assembler error.
        detail: String,
    },
    /// The guest cannot run on this many vCPUs.
    #[error("guest {name} runs on {min} to {max} vCPUs, not {vcpus}")]
    Vcpus {
        /// Guest name.
        name: &'static str,
        /// vCPUs asked for.
        vcpus: u32,
        /// Fewest it runs on.
        min: u32,
        /// Most it runs on.
        max: u32,
    },
    /// Writing into guest memory failed.
    #[error("cannot write the image into guest memory")]
    GuestMemory(#[source] vm_memory::GuestMemoryError),
}

/// Where long-mode images load.
pub const LONG_LOAD: u64 = 0x10_0000;
/// Long-mode stack top.
pub const LONG_STACK: u64 = 0x8_0000;
/// Where real-mode images load.
pub const REAL_LOAD: u64 = 0x7c00;

/// A guest ready to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    /// Name (built-in) or file name.
    pub name: String,
    /// Bytes to load.
    pub bytes: Vec<u8>,
    /// Guest-physical load address.
    pub load_addr: u64,
    /// Entry point (guest-physical = linear).
    pub entry: u64,
    /// CPU mode at entry.
    pub mode: BootMode,
    /// Stack pointer at entry (long mode).
    pub stack: u64,
}

/// Parameters of built-in guests.
#[derive(Debug, Clone, Copy)]
pub struct GuestParams {
    /// Loop count for the storms, interrupts to count, churn rounds.
    pub iterations: Option<u64>,
    /// Guest memory in bytes (memory-churn covers all of it).
    pub mem_bytes: u64,
    /// vCPUs the machine has (vCPU 0 starts the guest; the smp guests start the others).
    pub vcpus: u32,
}

/// A built-in guest.
#[derive(Debug, Clone, Copy)]
pub struct Builtin {
    /// Name for `--guest`.
    pub name: &'static str,
    /// CPU mode.
    pub mode: BootMode,
    /// What it does.
    pub about: &'static str,
    /// Default `--iterations`, where it takes one.
    pub default_iterations: Option<u64>,
    /// Fewest vCPUs it runs on.
    pub min_vcpus: u32,
    /// Most vCPUs it runs on. A guest that never starts the other vCPUs takes any number:
    /// they stay waiting for INIT/SIPI.
    pub max_vcpus: u32,
}

/// Every built-in guest.
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "hello",
        mode: BootMode::Real,
        about: "prints a greeting over serial and exits",
        default_iterations: None,
        min_vcpus: 1,
        max_vcpus: u32::MAX,
    },
    Builtin {
        name: "hello-long",
        mode: BootMode::Long { ring: 0 },
        about: "the greeting, from 64-bit long mode",
        default_iterations: None,
        min_vcpus: 1,
        max_vcpus: u32::MAX,
    },
    Builtin {
        name: "pio-storm",
        mode: BootMode::Long { ring: 3 },
        about: "N port writes (N exits), then exits",
        default_iterations: Some(100_000),
        min_vcpus: 1,
        max_vcpus: u32::MAX,
    },
    Builtin {
        name: "mmio-storm",
        mode: BootMode::Long { ring: 3 },
        about: "N MMIO writes (N exits), then exits",
        default_iterations: Some(100_000),
        min_vcpus: 1,
        max_vcpus: u32::MAX,
    },
    Builtin {
        name: "entropy",
        mode: BootMode::Long { ring: 0 },
        about: "reads the entropy port, clock port and clock MSR; prints a digest that differs per run",
        default_iterations: None,
        min_vcpus: 1,
        max_vcpus: u32::MAX,
    },
    Builtin {
        name: "interrupts",
        mode: BootMode::Long { ring: 0 },
        about: "installs an IDT, counts N timer interrupts while halting, prints the count",
        default_iterations: Some(10),
        min_vcpus: 1,
        max_vcpus: u32::MAX,
    },
    Builtin {
        name: "memory-churn",
        mode: BootMode::Long { ring: 3 },
        about: "dirties pages across all memory for N rounds, prints a checksum",
        default_iterations: Some(3),
        min_vcpus: 1,
        max_vcpus: u32::MAX,
    },
    Builtin {
        name: "emulation-failure",
        mode: BootMode::Long { ring: 0 },
        about: "computes and prints, then runs popcnt on MMIO: KVM cannot emulate it",
        default_iterations: None,
        min_vcpus: 1,
        max_vcpus: u32::MAX,
    },
    Builtin {
        name: "tsc",
        mode: BootMode::Long { ring: 0 },
        about: "reads the TSC N times and prints it: its replay diverges on every host (the TSC does not exit)",
        default_iterations: Some(3),
        min_vcpus: 1,
        max_vcpus: u32::MAX,
    },
    Builtin {
        name: "tsc-fail",
        mode: BootMode::Long { ring: 0 },
        about: "prints the TSC N times, then fails like emulation-failure: the path diverges, the failure point reproduces",
        default_iterations: Some(2),
        min_vcpus: 1,
        max_vcpus: u32::MAX,
    },
    Builtin {
        name: "virtqueue",
        mode: BootMode::Long { ring: 0 },
        about: "N requests to a device thread (ioeventfd notify, irqfd completion: no exits), each buffer checked; needs --irqchip kernel",
        default_iterations: Some(16),
        min_vcpus: 1,
        max_vcpus: u32::MAX,
    },
    Builtin {
        name: "dirty-pages",
        mode: BootMode::Long { ring: 3 },
        about: "dirties N pages, exits, repeats forever (snapshot benchmarks; end it with --max-exits)",
        default_iterations: Some(64),
        min_vcpus: 1,
        max_vcpus: u32::MAX,
    },
    Builtin {
        name: "dirty-paced",
        mode: BootMode::Long { ring: 3 },
        about: "dirties N pages, exits, works ~1 ms, repeats forever (checkpoint-overhead benchmark; --max-exits)",
        default_iterations: Some(64),
        min_vcpus: 1,
        max_vcpus: u32::MAX,
    },
    Builtin {
        name: "rewrite-window",
        mode: BootMode::Long { ring: 3 },
        about: "rewrites the same N pages every round, exiting once per round, forever (background checkpoints; end it with --max-exits)",
        default_iterations: Some(64),
        min_vcpus: 1,
        max_vcpus: u32::MAX,
    },
    Builtin {
        name: "smp-counter",
        mode: BootMode::Long { ring: 0 },
        about: "each vCPU adds 1 to a shared counter N times under a spinlock and prints `cpu K: S` (its share, decimal); vCPU 0 checks the total",
        default_iterations: Some(2000),
        min_vcpus: 1,
        max_vcpus: smp::layout::MAX_VCPUS,
    },
    Builtin {
        name: "smp-fail",
        mode: BootMode::Long { ring: 0 },
        about: "each vCPU prints rounds over serial; after N rounds the last vCPU runs popcnt on MMIO (KVM cannot emulate it) while the others keep printing",
        default_iterations: Some(3),
        min_vcpus: 2,
        max_vcpus: smp::layout::MAX_VCPUS,
    },
];

/// The built-in named `name`.
pub fn find(name: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == name)
}

/// Assembles built-in guest `name`.
///
/// # Errors
/// An unknown name, or an assembler error (a bug).
pub fn builtin(name: &str, params: &GuestParams) -> Result<GuestImage, LoadError> {
    let b = find(name).ok_or_else(|| {
        LoadError::Placement(format!(
            "unknown guest '{name}' (built-ins: {})",
            BUILTINS.iter().map(|b| b.name).collect::<Vec<_>>().join(", ")
        ))
    })?;
    if params.vcpus < b.min_vcpus || params.vcpus > b.max_vcpus {
        return Err(LoadError::Vcpus {
            name: b.name,
            vcpus: params.vcpus,
            min: b.min_vcpus,
            max: b.max_vcpus,
        });
    }
    let n = params.iterations.or(b.default_iterations).unwrap_or(0);
    let low_end = params.mem_bytes.min(MMIO_HOLE_START);
    let mut ranges = vec![(CHURN_START, low_end)];
    if params.mem_bytes > low_end {
        ranges.push((
            crate::kvm::memory::MMIO_HOLE_END,
            crate::kvm::memory::MMIO_HOLE_END + params.mem_bytes - low_end,
        ));
    }
    let assembled: Result<Vec<u8>, String> = match b.name {
        "smp-counter" | "smp-fail" => {
            if params.mem_bytes < smp::layout::AP_STACKS_END {
                return Err(LoadError::Placement(format!(
                    "guest {} needs at least {:#x} bytes of memory (its AP stacks end there)",
                    b.name,
                    smp::layout::AP_STACKS_END
                )));
            }
            let built = if b.name == "smp-counter" {
                smp_counter::build(LONG_LOAD, params.vcpus, n)
            } else {
                smp_fail::build(LONG_LOAD, params.vcpus, n)
            };
            built.map_err(|e| with_source(&e))
        }
        name => single(name, n, low_end, &ranges).map_err(|e| e.to_string()),
    };
    let bytes = assembled.map_err(|detail| LoadError::Assemble { name: b.name, detail })?;
    let load_addr = if b.mode == BootMode::Real { REAL_LOAD } else { LONG_LOAD };
    Ok(GuestImage {
        name: b.name.to_string(),
        bytes,
        load_addr,
        entry: load_addr,
        mode: b.mode,
        stack: LONG_STACK,
    })
}

/// `e` and its cause, if any, as text.
fn with_source(e: &dyn std::error::Error) -> String {
    match e.source() {
        Some(s) => format!("{e}: {s}"),
        None => e.to_string(),
    }
}

/// Assembles a one-vCPU built-in.
fn single(name: &str, n: u64, low_end: u64, ranges: &[(u64, u64)]) -> Result<Vec<u8>, iced_x86::IcedError> {
    match name {
        "hello" => hello::real(),
        "hello-long" => hello::long(LONG_LOAD),
        "pio-storm" => storm::pio(LONG_LOAD, n),
        "mmio-storm" => storm::mmio(LONG_LOAD, n),
        "entropy" => entropy::build(LONG_LOAD),
        "interrupts" => interrupts::build(LONG_LOAD, n),
        "memory-churn" => churn::build(LONG_LOAD, ranges, n),
        "dirty-pages" => dirty::build(LONG_LOAD, low_end, n),
        "dirty-paced" => dirty::build_paced(LONG_LOAD, low_end, n),
        "rewrite-window" => rewrite::build(LONG_LOAD, low_end, n),
        "tsc" => tsc::build(LONG_LOAD, n, false),
        "tsc-fail" => tsc::build(LONG_LOAD, n, true),
        "virtqueue" => virtqueue::build(LONG_LOAD, n),
        _ => emulation_failure::build(LONG_LOAD),
    }
}

/// Reads a flat binary image of at most `max_len` bytes (the guest's memory: a larger one
/// cannot fit), from a regular file only; its size is checked before it is read.
///
/// # Errors
/// The file cannot be read, is not a regular file, or is larger than `max_len`.
pub fn from_file(
    path: &Path,
    load_addr: u64,
    entry: u64,
    mode: BootMode,
    max_len: u64,
) -> Result<GuestImage, LoadError> {
    let bytes = read_regular(path, max_len)?;
    Ok(GuestImage {
        name: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        bytes,
        load_addr,
        entry,
        mode,
        stack: LONG_STACK,
    })
}

/// Reads all of `path`, a regular file of at most `max_len` bytes (checked before
/// reading; the read stops at the cap should the file grow meanwhile).
///
/// # Errors
/// Not a regular file, larger than `max_len`, or unreadable.
pub fn read_regular(path: &Path, max_len: u64) -> Result<Vec<u8>, LoadError> {
    use std::io::Read;
    let (f, md) = vmrr_format::input::open_regular(path).map_err(|e| match e {
        vmrr_format::input::InputError::Io { path, source } => LoadError::Read { path, source },
        e => LoadError::Input(e),
    })?;
    if md.len() > max_len {
        return Err(LoadError::Placement(format!(
            "{} of {} bytes does not fit the {max_len} bytes it may take (the guest's memory, or the firmware limit)",
            path.display(),
            md.len()
        )));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(md.len()).unwrap_or(0));
    f.take(max_len.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|source| LoadError::Read { path: path.to_path_buf(), source })?;
    if bytes.len() as u64 > max_len {
        return Err(LoadError::Placement(format!("{} grew past {max_len} bytes while read", path.display())));
    }
    Ok(bytes)
}

/// Checks that `image` fits RAM of a VM with `slots` (before any KVM call).
///
/// # Errors
/// [`LoadError::Placement`] naming what does not fit.
pub fn check_placement(image: &GuestImage, ram: &[(u64, u64)]) -> Result<(), LoadError> {
    let len = image.bytes.len() as u64;
    let end =
        image.load_addr.checked_add(len).ok_or_else(|| LoadError::Placement("image end overflows".into()))?;
    let inside = |a: u64, b: u64| ram.iter().any(|&(s, e)| a >= s && b <= e);
    if !inside(image.load_addr, end) {
        return Err(LoadError::Placement(format!(
            "image of {len} bytes at {:#x} does not fit guest RAM ({})",
            image.load_addr,
            describe(ram)
        )));
    }
    if !(image.entry >= image.load_addr && image.entry < end) {
        return Err(LoadError::Placement(format!(
            "entry point {:#x} is outside the image ({:#x}..{end:#x})",
            image.entry, image.load_addr
        )));
    }
    match image.mode {
        BootMode::Real if end > 0x10_0000 => {
            Err(LoadError::Placement(format!("a real-mode image must end below 1 MiB (ends at {end:#x})")))
        }
        BootMode::Long { .. } if image.load_addr < LONG_MODE_FREE => Err(LoadError::Placement(format!(
            "a long-mode image must load at or above {LONG_MODE_FREE:#x} (page tables live below)"
        ))),
        _ => Ok(()),
    }
}

fn describe(ram: &[(u64, u64)]) -> String {
    ram.iter().map(|(s, e)| format!("{s:#x}..{e:#x}")).collect::<Vec<_>>().join(", ")
}

/// Copies `image` into guest memory.
///
/// # Errors
/// The range is not backed.
pub fn load(mem: &GuestMemory, image: &GuestImage) -> Result<(), LoadError> {
    let ram = mem.ram_ranges();
    check_placement(image, &ram)?;
    mem.write(GuestAddress(image.load_addr), &image.bytes).map_err(LoadError::GuestMemory)
}

#[cfg(test)]
mod tests {
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};

    use super::*;

    fn params(vcpus: u32) -> GuestParams {
        GuestParams { iterations: None, mem_bytes: 64 << 20, vcpus }
    }

    #[test]
    fn smp_guests_assemble_for_1_2_4_8_vcpus_and_fit_below_the_ap_stacks() {
        for vcpus in [1, 2, 4, 8] {
            for name in ["smp-counter", "smp-fail"] {
                if name == "smp-fail" && vcpus == 1 {
                    continue;
                }
                let img = builtin(name, &params(vcpus)).expect(name);
                assert_eq!(img.load_addr, LONG_LOAD);
                assert!(LONG_LOAD + img.bytes.len() as u64 <= smp::layout::AP_STACKS, "{name}");
                check_placement(&img, &[(0, 64 << 20)]).expect("placement");
            }
        }
    }

    #[test]
    fn one_vcpu_smp_counter_starts_no_ap() {
        let one = builtin("smp-counter", &params(1)).expect("1");
        let two = builtin("smp-counter", &params(2)).expect("2");
        let tramp = smp::trampoline::trampoline().expect("trampoline");
        let holds = |img: &GuestImage| img.bytes.windows(tramp.len()).any(|w| w == tramp.as_slice());
        assert!(!holds(&one));
        assert!(holds(&two));
    }

    #[test]
    fn smp_fail_runs_popcnt_on_mmio() {
        let img = builtin("smp-fail", &params(2)).expect("2");
        let mut d = Decoder::with_ip(64, &img.bytes, img.load_addr, DecoderOptions::NONE);
        let popcnt = d.iter().find(|i| i.mnemonic() == Mnemonic::Popcnt).expect("popcnt");
        assert_eq!(popcnt.to_string(), SMP_FAIL_INSN);
    }

    #[test]
    fn vcpu_counts_outside_a_guests_range_are_refused_naming_it() {
        let e = builtin("smp-fail", &params(1)).expect_err("1 vCPU");
        assert!(matches!(e, LoadError::Vcpus { name: "smp-fail", vcpus: 1, min: 2, .. }), "{e:?}");
        assert!(e.to_string().contains("smp-fail"), "{e}");
        let too_many = smp::layout::MAX_VCPUS + 1;
        assert!(matches!(builtin("smp-counter", &params(too_many)), Err(LoadError::Vcpus { .. })));
        assert!(matches!(builtin("hello", &params(0)), Err(LoadError::Vcpus { .. })));
        builtin("hello", &params(4)).expect("a one-vCPU guest leaves the others waiting");
    }

    #[test]
    fn smp_guests_refuse_memory_without_room_for_the_ap_stacks() {
        let p = GuestParams { iterations: None, mem_bytes: 2 << 20, vcpus: 2 };
        assert!(matches!(builtin("smp-counter", &p), Err(LoadError::Placement(_))));
    }
}

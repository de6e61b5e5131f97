//! Booting a Linux kernel: the file checked and unpacked before KVM is touched
//! ([`LinuxSpec::prepare`]), then loaded with rust-vmm's `linux-loader` and started through
//! its PVH entry or the 64-bit boot protocol ([`boot`]), on a machine with KVM's in-kernel
//! irqchip and PIT and the PC devices early Linux touches ([`bus`]).
//!
//! - [`image`]: ELF or bzImage, the payload's compression, unpacking.
//! - [`elf`]: the ELF checked (segments, PVH note) and the kernel's banner.
//! - [`layout`]: where boot structures live, the memory map, the initramfs's place.
//! - [`acpi`]: the ACPI tables (CPUs, IOAPIC, power-off, reset).
//! - [`boot`]: loading and the vCPU's initial state.

pub mod acpi;
pub mod boot;
pub mod elf;
pub mod image;
pub mod layout;

use std::path::{Path, PathBuf};

use sha2::Digest;

use crate::devices::console::Console;
use crate::devices::legacy::{absent, acpi_pm, cmos, pci, uart};
use crate::devices::pseudo::{debugcon, sink};
use crate::devices::{Bus, Interrupts, map};
use crate::guests::LoadError;
use crate::kvm::memory::MMIO_HOLE_START;
use image::{Compression, SetupHeader, Unpacked};

/// The command line a repro boots with unless `--cmdline` replaces it:
/// - `console=ttyS0` and `earlyprintk=serial,ttyS0,115200`: every line, the earliest ones
///   included, on the one serial port (the trace holds each byte);
/// - `nokaslr`: the kernel at the addresses its `System.map` gives, so recorded RIPs name
///   functions;
/// - `panic=-1`: a panic asks for a reset at once (vmrr ends the run there, exit 5,
///   instead of the kernel spinning until `--max-seconds`); vmrr never reboots a guest;
/// - `reboot=acpi`: through the ACPI reset register vmrr's tables describe;
/// - `8250.nr_uarts=1`: no probing of the serial ports the machine does not have.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 earlyprintk=serial,ttyS0,115200 nokaslr panic=-1 reboot=acpi 8250.nr_uarts=1";

/// The ISA line of the serial port.
pub const SERIAL_IRQ: u8 = 4;

/// Largest kernel file read.
pub const MAX_KERNEL_FILE: u64 = 256 << 20;
/// Largest ELF a bzImage's payload may unpack to (a kernel is some tens of MiB; the cap
/// stops a decompression bomb, whatever the guest's memory).
pub const MAX_UNPACKED: u64 = 1 << 30;

/// How the kernel is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BootProtocol {
    /// PVH when the ELF has the note, else the 64-bit boot protocol.
    #[default]
    Auto,
    /// The PVH entry (32-bit protected mode, `hvm_start_info` in EBX).
    Pvh,
    /// The 64-bit boot protocol (long mode at `startup_64`, `boot_params` in RSI).
    Linux64,
}

impl BootProtocol {
    /// Parses `auto`, `pvh` or `linux64`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(BootProtocol::Auto),
            "pvh" => Some(BootProtocol::Pvh),
            "linux64" => Some(BootProtocol::Linux64),
            _ => None,
        }
    }

    /// Its name, as `--boot-protocol` takes it.
    pub fn name(self) -> &'static str {
        match self {
            BootProtocol::Auto => "auto",
            BootProtocol::Pvh => "pvh",
            BootProtocol::Linux64 => "linux64",
        }
    }
}

/// A kernel to boot, as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinuxSpec {
    /// The kernel file (ELF vmlinux or bzImage).
    pub kernel: PathBuf,
    /// The initramfs, if any.
    pub initrd: Option<PathBuf>,
    /// The command line (`None`: [`DEFAULT_CMDLINE`]).
    pub cmdline: Option<String>,
    /// How to enter it.
    pub protocol: BootProtocol,
}

/// A file's identity: its SHA-256 and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileIdentity {
    /// Lower-case hex SHA-256 of the file's bytes.
    pub sha256: String,
    /// Its size in bytes.
    pub len: u64,
}

impl FileIdentity {
    /// The identity of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        let d = sha2::Sha256::digest(bytes);
        FileIdentity { sha256: d.iter().map(|b| format!("{b:02x}")).collect(), len: bytes.len() as u64 }
    }
}

/// What will be entered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// An ELF kernel at its PVH entry.
    Pvh {
        /// The entry's physical address.
        entry: u64,
    },
    /// An ELF kernel at its `startup_64` through the 64-bit boot protocol.
    Elf64 {
        /// The ELF entry (physical).
        entry: u64,
    },
    /// A bzImage's own 64-bit entry (its decompressor runs in the guest).
    BzImage,
}

impl Entry {
    /// The protocol's name for reports.
    pub fn protocol(&self) -> &'static str {
        match self {
            Entry::Pvh { .. } => "pvh",
            Entry::Elf64 { .. } | Entry::BzImage => "linux64",
        }
    }
}

/// A kernel checked and unpacked, ready to load (nothing of KVM touched yet).
#[derive(Debug, Clone)]
pub struct PreparedKernel {
    /// The kernel file's identity.
    pub kernel_id: FileIdentity,
    /// The bytes to load: the ELF, or the bzImage file itself.
    pub image: Vec<u8>,
    /// The ELF's checked layout (`None` for a bzImage booted as it is).
    pub elf: Option<elf::ElfKernel>,
    /// The bzImage's header, when the file was one.
    pub setup: Option<SetupHeader>,
    /// Its raw bytes (`struct setup_header` from 0x1f1), for the zero page.
    pub setup_raw: Option<Vec<u8>>,
    /// The bzImage payload's compression, when the file was one.
    pub compression: Option<Compression>,
    /// How it is entered.
    pub entry: Entry,
    /// The kernel's version string (`Linux version ...`), when found.
    pub version: Option<String>,
    /// The initramfs and its identity.
    pub initrd: Option<(Vec<u8>, FileIdentity)>,
    /// The command line.
    pub cmdline: String,
}

impl PreparedKernel {
    /// The kernel's identity as trace annotations: what replay checks a kernel given to it
    /// against, and what reports show.
    pub fn annotations(&self) -> Vec<(String, String)> {
        let mut a = vec![
            ("vmrr.kernel_sha256".to_string(), self.kernel_id.sha256.clone()),
            ("vmrr.kernel_bytes".to_string(), self.kernel_id.len.to_string()),
            ("vmrr.kernel_format".to_string(), self.format()),
            ("vmrr.kernel_entry".to_string(), self.entry.protocol().to_string()),
        ];
        if let Some(v) = &self.version {
            a.push(("vmrr.kernel_version".to_string(), v.clone()));
        }
        if let Some((_, id)) = &self.initrd {
            a.push(("vmrr.initrd_sha256".to_string(), id.sha256.clone()));
            a.push(("vmrr.initrd_bytes".to_string(), id.len.to_string()));
        }
        a
    }

    /// `elf`, or `bzImage (lz4)` and the like.
    pub fn format(&self) -> String {
        match (self.setup.is_some(), self.compression) {
            (true, Some(c)) => format!("bzImage ({})", c.name()),
            (true, None) => "bzImage".to_string(),
            (false, _) => "elf".to_string(),
        }
    }
}

/// A kernel, initramfs or command line vmrr cannot boot (found before KVM is touched).
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A file could not be read (or is not a regular file, or is too large).
    #[error(transparent)]
    Read(#[from] LoadError),
    /// The kernel file is not a kernel vmrr can boot.
    #[error("kernel {}", path.display())]
    Image {
        /// The kernel file.
        path: PathBuf,
        /// Why.
        #[source]
        source: image::ImageError,
    },
    /// The ELF (given or unpacked) is unusable.
    #[error("kernel {}", path.display())]
    Elf {
        /// The kernel file.
        path: PathBuf,
        /// Why.
        #[source]
        source: elf::ElfError,
    },
    /// The kernel or initramfs does not fit guest memory.
    #[error("{0}")]
    Placement(String),
    /// The command line is too long or not one line.
    #[error("--cmdline: {0}")]
    Cmdline(String),
    /// A kernel or initramfs given for a recording is not the one recorded.
    #[error("{} is not the {what} this trace recorded: its SHA-256 is {found}, the recording's {recorded}", path.display())]
    Identity {
        /// `kernel` or `initramfs`.
        what: &'static str,
        /// The file given.
        path: PathBuf,
        /// The SHA-256 the trace recorded.
        recorded: String,
        /// The file's.
        found: String,
    },
    /// The protocol asked for cannot boot this kernel.
    #[error("kernel {path}: {reason}")]
    Protocol {
        /// The kernel file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl LinuxSpec {
    /// The command line in effect.
    pub fn cmdline(&self) -> &str {
        self.cmdline.as_deref().unwrap_or(DEFAULT_CMDLINE)
    }

    /// Reads, checks and unpacks the kernel and initramfs for a guest whose RAM is `ram`
    /// (`(start, end)` ranges); nothing of KVM is touched.
    ///
    /// # Errors
    /// [`KernelError`] naming the file and the reason.
    pub fn prepare(&self, ram: &[(u64, u64)]) -> Result<PreparedKernel, KernelError> {
        let cmdline = self.cmdline().to_string();
        check_cmdline(&cmdline)?;
        let mem: u64 = ram.iter().map(|(s, e)| e - s).sum();
        let file = crate::guests::read_regular(&self.kernel, MAX_KERNEL_FILE)?;
        let kernel_id = FileIdentity::of(&file);
        let path = || self.kernel.clone();
        let unpacked = image::unpack(&file, MAX_UNPACKED)
            .map_err(|source| KernelError::Image { path: path(), source })?;
        let mut version = image::is_bzimage(&file).then(|| image::bzimage_version(&file)).flatten();
        let setup_raw = image::is_bzimage(&file).then(|| image::setup_header_bytes(&file)).flatten();
        let (image, elf, setup, compression) = match unpacked {
            Unpacked::Elf { elf, from } => {
                let k = elf::check(&elf).map_err(|source| KernelError::Elf { path: path(), source })?;
                version = elf::banner(&elf).or(version);
                (elf, Some(k), from.map(|f| f.0), from.map(|f| f.1))
            }
            Unpacked::BzImage { header, compression } => (file, None, Some(header), Some(compression)),
        };
        let entry = choose_entry(self.protocol, elf.as_ref(), setup.as_ref(), compression)
            .map_err(|reason| KernelError::Protocol { path: path(), reason })?;
        if let Some(h) = &setup {
            if cmdline.len() as u64 > u64::from(h.cmdline_size) && h.cmdline_size > 0 {
                return Err(KernelError::Cmdline(format!(
                    "{} bytes, but this kernel takes at most {} (its cmdline_size)",
                    cmdline.len(),
                    h.cmdline_size
                )));
            }
        }
        let low_end = ram.iter().find(|r| r.0 == 0).map_or(0, |r| r.1);
        let kernel_end = check_kernel_fits(&self.kernel, elf.as_ref(), setup.as_ref(), low_end)?;
        let initrd = match &self.initrd {
            None => None,
            Some(p) => {
                let len = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
                if len > mem {
                    return Err(KernelError::Placement(format!(
                        "initramfs {} of {len} bytes is larger than the guest's memory ({} MiB): give more --mem-mib",
                        p.display(),
                        mem >> 20
                    )));
                }
                let bytes = crate::guests::read_regular(p, mem)?;
                let max = setup.as_ref().map_or(layout::INITRD_MAX_DEFAULT, |h| u64::from(h.initrd_addr_max));
                if layout::initrd_at(bytes.len() as u64, low_end, max, kernel_end).is_none() {
                    return Err(KernelError::Placement(format!(
                        "initramfs {} ({} bytes) does not fit guest memory between the kernel's end at {kernel_end:#x} and {:#x}: give more --mem-mib",
                        p.display(),
                        bytes.len(),
                        low_end.min(max)
                    )));
                }
                let id = FileIdentity::of(&bytes);
                Some((bytes, id))
            }
        };
        Ok(PreparedKernel {
            kernel_id,
            image,
            elf,
            setup,
            setup_raw,
            compression,
            entry,
            version,
            initrd,
            cmdline,
        })
    }
}

fn choose_entry(
    protocol: BootProtocol,
    elf: Option<&elf::ElfKernel>,
    setup: Option<&SetupHeader>,
    compression: Option<Compression>,
) -> Result<Entry, String> {
    let bz64 = || {
        let h = setup.ok_or("not a bzImage")?;
        if h.xloadflags & image::XLF_KERNEL_64 == 0 {
            return Err("the bzImage has no 64-bit entry (xloadflags bit 0)".to_string());
        }
        Ok(Entry::BzImage)
    };
    match (protocol, elf) {
        (BootProtocol::Auto | BootProtocol::Pvh, Some(k)) if k.pvh_entry.is_some() => {
            Ok(Entry::Pvh { entry: k.pvh_entry.unwrap_or_default() })
        }
        (BootProtocol::Pvh, Some(_)) => {
            Err("the ELF has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)".into())
        }
        (BootProtocol::Pvh, None) => Err(format!(
            "--boot-protocol pvh needs an ELF, and vmrr cannot unpack this bzImage's {} payload",
            compression.map_or("unknown", Compression::name)
        )),
        (BootProtocol::Auto | BootProtocol::Linux64, Some(k)) => Ok(Entry::Elf64 { entry: k.entry }),
        (BootProtocol::Auto | BootProtocol::Linux64, None) => bz64(),
    }
}

/// Checks that the kernel fits low RAM above 1 MiB; returns the first byte past it.
fn check_kernel_fits(
    path: &Path,
    elf: Option<&elf::ElfKernel>,
    setup: Option<&SetupHeader>,
    low_end: u64,
) -> Result<u64, KernelError> {
    let (lo, hi) = match (elf, setup) {
        (Some(k), _) => k.span(),
        // A bzImage runs its decompressor from `pref_address` and needs `init_size` there.
        (None, Some(h)) => (layout::HIGH, h.pref_address.max(layout::HIGH) + u64::from(h.init_size)),
        (None, None) => (layout::HIGH, layout::HIGH),
    };
    if lo < layout::HIGH || hi > low_end.min(MMIO_HOLE_START) {
        return Err(KernelError::Placement(format!(
            "kernel {} occupies {lo:#x}..{hi:#x}, which is not inside guest RAM above 1 MiB (RAM ends at {low_end:#x}): give more --mem-mib",
            path.display()
        )));
    }
    Ok(hi)
}

/// Checks that the file at `path` (a kernel, or an initramfs: `what`) has the SHA-256 a
/// trace recorded.
///
/// # Errors
/// The file cannot be read, or its SHA-256 differs ([`KernelError::Identity`]).
pub fn check_identity(what: &'static str, path: &Path, recorded: &str) -> Result<(), KernelError> {
    let bytes = crate::guests::read_regular(path, MAX_KERNEL_FILE.max(u64::from(u32::MAX)))?;
    let found = FileIdentity::of(&bytes).sha256;
    if found.eq_ignore_ascii_case(recorded) {
        Ok(())
    } else {
        Err(KernelError::Identity { what, path: path.to_path_buf(), recorded: recorded.to_string(), found })
    }
}

/// [`check_identity`] as a bundle's pack takes it (`vmrr_format::bundle::PackOptions`).
///
/// # Errors
/// As [`check_identity`], boxed.
pub fn check_identity_boxed(
    path: &Path,
    recorded: &str,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    check_identity("file", path, recorded).map_err(Into::into)
}

/// Checks a command line: one line of printable text, at most [`layout::CMDLINE_MAX`]
/// bytes.
///
/// # Errors
/// [`KernelError::Cmdline`] saying why.
pub fn check_cmdline(c: &str) -> Result<(), KernelError> {
    if c.len() > layout::CMDLINE_MAX {
        return Err(KernelError::Cmdline(format!(
            "{} bytes, over the {} the x86 boot protocol allows",
            c.len(),
            layout::CMDLINE_MAX
        )));
    }
    if let Some(b) = c.bytes().find(|b| !(0x20..0x7f).contains(b)) {
        return Err(KernelError::Cmdline(format!("byte {b:#04x} is not printable text")));
    }
    Ok(())
}

/// The device bus of a Linux guest: the 16550A on IRQ 4, CMOS/RTC, PCI configuration with
/// no devices, vmrr's ACPI PM block (power-off, reset), the POST port, the debug console,
/// and the PC hardware early Linux probes that this machine does not have, answered as
/// absent. KVM's in-kernel irqchip and PIT handle the 8259s, the IOAPIC, the local APICs
/// and ports 0x40-0x43 and 0x61 without exiting.
pub fn bus(serial_out: &Console, debugcon_out: &Console, mem_bytes: u64) -> Bus {
    let mut bus = Bus::with_interrupts(Interrupts::kernel_routed());
    bus.add_pio(map::SERIAL, 8, Box::new(uart::Uart::new(serial_out.clone(), SERIAL_IRQ)));
    bus.add_pio(map::DEBUGCON, 1, Box::new(debugcon::DebugCon::new(debugcon_out.clone())));
    bus.add_pio(map::POST, 1, Box::new(sink::Sink::echoing("post")));
    let low = mem_bytes.min(MMIO_HOLE_START);
    bus.add_pio(0x70, 2, Box::new(cmos::Cmos::new(low, mem_bytes - low)));
    bus.add_pio(0xcf8, 8, Box::new(pci::PciConfig::default()));
    bus.add_pio(acpi::PM1A_EVT, acpi_pm::LEN, Box::new(acpi_pm::AcpiPm::default()));
    let kbd = bus.add_pio(0x60, 1, Box::new(absent::Absent::new("i8042")));
    bus.alias_pio(0x64, 1, kbd);
    for (base, len, name) in [(0x2f8, 8, "com2"), (0x3e8, 8, "com3"), (0x2e8, 8, "com4"), (0x378, 8, "lpt1")]
    {
        bus.add_pio(base, len, Box::new(absent::Absent::new(name)));
    }
    bus
}

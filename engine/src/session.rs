//! A recording or plain run, described by a [`SessionConfig`] and validated before KVM is
//! touched; and the annotations that describe it in the trace, which replay reads back to
//! rebuild the same machine.

use std::path::{Path, PathBuf};

use crate::devices::console::Console;
use crate::guests::LoadError;
use crate::guests::boot::BootMode;
use crate::guests::linux::{KernelError, LinuxSpec, PreparedKernel};
use crate::guests::{self, GuestImage, GuestParams};
use crate::kvm::cpuid::CpuidProfile;
use crate::kvm::irqchip::IrqchipKind;
use crate::kvm::memory::SlotKind;
use crate::kvm::vm::CreateVmError;
use crate::kvm::vm::{Vm, VmConfig};
use crate::machine::queue_device::QueueDeviceError;
use crate::machine::{BootMachineError, Limits, Machine};
use crate::record::{RecorderError, Recording};
use vmrr_format::TraceWriter;

/// Which guest to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestSpec {
    /// A built-in guest.
    Builtin {
        /// Its name (`vmrr guests` lists them).
        name: String,
        /// `--iterations`.
        iterations: Option<u64>,
    },
    /// A flat binary.
    Image {
        /// The image file.
        path: PathBuf,
        /// Load address.
        load_addr: u64,
        /// Entry point.
        entry: u64,
        /// CPU mode.
        mode: BootMode,
    },
    /// A firmware ROM started at the reset vector.
    Firmware {
        /// ROM file.
        path: PathBuf,
    },
    /// A Linux kernel (with KVM's in-kernel irqchip and PIT).
    Kernel(LinuxSpec),
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The guest.
    pub guest: GuestSpec,
    /// Guest memory in bytes.
    pub mem_bytes: u64,
    /// CPUID profile.
    pub cpuid: CpuidProfile,
    /// Limits.
    pub limits: Limits,
    /// Dirty logging (checkpoints).
    pub dirty_log: bool,
    /// vCPUs (1 to [`crate::kvm::vm::MAX_VCPUS`]).
    pub vcpus: u32,
    /// Where the interrupt controllers live; `None`: KVM's for a Linux kernel or several
    /// vCPUs, vmrr's own otherwise.
    pub irqchip: Option<IrqchipKind>,
}

/// A problem with the configuration, found before KVM is touched (CLI exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The guest image is unusable.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The memory size is unusable.
    #[error("{0}")]
    Memory(String),
    /// The firmware is unusable.
    #[error("{0}")]
    Firmware(String),
    /// The kernel, initramfs or command line is unusable.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// The guest needs interrupt controllers other than those asked for.
    #[error("{0}")]
    Irqchip(String),
}

/// Building the machine failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// KVM or memory set-up failed.
    #[error(transparent)]
    Vm(#[from] CreateVmError),
    /// Loading or starting the guest failed.
    #[error(transparent)]
    Boot(#[from] BootMachineError),
    /// The guest's device could not be set up.
    #[error(transparent)]
    Device(#[from] QueueDeviceError),
}

/// The host's total memory in bytes (`MemTotal` of `/proc/meminfo`).
pub fn host_memory() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The built-in guest that comes with a queue device ([`Machine::attach_queue_device`]).
const VIRTQUEUE: &str = "virtqueue";

/// Largest firmware image accepted.
pub const MAX_ROM: u64 = 16 << 20;

/// What a validated configuration will load.
#[derive(Debug, Clone)]
pub enum Prepared {
    /// An image to boot.
    Image(GuestImage),
    /// Firmware bytes.
    Firmware(Vec<u8>),
    /// A kernel to load.
    Kernel(Box<PreparedKernel>),
}

impl SessionConfig {
    /// Checks memory size and guest placement and assembles/reads the guest, without
    /// touching KVM.
    ///
    /// # Errors
    /// [`ConfigError`] naming the problem.
    pub fn prepare(&self) -> Result<Prepared, ConfigError> {
        if self.mem_bytes < (2 << 20) || self.mem_bytes % crate::page::PAGE_SIZE != 0 {
            return Err(ConfigError::Memory(format!(
                "guest memory must be a whole number of MiB, at least 2 MiB (got {} bytes)",
                self.mem_bytes
            )));
        }
        if let Some(host) = host_memory() {
            if self.mem_bytes > host {
                return Err(ConfigError::Memory(format!(
                    "guest memory of {} MiB exceeds this host's {} MiB",
                    self.mem_bytes >> 20,
                    host >> 20
                )));
            }
        }
        if self.mem_bytes > crate::guests::boot::MAX_PD << 30 {
            return Err(ConfigError::Memory(format!(
                "guest memory above {} GiB is not supported",
                crate::guests::boot::MAX_PD
            )));
        }
        let ram: Vec<(u64, u64)> = Vm::layout(&self.vm_config(None))
            .iter()
            .filter(|s| s.kind == SlotKind::Ram)
            .map(|s| (s.gpa.0, s.end().0))
            .collect();
        match &self.guest {
            GuestSpec::Builtin { name, iterations } => {
                let img = guests::builtin(
                    name,
                    &GuestParams { iterations: *iterations, mem_bytes: self.mem_bytes, vcpus: self.vcpus },
                )?;
                guests::check_placement(&img, &ram)?;
                if name == VIRTQUEUE && self.irqchip() != IrqchipKind::Kernel {
                    return Err(ConfigError::Irqchip(format!(
                        "guest {VIRTQUEUE} needs KVM's in-kernel irqchip (--irqchip kernel): its device \
                         completes requests through an irqfd into KVM's IOAPIC, which --irqchip {} does not have",
                        self.irqchip().name()
                    )));
                }
                if name == "memory-churn" && self.mem_bytes <= guests::CHURN_START {
                    return Err(ConfigError::Memory(format!(
                        "memory-churn needs more than {} MiB of memory",
                        guests::CHURN_START >> 20
                    )));
                }
                Ok(Prepared::Image(img))
            }
            GuestSpec::Image { path, load_addr, entry, mode } => {
                let img = guests::from_file(path, *load_addr, *entry, *mode, self.mem_bytes)?;
                guests::check_placement(&img, &ram)?;
                Ok(Prepared::Image(img))
            }
            GuestSpec::Firmware { path } => {
                // Read at most one byte past the limit: a larger file is refused below.
                let bytes = guests::read_regular(path, MAX_ROM + 1)?;
                let len = bytes.len() as u64;
                if len % 0x1000 != 0 || !(128 << 10..=MAX_ROM).contains(&len) {
                    return Err(ConfigError::Firmware(format!(
                        "firmware {} is {len} bytes: it must be a multiple of 4 KiB, from 128 KiB to {} MiB",
                        path.display(),
                        MAX_ROM >> 20
                    )));
                }
                if self.mem_bytes < (4 << 20) {
                    return Err(ConfigError::Memory("firmware needs at least 4 MiB of memory".into()));
                }
                Ok(Prepared::Firmware(bytes))
            }
            GuestSpec::Kernel(spec) => Ok(Prepared::Kernel(Box::new(spec.prepare(&ram)?))),
        }
    }

    /// The VM configuration (`rom_size` for firmware).
    pub fn vm_config(&self, rom_size: Option<u64>) -> VmConfig {
        VmConfig {
            mem_bytes: self.mem_bytes,
            cpuid: self.cpuid,
            dirty_log: self.dirty_log,
            rom_size,
            irqchip: self.irqchip(),
            vcpus: self.vcpus,
            dirty_tracking: crate::kvm::dirty::DirtyTracking::Auto,
        }
    }

    /// Where the interrupt controllers live: as asked, else KVM's for a Linux kernel (it
    /// needs local APICs and an IOAPIC), the `virtqueue` guest (its device's irqfd goes
    /// to KVM's IOAPIC) or several vCPUs, vmrr's own otherwise.
    pub fn irqchip(&self) -> IrqchipKind {
        match (self.irqchip, &self.guest) {
            (Some(k), _) => k,
            (None, GuestSpec::Kernel(_)) => IrqchipKind::Kernel,
            (None, GuestSpec::Builtin { name, .. }) if name == VIRTQUEUE => IrqchipKind::Kernel,
            (None, _) if self.vcpus > 1 => IrqchipKind::Kernel,
            (None, _) => IrqchipKind::User,
        }
    }

    /// Device threads the machine will have (the `virtqueue` guest's queue device): a
    /// recording of it needs a writer with `guest_writes`, `irq_lines` and `threads`
    /// (their records, on their own streams).
    pub fn device_threads(&self) -> u32 {
        u32::from(matches!(&self.guest, GuestSpec::Builtin { name, .. } if name == VIRTQUEUE))
    }

    /// Validates, creates the VM and boots the guest.
    ///
    /// # Errors
    /// Configuration problems first (before KVM), then KVM and boot failures.
    pub fn build(&self, serial: Console, debugcon: Console) -> Result<Machine, SessionError> {
        self.build_tracking(serial, debugcon, crate::kvm::dirty::DirtyTracking::Auto)
    }

    /// As [`Self::build`], tracking dirty pages as `dirty` says (a test of the bitmap
    /// fallback, or of a small ring that fills).
    ///
    /// # Errors
    /// As for [`Self::build`].
    pub fn build_tracking(
        &self,
        serial: Console,
        debugcon: Console,
        dirty: crate::kvm::dirty::DirtyTracking,
    ) -> Result<Machine, SessionError> {
        let prepared = self.prepare()?;
        let rom_size = match &prepared {
            Prepared::Firmware(b) => Some(b.len() as u64),
            Prepared::Image(_) | Prepared::Kernel(_) => None,
        };
        let mut vm = Vm::new(VmConfig { dirty_tracking: dirty, ..self.vm_config(rom_size) })?;
        if crate::kvm::probe::host_facts().is_ok_and(|f| !f.cpuid_enforced) {
            vm.add_note(
                "this host does not apply KVM_SET_CPUID2 to the guest's CPUID instruction (measured): \
                 the TSC and RDRAND cannot be hidden, so replay of a guest that reads them may diverge"
                    .to_string(),
            );
        }
        let mut m = match &prepared {
            Prepared::Firmware(rom) => {
                let bus = crate::guests::firmware::bus(&serial, &debugcon, self.mem_bytes);
                let m = Machine::with_bus(vm, bus, serial, debugcon)?;
                crate::guests::firmware::load(m.memory(), rom).map_err(BootMachineError::Load)?;
                m
            }
            Prepared::Image(img) => {
                let mut m = Machine::new(vm, serial, debugcon)?;
                m.boot(img)?;
                if self.device_threads() > 0 {
                    m.attach_queue_device(guests::virtqueue::NOTIFY_PORT, guests::virtqueue::GSI)?;
                }
                m
            }
            Prepared::Kernel(k) => {
                let bus = crate::guests::linux::bus(&serial, &debugcon, self.mem_bytes);
                let mut m = Machine::with_bus(vm, bus, serial, debugcon)?;
                m.boot_linux(k)?;
                m
            }
        };
        m.set_limits(self.limits);
        Ok(m)
    }

    /// Starts recording `m` (built from this configuration) into `writer`: the trace's
    /// prelude is this run's annotations (how to rebuild it, where it ran) and the guest's
    /// CPUID. Returns the trace id and the annotations, which snapshots carry too.
    ///
    /// # Errors
    /// The recorder cannot attach, or the prelude cannot be written.
    pub fn start_recording(&self, m: &mut Machine, writer: TraceWriter) -> Result<Recording, RecorderError> {
        let mut rec = m.recorder_for(writer)?;
        let mut annotations = self.annotations(m.vm());
        annotations.extend(m.guest_annotations().iter().cloned());
        rec.write_prelude(&annotations, m.vm().cpuid())?;
        let trace_id = rec.trace_id();
        m.start_recording(rec)?;
        Ok(Recording { trace_id, annotations })
    }

    /// Annotations describing this run: how to rebuild it (`vmrr.*` keys, read by replay)
    /// and where it ran (`host.*`, `kvm.*`).
    pub fn annotations(&self, vm: &Vm) -> Vec<(String, String)> {
        let mut a: Vec<(String, String)> = Vec::new();
        let mut put = |k: &str, v: String| a.push((k.to_string(), v));
        put("vmrr.version", env!("CARGO_PKG_VERSION").to_string());
        put("vmrr.command_line", std::env::args().collect::<Vec<_>>().join(" "));
        put("vmrr.mem_bytes", self.mem_bytes.to_string());
        put("vmrr.cpuid", self.cpuid.name().to_string());
        match &self.guest {
            GuestSpec::Builtin { name, iterations } => {
                put("vmrr.guest", name.clone());
                if let Some(n) = iterations {
                    put("vmrr.iterations", n.to_string());
                }
            }
            GuestSpec::Image { path, load_addr, entry, mode } => {
                put("vmrr.image", path.display().to_string());
                put("vmrr.load_addr", format!("{load_addr:#x}"));
                put("vmrr.entry", format!("{entry:#x}"));
                put(
                    "vmrr.mode",
                    match mode {
                        BootMode::Real => "real".into(),
                        BootMode::Long { ring } => format!("long{ring}"),
                    },
                );
            }
            GuestSpec::Firmware { path } => put("vmrr.firmware", path.display().to_string()),
            GuestSpec::Kernel(spec) => {
                put("vmrr.kernel", spec.kernel.display().to_string());
                if let Some(p) = &spec.initrd {
                    put("vmrr.initrd", p.display().to_string());
                }
                put("vmrr.cmdline", spec.cmdline().to_string());
                put("vmrr.boot_protocol", spec.protocol.name().to_string());
            }
        }
        put("vmrr.irqchip", self.irqchip().name().to_string());
        if self.vcpus > 1 {
            put("vmrr.vcpus", self.vcpus.to_string());
        }
        if self.device_threads() > 0 {
            put("vmrr.device_threads", self.device_threads().to_string());
        }
        let slots: Vec<String> = vm
            .memory()
            .slots()
            .iter()
            .map(|s| {
                let spec = s.spec();
                format!("{}:{:#x}+{:#x}:{:?}", s.id(), spec.gpa.0, spec.size, spec.kind)
            })
            .collect();
        put("vmrr.slots", slots.join(" "));
        a.extend(crate::record::prelude::host_annotations(vm.caps(), vm.memory().uses_region2()));
        a.push(crate::record::prelude::dirty_log_annotation(vm.config().dirty_log, vm.dirty().method()));
        a
    }
}

/// The guest files a rebuild may use: given by the user (`--image`, `--firmware`) or
/// carried by a bundle. Never a path a trace names.
#[derive(Debug, Clone, Copy, Default)]
pub struct GuestFiles<'a> {
    /// A flat image.
    pub image: Option<&'a Path>,
    /// A firmware ROM.
    pub firmware: Option<&'a Path>,
    /// A Linux kernel.
    pub kernel: Option<&'a Path>,
    /// Its initramfs.
    pub initrd: Option<&'a Path>,
}

/// Why a trace's annotations do not give a machine to rebuild.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// The `vmrr.*` annotations are missing or malformed.
    #[error("the trace does not describe its guest: {0}")]
    Undescribed(&'static str),
    /// The guest is a flat image or firmware and no file for it was given.
    #[error(
        "the trace runs a guest {what} (recorded from {named:?} on its host); replay never opens a path a trace names: pass {flag} FILE with the {what} it was recorded with"
    )]
    NeedsFile {
        /// `image` or `firmware`.
        what: &'static str,
        /// The flag to pass.
        flag: &'static str,
        /// The path the trace names (shown, never opened).
        named: String,
    },
    /// A kernel or initramfs given is not the one recorded.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// The trace's guest memory is over the budget.
    #[error("the trace's guest has {mib} MiB of memory, over the limit of {max_mib} MiB (--max-mem-mib)")]
    Memory {
        /// The guest's memory, MiB.
        mib: u64,
        /// The budget, MiB.
        max_mib: u64,
    },
}

impl RebuildError {
    /// True when the user must pass a flag (a usage error), as opposed to an invalid trace.
    pub fn is_usage(&self) -> bool {
        matches!(self, RebuildError::NeedsFile { .. } | RebuildError::Kernel(_))
    }
}

/// Parses a `vmrr.*` annotation set back into a configuration (replay rebuilds the
/// machine with it). A flat image or firmware guest uses the file of `files` (the paths
/// in `vmrr.image` / `vmrr.firmware` are where the recording host had them: shown in
/// messages, never opened); a built-in guest needs none. The guest's memory must be at
/// most `max_mem` bytes.
///
/// # Errors
/// [`RebuildError`] saying what is missing or over the budget.
pub fn from_annotations(
    a: &[(String, String)],
    files: GuestFiles<'_>,
    max_mem: u64,
) -> Result<SessionConfig, RebuildError> {
    let get = |k: &str| a.iter().rev().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let num = |s: &str| -> Option<u64> {
        match s.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).ok(),
            None => s.parse().ok(),
        }
    };
    let need = |k: &'static str| get(k).ok_or(RebuildError::Undescribed(k));
    let mem_bytes = num(need("vmrr.mem_bytes")?).ok_or(RebuildError::Undescribed("vmrr.mem_bytes"))?;
    if mem_bytes > max_mem {
        return Err(RebuildError::Memory { mib: mem_bytes >> 20, max_mib: max_mem >> 20 });
    }
    let cpuid = CpuidProfile::parse(get("vmrr.cpuid").unwrap_or("deterministic"))
        .ok_or(RebuildError::Undescribed("vmrr.cpuid"))?;
    let guest = if let Some(name) = get("vmrr.guest") {
        GuestSpec::Builtin { name: name.to_string(), iterations: get("vmrr.iterations").and_then(num) }
    } else if let Some(named) = get("vmrr.image") {
        let mode = match need("vmrr.mode")? {
            "real" => BootMode::Real,
            "long0" => BootMode::Long { ring: 0 },
            "long3" => BootMode::Long { ring: 3 },
            _ => return Err(RebuildError::Undescribed("vmrr.mode")),
        };
        let path = files.image.ok_or_else(|| RebuildError::NeedsFile {
            what: "image",
            flag: "--image",
            named: named.to_string(),
        })?;
        GuestSpec::Image {
            path: path.to_path_buf(),
            load_addr: num(need("vmrr.load_addr")?).ok_or(RebuildError::Undescribed("vmrr.load_addr"))?,
            entry: num(need("vmrr.entry")?).ok_or(RebuildError::Undescribed("vmrr.entry"))?,
            mode,
        }
    } else if let Some(named) = get("vmrr.firmware") {
        let path = files.firmware.ok_or_else(|| RebuildError::NeedsFile {
            what: "firmware",
            flag: "--firmware",
            named: named.to_string(),
        })?;
        GuestSpec::Firmware { path: path.to_path_buf() }
    } else if let Some(named) = get("vmrr.kernel") {
        let needs =
            |what, flag, named: &str| RebuildError::NeedsFile { what, flag, named: named.to_string() };
        let kernel = files.kernel.ok_or_else(|| needs("kernel", "--kernel", named))?;
        if let Some(sha) = get("vmrr.kernel_sha256") {
            crate::guests::linux::check_identity("kernel", kernel, sha)?;
        }
        let initrd = match get("vmrr.initrd") {
            None => None,
            Some(named) => {
                let p = files.initrd.ok_or_else(|| needs("initramfs", "--initrd", named))?;
                if let Some(sha) = get("vmrr.initrd_sha256") {
                    crate::guests::linux::check_identity("initramfs", p, sha)?;
                }
                Some(p.to_path_buf())
            }
        };
        let protocol = get("vmrr.boot_protocol")
            .and_then(crate::guests::linux::BootProtocol::parse)
            .ok_or(RebuildError::Undescribed("vmrr.boot_protocol"))?;
        GuestSpec::Kernel(LinuxSpec {
            kernel: kernel.to_path_buf(),
            initrd,
            cmdline: Some(need("vmrr.cmdline")?.to_string()),
            protocol,
        })
    } else {
        return Err(RebuildError::Undescribed("vmrr.guest, vmrr.image, vmrr.firmware or vmrr.kernel"));
    };
    let vcpus = match get("vmrr.vcpus") {
        None => 1,
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=crate::kvm::vm::MAX_VCPUS).contains(n))
            .ok_or(RebuildError::Undescribed("vmrr.vcpus"))?,
    };
    let irqchip = match get("vmrr.irqchip") {
        None => None,
        Some(k) => Some(IrqchipKind::parse(k).ok_or(RebuildError::Undescribed("vmrr.irqchip"))?),
    };
    Ok(SessionConfig { guest, mem_bytes, cpuid, limits: Limits::default(), dirty_log: false, vcpus, irqchip })
}

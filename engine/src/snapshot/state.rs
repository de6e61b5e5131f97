//! What a snapshot holds, and the checks every state passes before anything reaches KVM.

use serde::{Deserialize, Serialize};

use crate::devices::bus::BusState;
use crate::kvm::memory::SlotKind;
use crate::kvm::vcpu_state::VcpuState;
use crate::page::PAGE_SIZE;

/// Most memory slots a snapshot may describe.
pub const MAX_SLOTS: usize = 32;
/// Most vCPUs this engine restores (a vmrr machine's limit).
pub const MAX_VCPUS: usize = crate::kvm::vm::MAX_VCPUS as usize;
/// Highest guest-physical address bit allowed (52-bit physical addresses).
pub const MAX_PHYS_BITS: u32 = 52;

/// One memory slot in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotState {
    /// KVM slot number.
    pub id: u32,
    /// Guest physical address.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
    /// RAM or ROM.
    pub kind: SlotKind,
    /// `KVM_MEM_*` flags (dirty logging excluded).
    pub flags: u32,
    /// File name in the snapshot directory (`mem-<id>.raw`): the slot's bytes at their
    /// offsets, zero pages left as holes.
    pub file: String,
    /// True when the file holds every page; false when it holds only `pages`.
    pub full: bool,
    /// For an incremental snapshot: one bit per page, set for pages this snapshot stores
    /// (changed since the parent). Empty when `full`.
    pub pages: Vec<u64>,
    /// Pages with data written to the file (non-zero pages).
    pub stored_pages: u64,
}

impl SlotState {
    /// Number of pages.
    pub fn page_count(&self) -> u64 {
        self.size / PAGE_SIZE
    }

    /// Whether page `p` is in this snapshot's file.
    pub fn has_page(&self, p: u64) -> bool {
        self.full
            || usize::try_from(p / 64)
                .ok()
                .and_then(|w| self.pages.get(w))
                .is_some_and(|w| w & (1 << (p % 64)) != 0)
    }

    /// Pages recorded as changed (incremental) or all pages (full).
    pub fn changed_pages(&self) -> u64 {
        if self.full { self.page_count() } else { self.pages.iter().map(|w| u64::from(w.count_ones())).sum() }
    }

    /// Runs `(first_page, count)` of pages this snapshot holds.
    pub fn runs(&self) -> Vec<(u64, u64)> {
        if self.full {
            return vec![(0, self.page_count())];
        }
        super::pages::bitmap_runs(&self.pages, self.page_count())
    }
}

/// How the VM was configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmState {
    /// Guest RAM in bytes.
    pub mem_bytes: u64,
    /// CPUID profile name.
    pub cpuid: String,
    /// ROM size when firmware runs.
    pub rom_size: Option<u64>,
}

/// Everything in a snapshot's state file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotState {
    /// Snapshot id (its directory is `snap-<id>`).
    pub id: u64,
    /// Parent snapshot (incremental), or `None` (full).
    pub parent: Option<u64>,
    /// The trace this snapshot belongs to (its header's `trace_id`).
    pub trace_id: [u8; 16],
    /// Sequence number of the last trace record before the snapshot (`None`: before any).
    pub exit_seq: Option<u64>,
    /// Exits handled before the snapshot.
    pub exits: u64,
    /// Interrupts injected before the snapshot.
    pub interrupts: u64,
    /// When it was taken (ns since the epoch).
    pub created_unix_ns: u64,
    /// VM configuration.
    pub vm: VmState,
    /// Memory slots (at most [`MAX_SLOTS`], refused while decoding beyond).
    #[serde(deserialize_with = "vmrr_format::bounded::vec::<_, _, MAX_SLOTS>")]
    pub slots: Vec<SlotState>,
    /// vCPUs (decoding refuses more than [`MAX_VCPUS_DECODED`]; validation, more than
    /// [`MAX_VCPUS`]).
    #[serde(deserialize_with = "vmrr_format::bounded::vec::<_, _, MAX_VCPUS_DECODED>")]
    pub vcpus: Vec<VcpuState>,
    /// Devices and pending interrupts.
    pub bus: BusState,
    /// The run's annotations (how to rebuild the guest, where it ran): as many as a trace
    /// may hold, refused while decoding beyond.
    #[serde(deserialize_with = "vmrr_format::bounded::pairs::<_, MAX_ANNOTATIONS, MAX_ANNOTATION_BYTES>")]
    pub annotations: Vec<(String, String)>,
    /// KVM's in-kernel irqchip, when the machine has one: stored as the state file's
    /// minor-1 extension, after everything above (a machine without one writes minor 0,
    /// byte for byte what earlier versions wrote).
    #[serde(skip)]
    pub kernel_irqchip: Option<KernelIrqchip>,
}

/// The state of KVM's in-kernel irqchip: VM-wide (PIC pair, IOAPIC, PIT, KVM clock) and
/// each vCPU's local APIC (`kvm_lapic_state`, in `vcpus` order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelIrqchip {
    /// PIC pair, IOAPIC, PIT and clock.
    pub chip: crate::kvm::irqchip::IrqchipState,
    /// Local APIC registers per vCPU (decoding refuses more than [`MAX_VCPUS_DECODED`]).
    #[serde(deserialize_with = "vmrr_format::bounded::vec::<_, _, MAX_VCPUS_DECODED>")]
    pub lapics: Vec<Vec<u8>>,
}

/// The minor-1 extension of a state file (see [`KernelIrqchip`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Extension {
    kernel_irqchip: Option<KernelIrqchip>,
}

/// The bytes of `state`'s state file: minor 0 without an extension, minor 1 with one.
///
/// # Errors
/// Encoding failed (a bug).
pub fn to_file_bytes(state: &SnapshotState) -> Result<Vec<u8>, super::codec::CodecError> {
    use super::codec::{encode, frame, frame_minor};
    Ok(match &state.kernel_irqchip {
        None => frame(&encode(state)?),
        Some(k) => {
            let ext = Extension { kernel_irqchip: Some(k.clone()) };
            frame_minor(&encode(&(state, ext))?, 1)
        }
    })
}

/// Reads the state file at `path` (either minor).
///
/// # Errors
/// As [`super::codec::read`].
pub fn read_file(path: &std::path::Path) -> Result<SnapshotState, super::codec::CodecError> {
    let (mut st, ext) = super::codec::read_parts::<SnapshotState, Extension>(path)?;
    st.kernel_irqchip = ext.and_then(|e| e.kernel_irqchip);
    Ok(st)
}

/// Decodes state-file bytes (either minor); `name` is for messages.
///
/// # Errors
/// As [`super::codec::decode`].
pub fn decode_file(b: &[u8], name: &str) -> Result<SnapshotState, super::codec::CodecError> {
    let (mut st, ext) = super::codec::decode_parts::<SnapshotState, Extension>(b, name)?;
    st.kernel_irqchip = ext.and_then(|e| e.kernel_irqchip);
    Ok(st)
}

/// Most vCPU states decoding accepts (validation then allows [`MAX_VCPUS`]).
pub const MAX_VCPUS_DECODED: usize = 64;
const MAX_ANNOTATIONS: usize = vmrr_format::overview::MAX_ANNOTATIONS;
const MAX_ANNOTATION_BYTES: usize = vmrr_format::overview::MAX_ANNOTATION_BYTES;

impl PartialEq for VcpuState {
    fn eq(&self, other: &Self) -> bool {
        // Compared as the state file stores them: the kvm structs have no PartialEq for
        // every type.
        super::codec::encode(self).ok() == super::codec::encode(other).ok()
    }
}

/// A state that fails validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("offset {offset:#x}: {reason}")]
pub struct InvalidState {
    /// Byte offset in the state file of the field at fault.
    pub offset: u64,
    /// What is wrong.
    pub reason: String,
}

/// Offsets of a slot's fields within its encoding (fixed-width bincode: `id u32`,
/// `gpa u64`, `size u64`, `kind` as a u32 tag, `flags u32`, then `file`).
const SLOT_GPA: u64 = 4;
const SLOT_SIZE: u64 = 12;
const SLOT_FILE: u64 = 28;

/// Why `v`'s RIP cannot be executed from, if it cannot: in 64-bit mode (EFER.LMA and a
/// 64-bit code segment) it must be canonical (48-bit addresses, 57-bit with CR4.LA57);
/// in any other mode it must fit 32 bits.
fn rip_problem(v: &VcpuState) -> Option<String> {
    const EFER_LMA: u64 = 1 << 10;
    const CR4_LA57: u64 = 1 << 12;
    let rip = v.regs.rip;
    if v.sregs.efer & EFER_LMA != 0 && v.sregs.cs.l != 0 {
        let bits = if v.sregs.cr4 & CR4_LA57 != 0 { 57 } else { 48 };
        #[allow(clippy::cast_possible_wrap, clippy::cast_sign_loss)] // sign extension, bit for bit
        let canonical = (((rip << (64 - bits)) as i64) >> (64 - bits)) as u64;
        (canonical != rip).then(|| format!("{rip:#x} is not canonical ({bits}-bit addresses, 64-bit mode)"))
    } else {
        (rip > u64::from(u32::MAX))
            .then(|| format!("{rip:#x} does not fit 32 bits (the vCPU is not in 64-bit mode)"))
    }
}

fn safe_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n != "."
        && n != ".."
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
}

impl SnapshotState {
    /// Byte offset of the `slots` vector (its length word) in the state file.
    pub fn slots_offset(&self) -> u64 {
        use crate::snapshot::codec::{PAYLOAD_OFFSET, encoded_len};
        // A tuple of the fields before `slots` encodes exactly as that prefix of the struct.
        let prefix = (
            self.id,
            self.parent,
            self.trace_id,
            self.exit_seq,
            self.exits,
            self.interrupts,
            self.created_unix_ns,
            &self.vm,
        );
        PAYLOAD_OFFSET + encoded_len(&prefix)
    }

    /// Byte offset of `slots[i]` in the state file.
    pub fn slot_offset(&self, i: usize) -> u64 {
        let before: u64 = self.slots.iter().take(i).map(crate::snapshot::codec::encoded_len).sum();
        self.slots_offset() + 8 + before
    }

    /// Byte offset of `vcpus[i]` in the state file.
    pub fn vcpu_offset(&self, i: usize) -> u64 {
        use crate::snapshot::codec::encoded_len;
        let before: u64 = self.vcpus.iter().take(i).map(encoded_len).sum();
        self.slots_offset() + encoded_len(&self.slots) + 8 + before
    }

    /// Byte offset of field `field` (a [`VcpuState`] field name: `regs`, `sregs`, `msrs`,
    /// ...) of `vcpus[i]` in the state file; the vCPU's own offset for an unknown name.
    pub fn vcpu_field_offset(&self, i: usize, field: &str) -> u64 {
        use crate::snapshot::codec::encoded_len;
        let at = self.vcpu_offset(i);
        let Some(v) = self.vcpus.get(i) else { return at };
        // The fields in their order in the file, each with its encoded length.
        let fields = [
            ("sizes", encoded_len(&v.sizes)),
            ("regs", encoded_len(&v.regs)),
            ("sregs", encoded_len(&v.sregs)),
            ("fpu", encoded_len(&v.fpu)),
            ("xsave", encoded_len(&v.xsave)),
            ("xcrs", encoded_len(&v.xcrs)),
            ("msrs", encoded_len(&v.msrs)),
            ("events", encoded_len(&v.events)),
            ("mp_state", encoded_len(&v.mp_state)),
            ("debugregs", encoded_len(&v.debugregs)),
            ("cpuid", encoded_len(&v.cpuid)),
        ];
        if !fields.iter().any(|(name, _)| *name == field) {
            return at;
        }
        let before: u64 = fields.iter().take_while(|(name, _)| *name != field).map(|(_, len)| len).sum();
        at + before
    }

    /// Byte offset of `vcpus[i].regs.rip` in the state file.
    pub fn rip_offset(&self, i: usize) -> u64 {
        use crate::snapshot::codec::encoded_len;
        let Some(v) = self.vcpus.get(i) else { return self.vcpu_offset(i) };
        // kvm_regs is stored as its bytes (after any length prefix); rip follows the 16
        // general registers.
        let prefix =
            encoded_len(&v.regs).saturating_sub(std::mem::size_of::<kvm_bindings::kvm_regs>() as u64);
        self.vcpu_field_offset(i, "regs") + prefix + 16 * 8
    }

    /// Byte offset of `parent` in the state file.
    pub fn parent_offset(&self) -> u64 {
        crate::snapshot::codec::PAYLOAD_OFFSET + 8
    }

    /// The slots' part of [`Self::validate`].
    fn validate_slots(&self, max_mem: u64) -> Result<(), InvalidState> {
        let bad = |offset: u64, reason: String| Err(InvalidState { offset, reason });
        if self.slots.is_empty() || self.slots.len() > MAX_SLOTS {
            return bad(
                self.slots_offset(),
                format!("{} memory slots (must be 1..={MAX_SLOTS})", self.slots.len()),
            );
        }
        let mut total: u64 = 0;
        let mut ranges: Vec<(u64, u64, u32, usize)> = Vec::new();
        for (i, s) in self.slots.iter().enumerate() {
            let at = self.slot_offset(i);
            if s.gpa % PAGE_SIZE != 0 {
                return bad(
                    at + SLOT_GPA,
                    format!("slot {}: address {:#x} is not page-aligned", s.id, s.gpa),
                );
            }
            if s.size % PAGE_SIZE != 0 || s.size == 0 {
                return bad(
                    at + SLOT_SIZE,
                    format!("slot {}: size {:#x} is not page-aligned or is empty", s.id, s.size),
                );
            }
            let end = s.gpa.checked_add(s.size).filter(|e| *e <= 1u64 << MAX_PHYS_BITS);
            let Some(end) = end else {
                return bad(
                    at + SLOT_GPA,
                    format!(
                        "slot {}: {:#x}+{:#x} goes beyond the {MAX_PHYS_BITS}-bit physical address space",
                        s.id, s.gpa, s.size
                    ),
                );
            };
            total = total.saturating_add(s.size);
            if !safe_name(&s.file) {
                return bad(
                    at + SLOT_FILE,
                    format!("slot {}: file name {:?} is not a plain file name", s.id, s.file),
                );
            }
            let words = usize::try_from(s.page_count().div_ceil(64)).unwrap_or(usize::MAX);
            if !s.full && s.pages.len() != words {
                return bad(
                    at,
                    format!(
                        "slot {}: page bitmap of {} words for {} pages (expected {words})",
                        s.id,
                        s.pages.len(),
                        s.page_count()
                    ),
                );
            }
            if s.full && !s.pages.is_empty() {
                return bad(at, format!("slot {}: a full slot must not carry a page bitmap", s.id));
            }
            ranges.push((s.gpa, end, s.id, i));
        }
        if total > max_mem {
            return bad(
                self.slots_offset(),
                format!(
                    "memory of {} MiB exceeds the limit of {} MiB (--max-mem-mib)",
                    total >> 20,
                    max_mem >> 20
                ),
            );
        }
        ranges.sort_unstable();
        for w in ranges.windows(2) {
            if w[1].0 < w[0].1 {
                return bad(
                    self.slot_offset(w[1].3) + SLOT_GPA,
                    format!("slots {} and {} overlap at {:#x}", w[0].2, w[1].2, w[1].0),
                );
            }
        }
        let mut ids: Vec<(u32, usize)> = self.slots.iter().enumerate().map(|(i, s)| (s.id, i)).collect();
        ids.sort_unstable();
        if let Some(w) = ids.windows(2).find(|w| w[0].0 == w[1].0) {
            return bad(self.slot_offset(w[1].1), format!("two slots share the id {}", w[0].0));
        }
        Ok(())
    }

    /// Checks slots (alignment, sizes, overlaps, address width, file names, bitmaps),
    /// vCPU count and states, and the total memory against `max_mem` bytes.
    ///
    /// # Errors
    /// [`InvalidState`] naming the first problem.
    pub fn validate(&self, max_mem: u64) -> Result<(), InvalidState> {
        let bad = |offset: u64, reason: String| Err(InvalidState { offset, reason });
        self.validate_slots(max_mem)?;
        if self.vcpus.is_empty() || self.vcpus.len() > MAX_VCPUS {
            let at = self.vcpu_offset(0) - 8;
            return bad(at, format!("vCPU count {} over the limit of {MAX_VCPUS}", self.vcpus.len()));
        }
        for (i, v) in self.vcpus.iter().enumerate() {
            v.validate().map_err(|e| InvalidState { offset: self.vcpu_offset(i), reason: e.to_string() })?;
            if let Some(why) = rip_problem(v) {
                return bad(self.rip_offset(i), format!("vCPU {i}: field regs.rip: {why}"));
            }
        }
        if self.vcpus.len() > 1 && self.kernel_irqchip.is_none() {
            let at = self.vcpu_offset(0) - 8;
            return bad(
                at,
                format!(
                    "{} vCPUs without KVM's in-kernel irqchip (field kernel_irqchip): vmrr cannot create that machine",
                    self.vcpus.len()
                ),
            );
        }
        let bus_at = self.vcpu_offset(self.vcpus.len());
        if self.bus.devices.len() > crate::devices::bus::MAX_DEVICES {
            return bad(bus_at, format!("{} devices over the limit", self.bus.devices.len()));
        }
        if self.parent.is_some() == self.slots.iter().all(|s| s.full) {
            return bad(
                self.parent_offset(),
                "a snapshot with a parent stores changed pages; one without stores all".into(),
            );
        }
        if let Some(k) = &self.kernel_irqchip {
            // The extension follows the minor-0 state in the payload.
            let at = crate::snapshot::codec::PAYLOAD_OFFSET + crate::snapshot::codec::encoded_len(self);
            if k.lapics.len() != self.vcpus.len() {
                return bad(
                    at,
                    format!(
                        "{} local APIC states for {} vCPUs (field kernel_irqchip.lapics)",
                        k.lapics.len(),
                        self.vcpus.len()
                    ),
                );
            }
            let lapic = std::mem::size_of::<kvm_bindings::kvm_lapic_state>();
            if let Some(i) = k.lapics.iter().position(|l| l.len() != lapic) {
                return bad(at, format!("vCPU {i}: field kernel_irqchip.lapics[{i}]: not {lapic} bytes"));
            }
            k.chip.validate().map_err(|e| InvalidState { offset: at, reason: e.to_string() })?;
        }
        Ok(())
    }
}

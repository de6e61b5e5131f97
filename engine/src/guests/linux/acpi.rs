//! The ACPI tables a Linux guest is given: RSDP, XSDT, FADT (with FACS and a DSDT that
//! holds only `\_S5`), and MADT.
//!
//! What they tell the kernel:
//! - **MADT**: one local APIC per vCPU (APIC ID = vCPU index), KVM's in-kernel IOAPIC at
//!   `0xfec00000` (GSI 0-23, identity-mapped ISA IRQs as KVM's default routing has them),
//!   the 8259 pair present, LINT1 as NMI; the SCI (IRQ 9) is level, active high.
//! - **FADT**: PM1a event and control blocks at ports [`PM1A_EVT`] and [`PM1A_CNT`] (vmrr's
//!   ACPI PM device: writing `SLP_EN` is a power-off), a reset register (port `0x608`,
//!   value 6), no 8042 (so Linux does not probe a keyboard controller), no VGA, no MSI.
//! - **DSDT**: `Name (_S5, Package () { 5, 5, 0, 0 })`, the sleep type Linux writes to
//!   power off.

use vm_memory::GuestAddress;

use crate::kvm::memory::GuestMemory;

/// PM1a event block (status + enable, 4 bytes).
pub const PM1A_EVT: u16 = 0x600;
/// PM1a control block (2 bytes).
pub const PM1A_CNT: u16 = 0x604;
/// The reset register (in vmrr's ACPI PM block).
pub const RESET_PORT: u16 = 0x608;
/// The value the kernel writes to the reset register.
pub const RESET_VALUE: u8 = crate::devices::legacy::acpi_pm::RESET_VALUE;
/// The SCI's ISA IRQ.
pub const SCI_IRQ: u8 = 9;
/// The in-kernel IOAPIC's address.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// The local APIC's address.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// The sleep type `\_S5` names.
pub const S5_SLP_TYP: u16 = 5;

const OEM_ID: &[u8; 6] = b"VMRR  ";
const OEM_TABLE: &[u8; 8] = b"VMRRBOOT";

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b)))
}

/// An ACPI table under construction: its header, then its body.
struct Table(Vec<u8>);

impl Table {
    fn new(signature: &[u8; 4], revision: u8) -> Self {
        let mut t = Vec::with_capacity(256);
        t.extend_from_slice(signature);
        t.extend_from_slice(&[0; 4]); // length
        t.push(revision);
        t.push(0); // checksum
        t.extend_from_slice(OEM_ID);
        t.extend_from_slice(OEM_TABLE);
        t.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
        t.extend_from_slice(b"VMRR");
        t.extend_from_slice(&1u32.to_le_bytes()); // creator revision
        Table(t)
    }

    fn put(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }

    fn finish(mut self) -> Vec<u8> {
        let len = u32::try_from(self.0.len()).unwrap_or(u32::MAX);
        self.0[4..8].copy_from_slice(&len.to_le_bytes());
        self.0[9] = checksum(&self.0);
        self.0
    }
}

/// A Generic Address Structure for a port range.
fn gas_io(port: u16, bytes: u8) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = 1; // system I/O
    g[1] = bytes * 8;
    // Access size: 1 byte, 2 word, 3 dword.
    g[3] = match bytes {
        1 => 1,
        2 => 2,
        _ => 3,
    };
    g[4..12].copy_from_slice(&u64::from(port).to_le_bytes());
    g
}

fn fadt(facs: u64, dsdt: u64) -> Vec<u8> {
    let mut b = vec![0u8; 276 - 36];
    let at = |off: usize| off - 36;
    let put = |b: &mut Vec<u8>, off: usize, v: &[u8]| b[at(off)..at(off) + v.len()].copy_from_slice(v);
    // FIRMWARE_CTRL and DSDT (32-bit) stay 0: the 64-bit X_ fields below give both, and
    // ACPI says the 32-bit ones must then be unused.
    put(&mut b, 46, &u16::from(SCI_IRQ).to_le_bytes());
    put(&mut b, 56, &u32::from(PM1A_EVT).to_le_bytes());
    put(&mut b, 64, &u32::from(PM1A_CNT).to_le_bytes());
    put(&mut b, 88, &[4, 2]); // PM1_EVT_LEN, PM1_CNT_LEN
    // IAPC_BOOT_ARCH: legacy devices; no 8042 (bit 1 clear); VGA not present; MSI not supported.
    put(&mut b, 109, &(0x1u16 | 0x4 | 0x8).to_le_bytes());
    // Flags: WBINVD, PWR_BUTTON and SLP_BUTTON (none), RESET_REG_SUP.
    put(&mut b, 112, &(0x1u32 | 0x10 | 0x20 | 0x400).to_le_bytes());
    put(&mut b, 116, &gas_io(RESET_PORT, 1));
    put(&mut b, 128, &[RESET_VALUE]);
    put(&mut b, 131, &[3]); // FADT minor version
    put(&mut b, 132, &facs.to_le_bytes());
    put(&mut b, 140, &dsdt.to_le_bytes());
    put(&mut b, 148, &gas_io(PM1A_EVT, 4));
    put(&mut b, 172, &gas_io(PM1A_CNT, 2));
    let mut t = Table::new(b"FACP", 6);
    t.put(&b);
    t.finish()
}

fn facs() -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[..4].copy_from_slice(b"FACS");
    f[4..8].copy_from_slice(&64u32.to_le_bytes());
    f[32] = 2; // version
    f
}

fn dsdt() -> Vec<u8> {
    // Name (_S5, Package (4) { 5, 5, 0, 0 })
    let typ = u8::try_from(S5_SLP_TYP).unwrap_or(5);
    let aml = [0x08, b'_', b'S', b'5', b'_', 0x12, 0x08, 0x04, 0x0a, typ, 0x0a, typ, 0x00, 0x00];
    let mut t = Table::new(b"DSDT", 2);
    t.put(&aml);
    t.finish()
}

fn madt(vcpus: u32) -> Vec<u8> {
    let mut t = Table::new(b"APIC", 4);
    t.put(&LAPIC_ADDR.to_le_bytes()).put(&1u32.to_le_bytes()); // PCAT_COMPAT: 8259s present
    for i in 0..vcpus {
        let id = u8::try_from(i).unwrap_or(u8::MAX);
        t.put(&[0, 8, id, id]).put(&1u32.to_le_bytes()); // processor local APIC, enabled
    }
    t.put(&[1, 12, 0, 0]).put(&IOAPIC_ADDR.to_le_bytes()).put(&0u32.to_le_bytes());
    // Interrupt source override: the SCI, level-triggered, active high.
    t.put(&[2, 10, 0, SCI_IRQ]).put(&u32::from(SCI_IRQ).to_le_bytes()).put(&0x000du16.to_le_bytes());
    // Local APIC NMI: every processor, LINT1.
    t.put(&[4, 6, 0xff, 0, 0, 1]);
    t.finish()
}

fn rsdp(xsdt: u64) -> Vec<u8> {
    let mut r = vec![0u8; 36];
    r[..8].copy_from_slice(b"RSD PTR ");
    r[9..15].copy_from_slice(OEM_ID);
    r[15] = 2; // ACPI 2.0+
    r[20..24].copy_from_slice(&36u32.to_le_bytes());
    r[24..32].copy_from_slice(&xsdt.to_le_bytes());
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    r
}

/// The tables, laid out from `base`: `(address, bytes)` pieces, the RSDP first at `base`.
pub fn tables(base: u64, vcpus: u32) -> Vec<(u64, Vec<u8>)> {
    let align = |a: u64| a.next_multiple_of(64);
    let xsdt_at = base + 64;
    // XSDT: header + 2 pointers.
    let fadt_at = align(xsdt_at + 36 + 16);
    let facs_at = align(fadt_at + 276);
    let dsdt_at = align(facs_at + 64);
    let dsdt = dsdt();
    let madt_at = align(dsdt_at + dsdt.len() as u64);
    let mut xsdt = Table::new(b"XSDT", 1);
    xsdt.put(&fadt_at.to_le_bytes()).put(&madt_at.to_le_bytes());
    vec![
        (base, rsdp(xsdt_at)),
        (xsdt_at, xsdt.finish()),
        (fadt_at, fadt(facs_at, dsdt_at)),
        (facs_at, facs()),
        (dsdt_at, dsdt),
        (madt_at, madt(vcpus)),
    ]
}

/// Writes the tables at `base`; returns the RSDP's address.
///
/// # Errors
/// The range is not guest memory.
pub fn write(mem: &GuestMemory, base: u64, vcpus: u32) -> Result<u64, vm_memory::GuestMemoryError> {
    for (at, bytes) in tables(base, vcpus) {
        mem.write(GuestAddress(at), &bytes)?;
    }
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_sums_to_zero_and_says_its_length() {
        for (_, t) in tables(0xe0000, 2) {
            if t.starts_with(b"RSD PTR ") {
                assert_eq!(t[..20].iter().fold(0u8, |a, &b| a.wrapping_add(b)), 0);
                assert_eq!(t.iter().fold(0u8, |a, &b| a.wrapping_add(b)), 0);
                continue;
            }
            if t.starts_with(b"FACS") {
                continue; // no checksum
            }
            assert_eq!(t.iter().fold(0u8, |a, &b| a.wrapping_add(b)), 0, "{:?}", &t[..4]);
            assert_eq!(u32::from_le_bytes([t[4], t[5], t[6], t[7]]) as usize, t.len());
        }
    }

    #[test]
    fn madt_lists_each_vcpu_and_the_ioapic() {
        let m = madt(3);
        let entries = &m[44..];
        let lapics = entries.chunks(8).take(3).filter(|e| e[0] == 0).count();
        assert_eq!(lapics, 3);
        assert_eq!(&entries[24..28], &[1, 12, 0, 0]);
    }

    #[test]
    fn xsdt_points_at_fadt_and_madt() {
        let t = tables(0xe0000, 1);
        let xsdt = &t[1].1;
        let fadt_at = u64::from_le_bytes(xsdt[36..44].try_into().unwrap_or_default());
        let madt_at = u64::from_le_bytes(xsdt[44..52].try_into().unwrap_or_default());
        assert_eq!(fadt_at, t[2].0);
        assert_eq!(madt_at, t[5].0);
        assert!(t[5].1.starts_with(b"APIC"));
    }
}

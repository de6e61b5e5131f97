//! The XSAVE area as `KVM_GET_XSAVE` returns it (the standard, uncompacted format): which of
//! its bytes are the guest's architectural state.
//!
//! A state component whose bit in the header's `XSTATE_BV` is clear is in its initial
//! configuration, whatever bytes the area holds for it. A processor may also clear that bit
//! for a component that merely holds its initial values (the init optimization of `XSAVEOPT`
//! and `XSAVES`, which the host kernel uses when it switches tasks), at moments that depend
//! on the host's scheduling. So two captures of one and the same guest state can differ in
//! `XSTATE_BV` and in the bytes of components in their initial configuration: compare the
//! [`effective`] areas, never the raw ones.

use kvm_bindings::kvm_cpuid_entry2;

/// Bytes in the legacy (`FXSAVE`) region.
const LEGACY: usize = 512;
/// Offset of `XSTATE_BV` in the area (the XSAVE header follows the legacy region).
const XSTATE_BV: usize = LEGACY;
/// Bytes in the XSAVE header.
const HEADER: usize = 64;
/// The CPUID leaf that enumerates the XSAVE components (sub-leaf `i`: component `i`'s size
/// in EAX, its offset in the standard format in EBX).
const XSAVE_LEAF: u32 = 0xd;
/// The x87 control word's initial value (`FNINIT`).
const FCW_INIT: u16 = 0x037f;
/// x87 state in the legacy region: FCW..FDP (MXCSR and its mask, bytes 24..32, are
/// compared as they are), then ST0-ST7/MM0-MM7.
const X87: [(usize, usize); 2] = [(0, 24), (32, 160)];
/// SSE state in the legacy region: XMM0-XMM15.
const SSE: (usize, usize) = (160, 416);

/// The area `words` (as `kvm_xsave.region` holds it) with every component that `XSTATE_BV`
/// marks as initial written out with its initial values, and the header cleared: two
/// captures of the same architectural state give equal results. Components 0 (x87) and 1
/// (SSE) are placed as the legacy region defines; components 2 and up where `cpuid`'s leaf
/// 0xD says (a component `cpuid` does not place is left as it is).
pub fn effective(words: &[u32], cpuid: &[kvm_cpuid_entry2]) -> Vec<u8> {
    let mut area: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let Some(bv) = area.get(XSTATE_BV..XSTATE_BV + 8).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
        return area;
    };
    let bv = u64::from_le_bytes(bv);
    for bit in (0..64u32).filter(|b| bv & (1 << b) == 0) {
        for (start, end) in component(bit, cpuid) {
            if let Some(bytes) = area.get_mut(start..end) {
                bytes.fill(0);
                if bit == 0 && start == 0 {
                    bytes[..2].copy_from_slice(&FCW_INIT.to_le_bytes());
                }
            }
        }
    }
    if let Some(header) = area.get_mut(XSTATE_BV..XSTATE_BV + HEADER) {
        header.fill(0);
    }
    area
}

/// Where component `bit` lies in the standard-format area (byte ranges).
fn component(bit: u32, cpuid: &[kvm_cpuid_entry2]) -> Vec<(usize, usize)> {
    match bit {
        0 => X87.to_vec(),
        1 => vec![SSE],
        _ => cpuid
            .iter()
            .find(|e| e.function == XSAVE_LEAF && e.index == bit)
            .filter(|e| e.eax > 0 && e.ebx as usize >= LEGACY + HEADER)
            .map(|e| vec![(e.ebx as usize, e.ebx as usize + e.eax as usize)])
            .unwrap_or_default(),
    }
}

/// The components (by bit, named where the SDM names them) in which `a` and `b` differ as
/// architectural state; empty when they are the same state.
pub fn differing_components(a: &[u32], b: &[u32], cpuid: &[kvm_cpuid_entry2]) -> Vec<String> {
    let (x, y) = (effective(a, cpuid), effective(b, cpuid));
    if x == y {
        return Vec::new();
    }
    let differs = |(s, e): (usize, usize)| x.get(s..e) != y.get(s..e);
    let mut out = Vec::new();
    if differs((24, 32)) {
        out.push("MXCSR".to_string());
    }
    for bit in 0..64u32 {
        let ranges = component(bit, cpuid);
        if !ranges.is_empty() && ranges.iter().copied().any(differs) {
            out.push(name(bit));
        }
    }
    if out.is_empty() {
        out.push("bytes outside every known component".into());
    }
    out
}

/// A component's name.
fn name(bit: u32) -> String {
    match bit {
        0 => "x87".into(),
        1 => "SSE".into(),
        2 => "AVX".into(),
        5 => "AVX-512 opmask".into(),
        6 => "AVX-512 ZMM_Hi256".into(),
        7 => "AVX-512 Hi16_ZMM".into(),
        9 => "PKRU".into(),
        other => format!("component {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An area with `XSTATE_BV` = `bv` and `fill` in every byte outside the header.
    fn area(bv: u64, fill: u8) -> Vec<u32> {
        let mut bytes = vec![fill; 1024 * 4];
        bytes[XSTATE_BV..XSTATE_BV + HEADER].fill(0);
        bytes[XSTATE_BV..XSTATE_BV + 8].copy_from_slice(&bv.to_le_bytes());
        bytes.chunks(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    }

    fn avx_leaf() -> Vec<kvm_cpuid_entry2> {
        vec![kvm_cpuid_entry2 { function: 0xd, index: 2, eax: 256, ebx: 576, ..Default::default() }]
    }

    fn words(bytes: &[u8]) -> Vec<u32> {
        bytes.chunks(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    }

    /// x87 and SSE in their initial configuration, in use; AVX as `avx_bv` and `avx_fill`.
    fn with_avx(avx_bv: bool, avx_fill: u8) -> Vec<u32> {
        let mut bytes = vec![0u8; 1024 * 4];
        bytes[..2].copy_from_slice(&FCW_INIT.to_le_bytes());
        let bv: u64 = if avx_bv { 0b111 } else { 0b011 };
        bytes[XSTATE_BV..XSTATE_BV + 8].copy_from_slice(&bv.to_le_bytes());
        bytes[576..576 + 256].fill(avx_fill);
        words(&bytes)
    }

    #[test]
    fn a_component_marked_initial_equals_one_in_use_with_initial_values() {
        // AVX in use holding zeros, against AVX marked initial over stale bytes.
        let (in_use, stale) = (with_avx(true, 0), with_avx(false, 0xaa));
        assert_ne!(in_use, stale);
        assert!(differing_components(&in_use, &stale, &avx_leaf()).is_empty());
        // In use holding other values: a difference.
        assert_eq!(differing_components(&with_avx(true, 1), &stale, &avx_leaf()), ["AVX"]);
    }

    #[test]
    fn different_values_in_a_component_in_use_are_named() {
        let a = area(0b111, 0);
        let mut b = a.clone();
        b[576 / 4] = 1; // YMM0's upper half
        assert_eq!(differing_components(&a, &b, &avx_leaf()), ["AVX"]);
        let mut c = a.clone();
        c[160 / 4] = 1; // XMM0
        assert_eq!(differing_components(&a, &c, &avx_leaf()), ["SSE"]);
        let mut m = a.clone();
        m[24 / 4] = 0x1f80; // MXCSR, whatever XSTATE_BV says
        assert_eq!(differing_components(&a, &m, &avx_leaf()), ["MXCSR"]);
    }

    #[test]
    fn x87_marked_initial_reads_as_fninit() {
        let initial = area(0b10, 0x55);
        // x87 in use, holding FNINIT's values.
        let mut bytes: Vec<u8> = area(0b11, 0x55).iter().flat_map(|w| w.to_le_bytes()).collect();
        for (s, e) in X87 {
            bytes[s..e].fill(0);
        }
        bytes[..2].copy_from_slice(&FCW_INIT.to_le_bytes());
        let fninit = words(&bytes);
        assert!(differing_components(&initial, &fninit, &[]).is_empty());
        let mut other = fninit.clone();
        other[0] = 0x027f; // another control word
        assert_eq!(differing_components(&initial, &other, &[]), ["x87"]);
    }
}

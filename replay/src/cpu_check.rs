//! Does the replay host have every CPU feature the recorded guest saw?

use vmrr_format::CpuidEntry;

/// `(leaf, sub-leaf, register, bit, name)` of the features checked.
const FEATURES: &[(u32, Option<u32>, u8, u8, &str)] = &[
    (1, None, 2, 0, "sse3"),
    (1, None, 2, 1, "pclmulqdq"),
    (1, None, 2, 9, "ssse3"),
    (1, None, 2, 12, "fma"),
    (1, None, 2, 13, "cx16"),
    (1, None, 2, 19, "sse4.1"),
    (1, None, 2, 20, "sse4.2"),
    (1, None, 2, 22, "movbe"),
    (1, None, 2, 23, "popcnt"),
    (1, None, 2, 25, "aes"),
    (1, None, 2, 26, "xsave"),
    (1, None, 2, 28, "avx"),
    (1, None, 2, 29, "f16c"),
    (1, None, 2, 30, "rdrand"),
    (1, None, 3, 0, "fpu"),
    (1, None, 3, 4, "tsc"),
    (1, None, 3, 8, "cx8"),
    (1, None, 3, 15, "cmov"),
    (1, None, 3, 23, "mmx"),
    (1, None, 3, 25, "sse"),
    (1, None, 3, 26, "sse2"),
    (7, Some(0), 1, 3, "bmi1"),
    (7, Some(0), 1, 5, "avx2"),
    (7, Some(0), 1, 8, "bmi2"),
    (7, Some(0), 1, 9, "erms"),
    (7, Some(0), 1, 16, "avx512f"),
    (7, Some(0), 1, 17, "avx512dq"),
    (7, Some(0), 1, 18, "rdseed"),
    (7, Some(0), 1, 19, "adx"),
    (7, Some(0), 1, 29, "sha"),
    (7, Some(0), 1, 30, "avx512bw"),
    (7, Some(0), 1, 31, "avx512vl"),
    (7, Some(0), 2, 1, "avx512vbmi"),
    (7, Some(0), 2, 8, "gfni"),
    (7, Some(0), 2, 9, "vaes"),
    (7, Some(0), 2, 10, "vpclmulqdq"),
    (7, Some(0), 3, 4, "fsrm"),
    (0x8000_0001, None, 2, 0, "lahf_lm"),
    (0x8000_0001, None, 2, 5, "abm"),
    (0x8000_0001, None, 3, 11, "syscall"),
    (0x8000_0001, None, 3, 20, "nx"),
    (0x8000_0001, None, 3, 26, "pdpe1gb"),
    (0x8000_0001, None, 3, 27, "rdtscp"),
    (0x8000_0001, None, 3, 29, "lm"),
    (0xd, Some(1), 0, 0, "xsaveopt"),
    (0xd, Some(1), 0, 1, "xsavec"),
    (0xd, Some(1), 0, 3, "xsaves"),
];

/// Checked register words: `(leaf, sub-leaf, register)`.
const WORDS: &[(u32, Option<u32>, u8)] = &[
    (1, None, 2),
    (1, None, 3),
    (7, Some(0), 1),
    (7, Some(0), 2),
    (7, Some(0), 3),
    (0x8000_0001, None, 2),
    (0x8000_0001, None, 3),
    (0xd, Some(1), 0),
];

fn reg(e: &CpuidEntry, r: u8) -> u32 {
    match r {
        0 => e.eax,
        1 => e.ebx,
        2 => e.ecx,
        _ => e.edx,
    }
}

fn find(entries: &[CpuidEntry], leaf: u32, sub: Option<u32>) -> Option<&CpuidEntry> {
    entries.iter().find(|e| e.function == leaf && sub.is_none_or(|s| s == e.index))
}

/// Features set in `recorded` that `host` (the replay host's supported CPUID) lacks, by
/// name where known ("leaf 0x7.0 ebx bit 16" otherwise).
pub fn missing(recorded: &[CpuidEntry], host: &[CpuidEntry]) -> Vec<String> {
    let mut out = Vec::new();
    for &(leaf, sub, r) in WORDS {
        let Some(rec) = find(recorded, leaf, sub) else { continue };
        let have = find(host, leaf, sub).map_or(0, |h| reg(h, r));
        let lacking = reg(rec, r) & !have;
        for bit in 0..32u8 {
            if lacking & (1 << bit) == 0 {
                continue;
            }
            let name = FEATURES
                .iter()
                .find(|f| f.0 == leaf && f.1 == sub && f.2 == r && f.3 == bit)
                .map(|f| f.4.to_string())
                .unwrap_or_else(|| {
                    let rn = ["eax", "ebx", "ecx", "edx"][usize::from(r.min(3))];
                    format!("leaf {leaf:#x}.{} {rn} bit {bit}", sub.unwrap_or(0))
                });
            out.push(name);
        }
    }
    out
}

/// The replay host's supported CPUID.
///
/// # Errors
/// KVM cannot be opened or queried.
pub fn host_cpuid() -> Result<Vec<CpuidEntry>, vmrr_engine::kvm::KvmError> {
    vmrr_engine::kvm::cpuid::host_supported()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_missing_features() {
        let e = |edx, ebx| {
            vec![
                CpuidEntry { function: 1, edx, ..Default::default() },
                CpuidEntry { function: 7, index: 0, ebx, ..Default::default() },
            ]
        };
        let rec = e(1 << 26, (1 << 16) | (1 << 13));
        let host = e(1 << 26, 0);
        assert_eq!(missing(&rec, &host), vec!["leaf 0x7.0 ebx bit 13".to_string(), "avx512f".to_string()]);
        assert!(missing(&host, &rec).is_empty());
    }
}

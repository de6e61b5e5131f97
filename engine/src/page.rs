//! The guest page: the unit of memory slots, KVM's dirty log, snapshot files, copy-on-write
//! remaps and userfaultfd ranges. Every page size in the engine is this one.

/// Bytes in a guest page, as a length.
pub const PAGE_BYTES: usize = 1 << 12;
/// Bytes in a guest page, as an address or file-offset quantity.
pub const PAGE_SIZE: u64 = PAGE_BYTES as u64;

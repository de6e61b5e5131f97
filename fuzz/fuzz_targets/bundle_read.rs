//! libFuzzer target: `vmrr_replay::bundle::fuzz_read`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vmrr_replay::bundle::fuzz_read(data));

//! libFuzzer target: `vmrr_engine::snapshot::fuzz_state`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vmrr_engine::snapshot::fuzz_state(data));

//! libFuzzer target: `vmrr_format::fuzzing::read_trace`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vmrr_format::fuzzing::read_trace(data));

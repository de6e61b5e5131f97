//! libFuzzer target: `vmrr_format::fuzzing::decode_record`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vmrr_format::fuzzing::decode_record(data));

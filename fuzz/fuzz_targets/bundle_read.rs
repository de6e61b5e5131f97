//! libFuzzer target: `vmrr_format::fuzzing::read_bundle`, with the engine's snapshot chain
//! loader on every snapshot the bundle names.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vmrr_format::fuzzing::read_bundle(data, &|dir| {
        let _ = vmrr_engine::snapshot::load_chain(dir, 64 << 20);
    })
});

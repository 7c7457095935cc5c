//! libFuzzer entry for `aether_hub::fuzzing::client_frame` (see fuzz/README.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| aether_hub::fuzzing::client_frame(data));

//! libFuzzer entry for `aether_hub::fuzzing::publish_body` (see fuzz/README.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| aether_hub::fuzzing::publish_body(data));

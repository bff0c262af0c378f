//! Fuzz target: see `shardcast::fuzzing::vws_decode` (shared with tests/fuzz_regressions.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shardcast::fuzzing::vws_decode(data));

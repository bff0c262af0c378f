//! Fuzz target: see `shardcast::fuzzing::frame_reader` (shared with tests/fuzz_regressions.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shardcast::fuzzing::frame_reader(data));

//! Fuzz drivers: the code the cargo-fuzz targets (`fuzz/`) and the regression test
//! (`tests/fuzz_regressions.rs`) both run, so a saved crash input replays through exactly
//! the path the fuzzer found it on.
//!
//! Not part of the broker's API (hidden from the docs). Each driver takes arbitrary bytes,
//! feeds them to one parser of untrusted input the way the shard does, and checks cheap
//! invariants. A violated invariant panics on purpose: that is how a fuzzer learns of it.
//! Owns no parsing logic of its own beyond small reference checks.
// Panicking is this module's way of reporting, and no broker path calls it.
#![allow(clippy::panic)]

mod decode;
mod reader;

pub use decode::{gows_decode, vws_decode};
pub use reader::frame_reader;

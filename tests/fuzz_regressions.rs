//! Replays every saved fuzz input (crashes found and kept seeds) under
//! `tests/fuzz-regressions/<target>/` through the same driver the cargo-fuzz target runs
//! (`shardcast::fuzzing`), so a fixed crash stays fixed on stable `cargo test`.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::path::Path;

/// Runs `driver` on every file in `tests/fuzz-regressions/<target>`; the directory must
/// hold at least one input, so a misspelt path cannot pass vacuously.
fn replay(target: &str, driver: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-regressions")
        .join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no inputs in {}", dir.display());
    for path in inputs {
        let input = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| driver(&input));
        assert!(outcome.is_ok(), "{target}: {} fails", path.display());
    }
}

#[test]
fn gows_decode() {
    replay("gows_decode", shardcast::fuzzing::gows_decode);
}

#[test]
fn vws_decode() {
    replay("vws_decode", shardcast::fuzzing::vws_decode);
}

#[test]
fn frame_reader() {
    replay("frame_reader", shardcast::fuzzing::frame_reader);
}

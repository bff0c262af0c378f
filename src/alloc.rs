//! Allocator tuning: how soon memory freed by a shard goes back to the OS.
//!
//! The binary uses mimalloc (`main.rs`). Two settings decide what a broker that set up
//! thousands of connections, then went quiet, keeps resident:
//!
//! * the purge delay: how long freed pages stay mapped before mimalloc hands them back;
//! * when purging happens at all: lazily, when the freeing thread next calls the
//!   allocator after the delay. A shard that has gone quiet never does, so each shard
//!   calls [`release_freed`] on a short timer.

// mimalloc's option and collection API (`mimalloc.h`), linked in by the mimalloc crate;
// declared here because libmimalloc-sys only exposes it behind a feature that needs
// another crate.
extern "C" {
    fn mi_option_get(option: std::os::raw::c_int) -> std::os::raw::c_long;
    fn mi_option_set(option: std::os::raw::c_int, value: std::os::raw::c_long);
    fn mi_collect(force: bool);
}

/// `mi_option_purge_delay` in the mimalloc v3 that libmimalloc-sys 0.1.49 bundles.
const MI_OPTION_PURGE_DELAY: std::os::raw::c_int = 15;
/// Its built-in default (ms), used to confirm the option number before touching it.
const MI_PURGE_DELAY_DEFAULT: std::os::raw::c_long = 1000;

/// How long mimalloc keeps freed pages before returning them to the OS (ms).
///
/// With the built-in 1000 ms, memory freed after a burst of handshakes stayed resident
/// (about 0.2-0.4 KiB per idle connection, measured). With 0, a busy shard gave pages
/// back and faulted them in again for every burst of publications: page faults, zeroing
/// and TLB shootdowns took about 13% of the broker's CPU in the fan-in profile, and one
/// shard delivered 15-25% less. 10 ms plus [`release_freed`] keeps both.
const PURGE_DELAY_MS: std::os::raw::c_long = 10;

/// Sets the purge delay, unless `MIMALLOC_PURGE_DELAY` in the environment already did
/// (the option then no longer holds its default and is left alone). Call first in main.
#[allow(unsafe_code)]
pub fn tune() {
    // SAFETY: plain reads/writes of mimalloc's option table; valid at any time, from any thread.
    unsafe {
        if mi_option_get(MI_OPTION_PURGE_DELAY) == MI_PURGE_DELAY_DEFAULT {
            mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
        }
    }
}

/// Lets mimalloc free this thread's emptied pages and purge those whose delay has passed.
/// Not forced: pages still within the delay stay, so a busy shard keeps reusing them.
/// Cheap (a walk over the thread's non-full pages); harmless when mimalloc is not the
/// global allocator (tests), since its heaps are then empty.
#[allow(unsafe_code)]
pub fn release_freed() {
    // SAFETY: mi_collect only touches the calling thread's heap and the shared arenas
    // under mimalloc's own synchronisation.
    unsafe { mi_collect(false) }
}

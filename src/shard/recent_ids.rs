//! The ids a SemStreams peer used recently (`semstreams.id_window`), so a reused one is
//! refused. Checked on every `data` message, so it must stay in cache: a hash set per
//! peer (tens of KiB, random probes) missed it on nearly every message and cost an
//! ingest shard a third of its rate (BENCHMARKS.md, SemStreams ingest).
//!
//! Two generations of `window` ids each: new ids go into the current one; when it is
//! full the older one is emptied and becomes current, so at least the last `window` ids
//! (up to twice that) are remembered, with no removals. In front of each generation's
//! list of hashes, which settles a question exactly, is a Bloom filter blocked to one
//! 64-bit word per id, both generations in the halves of the same word (two bits of 32
//! per id): a new id costs one word read and the same word written, so one cache line,
//! and about 1% of new ids take the exact look at the list.

/// The largest filter, in words (512 KiB); a larger window still works, with more
/// exact looks.
const MAX_WORDS: usize = 1 << 16;

/// A peer's recent ids (hashes keyed per process, so peers cannot aim at filter words).
#[derive(Debug, Default)]
pub(super) struct RecentIds {
    /// Generation `g`'s filter is the `g`th 32-bit half of each word.
    words: Vec<u64>,
    hashes: [Vec<u64>; 2],
    current: usize,
}

impl RecentIds {
    /// The filter word of `hash` and its two bits in a 32-bit half.
    fn slot(&self, hash: u64) -> (usize, u64) {
        let word = (hash as usize) & self.words.len().wrapping_sub(1);
        let bits = (1u64 << ((hash >> 32) & 31)) | (1u64 << ((hash >> 40) & 31));
        (word, bits)
    }

    /// Whether `hash` was remembered.
    pub fn contains(&self, hash: u64) -> bool {
        let (w, bits) = self.slot(hash);
        let Some(word) = self.words.get(w) else {
            return false;
        };
        (0..2).any(|g| {
            let bits = bits << (32 * g);
            word & bits == bits && self.hashes.get(g).is_some_and(|h| h.contains(&hash))
        })
    }

    /// Remembers `hash`, with generations of `window` ids.
    pub fn insert(&mut self, hash: u64, window: usize) {
        if self.words.is_empty() {
            self.words = vec![0; window.next_power_of_two().clamp(1, MAX_WORDS)];
        }
        if self
            .hashes
            .get(self.current)
            .is_some_and(|h| h.len() >= window)
        {
            self.current ^= 1;
            let keep = !(u64::from(u32::MAX) << (32 * self.current));
            self.words.iter_mut().for_each(|w| *w &= keep);
            if let Some(h) = self.hashes.get_mut(self.current) {
                h.clear();
            }
        }
        let (w, bits) = self.slot(hash);
        if let Some(word) = self.words.get_mut(w) {
            *word |= bits << (32 * self.current);
        }
        if let Some(h) = self.hashes.get_mut(self.current) {
            h.push(hash);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, RandomState};

    #[test]
    fn remembers_at_least_the_last_window_and_forgets_older_ones() {
        let keys = RandomState::new();
        let h = |i: u64| keys.hash_one(format!("\"d{i}\""));
        let mut ids = RecentIds::default();
        let window = 100;
        for i in 0..1000 {
            assert!(!ids.contains(h(i)), "id {i} is new");
            ids.insert(h(i), window);
            // The last `window` ids are all still known.
            let oldest = i.saturating_sub(window as u64 - 1);
            assert!((oldest..=i).all(|j| ids.contains(h(j))), "after {i}");
        }
        // Nothing older than two generations is kept.
        assert!((0..700).all(|j| !ids.contains(h(j))));
    }

    #[test]
    fn a_full_filter_still_answers_exactly() {
        // A window far past the filter's size: every bit set, the hash lists decide.
        let mut ids = RecentIds {
            words: vec![0; 4],
            ..RecentIds::default()
        };
        for i in 0..10_000u64 {
            ids.insert(i.wrapping_mul(0x9E37_79B9_7F4A_7C15), 1 << 20);
        }
        assert!(ids.words.iter().all(|w| *w as u32 == u32::MAX));
        assert!(ids.contains(3u64.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        assert!(!ids.contains(12_345));
    }
}

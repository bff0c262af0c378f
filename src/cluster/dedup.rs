//! Removing duplicate deliveries from overlapping NATS subscriptions.
//!
//! A node subscribed to both `t.a.*` and `t.a.b` gets a message on `t.a.b` twice, once
//! per subscription. Each origin numbers its publications; the receiver keeps, per
//! origin, a sliding window of the last [`WINDOW`] sequence numbers seen (the IPsec
//! anti-replay window) and accepts each number once. A number older than the window is
//! refused too: it can only be a very late copy.

use std::collections::HashMap;

/// Sequence numbers remembered per origin.
pub const WINDOW: u64 = 4096;
const WORDS: usize = (WINDOW / 64) as usize;
/// Origins remembered at most (a restart is a new origin); the map is cleared past it.
const MAX_ORIGINS: usize = 1024;

struct Window {
    top: u64,
    bits: [u64; WORDS],
}

impl Window {
    fn slot(seq: u64) -> (usize, u64) {
        let i = seq % WINDOW;
        ((i / 64) as usize, 1u64 << (i % 64))
    }

    fn accept(&mut self, seq: u64) -> bool {
        if seq > self.top {
            if seq - self.top >= WINDOW {
                self.bits = [0; WORDS];
            } else {
                for s in self.top + 1..=seq {
                    let (w, b) = Self::slot(s);
                    if let Some(word) = self.bits.get_mut(w) {
                        *word &= !b;
                    }
                }
            }
            self.top = seq;
        } else if self.top - seq >= WINDOW {
            return false;
        }
        let (w, b) = Self::slot(seq);
        match self.bits.get_mut(w) {
            Some(word) if *word & b == 0 => {
                *word |= b;
                true
            }
            _ => false,
        }
    }
}

/// Per-origin windows.
#[derive(Default)]
pub struct Dedup {
    origins: HashMap<Box<str>, Window>,
}

impl Dedup {
    /// True the first time `(origin, seq)` is seen (sequence numbers start at 1).
    pub fn accept(&mut self, origin: &str, seq: u64) -> bool {
        if let Some(w) = self.origins.get_mut(origin) {
            return w.accept(seq);
        }
        if self.origins.len() >= MAX_ORIGINS {
            self.origins.clear();
        }
        let mut w = Window {
            top: 0,
            bits: [0; WORDS],
        };
        let first = w.accept(seq);
        self.origins.insert(origin.into(), w);
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_sequence_number_once_per_origin() {
        let mut d = Dedup::default();
        assert!(d.accept("a", 1));
        assert!(!d.accept("a", 1));
        assert!(d.accept("b", 1));
        assert!(d.accept("a", 3));
        assert!(d.accept("a", 2), "late but inside the window");
        assert!(!d.accept("a", 2));
        assert!(d.accept("a", 3 + WINDOW));
        assert!(!d.accept("a", 3), "older than the window");
        assert!(d.accept("a", 4 + WINDOW));
        assert!(!d.accept("a", 4 + WINDOW));
        assert!(d.accept("a", 100 + 3 * WINDOW));
        assert!(d.accept("a", 99 + 3 * WINDOW));
    }
}

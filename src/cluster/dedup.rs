//! Removing duplicate deliveries from overlapping NATS subscriptions.
//!
//! A node subscribed to both `t.a.*` and `t.a.b` gets a message on `t.a.b` twice, once
//! per subscription. Each origin numbers its publications; the receiver keeps, per
//! origin, a sliding window of the last [`WINDOW`] sequence numbers seen (the IPsec
//! anti-replay window) and accepts each number once. A number older than the window is
//! refused too: it can only be a very late copy, or a replay.
//!
//! Envelopes can be forged by anyone who may publish on NATS (unless they are signed,
//! `cluster.secret_env`), and one forged number near 2^64 used to move the window so far
//! ahead that every real number of that origin looked old: the node was silenced at its
//! peers until it restarted. So a number more than [`MAX_JUMP`] ahead is refused
//! without moving the window, and, when envelopes are not signed, a number older than
//! the window restarts the window at it instead of being refused (a forger could have
//! moved the window; the cost is that a very late copy is delivered twice).

use std::collections::HashMap;

/// Sequence numbers remembered per origin.
pub const WINDOW: u64 = 4096;
/// The furthest a sequence number may move ahead of the newest seen from its origin:
/// 2^48, more publications than a node sends in years (gaps are normal: a receiver sees
/// only the publications on the subjects it subscribes to).
pub const MAX_JUMP: u64 = 1 << 48;

/// What the window says about a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// First time seen: deliver it.
    New,
    /// Seen already, or older than the window (signed envelopes only).
    Duplicate,
    /// Further ahead than [`MAX_JUMP`]: forged.
    Jump,
}
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

    fn accept(&mut self, seq: u64, restart_behind: bool) -> Verdict {
        if seq > self.top {
            if seq - self.top > MAX_JUMP {
                return Verdict::Jump;
            }
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
            if !restart_behind {
                return Verdict::Duplicate;
            }
            self.bits = [0; WORDS];
            self.top = seq;
        }
        let (w, b) = Self::slot(seq);
        match self.bits.get_mut(w) {
            Some(word) if *word & b == 0 => {
                *word |= b;
                Verdict::New
            }
            _ => Verdict::Duplicate,
        }
    }
}

/// Per-origin windows.
pub struct Dedup {
    origins: HashMap<Box<str>, Window>,
    restart_behind: bool,
}

impl Dedup {
    /// Windows for envelopes that are `signed` (a number older than the window is then
    /// refused) or not (it restarts the window).
    pub fn new(signed: bool) -> Self {
        Dedup {
            origins: HashMap::new(),
            restart_behind: !signed,
        }
    }

    /// [`Verdict::New`] the first time `(origin, seq)` is seen (numbers start at 1).
    pub fn check(&mut self, origin: &str, seq: u64) -> Verdict {
        let restart = self.restart_behind;
        if let Some(w) = self.origins.get_mut(origin) {
            return w.accept(seq, restart);
        }
        if self.origins.len() >= MAX_ORIGINS {
            self.origins.clear();
        }
        let mut w = Window {
            top: 0,
            bits: [0; WORDS],
        };
        let first = w.accept(seq, restart);
        self.origins.insert(origin.into(), w);
        first
    }

    /// True the first time `(origin, seq)` is seen.
    pub fn accept(&mut self, origin: &str, seq: u64) -> bool {
        self.check(origin, seq) == Verdict::New
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_sequence_number_once_per_origin() {
        let mut d = Dedup::new(true);
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

    #[test]
    fn a_forged_huge_number_does_not_silence_its_origin() {
        for signed in [false, true] {
            let mut d = Dedup::new(signed);
            assert!(d.accept("a", 5));
            assert_eq!(d.check("a", u64::MAX), Verdict::Jump);
            assert_eq!(d.check("b", u64::MAX), Verdict::Jump, "first number too");
            assert!(d.accept("a", 6), "signed {signed}");
        }
        // Unsigned: a forger can still walk the window ahead within MAX_JUMP; the real
        // numbers then restart it instead of being refused.
        let mut d = Dedup::new(false);
        assert!(d.accept("a", 5));
        assert!(d.accept("a", 5 + MAX_JUMP));
        assert!(d.accept("a", 6));
        assert!(d.accept("a", 7));
        assert!(!d.accept("a", 7));
        let mut d = Dedup::new(true);
        assert!(d.accept("a", 5 + WINDOW));
        assert!(
            !d.accept("a", 5),
            "signed: older than the window is refused"
        );
    }
}

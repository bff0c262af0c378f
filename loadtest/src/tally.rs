//! What each harness thread counts, merged once at the end: deliveries, loss, the
//! latency histogram, errors and close reasons. Threads share nothing per message.

use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Nanoseconds on one monotonic clock shared by publishers and subscribers.
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Latencies up to 10 minutes, 3 significant digits.
const HIST_MAX_NS: u64 = 600_000_000_000;

pub fn new_histogram() -> Histogram<u64> {
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1_000, HIST_MAX_NS, 3).expect("constant histogram bounds are valid")
}

/// Per-thread counts.
pub struct Tally {
    /// Latency of messages sent in the measured window before its split (the whole
    /// window when it has no split).
    pub latency: Histogram<u64>,
    /// Messages sent at or after the window's split: the abuse scenario's abuse window.
    pub after_split: AfterSplit,
    /// Stamped messages received for the first time (duplicates excluded).
    pub received: u64,
    /// Stamped messages that arrived inside the measured window.
    pub window_arrivals: u64,
    /// Messages skipped over: a sequence jumped forward.
    pub gaps: u64,
    /// Messages with a sequence already seen (duplicate or reordered).
    pub duplicates: u64,
    pub errors: BTreeMap<String, u64>,
    pub closes: BTreeMap<String, u64>,
}

/// What arrived of the messages sent at or after the window's split.
pub struct AfterSplit {
    /// Latency of those sent inside the window.
    pub latency: Histogram<u64>,
    /// Distinct ones received (a part of [`Tally::received`]).
    pub received: u64,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            latency: new_histogram(),
            after_split: AfterSplit {
                latency: new_histogram(),
                received: 0,
            },
            received: 0,
            window_arrivals: 0,
            gaps: 0,
            duplicates: 0,
            errors: BTreeMap::new(),
            closes: BTreeMap::new(),
        }
    }
}

impl Tally {
    pub fn error(&mut self, what: impl Into<String>) {
        *self.errors.entry(what.into()).or_default() += 1;
    }

    pub fn close(&mut self, role: &str, code: u16, reason: &str) {
        *self
            .closes
            .entry(format!("{role}: {code} {reason}"))
            .or_default() += 1;
    }

    /// Records one new stamped message sent at `sent_ns` that arrived at `now`.
    pub fn arrived(&mut self, window: (u64, u64, u64), sent_ns: u64, now: u64) {
        let (start, split, end) = window;
        self.received += 1;
        if (start..end).contains(&now) {
            self.window_arrivals += 1;
        }
        let late = sent_ns >= split;
        if late {
            self.after_split.received += 1;
        }
        if (start..end).contains(&sent_ns) {
            let latency = now.saturating_sub(sent_ns).max(1_000);
            let h = if late {
                &mut self.after_split.latency
            } else {
                &mut self.latency
            };
            let _ = h.record(latency);
        }
    }

    /// Latency over the whole window, both sides of the split.
    pub fn window_latency(&self) -> Histogram<u64> {
        let mut all = self.latency.clone();
        // Same bounds: adding cannot fail.
        let _ = all.add(&self.after_split.latency);
        all
    }

    pub fn merge(&mut self, other: Tally) {
        // Both histograms have the same bounds; an error would mean a bug, and losing
        // one thread's latencies is reported rather than hidden.
        if self.latency.add(&other.latency).is_err()
            || self.after_split.latency.add(&other.after_split.latency).is_err()
        {
            self.error("latency histograms could not be merged");
        }
        self.after_split.received += other.after_split.received;
        self.received += other.received;
        self.window_arrivals += other.window_arrivals;
        self.gaps += other.gaps;
        self.duplicates += other.duplicates;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        for (k, v) in other.closes {
            *self.closes.entry(k).or_default() += v;
        }
    }
}

/// Where one subscriber is in each publisher's sequence on its topic.
pub struct SeqTracker {
    next: Vec<u64>,
}

impl SeqTracker {
    pub fn new(publishers: usize) -> Self {
        SeqTracker {
            next: vec![0; publishers],
        }
    }

    /// Records one stamped message; returns whether it was new.
    pub fn see(&mut self, publisher: u32, seq: u64, tally: &mut Tally) -> bool {
        let Some(next) = self.next.get_mut(publisher as usize) else {
            tally.error("message from an unknown publisher");
            return false;
        };
        if seq < *next {
            tally.duplicates += 1;
            return false;
        }
        tally.gaps += seq - *next;
        *next = seq + 1;
        true
    }
}

/// The measured window, in [`now_ns`] time; zero until publishing starts. The split
/// divides it in two (the abuse scenario's clean and abuse windows); without one it is
/// the end.
#[derive(Default)]
pub struct Window {
    start: AtomicU64,
    split: AtomicU64,
    end: AtomicU64,
}

impl Window {
    pub fn set(&self, start: u64, split: u64, end: u64) {
        self.end.store(end, Ordering::Release);
        self.split.store(split, Ordering::Release);
        self.start.store(start, Ordering::Release);
    }

    /// (start, end), or an empty range before it is set.
    pub fn get(&self) -> (u64, u64) {
        let (start, _, end) = self.get_split();
        (start, end)
    }

    /// (start, split, end), or an empty range before it is set.
    pub fn get_split(&self) -> (u64, u64, u64) {
        let start = self.start.load(Ordering::Acquire);
        if start == 0 {
            return (u64::MAX, u64::MAX, u64::MAX);
        }
        (
            start,
            self.split.load(Ordering::Acquire),
            self.end.load(Ordering::Acquire),
        )
    }
}

/// Counters the main thread reads while the run goes (updated once per read round or
/// per connection, never per message).
#[derive(Default)]
pub struct Live {
    pub ready: AtomicUsize,
    pub failed: AtomicUsize,
    pub last_ready_ns: AtomicU64,
    pub received: AtomicU64,
    pub published: AtomicU64,
    pub window: Window,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tracker_counts_gaps_and_duplicates() {
        let mut t = Tally::default();
        let mut s = SeqTracker::new(2);
        assert!(s.see(0, 0, &mut t));
        assert!(s.see(0, 3, &mut t));
        assert!(!s.see(0, 2, &mut t));
        assert!(s.see(1, 0, &mut t));
        assert!(!s.see(5, 0, &mut t));
        assert_eq!((t.gaps, t.duplicates), (2, 1));
        assert_eq!(t.errors.values().sum::<u64>(), 1);
    }

    #[test]
    fn arrivals_fall_on_their_side_of_the_split() {
        let mut t = Tally::default();
        let window = (100_000, 200_000, 300_000);
        t.arrived(window, 50_000, 150_000); // warm-up: counted, no latency
        t.arrived(window, 150_000, 160_000);
        t.arrived(window, 250_000, 290_000);
        t.arrived(window, 250_000, 400_000); // arrived after the window
        assert_eq!((t.received, t.window_arrivals), (4, 3));
        assert_eq!(t.after_split.received, 2);
        assert_eq!((t.latency.len(), t.after_split.latency.len()), (1, 2));
        assert_eq!(t.window_latency().len(), 3);
    }

    #[test]
    fn merge_adds_everything() {
        let mut a = Tally::default();
        let mut b = Tally::default();
        a.latency.record(1_000_000).unwrap();
        b.latency.record(3_000_000).unwrap();
        b.received = 4;
        b.error("x");
        a.merge(b);
        assert_eq!(a.latency.len(), 2);
        assert_eq!(a.received, 4);
        assert_eq!(a.errors["x"], 1);
    }
}

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
    /// Latency of messages sent in the measured window (outside its abuse slices).
    pub latency: Histogram<u64>,
    /// Messages sent in the window's abuse slices (the abuse scenario only).
    pub abused: Abused,
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
    /// Distinct stamped messages each reading subscriber received (in no set order).
    pub readers: Vec<u64>,
}

/// What arrived of the messages sent in the window's abuse slices.
pub struct Abused {
    pub latency: Histogram<u64>,
    /// Distinct ones received (a part of [`Tally::received`]).
    pub received: u64,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            latency: new_histogram(),
            abused: Abused {
                latency: new_histogram(),
                received: 0,
            },
            received: 0,
            window_arrivals: 0,
            gaps: 0,
            duplicates: 0,
            errors: BTreeMap::new(),
            closes: BTreeMap::new(),
            readers: Vec::new(),
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
    pub fn arrived(&mut self, window: &Times, sent_ns: u64, now: u64) {
        self.received += 1;
        if window.contains(now) {
            self.window_arrivals += 1;
        }
        let abused = window.abused(sent_ns);
        if abused {
            self.abused.received += 1;
        }
        if window.contains(sent_ns) {
            let latency = now.saturating_sub(sent_ns).max(1_000);
            let h = if abused {
                &mut self.abused.latency
            } else {
                &mut self.latency
            };
            let _ = h.record(latency);
        }
    }

    /// Latency over the whole window, abuse slices included.
    pub fn window_latency(&self) -> Histogram<u64> {
        let mut all = self.latency.clone();
        // Same bounds: adding cannot fail.
        let _ = all.add(&self.abused.latency);
        all
    }

    pub fn merge(&mut self, other: Tally) {
        // Both histograms have the same bounds; an error would mean a bug, and losing
        // one thread's latencies is reported rather than hidden.
        if self.latency.add(&other.latency).is_err()
            || self.abused.latency.add(&other.abused.latency).is_err()
        {
            self.error("latency histograms could not be merged");
        }
        self.abused.received += other.abused.received;
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
        self.readers.extend(other.readers);
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

/// The measured window, in [`now_ns`] time; zero until publishing starts.
#[derive(Default)]
pub struct Window {
    start: AtomicU64,
    end: AtomicU64,
    slice: AtomicU64,
}

/// The window's times. In the abuse scenario the window alternates slices of `slice`
/// ns: clean, abuse, clean, abuse, …; `slice` is 0 for every other scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Times {
    pub start: u64,
    pub end: u64,
    pub slice: u64,
}

impl Times {
    pub fn contains(&self, t: u64) -> bool {
        (self.start..self.end).contains(&t)
    }

    /// Whether `t` falls in an abuse slice.
    pub fn abused(&self, t: u64) -> bool {
        self.slice > 0 && self.contains(t) && ((t - self.start) / self.slice) % 2 == 1
    }
}

impl Window {
    pub fn set(&self, times: Times) {
        self.end.store(times.end, Ordering::Release);
        self.slice.store(times.slice, Ordering::Release);
        self.start.store(times.start, Ordering::Release);
    }

    /// (start, end), or an empty range before it is set.
    pub fn get(&self) -> (u64, u64) {
        let t = self.times();
        (t.start, t.end)
    }

    /// The times, or an empty window before they are set.
    pub fn times(&self) -> Times {
        let start = self.start.load(Ordering::Acquire);
        if start == 0 {
            return Times {
                start: u64::MAX,
                end: u64::MAX,
                slice: 0,
            };
        }
        Times {
            start,
            end: self.end.load(Ordering::Acquire),
            slice: self.slice.load(Ordering::Acquire),
        }
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
    /// When publishing stops (`now_ns`); 0 until set. The main thread may bring it
    /// forward (the abuse scenario publishes through the recovery, as long as it lasts).
    pub stop: AtomicU64,
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
    fn arrivals_fall_in_their_slice() {
        let mut t = Tally::default();
        let window = Times {
            start: 100_000,
            end: 500_000,
            slice: 100_000,
        };
        t.arrived(&window, 50_000, 150_000); // warm-up: counted, no latency
        t.arrived(&window, 150_000, 160_000); // clean
        t.arrived(&window, 250_000, 290_000); // abuse
        t.arrived(&window, 250_000, 600_000); // abuse, arrived after the window
        t.arrived(&window, 350_000, 360_000); // clean
        t.arrived(&window, 450_000, 460_000); // abuse
        t.arrived(&window, 550_000, 560_000); // after the window
        assert_eq!((t.received, t.window_arrivals), (7, 5));
        assert_eq!(t.abused.received, 3);
        assert_eq!((t.latency.len(), t.abused.latency.len()), (2, 3));
        assert_eq!(t.window_latency().len(), 5);
        let plain = Times { slice: 0, ..window };
        assert!(!plain.abused(250_000));
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

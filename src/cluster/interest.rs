//! Interest changes on their way from the shards to the link, coalesced per pattern.
//!
//! Shards report "first subscriber of a pattern" (+1) and "last one left" (-1). They
//! used to go over an unbounded channel, one message per change, so a client churning
//! subscriptions grew the queue (and the link's backlog) without bound. Here each
//! pattern holds one net count until the link takes the whole table: a subscribe and an
//! unsubscribe of the same pattern cancel out before NATS ever hears of them. A pattern
//! has an entry only while its net change is not zero, so the table never holds more
//! than the patterns subscribed now plus the ones the link still holds: both bounded by
//! the connection and subscription limits, whatever the churn rate.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::Notify;

/// Net interest changes per pattern, waiting for the link.
#[derive(Debug, Default)]
pub(crate) struct PendingInterest {
    changes: Mutex<HashMap<Box<str>, i32>>,
    /// Woken when the table goes from empty to not empty.
    ready: Notify,
    /// Changes that cancelled out before the link took them (two per pair).
    coalesced: AtomicU64,
}

impl PendingInterest {
    /// Records a change of `delta` shards interested in `pattern`.
    pub(crate) fn change(&self, pattern: &str, delta: i32) {
        let mut changes = self.changes.lock();
        let was_empty = changes.is_empty();
        if let Some(net) = changes.get_mut(pattern) {
            *net += delta;
            if *net == 0 {
                changes.remove(pattern);
                self.coalesced.fetch_add(2, Ordering::Relaxed);
            }
        } else {
            changes.insert(pattern.into(), delta);
        }
        let wake = was_empty && !changes.is_empty();
        drop(changes);
        if wake {
            // Stores a permit when the link is busy, so the change is never missed.
            self.ready.notify_one();
        }
    }

    /// Waits until there is something to take.
    pub(crate) async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Takes every pending change (the table is empty afterwards).
    pub(crate) fn take(&self) -> HashMap<Box<str>, i32> {
        std::mem::take(&mut *self.changes.lock())
    }

    /// Patterns with a change waiting now.
    pub(crate) fn len(&self) -> usize {
        self.changes.lock().len()
    }

    /// Changes that cancelled out so far.
    pub(crate) fn coalesced(&self) -> u64 {
        self.coalesced.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscribe_and_unsubscribe_cancel_out() {
        let p = PendingInterest::default();
        for _ in 0..10_000 {
            p.change("storm/1", 1);
            p.change("storm/1", -1);
        }
        assert_eq!(p.len(), 0);
        assert_eq!(p.coalesced(), 20_000);
        assert!(p.take().is_empty());
    }

    #[test]
    fn churn_over_many_patterns_stays_bounded() {
        let p = PendingInterest::default();
        p.change("keep", 1);
        for n in 0..50_000 {
            let t = format!("storm/{n}");
            p.change(&t, 1);
            p.change(&t, -1);
        }
        assert_eq!(p.len(), 1);
        let taken = p.take();
        assert_eq!(taken.get("keep"), Some(&1));
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn net_changes_of_several_shards_add_up() {
        let p = PendingInterest::default();
        p.change("a", 1);
        p.change("a", 1);
        p.change("b", -1);
        let taken = p.take();
        assert_eq!(taken.get("a"), Some(&2));
        assert_eq!(taken.get("b"), Some(&-1));
    }

    #[tokio::test]
    async fn a_change_made_while_the_link_is_busy_wakes_it_later() {
        let p = PendingInterest::default();
        p.change("a", 1); // nobody waiting: the permit is stored
        tokio::time::timeout(std::time::Duration::from_secs(5), p.ready())
            .await
            .expect("stored permit");
        assert_eq!(p.take().len(), 1);
    }
}

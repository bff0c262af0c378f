//! `Router`: which shards want a topic, and handing publications to them.
//!
//! The interest table records, per subscription pattern, the set of shards that have at
//! least one local subscriber (it changes only when a shard's first subscriber of a
//! pattern arrives or its last one leaves: the cold path). Publishers ask it which shards
//! to wake; each publishing shard keeps a small `MatchCache` of answers validated by a
//! generation counter, so the steady-state delivery path takes no lock at all: one atomic
//! load and a shard-local hash lookup (the nats-server sublist cache idea).
//! A publication goes only to shards with interest, as one `Arc` per shard: the frames
//! inside are rendered once per dialect and shared by all of them.

use crate::cluster::Outbound;
use crate::error::Reject;
use crate::history::History;
use crate::publication::Publication;
use crate::shard::inbox::{InboxSender, ShardMsg};
use crate::topic::Index;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Most shards a broker runs (the width of [`ShardSet`]).
pub use crate::config::MAX_SHARDS;

// A shard set is one bit per shard.
const _: () = assert!(MAX_SHARDS <= ShardSet::BITS as usize);

/// A set of shard ids as a bitmask.
pub type ShardSet = u128;

/// Entries a match cache holds before it is cleared (bounds memory under topic churn).
const CACHE_ENTRIES: usize = 4096;

/// Routes publications to shards.
pub struct Router {
    shards: Vec<InboxSender>,
    interest: RwLock<Index<u16>>,
    generation: AtomicU64,
    cluster: Option<Outbound>,
    history: Option<Arc<History>>,
    /// Push links (`[[upstream]] mode = "push"`), when there are any.
    links: Option<crate::links::Outbound>,
}

/// A shard-local cache of topic -> interested shards, valid for one router generation.
#[derive(Default)]
pub struct MatchCache {
    generation: u64,
    entries: HashMap<Box<str>, ShardSet>,
}

/// What happened to a publication handed to the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Routed {
    /// Shards it was queued to.
    pub queued: u32,
    /// Shards whose inbox was full (not queued there).
    pub full: ShardSet,
}

impl Router {
    /// Whether any shard's inbox is congested (see [`InboxSender::congested`]).
    pub fn congested(&self) -> bool {
        self.shards.iter().any(InboxSender::congested)
    }

    /// A router over these shard inboxes (index = shard id).
    pub fn new(shards: Vec<InboxSender>) -> Self {
        Router {
            shards,
            interest: RwLock::new(Index::new()),
            generation: AtomicU64::new(1),
            cluster: None,
            history: None,
            links: None,
        }
    }

    /// Publications on history channels go through `history` (offsets, retention).
    #[must_use]
    pub fn with_history(mut self, history: Arc<History>) -> Self {
        self.history = Some(history);
        self
    }

    /// Also sends local publications and interest changes to the cluster link.
    #[must_use]
    pub fn with_cluster(mut self, outbound: Outbound) -> Self {
        self.cluster = Some(outbound);
        self
    }

    /// Also offers local publications to the push links (`[[upstream]]`).
    #[must_use]
    pub fn with_links(mut self, outbound: Option<crate::links::Outbound>) -> Self {
        self.links = outbound;
        self
    }

    /// In cluster mode, whether subscribing `pattern` is safe for the NATS link.
    ///
    /// # Errors
    /// The pattern's NATS subject would be too long (see [`Outbound::check_pattern`]).
    pub fn cluster_check_pattern(&self, pattern: &str) -> Result<(), Reject> {
        self.cluster
            .as_ref()
            .map_or(Ok(()), |c| c.check_pattern(pattern))
    }

    /// Whether `publication` can leave this node: in cluster mode, reach the other
    /// nodes; with push links whose `on_full = "block"`, fit in their queues.
    ///
    /// # Errors
    /// See [`Outbound::check_publication`] and [`crate::links::Outbound::check`].
    pub fn cluster_check_publication(&self, publication: &Publication) -> Result<(), Reject> {
        if let Some(l) = &self.links {
            l.check(publication)?;
        }
        self.cluster
            .as_ref()
            .map_or(Ok(()), |c| c.check_publication(publication))
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The inbox of shard `id`.
    pub fn inbox(&self, id: usize) -> Option<&InboxSender> {
        self.shards.get(id)
    }

    /// Every shard.
    pub fn all_shards(&self) -> ShardSet {
        if self.shards.len() >= MAX_SHARDS {
            ShardSet::MAX
        } else {
            (1u128 << self.shards.len()) - 1
        }
    }

    /// Shard `shard` now has a subscriber of `pattern` (its first). Must complete before
    /// the subscription is acknowledged, so a publish made after the ack finds it.
    pub fn add_interest(&self, shard: u16, pattern: &str) {
        self.interest.write().insert(pattern, shard);
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Some(c) = &self.cluster {
            c.interest(pattern);
        }
    }

    /// Shard `shard` lost its last subscriber of `pattern`.
    pub fn remove_interest(&self, shard: u16, pattern: &str) {
        self.interest.write().remove(pattern, shard);
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Some(c) = &self.cluster {
            c.no_interest(pattern);
        }
    }

    /// Distinct channels/patterns with a subscriber on any shard.
    pub fn channel_count(&self) -> usize {
        self.interest.read().pattern_count()
    }

    /// Shards with a subscriber matching `topic`, from `cache` when it is current.
    pub fn targets(&self, topic: &str, cache: &mut MatchCache) -> ShardSet {
        let generation = self.generation.load(Ordering::Acquire);
        if cache.generation != generation {
            cache.entries.clear();
            cache.generation = generation;
        } else if let Some(set) = cache.entries.get(topic) {
            return *set;
        }
        let mut set: ShardSet = 0;
        self.interest.read().for_each_match(topic, |shard| {
            if usize::from(shard) < MAX_SHARDS {
                set |= 1u128 << shard;
            }
        });
        if cache.entries.len() >= CACHE_ENTRIES {
            cache.entries.clear();
        }
        cache.entries.insert(topic.into(), set);
        set
    }

    /// Queues `publication` to every shard in `targets`. Never blocks: a full inbox is
    /// reported in [`Routed::full`] for the caller to retry or refuse.
    pub fn dispatch(&self, publication: &Arc<Publication>, targets: ShardSet) -> Routed {
        let mut routed = Routed::default();
        for (id, inbox) in self.shards.iter().enumerate().take(MAX_SHARDS) {
            if targets & (1u128 << id) == 0 {
                continue;
            }
            match inbox.try_send(ShardMsg::Deliver(publication.clone())) {
                Ok(()) => routed.queued += 1,
                Err(_) => routed.full |= 1u128 << id,
            }
        }
        routed
    }

    /// Routes a publication accepted on this node: broadcasts to every shard, channel
    /// messages to the shards with interest, and (in cluster mode) once to the other
    /// nodes, and to the push links. Retries of the same publication use
    /// [`Router::dispatch`], so it is never sent to the cluster or a link twice.
    pub fn publish(&self, publication: &Arc<Publication>, cache: &mut MatchCache) -> Routed {
        if self
            .cluster
            .as_ref()
            .is_some_and(|c| c.publish(publication))
        {
            return Routed::default(); // the JetStream task delivers it (SPEC §12)
        }
        if let Some(l) = &self.links {
            l.offer(publication);
        }
        self.deliver(publication, cache)
    }

    /// Hands a publication to this node's shards (never to the cluster): broadcasts to
    /// every shard, channel messages to the shards with interest. A history channel's
    /// publication is first given its offset and retained, and handed over under the
    /// history lock, so a subscriber attaching at the same time either sees it in the
    /// store or receives it live (`history::cursor`).
    pub fn deliver(&self, publication: &Arc<Publication>, cache: &mut MatchCache) -> Routed {
        if publication.is_broadcast() {
            return self.dispatch(publication, self.all_shards());
        }
        if let Some(h) = &self.history {
            if let Some(rule) = h.rule_for(&publication.topic) {
                return h.append(publication, rule, || {
                    let targets = self.targets(&publication.topic, cache);
                    self.dispatch(publication, targets)
                });
            }
        }
        let targets = self.targets(&publication.topic, cache);
        self.dispatch(publication, targets)
    }

    /// Whether any shard has a subscriber matching `topic` (exact or pattern).
    pub fn has_subscribers(&self, topic: &str) -> bool {
        let mut any = false;
        self.interest.read().for_each_match(topic, |_| any = true);
        any
    }

    /// Asks every shard to shut down.
    pub fn shutdown_all(&self) {
        for inbox in &self.shards {
            // A full inbox is drained by a live shard, so retrying briefly is enough; a
            // shard that is gone has nothing left to shut down.
            for _ in 0..1000 {
                if inbox.try_send(ShardMsg::Shutdown).is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::inbox;

    fn router(n: usize) -> (Router, Vec<inbox::InboxReceiver>) {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..n).map(|_| inbox::channel(8)).unzip();
        (Router::new(txs), rxs)
    }

    #[test]
    fn targets_follow_interest_and_cache_invalidates() {
        let (r, _rx) = router(3);
        let mut cache = MatchCache::default();
        assert_eq!(r.targets("a/b", &mut cache), 0);
        r.add_interest(2, "a/+");
        assert_eq!(
            r.targets("a/b", &mut cache),
            0b100,
            "cache must see the new generation"
        );
        r.add_interest(0, "a/b");
        assert_eq!(r.targets("a/b", &mut cache), 0b101);
        r.remove_interest(2, "a/+");
        assert_eq!(r.targets("a/b", &mut cache), 0b001);
        assert_eq!(r.channel_count(), 1);
    }

    #[test]
    fn dispatch_reports_full_inboxes() {
        let (r, rx) = router(2);
        let p = Arc::new(Publication::new(
            "t".into(),
            crate::publication::Kind::BroadcastError,
            bytes::Bytes::from_static(b"\"x\""),
            None,
        ));
        for _ in 0..8 {
            assert_eq!(r.dispatch(&p, 0b11).queued, 2);
        }
        let routed = r.dispatch(&p, 0b11);
        assert_eq!(routed.full, 0b11);
        assert!(rx[0].try_recv().is_some());
        assert_eq!(r.dispatch(&p, 0b11).full, 0b10);
    }
}

//! Push links: local publications matching the link's patterns go upstream with acks.
//!
//! The router offers each locally accepted publication ([`PushQueue::offer`], on the
//! publishing shard's thread: a pattern match and, for a match, a short lock); the link's
//! task takes them off in batches and publishes them with the client crate, each waiting
//! for the upstream's ack. While the link is down the queue fills up to `queue_size`, then
//! `on_full` decides: drop the oldest, drop the newest, or `block`, which refuses the
//! local publish itself ([`PushQueue::check`]: vws nack / API 503 `upstream_queue_full`)
//! so no shard ever waits for the upstream.

use super::stats::{Dropped, LinkStats};
use super::via;
use crate::config::upstream::OnFull;
use crate::error::Reject;
use crate::publication::Publication;
use parking_lot::Mutex;
use serde_json::value::RawValue;
use shardcast_client::{Client, Error};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// Publications published upstream at once (their acks awaited together).
const WINDOW: usize = 256;

/// One push link's queue, shared by the router (producers) and the link task.
pub struct PushQueue {
    /// The link's counters.
    pub stats: Arc<LinkStats>,
    patterns: Vec<String>,
    on_full: OnFull,
    capacity: usize,
    queue: Mutex<VecDeque<Arc<Publication>>>,
    ready: Notify,
}

impl PushQueue {
    /// An empty queue for `patterns`.
    pub fn new(
        stats: Arc<LinkStats>,
        patterns: Vec<String>,
        on_full: OnFull,
        capacity: usize,
    ) -> Self {
        PushQueue {
            stats,
            patterns,
            on_full,
            capacity,
            queue: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
        }
    }

    fn wants(&self, p: &Publication) -> bool {
        !p.is_broadcast()
            && !crate::topic::is_broker_topic(&p.topic)
            && self
                .patterns
                .iter()
                .any(|pattern| crate::topic::pattern_matches(pattern, &p.topic))
    }

    /// With `on_full = "block"`: refuses a publication this link would carry while its
    /// queue is full (counted as `blocked`).
    ///
    /// # Errors
    /// [`Reject::UpstreamQueueFull`].
    pub fn check(&self, p: &Publication) -> Result<(), Reject> {
        if self.on_full == OnFull::Block
            && self.wants(p)
            && self.queue.lock().len() >= self.capacity
        {
            self.stats.count_drop(Dropped::Blocked, 1);
            return Err(Reject::UpstreamQueueFull);
        }
        Ok(())
    }

    /// Queues a locally accepted publication if this link carries it; never blocks.
    pub fn offer(&self, p: &Arc<Publication>) {
        if !self.wants(p) {
            return;
        }
        let mut q = self.queue.lock();
        if q.len() >= self.capacity {
            match self.on_full {
                OnFull::DropOldest => {
                    q.pop_front();
                    self.stats.count_drop(Dropped::DropOldest, 1);
                }
                OnFull::DropNewest => {
                    self.stats.count_drop(Dropped::DropNewest, 1);
                    return;
                }
                // `check` refused publishes once the queue was full; what passed it
                // concurrently (at most one per publishing thread) still fits, past that
                // it is counted as blocked.
                OnFull::Block if q.len() >= self.capacity + crate::config::MAX_SHARDS => {
                    self.stats.count_drop(Dropped::Blocked, 1);
                    return;
                }
                OnFull::Block => {}
            }
        }
        q.push_back(p.clone());
        self.stats
            .queue_depth
            .store(q.len() as u64, Ordering::Relaxed);
        drop(q);
        self.ready.notify_one();
    }

    fn is_empty(&self) -> bool {
        self.queue.lock().is_empty()
    }

    fn take(&self) -> Vec<Arc<Publication>> {
        let mut q = self.queue.lock();
        let n = q.len().min(WINDOW);
        let batch = q.drain(..n).collect();
        self.stats
            .queue_depth
            .store(q.len() as u64, Ordering::Relaxed);
        batch
    }

    /// Puts publications whose ack never came back at the front, in their order.
    fn put_back(&self, batch: Vec<Arc<Publication>>) {
        let mut q = self.queue.lock();
        for p in batch.into_iter().rev() {
            q.push_front(p);
        }
        self.stats
            .queue_depth
            .store(q.len() as u64, Ordering::Relaxed);
    }
}

/// What one push link needs besides its queue.
pub(super) struct Push {
    pub queue: Arc<PushQueue>,
    pub client: Client,
    pub node_id: Arc<str>,
    pub prefix: String,
    pub max_hops: u32,
    /// True while connected and the upstream's node id was looked up.
    pub ready: watch::Receiver<bool>,
}

impl Push {
    /// Runs until the client gives up or is closed.
    pub async fn run(mut self) {
        loop {
            if self.queue.is_empty() {
                self.queue.ready.notified().await;
                continue;
            }
            // Publications stay in the queue (where on_full applies) until the link is up.
            if self.ready.wait_for(|r| *r).await.is_err() {
                return;
            }
            let batch = self.queue.take();
            let remote = self.queue.stats.remote_node.lock().clone();
            let mut sends = Vec::with_capacity(batch.len());
            let mut sent = Vec::with_capacity(batch.len());
            for p in batch {
                let Some((topic, data, headers)) = self.prepare(&p, &remote) else {
                    continue;
                };
                let client = self.client.clone();
                sends.push(async move { client.publish(&topic, &data, headers).await });
                sent.push(p);
            }
            let results = futures_util::future::join_all(sends).await;
            let mut retry = Vec::new();
            for (p, result) in sent.into_iter().zip(results) {
                match result {
                    Ok(()) => {
                        self.queue.stats.forwarded.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(Error::Nack(reason)) => {
                        self.queue.stats.count_drop(Dropped::Nack, 1);
                        *self.queue.stats.last_error.lock() =
                            format!("upstream refused a publication on {}: {reason}", p.topic);
                    }
                    Err(Error::GaveUp | Error::Closed) => return,
                    // Sent on a connection that dropped before the ack, or the client's
                    // own queue was full: send again (at least once).
                    Err(_) => retry.push(p),
                }
            }
            if !retry.is_empty() {
                self.queue.put_back(retry);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// The topic, data and headers to publish upstream, or `None` (counted) when the
    /// publication must not cross this link.
    fn prepare(
        &self,
        p: &Publication,
        remote: &str,
    ) -> Option<(
        String,
        Box<RawValue>,
        std::collections::BTreeMap<String, String>,
    )> {
        let stats = &self.queue.stats;
        let mut headers = via::parse(p.headers.as_deref());
        let nodes = via::nodes(&headers);
        // Back to where it was already (the upstream, or around a cycle to here).
        let back_here = nodes.contains(&&*self.node_id);
        match via::check(
            &nodes,
            (!remote.is_empty()).then_some(remote),
            self.max_hops,
        ) {
            Err(via::Stop::Loop) => {
                stats.count_drop(Dropped::Loop, 1);
                return None;
            }
            Err(via::Stop::Hops) => {
                stats.count_drop(Dropped::Hops, 1);
                return None;
            }
            Ok(()) if back_here => {
                stats.count_drop(Dropped::Loop, 1);
                return None;
            }
            Ok(()) => {}
        }
        via::stamp(&mut headers, &self.node_id);
        // Only an API publisher may set `type` (a vws publish with it is refused).
        headers.remove("type");
        let Ok(data) = serde_json::from_slice::<Box<RawValue>>(&p.data) else {
            stats.count_drop(Dropped::Local, 1);
            return None;
        };
        Some((format!("{}{}", self.prefix, p.topic), data, headers))
    }
}

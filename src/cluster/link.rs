//! The link: one NATS connection per node, on its own thread and runtime.
//!
//! It sends local publications (each once), keeps one NATS subscription per subject that
//! local interest needs (reference-counted over shards), and hands publications from
//! other nodes to the local shards. async-nats reconnects forever with backoff and
//! re-sends every live subscription after a reconnect, so interest comes back by itself.

use super::dedup::{Dedup, Verdict};
use super::envelope::{self, Origin};
use super::inbound::{self, Refusal};
use super::options::{Login, MAC_HEADER};
use super::subject;
use super::ClusterStats;
use crate::broker::Broker;
use crate::publication::Publication;
use crate::router::MatchCache;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How often the link looks at the connection state.
const STATE_POLL: Duration = Duration::from_millis(100);
/// Messages from NATS waiting for the link loop at most (then NATS sees a slow consumer).
const INBOUND_CAPACITY: usize = 8192;
/// How long an interest change waits for NATS to confirm it.
const FLUSH_WAIT: Duration = Duration::from_millis(500);
/// How long a received publication waits for full shard inboxes before it is dropped.
const INBOX_FULL_WAIT: Duration = Duration::from_millis(100);

pub(super) struct Link {
    pub(super) url: String,
    pub(super) prefix: String,
    pub(super) node_id: String,
    pub(super) instance: u64,
    pub(super) stats: Arc<ClusterStats>,
    pub(super) login: Login,
    pub(super) topics: crate::topic::Limits,
    /// `history = "jetstream"`: history channels go to the JetStream task.
    pub(super) jetstream: Option<super::jetstream::Handle>,
}

/// NATS subscriptions for one pattern, shared by the shards that want it.
struct Interest {
    shards: u32,
    tasks: Vec<JoinHandle<()>>,
}

fn backoff(attempts: usize) -> Duration {
    let exp = u32::try_from(attempts.min(5)).unwrap_or(5);
    Duration::from_millis(50 * 2u64.pow(exp)).min(Duration::from_secs(1))
}

impl Link {
    pub(super) async fn run(
        mut self,
        broker: Weak<Broker>,
        mut publications: mpsc::Receiver<Arc<Publication>>,
    ) {
        let options = std::mem::take(&mut self.login.options)
            .name(format!("shardcast {}", self.node_id))
            .no_echo()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(backoff);
        // Several servers: comma-separated (each checked by config validation).
        let servers: Vec<&str> = self.url.split(',').map(str::trim).collect();
        let client = match options.connect(servers).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(url = %self.url, error = %e, "cluster: cannot use NATS; this node stays alone");
                return;
            }
        };
        let (inbound_tx, mut inbound) = mpsc::channel(INBOUND_CAPACITY);
        let mut interests: HashMap<Box<str>, Interest> = HashMap::new();
        let broadcasts = self
            .subscribe(&client, subject::broadcast_subject(&self.prefix))
            .await
            .map(|s| self.forward(s, &inbound_tx));
        let mut dedup = Dedup::new(self.login.mac.is_some());
        let mut cache = MatchCache::default();
        let mut seq = 0u64;
        let mut tick = tokio::time::interval(STATE_POLL);
        loop {
            tokio::select! {
                p = publications.recv() => {
                    let Some(p) = p else { break };
                    seq += 1;
                    self.send(&client, &p, seq).await;
                }
                () = self.stats.interest.ready() => {
                    let batch = self.stats.interest.take();
                    self.apply_interest(&client, batch, &mut interests, &inbound_tx).await;
                }
                Some(message) = inbound.recv() => {
                    let Some(broker) = broker.upgrade() else { break };
                    self.receive(&broker, &message, &mut dedup, &mut cache).await;
                }
                _ = tick.tick() => {
                    let up = client.connection_state() == async_nats::connection::State::Connected;
                    if up != self.stats.connected.swap(up, Ordering::AcqRel) {
                        if up {
                            let max_payload = client.server_info().max_payload;
                            self.stats.max_payload.store(
                                u64::try_from(max_payload).unwrap_or(u64::MAX),
                                Ordering::Relaxed,
                            );
                            self.stats.connects.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(url = %self.url, node = %self.node_id, "cluster: connected to NATS");
                        } else {
                            tracing::warn!(url = %self.url, "cluster: NATS connection lost; delivering locally only");
                        }
                    }
                    if broker.strong_count() == 0 {
                        break;
                    }
                }
            }
        }
        for t in broadcasts
            .into_iter()
            .chain(interests.into_values().flat_map(|i| i.tasks))
        {
            t.abort();
        }
        self.stats.connected.store(false, Ordering::Release);
    }

    /// Waits (briefly, and only while connected) until NATS has seen what was sent so
    /// far, e.g. new subscriptions, so `subscriptions` in the metrics means "in place".
    async fn settle(&self, client: &async_nats::Client) {
        if self.stats.connected.load(Ordering::Acquire) {
            let _ = tokio::time::timeout(FLUSH_WAIT, client.flush()).await;
        }
    }

    async fn send(&self, client: &async_nats::Client, p: &Publication, seq: u64) {
        let subject = if p.is_broadcast() {
            Some(subject::broadcast_subject(&self.prefix))
        } else {
            subject::channel_subject(&self.prefix, &p.topic)
        };
        let Some(subject) = subject else { return };
        let origin = Origin {
            node: self.node_id.clone(),
            instance: self.instance,
            seq,
        };
        let payload = envelope::encode(p, &origin);
        let sent = match &self.login.mac {
            Some(key) => {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(MAC_HEADER, key.sign(&subject, &payload).as_str());
                client.publish_with_headers(subject, headers, payload).await
            }
            None => client.publish(subject, payload).await,
        };
        match sent {
            Ok(()) => self.stats.sent.fetch_add(1, Ordering::Relaxed),
            Err(_) => self
                .stats
                .dropped_unavailable
                .fetch_add(1, Ordering::Relaxed),
        };
    }

    /// Subscribes `subject`; `None` if the client is closed.
    async fn subscribe(
        &self,
        client: &async_nats::Client,
        subject: String,
    ) -> Option<async_nats::Subscriber> {
        match client.subscribe(subject.clone()).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(%subject, error = %e, "cluster: NATS subscribe failed");
                None
            }
        }
    }

    /// Forwards a subscription's messages to `inbound` until it is aborted (which drops
    /// the subscriber: async-nats then unsubscribes in NATS).
    fn forward(
        &self,
        mut sub: async_nats::Subscriber,
        inbound: &mpsc::Sender<async_nats::Message>,
    ) -> JoinHandle<()> {
        let tx = inbound.clone();
        // Made outside the task so that aborting it before its first poll still counts down.
        let count = SubscriptionCount::new(self.stats.clone());
        tokio::spawn(async move {
            let _count = count;
            while let Some(m) = sub.next().await {
                if tx.send(m).await.is_err() {
                    break;
                }
            }
        })
    }

    /// Applies a batch of net interest changes: subscribes patterns that gained their
    /// first shard and unsubscribes those that lost their last, then waits for NATS once
    /// for the whole batch (not once per pattern, which let a storm of new channels
    /// stall the link for seconds).
    async fn apply_interest(
        &self,
        client: &async_nats::Client,
        batch: HashMap<Box<str>, i32>,
        interests: &mut HashMap<Box<str>, Interest>,
        inbound: &mpsc::Sender<async_nats::Message>,
    ) {
        let mut added = Vec::new();
        for (pattern, delta) in batch {
            let held = interests.get(&pattern).map_or(0, |i| i.shards);
            let now =
                u32::try_from((i64::from(held) + i64::from(delta)).max(0)).unwrap_or(u32::MAX);
            match (held, now) {
                (0, 0) => {}
                (0, shards) => {
                    let mut subs = Vec::new();
                    for s in subject::pattern_subjects(&self.prefix, &pattern) {
                        subs.extend(self.subscribe(client, s).await);
                    }
                    added.push((pattern, shards, subs));
                }
                (_, 0) => {
                    if let Some(i) = interests.remove(&pattern) {
                        // Dropping the subscriber (with its task) unsubscribes in NATS.
                        for t in i.tasks {
                            t.abort();
                        }
                    }
                }
                (_, shards) => {
                    if let Some(i) = interests.get_mut(&pattern) {
                        i.shards = shards;
                    }
                }
            }
        }
        if !added.is_empty() {
            self.settle(client).await;
        }
        for (pattern, shards, subs) in added {
            let tasks = subs.into_iter().map(|s| self.forward(s, inbound)).collect();
            interests.insert(pattern, Interest { shards, tasks });
        }
        self.stats.interest_batches.fetch_add(1, Ordering::Relaxed);
    }

    async fn receive(
        &self,
        broker: &Broker,
        message: &async_nats::Message,
        dedup: &mut Dedup,
        cache: &mut MatchCache,
    ) {
        let admitted = inbound::admit(
            &self.prefix,
            self.login.mac.as_ref(),
            &self.topics,
            message.subject.as_str(),
            inbound::mac_header(message),
            &message.payload,
        );
        let (origin, p) = match admitted {
            Ok(x) => x,
            Err(why) => {
                self.stats.refuse(why);
                return;
            }
        };
        if origin.node == self.node_id && origin.instance == self.instance {
            return; // our own (no_echo already keeps these away)
        }
        let key = format!("{}/{:x}", origin.node, origin.instance);
        match dedup.check(&key, origin.seq) {
            Verdict::New => {}
            Verdict::Duplicate => {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Verdict::Jump => {
                self.stats.refuse(Refusal::SequenceJump);
                return;
            }
        }
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        let p = Arc::new(p);
        if self
            .jetstream
            .as_ref()
            .is_some_and(|js| js.inbound(&p, message))
        {
            return;
        }
        let mut full = super::deliver_remote(&broker.router, &p, cache).full;
        let deadline = tokio::time::Instant::now() + INBOX_FULL_WAIT;
        while full != 0 {
            if tokio::time::Instant::now() >= deadline {
                self.stats
                    .dropped_inbox_full
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            full = broker.router.dispatch(&p, full).full;
        }
    }
}

/// Counts a NATS subscription down when its forwarding task ends (or is aborted).
struct SubscriptionCount(Arc<ClusterStats>);

impl SubscriptionCount {
    fn new(stats: Arc<ClusterStats>) -> Self {
        stats.subscriptions.fetch_add(1, Ordering::Relaxed);
        SubscriptionCount(stats)
    }
}

impl Drop for SubscriptionCount {
    fn drop(&mut self) {
        self.0.subscriptions.fetch_sub(1, Ordering::Relaxed);
    }
}

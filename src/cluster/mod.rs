//! Cluster mode: publications cross nodes through NATS (`[cluster] nats_url`).
//!
//! ```text
//!  local publish ─► router ─► local shards (no NATS round trip)
//!                     └─► Outbound (bounded queue) ─► link thread ─► NATS, once
//!  NATS ─► link (drop own echo, drop duplicates) ─► router.dispatch ─► local shards
//!  shard's first/last subscriber of a pattern ─► router ─► PendingInterest (net change
//!      per pattern, bounded) ─► link: one batch of NATS (un)subscribes, one flush
//! ```
//!
//! The link runs on its own thread with its own tokio runtime (shards are current-thread
//! runtimes that must not wait on NATS). Delivery across nodes is core NATS: at most
//! once. While NATS is away, publications meant for other nodes are counted in
//! `dropped_unavailable` and not queued; local delivery is untouched.

pub mod dedup;
pub mod envelope;
pub mod inbound;
mod interest;
pub mod jetstream;
mod link;
pub mod options;
pub mod subject;

use crate::broker::Broker;
use crate::config::ClusterConfig;
use crate::error::Reject;
use crate::publication::Publication;
use crate::router::Router;
use interest::PendingInterest;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use tokio::sync::mpsc;

/// Publications queued for NATS at most; past it they are counted as dropped.
const OUTBOUND_CAPACITY: usize = 65_536;

/// Cluster state shared by the broker: link status and counters.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Whether the link is connected to NATS now.
    pub connected: AtomicBool,
    /// Publications sent to NATS.
    pub sent: AtomicU64,
    /// Publications from other nodes received (after duplicate removal).
    pub received: AtomicU64,
    /// Publications not sent because NATS was not connected (or the queue to it was full).
    pub dropped_unavailable: AtomicU64,
    /// Copies removed because overlapping subscriptions delivered a message twice.
    pub duplicates: AtomicU64,
    /// Messages on our subjects that were not envelopes.
    pub malformed: AtomicU64,
    /// Received publications not delivered because local shard inboxes stayed full.
    pub dropped_inbox_full: AtomicU64,
    /// Batches of interest changes the link applied (each ends with one flush).
    pub interest_batches: AtomicU64,
    /// Interest changes on their way from the shards to the link.
    pub(crate) interest: PendingInterest,
    /// Times the link (re)connected.
    pub connects: AtomicU64,
    /// NATS subjects subscribed now.
    pub subscriptions: AtomicU64,
    /// The NATS server's `max_payload` (from its INFO), 0 before the first connection.
    pub max_payload: AtomicU64,
    /// Envelopes from NATS refused, by [`inbound::Refusal`] (index order).
    pub refused: [AtomicU64; inbound::Refusal::LABELS.len()],
}

impl ClusterStats {
    /// Counts an envelope refused for `why`.
    pub fn refuse(&self, why: inbound::Refusal) {
        if let Some(c) = self.refused.get(why.index()) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if why == inbound::Refusal::Malformed {
            self.malformed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The router's way to the link: cheap, never blocks.
pub struct Outbound {
    publications: mpsc::Sender<Arc<Publication>>,
    stats: Arc<ClusterStats>,
    prefix: Box<str>,
    node_id: Box<str>,
    max_control_line: usize,
    /// `history = "jetstream"`: history channels go through the JetStream task.
    jetstream: Option<jetstream::Handle>,
}

impl Outbound {
    /// Whether a NATS control line for a subject of `len` bytes fits.
    fn line_fits(&self, len: usize) -> bool {
        len + subject::LINE_OVERHEAD <= self.max_control_line
    }

    /// Checks that subscribing `pattern` can never take the link down: each NATS subject
    /// it needs fits in a `SUB` line of `cluster.max_control_line`.
    ///
    /// # Errors
    /// [`Reject::ClusterSubjectTooLong`] otherwise.
    pub fn check_pattern(&self, pattern: &str) -> Result<(), Reject> {
        if self.line_fits(subject::worst_subject_len(&self.prefix, pattern.len())) {
            return Ok(());
        }
        if subject::pattern_subjects(&self.prefix, pattern)
            .iter()
            .all(|s| self.line_fits(s.len()))
        {
            Ok(())
        } else {
            Err(Reject::ClusterSubjectTooLong)
        }
    }

    /// Checks that `p`, accepted here, can reach the other nodes: its subject fits in a
    /// `PUB` line and its envelope in the NATS server's `max_payload`. Broker topics
    /// (`$sys/...`) never leave the node and always pass.
    ///
    /// # Errors
    /// [`Reject::ClusterSubjectTooLong`] or [`Reject::ClusterPayloadTooLarge`].
    pub fn check_publication(&self, p: &Publication) -> Result<(), Reject> {
        if !p.is_broadcast() {
            if crate::topic::is_broker_topic(&p.topic) {
                return Ok(());
            }
            if !self.line_fits(subject::worst_subject_len(&self.prefix, p.topic.len()))
                && !self.line_fits(subject::channel_subject_len(&self.prefix, &p.topic))
            {
                return Err(Reject::ClusterSubjectTooLong);
            }
        }
        let max = self.stats.max_payload.load(Ordering::Relaxed);
        // Unknown before the first connection: nothing is sent then anyway.
        if max != 0 {
            let len = envelope::encoded_len_bound(p, &self.node_id);
            if u64::try_from(len).unwrap_or(u64::MAX) > max {
                return Err(Reject::ClusterPayloadTooLarge);
            }
        }
        Ok(())
    }

    /// Queues a locally accepted publication for the other nodes. Node-local broker
    /// topics (`$sys/...`) stay here. True when the publication is on a history channel
    /// with `history = "jetstream"`: the JetStream task then delivers it here too, once
    /// the stream gave it its offset.
    pub fn publish(&self, p: &Arc<Publication>) -> bool {
        if self.jetstream.as_ref().is_some_and(|js| js.publish(p)) {
            return true;
        }
        if !p.is_broadcast() && crate::topic::is_broker_topic(&p.topic) {
            return false;
        }
        if !self.stats.connected.load(Ordering::Acquire)
            || self.publications.try_send(p.clone()).is_err()
        {
            self.stats
                .dropped_unavailable
                .fetch_add(1, Ordering::Relaxed);
        }
        false
    }

    /// A shard's first subscriber of `pattern`.
    pub fn interest(&self, pattern: &str) {
        self.stats.interest.change(pattern, 1);
    }

    /// A shard's last subscriber of `pattern` left.
    pub fn no_interest(&self, pattern: &str) {
        self.stats.interest.change(pattern, -1);
    }
}

/// A running cluster link, as the broker holds it.
pub struct Cluster {
    /// This node's id (configured or generated).
    pub node_id: String,
    /// Status and counters.
    pub stats: Arc<ClusterStats>,
    /// JetStream history counters (`history = "jetstream"` only).
    pub jetstream: Option<Arc<jetstream::JetStreamStats>>,
}

/// Draws a number that differs between starts (no `rand` dependency needed for this).
pub(crate) fn draw() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// The queues the router feeds, before the link starts (the router needs the sending
/// side when it is built; the link needs the broker, which holds the router).
pub struct Pending {
    link: link::Link,
    publications: mpsc::Receiver<Arc<Publication>>,
    jetstream: Option<jetstream::Task>,
}

/// Makes the queues between router and link for `config` (cluster mode on); channels
/// are limited by `topics` (`client.max_topic_bytes`, `max_topic_levels`), and the
/// secrets `config` names are read from `env`. With `history = "jetstream"`, `history`
/// becomes a copy of the JetStream stream.
///
/// # Errors
/// The NATS login or MAC secret is not usable (see [`options::login`]).
pub fn queues(
    config: &ClusterConfig,
    topics: crate::topic::Limits,
    history: &Arc<crate::history::History>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Outbound, Cluster, Pending), String> {
    let login = options::login(config, env)?;
    let max_topic_bytes = topics.max_bytes;
    let stats = Arc::new(ClusterStats::default());
    let (ptx, prx) = mpsc::channel(OUTBOUND_CAPACITY);
    let node_id = if config.node_id.is_empty() {
        format!("{:016x}", draw())
    } else {
        config.node_id.clone()
    };
    let js = match config.history {
        crate::config::ClusterHistory::Memory => None,
        crate::config::ClusterHistory::Jetstream => {
            // The task has its own connection, so a slow stream never holds up the link.
            let second = options::login(config, env)?;
            Some(jetstream::channel(
                jetstream::Settings {
                    url: config.nats_url.clone(),
                    options: second.options,
                    prefix: config.subject_prefix.clone(),
                    stream: config.jetstream_stream.clone(),
                    max_bytes: config.jetstream_max_bytes,
                    timeout: config.jetstream_timeout,
                    node_id: node_id.clone(),
                    mac: second.mac,
                    topics,
                },
                history,
            ))
        }
    };
    let (js_handle, js_task) = js.map_or((None, None), |(h, t)| (Some(h), Some(t)));
    let link = link::Link {
        jetstream: js_handle.clone(),
        url: config.nats_url.clone(),
        prefix: config.subject_prefix.clone(),
        node_id: node_id.clone(),
        instance: draw(),
        stats: stats.clone(),
        login,
        topics,
    };
    let worst = subject::worst_subject_len(&config.subject_prefix, max_topic_bytes);
    if worst + subject::LINE_OVERHEAD > config.max_control_line {
        tracing::warn!(
            max_control_line = config.max_control_line,
            worst_line = worst + subject::LINE_OVERHEAD,
            "cluster: client.max_topic_bytes allows channels whose NATS subject is longer \
             than cluster.max_control_line allows; they are refused per request \
             (cluster_subject_too_long)"
        );
    }
    Ok((
        Outbound {
            publications: ptx,
            stats: stats.clone(),
            prefix: config.subject_prefix.as_str().into(),
            node_id: node_id.as_str().into(),
            max_control_line: config.max_control_line,
            jetstream: js_handle.clone(),
        },
        Cluster {
            node_id,
            stats,
            jetstream: js_handle.map(|h| h.stats),
        },
        Pending {
            link,
            publications: prx,
            jetstream: js_task,
        },
    ))
}

impl Pending {
    /// Starts the link thread for `broker`.
    ///
    /// # Errors
    /// The thread or its runtime could not be started.
    pub fn start(self, broker: Weak<Broker>) -> std::io::Result<()> {
        if let Some(task) = self.jetstream {
            task.start(broker.clone())?;
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("cluster-link".into())
            .spawn(move || {
                runtime.block_on(self.link.run(broker, self.publications));
            })?;
        Ok(())
    }
}

/// Routes a publication from another node to this node's shards (never back to NATS).
pub(crate) fn deliver_remote(
    router: &Router,
    p: &Arc<Publication>,
    cache: &mut crate::router::MatchCache,
) -> crate::router::Routed {
    router.deliver(p, cache)
}

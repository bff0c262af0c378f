//! Upstream links (`[[upstream]]`, SPEC §11, docs/FEDERATION.md): this node as a client
//! of other brokers, built on the `shardcast-client` crate (its reconnect, backoff,
//! resubscribe from positions and publish with acks).
//!
//! ```text
//!  pull:  upstream ─► client subscription ─► Pull task ─► router.publish ─► local shards
//!  push:  local publish ─► router ─► PushQueue (bounded, on_full) ─► Push task ─► upstream
//! ```
//!
//! The links run on their own thread with their own tokio runtime, like the NATS link:
//! shards never wait for an upstream. Loops are stopped with the `sc-via` header
//! ([`via`]).

mod pull;
mod push;
mod remote;
pub mod stats;
pub mod via;

pub use push::PushQueue;
pub use stats::{Dropped, LinkStats};

use crate::broker::Broker;
use crate::config::upstream::{Mode, UpstreamConfig};
use crate::config::Config;
use crate::error::Reject;
use crate::publication::Publication;
use shardcast_client::{BackoffConfig, Client, Credentials, LinkEvent, WsUrl};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::watch;

/// How long a link waits for the upstream's `/healthz` after each connect.
const REMOTE_ID_TIMEOUT: Duration = Duration::from_secs(3);

/// The links of this node, as the broker holds them.
#[derive(Debug, Default)]
pub struct Links {
    /// This node's id in `sc-via` (`cluster.node_id`, or drawn at start).
    pub node_id: String,
    /// Each link's state, in config order.
    pub links: Vec<Arc<LinkStats>>,
}

/// The router's way to the push links: cheap, never blocks.
pub struct Outbound {
    push: Vec<Arc<PushQueue>>,
}

impl Outbound {
    /// Refuses a publication a blocking push link has no room for.
    ///
    /// # Errors
    /// [`Reject::UpstreamQueueFull`].
    pub fn check(&self, p: &Publication) -> Result<(), Reject> {
        self.push.iter().try_for_each(|q| q.check(p))
    }

    /// Offers a locally accepted publication to every push link.
    pub fn offer(&self, p: &Arc<Publication>) {
        for q in &self.push {
            q.offer(p);
        }
    }
}

/// The links before they start (the router needs the push queues when it is built; the
/// tasks need the broker, which holds the router).
pub struct Pending {
    node_id: Arc<str>,
    entries: Vec<(UpstreamConfig, Arc<LinkStats>, Option<Arc<PushQueue>>)>,
    env: Vec<(String, String)>,
}

/// This node's id: `cluster_id` (the cluster's, configured or drawn) or a drawn one.
/// Commas are replaced: they separate ids in `sc-via`.
pub fn node_id(cluster_id: Option<&str>) -> String {
    match cluster_id {
        Some(id) if !id.is_empty() => id.replace(',', "_"),
        _ => format!("{:016x}", crate::cluster::draw()),
    }
}

/// Makes each link's state and the push queues for `config` (validated), reading the
/// credential variables from `env`.
pub fn prepare(
    config: &Config,
    node_id: String,
    env: &dyn Fn(&str) -> Option<String>,
) -> (Option<Outbound>, Links, Pending) {
    let mut links = Vec::new();
    let mut push = Vec::new();
    let mut entries = Vec::new();
    let mut secrets = Vec::new();
    for (i, u) in config.upstream.iter().enumerate() {
        let mode = u.mode().unwrap_or(Mode::Pull);
        let stats = Arc::new(LinkStats::new(
            u.display_name(i),
            match mode {
                Mode::Pull => "pull",
                Mode::Push => "push",
            },
            u.dialect().unwrap_or_default().subprotocol(),
            u.url.clone(),
            u.queue_size,
        ));
        let queue = (mode == Mode::Push).then(|| {
            Arc::new(PushQueue::new(
                stats.clone(),
                u.patterns.clone(),
                u.on_full()
                    .unwrap_or(crate::config::upstream::OnFull::DropOldest),
                u.queue_size,
            ))
        });
        if let Some(q) = &queue {
            push.push(q.clone());
        }
        for (_, var) in u.secret_vars() {
            if let Some(v) = env(var) {
                secrets.push((var.to_owned(), v));
            }
        }
        links.push(stats.clone());
        entries.push((u.clone(), stats, queue));
    }
    let outbound = (!push.is_empty()).then_some(Outbound { push });
    let node: Arc<str> = node_id.as_str().into();
    (
        outbound,
        Links { node_id, links },
        Pending {
            node_id: node,
            entries,
            env: secrets,
        },
    )
}

impl Pending {
    /// Starts the links' thread for `broker` (nothing when there are no links).
    ///
    /// # Errors
    /// The thread or its runtime could not be started.
    pub fn start(self, broker: Weak<Broker>) -> std::io::Result<()> {
        if self.entries.is_empty() {
            return Ok(());
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("upstream-links".into())
            .spawn(move || {
                runtime.block_on(async move {
                    for (config, stats, queue) in self.entries {
                        let env = |name: &str| {
                            self.env
                                .iter()
                                .find(|(k, _)| k == name)
                                .map(|(_, v)| v.clone())
                        };
                        start_link(
                            config,
                            stats,
                            queue,
                            self.node_id.clone(),
                            broker.clone(),
                            &env,
                        );
                    }
                    std::future::pending::<()>().await;
                });
            })?;
        Ok(())
    }
}

fn credentials(u: &UpstreamConfig, env: &dyn Fn(&str) -> Option<String>) -> Credentials {
    if !u.token_env.is_empty() {
        return Credentials::Bearer(env(&u.token_env).unwrap_or_default());
    }
    if !u.username_env.is_empty() {
        return Credentials::Basic {
            user: env(&u.username_env).unwrap_or_default(),
            password: env(&u.password_env).unwrap_or_default(),
        };
    }
    Credentials::None
}

/// Spawns one link's tasks on the current runtime.
fn start_link(
    u: UpstreamConfig,
    stats: Arc<LinkStats>,
    queue: Option<Arc<PushQueue>>,
    node_id: Arc<str>,
    broker: Weak<Broker>,
    env: &dyn Fn(&str) -> Option<String>,
) {
    let client = Client::builder(&u.url)
        .dialect(u.dialect().unwrap_or_default())
        .credentials(credentials(&u, env))
        .backoff(BackoffConfig {
            initial_interval: u.initial_interval,
            max_interval: u.max_interval,
            multiplier: u.multiplier,
            max_retries: u.max_retries,
        })
        .ping_deadline(u.ping_deadline)
        .connect_timeout(u.connect_timeout)
        .connect();
    let (client, url) = match (client, WsUrl::parse(&u.url)) {
        (Ok(c), Ok(url)) => (c, url),
        (Err(e), _) | (_, Err(e)) => {
            // Validated at start; kept for the record rather than a panic.
            *stats.last_error.lock() = e.to_string();
            return;
        }
    };
    let (ready_tx, ready) = watch::channel(false);
    tokio::spawn(watch_link(
        client.link_events(),
        stats.clone(),
        url.clone(),
        ready_tx,
    ));
    match queue {
        Some(queue) => {
            tokio::spawn(
                push::Push {
                    queue,
                    client,
                    node_id,
                    prefix: u.prefix.clone(),
                    max_hops: u.max_hops,
                    ready,
                }
                .run(),
            );
        }
        None => {
            for pattern in &u.patterns {
                tokio::spawn(
                    pull::Pull {
                        stats: stats.clone(),
                        client: client.clone(),
                        pattern: pattern.clone(),
                        node_id: node_id.clone(),
                        remote_fallback: url.authority.clone(),
                        prefix: u.prefix.clone(),
                        max_hops: u.max_hops,
                        broker: broker.clone(),
                    }
                    .run(),
                );
            }
        }
    }
}

/// Follows the client's link events into the link's status, and learns the upstream's
/// node id after each connect.
async fn watch_link(
    mut events: tokio::sync::broadcast::Receiver<LinkEvent>,
    stats: Arc<LinkStats>,
    url: WsUrl,
    ready: watch::Sender<bool>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let event = match events.recv().await {
            Ok(e) => e,
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return,
        };
        match event {
            LinkEvent::Connected => {
                stats.connected.store(true, Ordering::Relaxed);
                tracing::info!(link = %stats.name, url = %stats.remote_url, "link connected");
                match remote::node_id(&url.host, url.port, &url.authority, REMOTE_ID_TIMEOUT).await
                {
                    Ok(id) => *stats.remote_node.lock() = id,
                    Err(e) => {
                        tracing::debug!(link = %stats.name, "upstream node id unknown: {e}");
                    }
                }
                let _ = ready.send(true);
            }
            LinkEvent::Disconnected { reason, retry_in } => {
                stats.connected.store(false, Ordering::Relaxed);
                let _ = ready.send(false);
                stats.reconnect_attempts.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    link = %stats.name,
                    url = %stats.remote_url,
                    retry_in_ms = retry_in.as_millis() as u64,
                    "link down: {reason}"
                );
                *stats.last_error.lock() = reason;
            }
            LinkEvent::Resubscribed { topic, recovered } => match recovered {
                Some(true) => {}
                Some(false) => {
                    stats.gaps.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        link = %stats.name,
                        channel = %topic,
                        "resumed, but the upstream no longer had everything missed"
                    );
                }
                None => {
                    stats.resumes_from_now.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        link = %stats.name,
                        pattern = %topic,
                        "resubscribed with no position to resume from (a wildcard pattern, or no history upstream): what was published upstream while the link was down is not brought over"
                    );
                }
            },
            LinkEvent::Slow {
                queue_depth,
                queue_capacity,
            } => {
                stats.slow_signals.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    link = %stats.name,
                    queue_depth,
                    queue_capacity,
                    "the upstream says its queue for this link is past 80% (slow)"
                );
            }
            LinkEvent::GaveUp => {
                stats.connected.store(false, Ordering::Relaxed);
                stats.gave_up.store(true, Ordering::Relaxed);
                let _ = ready.send(false);
                let last = stats.last_error.lock().clone();
                *stats.last_error.lock() =
                    format!("gave up after max_retries failed attempts ({last})");
                tracing::error!(link = %stats.name, "link gave up reconnecting");
            }
        }
    }
}

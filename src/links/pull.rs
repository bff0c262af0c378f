//! Pull links: subscribe upstream to each pattern and republish what arrives here.
//!
//! The client crate keeps each exact history channel's position and resubscribes from
//! it after a cut or an upstream restart, so what the upstream still retains arrives
//! exactly once, in order. Each pattern has its own task, and a task republishes one
//! event at a time, waiting (never dropping) while the local shard inboxes are full: a
//! slow node holds the link back, and the upstream's own slow-consumer policy and the
//! resume from positions take it from there.

use super::stats::{Dropped, LinkStats};
use super::via;
use crate::broker::Broker;
use crate::error::Reject;
use crate::publication::{Kind, Publication};
use crate::router::MatchCache;
use bytes::Bytes;
use shardcast_client::{Client, Error, Event};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// What one pull subscription needs.
pub(super) struct Pull {
    pub stats: Arc<LinkStats>,
    pub client: Client,
    pub pattern: String,
    pub node_id: Arc<str>,
    /// Stamped for the upstream in `sc-via` when its id is not known.
    pub remote_fallback: String,
    pub prefix: String,
    pub max_hops: u32,
    pub broker: Weak<Broker>,
}

impl Pull {
    /// Subscribes (retrying what can pass) and republishes until the client ends.
    pub async fn run(self) {
        let mut sub = loop {
            match self.client.subscribe(&self.pattern).await {
                Ok(sub) => break sub,
                Err(Error::Nack(reason)) => {
                    let msg = format!(
                        "the upstream refused the subscription {:?}: {reason}",
                        self.pattern
                    );
                    tracing::warn!(link = %self.stats.name, "{msg}");
                    *self.stats.last_error.lock() = msg;
                    return;
                }
                Err(Error::GaveUp | Error::Closed) => return,
                Err(e) => {
                    *self.stats.last_error.lock() = e.to_string();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        let mut cache = MatchCache::default();
        while let Some(event) = sub.next().await {
            let Some(broker) = self.broker.upgrade() else {
                return;
            };
            match self.publication(&broker, event) {
                Ok(p) => {
                    if self.route(&broker, &p, &mut cache).await {
                        self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
                    } else {
                        self.stats.count_drop(Dropped::Local, 1);
                    }
                }
                Err(why) => self.stats.count_drop(why, 1),
            }
        }
    }

    /// The local publication for an upstream event, or why there is none.
    fn publication(&self, broker: &Broker, event: Event) -> Result<Arc<Publication>, Dropped> {
        let mut headers = event.headers;
        let nodes = via::nodes(&headers);
        match via::check(&nodes, Some(&self.node_id), self.max_hops) {
            Err(via::Stop::Loop) => return Err(Dropped::Loop),
            Err(via::Stop::Hops) => return Err(Dropped::Hops),
            Ok(()) => {}
        }
        let remote = self.stats.remote_node.lock().clone();
        via::stamp(
            &mut headers,
            if remote.is_empty() {
                &self.remote_fallback
            } else {
                &remote
            },
        );
        let topic = format!("{}{}", self.prefix, event.topic);
        let limits = crate::topic::Limits {
            max_bytes: broker.config.client.max_topic_bytes,
            max_levels: broker.config.client.max_topic_levels,
        };
        if crate::topic::validate_topic(&topic, &limits).is_err() {
            return Err(Dropped::Local);
        }
        // A typed publication (e.g. `process_output`) keeps its type for gows clients.
        let gows_type = match headers.remove("type") {
            Some(t) => crate::publication::gows_type(t),
            None => crate::publication::gows_type(crate::publication::EVENT),
        };
        let headers = serde_json::to_vec(&headers).ok().map(Bytes::from);
        Ok(Arc::new(Publication::new(
            topic.into(),
            Kind::Channel { gows_type },
            Bytes::copy_from_slice(event.data.get().as_bytes()),
            headers,
        )))
    }

    /// Publishes here as a local publication would be (cluster, push links, history),
    /// waiting while shard inboxes or a blocking push link are full; false when it could
    /// not be published.
    async fn route(&self, broker: &Broker, p: &Arc<Publication>, cache: &mut MatchCache) -> bool {
        loop {
            match broker.router.cluster_check_publication(p) {
                Ok(()) => break,
                Err(Reject::UpstreamQueueFull) if !broker.is_draining() => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(_) => return false,
            }
        }
        let mut full = broker.router.publish(p, cache).full;
        while full != 0 {
            if broker.is_draining() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            full = broker.router.dispatch(p, full).full;
        }
        true
    }
}

//! `/healthz` in the SemStreams shape (`{"healthy", "status", "details": {...}}`) and
//! `/readyz` for load balancers.
//!
//! `/healthz` says whether the process is fine: 503 once it is shutting down (draining).
//! `/readyz` says whether new clients should be sent here: not while the shards are
//! still starting, not while draining, and in cluster mode not while NATS is away
//! (`"no backplane"`: the node serves its local clients, but they would miss
//! publications made on other nodes).

use super::json_response;
use crate::broker::Broker;
use crate::server::http::HttpResponse;
use serde_json::json;
use std::sync::atomic::Ordering;

/// Where the broker is in its life, as health and readiness report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Shards are starting; not every listener is up.
    Starting,
    /// Serving.
    Listening,
    /// Shutting down: no new connections, queues being flushed.
    Draining,
    /// Serving local clients, but cluster mode is on and NATS is not connected.
    NoBackplane,
}

impl State {
    /// The broker's state now.
    pub fn of(broker: &Broker) -> State {
        if broker.is_draining() {
            State::Draining
        } else if !broker.is_ready() {
            State::Starting
        } else if !broker.backplane_up() {
            State::NoBackplane
        } else {
            State::Listening
        }
    }

    /// The `status` string.
    pub fn name(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Listening => "listening",
            State::Draining => "draining",
            State::NoBackplane => "no backplane",
        }
    }
}

/// `GET /healthz`: 200 while the broker is starting or serving, 503 once draining.
pub fn healthz(broker: &Broker) -> HttpResponse {
    let (healthy, body) = health(broker);
    json_response(if healthy { 200 } else { 503 }, &body)
}

/// Whether the broker is healthy, and the health object (`/healthz`, SemStreams
/// `status` requests).
pub fn health(broker: &Broker) -> (bool, serde_json::Value) {
    let state = State::of(broker);
    let healthy = state != State::Draining;
    let active = broker.sum(|s| &s.connections_active);
    let depth = broker.sum(|s| &s.queue_frames);
    let capacity = active.max(1) * broker.config.client.queue_frames as u64;
    let utilization = depth as f64 / capacity as f64;
    let mut body = json!({
        "healthy": healthy,
        "status": state.name(),
        "details": {
            "mode": "server",
            "connections": { "active": active, "total": broker.sum(|s| &s.connections_total) },
            "queue": { "depth": depth, "utilization": utilization },
            "shards": broker.router.shard_count(),
            "throughput": { "messages_per_second": broker.rates.lock().delivered_per_s },
            "uptime_s": broker.started.elapsed().as_secs(),
            "node_id": broker.links.node_id,
        }
    });
    if let (false, Some(details)) = (broker.links.links.is_empty(), body.get_mut("details")) {
        details["links"] = broker.links.links.iter().map(|l| l.json()).collect();
    }
    if let (Some(c), Some(details)) = (&broker.cluster, body.get_mut("details")) {
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        details["cluster"] = json!({
            "connected": c.stats.connected.load(Ordering::Relaxed),
            "node_id": c.node_id,
            "sent": get(&c.stats.sent),
            "received": get(&c.stats.received),
            "dropped_unavailable": get(&c.stats.dropped_unavailable),
            "subscriptions": get(&c.stats.subscriptions),
        });
        if let Some(js) = &c.jetstream {
            details["cluster"]["jetstream"] = json!({
                "up": js.up.load(Ordering::Relaxed),
                "appended": get(&js.appended),
                "unrecorded": get(&js.unrecorded),
                "holes": get(&js.holes),
            });
        }
    }
    let semstreams = crate::shard::semstreams::SemstreamsStats::total(
        broker.shard_stats.iter().map(|s| &s.semstreams),
    );
    let peers = semstreams.peers.load(Ordering::Relaxed);
    if let (true, Some(details)) = (peers > 0, body.get_mut("details")) {
        let depth = semstreams.queue_depth.load(Ordering::Relaxed);
        let capacity = peers * broker.config.semstreams.queue_size as u64;
        details["semstreams"] = json!({
            "peers": peers,
            "queue": {
                "depth": depth,
                "capacity": capacity,
                "utilization": depth as f64 / capacity.max(1) as f64,
            },
        });
    }
    (healthy, body)
}

/// `GET /readyz`: 200 only while serving; 503 while starting or draining.
pub fn readyz(broker: &Broker) -> HttpResponse {
    let state = State::of(broker);
    let ready = state == State::Listening;
    json_response(
        if ready { 200 } else { 503 },
        &json!({ "ready": ready, "status": state.name() }),
    )
}

//! `/healthz` in the SemStreams shape (`{"healthy", "status", "details": {...}}`) and
//! `/readyz` for load balancers.
//!
//! `/healthz` says whether the process is fine: 503 once it is shutting down (draining).
//! `/readyz` says whether new clients should be sent here: not while the shards are
//! still starting, not while draining. (In cluster mode it will also wait for the
//! backplane.)

use super::json_response;
use crate::broker::Broker;
use crate::server::http::HttpResponse;
use serde_json::json;

/// Where the broker is in its life, as health and readiness report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Shards are starting; not every listener is up.
    Starting,
    /// Serving.
    Listening,
    /// Shutting down: no new connections, queues being flushed.
    Draining,
}

impl State {
    /// The broker's state now.
    pub fn of(broker: &Broker) -> State {
        if broker.is_draining() {
            State::Draining
        } else if !broker.is_ready() {
            State::Starting
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
        }
    }
}

/// `GET /healthz`: 200 while the broker is starting or serving, 503 once draining.
pub fn healthz(broker: &Broker) -> HttpResponse {
    let state = State::of(broker);
    let healthy = state != State::Draining;
    let active = broker.sum(|s| &s.connections_active);
    let depth = broker.sum(|s| &s.queue_frames);
    let capacity = active.max(1) * broker.config.client.queue_frames as u64;
    let utilization = depth as f64 / capacity as f64;
    let body = json!({
        "healthy": healthy,
        "status": state.name(),
        "details": {
            "mode": "server",
            "connections": { "active": active, "total": broker.sum(|s| &s.connections_total) },
            "queue": { "depth": depth, "utilization": utilization },
            "shards": broker.router.shard_count(),
            "throughput": { "messages_per_second": broker.rates.lock().delivered_per_s },
            "uptime_s": broker.started.elapsed().as_secs(),
        }
    });
    json_response(if healthy { 200 } else { 503 }, &body)
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

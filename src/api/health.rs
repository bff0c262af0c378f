//! `/healthz` in the SemStreams shape: `{"healthy", "status", "details": {...}}`,
//! 503 while shutting down.

use super::json_response;
use crate::broker::Broker;
use crate::server::http::HttpResponse;
use serde_json::json;

/// `GET /healthz`.
pub fn healthz(broker: &Broker) -> HttpResponse {
    let draining = broker.is_draining();
    let active = broker.sum(|s| &s.connections_active);
    let depth = broker.sum(|s| &s.queue_frames);
    let capacity = active.max(1) * broker.config.client.queue_frames as u64;
    let utilization = depth as f64 / capacity as f64;
    let body = json!({
        "healthy": !draining,
        "status": if draining { "draining" } else { "healthy" },
        "details": {
            "mode": "standalone",
            "connections": { "active": active, "total": broker.sum(|s| &s.connections_total) },
            "queue": { "depth": depth, "utilization": utilization },
            "shards": broker.router.shard_count(),
            "uptime_s": broker.started.elapsed().as_secs(),
        }
    });
    json_response(if draining { 503 } else { 200 }, &body)
}

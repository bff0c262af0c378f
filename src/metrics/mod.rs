//! Prometheus text exposition of the per-shard counters, summed (or labelled by shard)
//! at scrape time, and merged latency percentiles. Nothing here runs per message.

use crate::api::response;
use crate::broker::Broker;
use crate::error::Reject;
use crate::server::http::HttpResponse;
use crate::shard::stats::{new_histogram, ShardStats};
use bytes::Bytes;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Merged delivery-latency percentiles in microseconds.
#[derive(Debug, Default, Clone, Copy)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Maximum.
    pub max: u64,
    /// Samples.
    pub count: u64,
}

/// Merges every shard's histogram.
pub fn latency(broker: &Broker) -> Latency {
    let mut merged = new_histogram();
    for s in &broker.shard_stats {
        let _ = merged.add(&*s.latency_us.lock());
    }
    Latency {
        p50: merged.value_at_quantile(0.5),
        p99: merged.value_at_quantile(0.99),
        p999: merged.value_at_quantile(0.999),
        max: merged.max(),
        count: merged.len(),
    }
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP shardcast_{name} {help}\n# TYPE shardcast_{name} {kind}\nshardcast_{name} {value}"
    );
}

/// A summed per-shard metric: name, Prometheus type, help text, which counter.
type ShardMetric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ShardStats) -> &AtomicU64,
);

/// `GET /metrics`.
pub fn render(broker: &Broker) -> HttpResponse {
    let mut out = String::with_capacity(4096);
    let counters: [ShardMetric; 11] = [
        (
            "connections_active",
            "gauge",
            "Open WebSocket connections.",
            |s| &s.connections_active,
        ),
        (
            "connections_total",
            "counter",
            "WebSocket connections accepted.",
            |s| &s.connections_total,
        ),
        (
            "messages_received_total",
            "counter",
            "Client messages received.",
            |s| &s.messages_in,
        ),
        (
            "publications_total",
            "counter",
            "Publications accepted (API and clients).",
            |s| &s.published,
        ),
        (
            "deliveries_total",
            "counter",
            "Frames queued to subscribers.",
            |s| &s.delivered,
        ),
        (
            "slow_consumer_disconnects_total",
            "counter",
            "Connections closed as slow consumers.",
            |s| &s.slow_disconnects,
        ),
        ("subscriptions", "gauge", "Active subscriptions.", |s| {
            &s.subscriptions
        }),
        (
            "outbound_queue_frames",
            "gauge",
            "Frames waiting in outbound buffers.",
            |s| &s.queue_frames,
        ),
        (
            "socket_writes_total",
            "counter",
            "Vectored socket writes.",
            |s| &s.writes,
        ),
        (
            "frames_written_total",
            "counter",
            "Frames completed by socket writes.",
            |s| &s.frames_written,
        ),
        (
            "read_pauses_total",
            "counter",
            "Times a client's input was left unread because shard inboxes were over half full.",
            |s| &s.read_pauses,
        ),
    ];
    for (name, kind, help, pick) in counters {
        metric(&mut out, name, kind, help, broker.sum(pick));
    }
    metric(
        &mut out,
        "bytes_written_total",
        "counter",
        "Bytes written to sockets.",
        broker.sum(|s| &s.bytes_out),
    );
    let _ = writeln!(
        out,
        "# HELP shardcast_dropped_total Frames dropped.\n# TYPE shardcast_dropped_total counter"
    );
    let _ = writeln!(
        out,
        "shardcast_dropped_total{{reason=\"queue_full\"}} {}",
        broker.sum(|s| &s.dropped_queue_full)
    );
    let _ = writeln!(out, "# HELP shardcast_rejections_total Inputs refused, by reason.\n# TYPE shardcast_rejections_total counter");
    for (i, label) in Reject::LABELS.iter().enumerate() {
        let _ = writeln!(
            out,
            "shardcast_rejections_total{{reason=\"{label}\"}} {}",
            broker.rejections(i)
        );
    }
    let _ = writeln!(out, "# HELP shardcast_shard_connections_active Open WebSocket connections per shard.\n# TYPE shardcast_shard_connections_active gauge");
    for (id, s) in broker.shard_stats.iter().enumerate() {
        let _ = writeln!(
            out,
            "shardcast_shard_connections_active{{shard=\"{id}\"}} {}",
            ShardStats::get(&s.connections_active)
        );
    }
    metric(
        &mut out,
        "channels",
        "gauge",
        "Distinct channels/patterns with subscribers.",
        broker.router.channel_count() as u64,
    );
    metric(
        &mut out,
        "api_requests_total",
        "counter",
        "HTTP API requests.",
        broker.global.api_requests.load(Ordering::Relaxed),
    );
    let lat = latency(broker);
    let _ = writeln!(out, "# HELP shardcast_delivery_latency_us Delivery latency percentiles (publish accepted to written), microseconds.\n# TYPE shardcast_delivery_latency_us gauge");
    for (q, v) in [
        ("0.5", lat.p50),
        ("0.99", lat.p99),
        ("0.999", lat.p999),
        ("1", lat.max),
    ] {
        let _ = writeln!(out, "shardcast_delivery_latency_us{{quantile=\"{q}\"}} {v}");
    }
    response(200, "text/plain; version=0.0.4", Bytes::from(out))
}

//! Prometheus text exposition of the per-shard counters, summed (or labelled by shard)
//! at scrape time, and merged latency percentiles. Nothing here runs per message.

use crate::api::response;
use crate::broker::Broker;
use crate::error::{ErrorClass, Reject};
use crate::server::http::HttpResponse;
use crate::shard::stats::{new_histogram, ShardStats, MESSAGE_KINDS};
use bytes::Bytes;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Merged delivery-latency percentiles in microseconds.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
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

/// For counters an index might miss (never, by construction).
static ZERO: AtomicU64 = AtomicU64::new(0);

/// Native TLS counters (only with `server.tls_cert` set).
fn tls_metrics(out: &mut String, stats: &crate::tls::TlsStats) {
    metric(
        out,
        "tls_handshakes_total",
        "counter",
        "TLS handshakes completed (failures: shardcast_rejections_total{reason=\"tls_handshake_failed\"}).",
        stats.handshakes.load(Ordering::Relaxed),
    );
    metric(
        out,
        "tls_reloads_total",
        "counter",
        "Certificate pairs loaded after start (SIGHUP or a file change).",
        stats.reloads.load(Ordering::Relaxed),
    );
    metric(
        out,
        "tls_reload_failures_total",
        "counter",
        "Certificate reloads refused (unreadable or mismatched files); the previous pair stays in use.",
        stats.reload_failures.load(Ordering::Relaxed),
    );
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP shardcast_{name} {help}\n# TYPE shardcast_{name} {kind}\nshardcast_{name} {value}"
    );
}

/// A metric with one label: `# HELP`, `# TYPE`, then one sample per label value.
fn labelled<L: std::fmt::Display, V: std::fmt::Display>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    label: &str,
    samples: impl IntoIterator<Item = (L, V)>,
) {
    let _ = writeln!(
        out,
        "# HELP shardcast_{name} {help}\n# TYPE shardcast_{name} {kind}"
    );
    for (value, sample) in samples {
        let _ = writeln!(out, "shardcast_{name}{{{label}=\"{value}\"}} {sample}");
    }
}

/// Upper bounds of the delivery-latency histogram buckets, in microseconds.
const LATENCY_BUCKETS_US: [u64; 15] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000,
];

/// The shards' HDR histograms merged and exposed as a Prometheus histogram in seconds
/// (cumulative buckets; the sum is count x mean, as HDR keeps no exact sum).
fn latency_histogram(out: &mut String, broker: &Broker) {
    let mut merged = new_histogram();
    for s in &broker.shard_stats {
        let _ = merged.add(&*s.latency_us.lock());
    }
    let _ = writeln!(
        out,
        "# HELP shardcast_delivery_latency_seconds Delivery latency, publication accepted to frame written.\n\
         # TYPE shardcast_delivery_latency_seconds histogram"
    );
    for le in LATENCY_BUCKETS_US {
        let _ = writeln!(
            out,
            "shardcast_delivery_latency_seconds_bucket{{le=\"{}\"}} {}",
            le as f64 / 1e6,
            merged.count_between(0, le)
        );
    }
    let count = merged.len();
    let _ = writeln!(
        out,
        "shardcast_delivery_latency_seconds_bucket{{le=\"+Inf\"}} {count}\n\
         shardcast_delivery_latency_seconds_sum {}\n\
         shardcast_delivery_latency_seconds_count {count}",
        merged.mean() * count as f64 / 1e6
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
        (
            "connections_moved_total",
            "counter",
            "Upgraded connections handed to a shard holding fewer connections than the one that accepted them.",
            |s| &s.connections_moved,
        ),
    ];
    for (name, kind, help, pick) in counters {
        metric(&mut out, name, kind, help, broker.sum(pick));
    }
    // permessage-deflate (`crate::deflate`); bombs refused are
    // `rejections_total{reason="inflated_too_large"}`.
    let deflate: [ShardMetric; 5] = [
        (
            "compressed_frames_total",
            "counter",
            "permessage-deflate frames made: one per publication and dialect, however many subscribers get it.",
            |s| &s.deflate.frames,
        ),
        (
            "compression_bytes_in_total",
            "counter",
            "Payload bytes of publications before compression (frames counted in compressed_frames_total).",
            |s| &s.deflate.bytes_in,
        ),
        (
            "compression_bytes_out_total",
            "counter",
            "Payload bytes of those frames after compression.",
            |s| &s.deflate.bytes_out,
        ),
        (
            "compression_skipped_total",
            "counter",
            "Publications sent plain to clients with compression: under server.compression_min_bytes or not smaller compressed.",
            |s| &s.deflate.plain,
        ),
        (
            "inflated_messages_total",
            "counter",
            "Compressed client messages inflated.",
            |s| &s.deflate.inflated,
        ),
    ];
    for (name, kind, help, pick) in deflate {
        metric(&mut out, name, kind, help, broker.sum(pick));
    }
    metric(
        &mut out,
        "bytes_written_total",
        "counter",
        "Bytes written to sockets.",
        broker.sum(|s| &s.bytes_out),
    );
    labelled(
        &mut out,
        "messages_received_total",
        "counter",
        "Client messages received, by what they asked for (invalid: could not be decoded).",
        "type",
        MESSAGE_KINDS.iter().enumerate().map(|(i, kind)| {
            (
                *kind,
                broker.sum(|s| s.messages_by_kind.get(i).unwrap_or(&ZERO)),
            )
        }),
    );
    let refused = |r: Reject| broker.rejections(r.index());
    let client_invalid: u64 = Reject::all()
        .iter()
        .filter(|r| r.class() == ErrorClass::Invalid && !r.is_handshake())
        .filter(|r| !matches!(r, Reject::PublishNotAllowed | Reject::SubscribeNotAllowed))
        .map(|&r| refused(r))
        .sum();
    labelled(
        &mut out,
        "dropped_total",
        "counter",
        "Messages not delivered or not accepted, by reason: frames dropped by on_full (queue_full) or discarded with a slow consumer, client messages refused.",
        "reason",
        [
            ("queue_full", broker.sum(|s| &s.dropped_queue_full)),
            ("slow_consumer", broker.sum(|s| &s.dropped_slow_consumer)),
            ("rate_limited", refused(Reject::RateLimited)),
            ("overloaded", refused(Reject::Overloaded)),
            ("not_allowed", refused(Reject::PublishNotAllowed) + refused(Reject::SubscribeNotAllowed)),
            ("invalid", client_invalid),
        ],
    );
    labelled(
        &mut out,
        "rejections_total",
        "counter",
        "Inputs refused, by reason.",
        "reason",
        Reject::LABELS
            .iter()
            .enumerate()
            .map(|(i, l)| (*l, broker.rejections(i))),
    );
    labelled(
        &mut out,
        "handshake_failures_total",
        "counter",
        "Connections refused before becoming a WebSocket, by reason.",
        "reason",
        Reject::all()
            .into_iter()
            .filter(Reject::is_handshake)
            .map(|r| (r.label(), refused(r))),
    );
    let mut by_class = [0u64; ErrorClass::LABELS.len()];
    for r in Reject::all() {
        if let Some(n) = by_class.get_mut(r.class() as usize) {
            *n += refused(r);
        }
    }
    labelled(
        &mut out,
        "errors_total",
        "counter",
        "Refusals by class: fatal (connection closed), transient (a limit; may pass later), invalid (bad input).",
        "class",
        ErrorClass::LABELS.iter().copied().zip(by_class),
    );
    let shards = broker.shard_stats.iter().enumerate();
    labelled(
        &mut out,
        "shard_connections_active",
        "gauge",
        "Open WebSocket connections per shard.",
        "shard",
        shards
            .clone()
            .map(|(id, s)| (id, ShardStats::get(&s.connections_active))),
    );
    labelled(
        &mut out,
        "shard_connections_total",
        "counter",
        "WebSocket connections accepted per shard.",
        "shard",
        shards
            .clone()
            .map(|(id, s)| (id, ShardStats::get(&s.connections_total))),
    );
    labelled(
        &mut out,
        "shard_outbound_queue_frames",
        "gauge",
        "Frames waiting in outbound buffers per shard.",
        "shard",
        shards.map(|(id, s)| (id, ShardStats::get(&s.queue_frames))),
    );
    let active = broker.sum(|s| &s.connections_active);
    let capacity = active.max(1) * broker.config.client.queue_frames as u64;
    let _ = writeln!(
        out,
        "# HELP shardcast_outbound_queue_utilization Frames queued over the outbound capacity of open connections (0..1).\n\
         # TYPE shardcast_outbound_queue_utilization gauge\n\
         shardcast_outbound_queue_utilization {}",
        broker.sum(|s| &s.queue_frames) as f64 / capacity as f64
    );
    metric(
        &mut out,
        "channels",
        "gauge",
        "Distinct channels/patterns with subscribers.",
        broker.router.channel_count() as u64,
    );
    metric(
        &mut out,
        "accept_errors_total",
        "counter",
        "Failed accept calls (e.g. out of file descriptors; accepting backs off meanwhile).",
        broker.global.accept_errors.load(Ordering::Relaxed),
    );
    metric(
        &mut out,
        "api_requests_total",
        "counter",
        "HTTP API requests.",
        broker.global.api_requests.load(Ordering::Relaxed),
    );
    if let Some(tls) = &broker.tls {
        tls_metrics(&mut out, &tls.stats);
    }
    latency_histogram(&mut out, broker);
    history(&mut out, &broker.history.stats);
    semstreams(&mut out, broker);
    if let Some(c) = &broker.cluster {
        cluster(&mut out, &c.stats);
        if let Some(js) = &c.jetstream {
            jetstream(&mut out, js);
        }
    }
    crate::links::stats::render(&mut out, &broker.links.links);
    response(200, "text/plain; version=0.0.4", Bytes::from(out))
}

/// `shardcast_semstreams_*`: the SemStreams dialect (SPEC §11), in the spirit of the
/// WebSocket Input's own metrics; and `shardcast_dialect_detected_total`.
fn semstreams(out: &mut String, broker: &Broker) {
    use crate::protocol::semstreams::{METHODS, TYPES};
    use crate::shard::semstreams::{SemstreamsStats, DROP_REASONS};
    let s = &SemstreamsStats::total(broker.shard_stats.iter().map(|s| &s.semstreams));
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    labelled(
        out,
        "semstreams_messages_received_total",
        "counter",
        "SemStreams messages received from peers, by type (invalid: type unreadable).",
        "type",
        TYPES.iter().zip(&s.received).map(|(t, c)| (t, get(c))),
    );
    labelled(
        out,
        "semstreams_messages_dropped_total",
        "counter",
        "Frames for SemStreams peers dropped, by reason (queue_full: semstreams.on_full; rate_limit: the peer's backpressure request).",
        "reason",
        DROP_REASONS.iter().zip(&s.dropped).map(|(t, c)| (t, get(c))),
    );
    labelled(
        out,
        "semstreams_requests_total",
        "counter",
        "SemStreams requests received, by method.",
        "method",
        METHODS.iter().zip(&s.requests).map(|(t, c)| (t, get(c))),
    );
    labelled(
        out,
        "semstreams_request_duration_seconds_sum",
        "counter",
        "Time spent answering SemStreams requests, by method (count: semstreams_requests_total).",
        "method",
        METHODS
            .iter()
            .zip(&s.request_micros)
            .map(|(t, c)| (t, get(c) as f64 / 1e6)),
    );
    labelled(
        out,
        "semstreams_replies_total",
        "counter",
        "SemStreams replies sent, by status.",
        "status",
        [("ok", get(&s.replies[0])), ("error", get(&s.replies[1]))],
    );
    let peers = get(&s.peers);
    let depth = get(&s.queue_depth);
    let capacity = peers * broker.config.semstreams.queue_size as u64;
    let rows = [
        (
            "semstreams_messages_published_total",
            "counter",
            "SemStreams data messages published.",
            get(&s.published),
        ),
        (
            "semstreams_acks_total",
            "counter",
            "SemStreams acks sent.",
            get(&s.acks),
        ),
        (
            "semstreams_nacks_total",
            "counter",
            "SemStreams nacks sent (reasons: shardcast_rejections_total).",
            get(&s.nacks),
        ),
        (
            "semstreams_slow_total",
            "counter",
            "SemStreams slow signals sent.",
            get(&s.slow_sent),
        ),
        (
            "semstreams_read_blocks_total",
            "counter",
            "Times a SemStreams peer's socket was left unread because its queue was full (on_full = block).",
            get(&s.blocked),
        ),
        (
            "semstreams_connections_active",
            "gauge",
            "Connected SemStreams peers.",
            peers,
        ),
        (
            "semstreams_queue_depth",
            "gauge",
            "Frames queued for SemStreams peers.",
            depth,
        ),
    ];
    for (name, kind, help, value) in rows {
        metric(out, name, kind, help, value);
    }
    let _ = writeln!(
        out,
        "# HELP shardcast_semstreams_queue_utilization Queued frames over the peers' total queue capacity (0.0-1.0).\n# TYPE shardcast_semstreams_queue_utilization gauge\nshardcast_semstreams_queue_utilization {}",
        depth as f64 / capacity.max(1) as f64
    );
    labelled(
        out,
        "dialect_detected_total",
        "counter",
        "Connections whose dialect was detected from their first message (server.default_dialect = auto).",
        "dialect",
        crate::protocol::Dialect::ALL
            .iter()
            .zip(&s.detected)
            .map(|(d, c)| (d.name(), get(c))),
    );
}

/// `shardcast_history_*`: retained publications, evictions, replays, resumes (SPEC §9).
fn history(out: &mut String, h: &crate::history::HistoryStats) {
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let rows: [(&str, &str, &str, u64); 5] = [
        (
            "history_channels",
            "gauge",
            "Channels holding history state (offsets, epoch).",
            get(&h.channels),
        ),
        (
            "history_retained_publications",
            "gauge",
            "Publications retained in history.",
            get(&h.retained),
        ),
        (
            "history_retained_bytes",
            "gauge",
            "Bytes retained in history (payload plus per-entry overhead).",
            get(&h.retained_bytes),
        ),
        (
            "history_appended_total",
            "counter",
            "Publications appended to history.",
            get(&h.appended),
        ),
        (
            "history_replayed_total",
            "counter",
            "Publications sent to subscribers from history (replays and catch-ups).",
            get(&h.replayed),
        ),
    ];
    for (name, kind, help, value) in rows {
        metric(out, name, kind, help, value);
    }
    labelled(
        out,
        "history_evicted_total",
        "counter",
        "Retained publications dropped, by reason (size, bytes, ttl, max_bytes).",
        "reason",
        crate::history::Eviction::LABELS
            .iter()
            .zip(&h.evicted)
            .map(|(label, c)| (label, get(c))),
    );
    labelled(
        out,
        "history_resumes_total",
        "counter",
        "Subscribes with a position, by whether every missed publication was replayed.",
        "recovered",
        [
            ("true", get(&h.recovered[1])),
            ("false", get(&h.recovered[0])),
        ],
    );
}

/// `shardcast_jetstream_*`: durable history on JetStream (`cluster.history = "jetstream"`).
fn jetstream(out: &mut String, j: &crate::cluster::jetstream::JetStreamStats) {
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let rows: [(&str, &str, &str, u64); 8] = [
        (
            "jetstream_up",
            "gauge",
            "1 while the JetStream history stream is in place and answering.",
            u64::from(j.up.load(Ordering::Relaxed)),
        ),
        (
            "jetstream_appended_total",
            "counter",
            "History publications appended to the stream by this node.",
            get(&j.appended),
        ),
        (
            "jetstream_conflicts_total",
            "counter",
            "Appends retried because another node took the offset first.",
            get(&j.conflicts),
        ),
        (
            "jetstream_read_total",
            "counter",
            "Publications read from the stream (gap fills and catch-ups before a subscribe).",
            get(&j.read),
        ),
        (
            "jetstream_holes_total",
            "counter",
            "Gaps in live delivery the stream could not fill (delivered with the hole visible).",
            get(&j.holes),
        ),
        (
            "jetstream_unrecorded_total",
            "counter",
            "History publications delivered live without an offset (stream unavailable or full).",
            get(&j.unrecorded),
        ),
        (
            "jetstream_sync_failed_total",
            "counter",
            "Subscribes on history channels answered without the stream (recovered: false for resumes).",
            get(&j.sync_failed),
        ),
        (
            "jetstream_dropped_total",
            "counter",
            "History publications dropped because the queue to the JetStream task was full.",
            get(&j.dropped),
        ),
    ];
    for (name, kind, help, value) in rows {
        metric(out, name, kind, help, value);
    }
}

/// `shardcast_cluster_*`: the NATS link (cluster mode only).
fn cluster(out: &mut String, c: &crate::cluster::ClusterStats) {
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let connected = u64::from(c.connected.load(Ordering::Relaxed));
    let rows: [(&str, &str, &str, u64); 12] = [
        (
            "cluster_connected",
            "gauge",
            "1 while the NATS link is connected.",
            connected,
        ),
        (
            "cluster_sent_total",
            "counter",
            "Publications sent to NATS.",
            get(&c.sent),
        ),
        (
            "cluster_received_total",
            "counter",
            "Publications received from other nodes.",
            get(&c.received),
        ),
        (
            "cluster_dropped_unavailable_total",
            "counter",
            "Publications not sent to other nodes because NATS was not connected.",
            get(&c.dropped_unavailable),
        ),
        (
            "cluster_duplicates_total",
            "counter",
            "Copies from overlapping NATS subscriptions removed.",
            get(&c.duplicates),
        ),
        (
            "cluster_malformed_total",
            "counter",
            "Messages on shardcast subjects that were not shardcast envelopes.",
            get(&c.malformed),
        ),
        (
            "cluster_dropped_inbox_full_total",
            "counter",
            "Publications from other nodes dropped because shard inboxes stayed full.",
            get(&c.dropped_inbox_full),
        ),
        (
            "cluster_connects_total",
            "counter",
            "Times the NATS link (re)connected.",
            get(&c.connects),
        ),
        (
            "cluster_subscriptions",
            "gauge",
            "NATS subscriptions held for local interest.",
            get(&c.subscriptions),
        ),
        (
            "cluster_interest_pending",
            "gauge",
            "Patterns whose interest change (first subscriber / last one gone) waits for the NATS link.",
            u64::try_from(c.interest.len()).unwrap_or(u64::MAX),
        ),
        (
            "cluster_interest_coalesced_total",
            "counter",
            "Interest changes that cancelled out (a subscribe and unsubscribe of one pattern) before reaching NATS.",
            c.interest.coalesced(),
        ),
        (
            "cluster_interest_batches_total",
            "counter",
            "Batches of interest changes the link sent to NATS, each confirmed with one flush.",
            get(&c.interest_batches),
        ),
    ];
    for (name, kind, help, value) in rows {
        metric(out, name, kind, help, value);
    }
    metric(
        out,
        "cluster_max_payload_bytes",
        "gauge",
        "The NATS server's max_payload (0 before the first connection).",
        get(&c.max_payload),
    );
    labelled(
        out,
        "cluster_refused_total",
        "counter",
        "Messages from NATS not delivered, by reason (malformed, bad_mac, subject_mismatch, kind_mismatch, invalid_topic, sequence_jump).",
        "reason",
        crate::cluster::inbound::Refusal::LABELS
            .iter()
            .zip(&c.refused)
            .map(|(label, n)| (label, get(n))),
    );
}

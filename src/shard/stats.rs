//! Per-shard counters and the delivery-latency histogram.
//!
//! Each shard writes only its own `ShardStats` (one cache-line-aligned block, no sharing
//! between cores on the hot path); readers (`/metrics`, `/api/stats`, `/healthz`) sum the
//! blocks at scrape time. Counters are bumped per batch where possible, not per delivery.

use crate::error::Reject;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Labels of `shardcast_messages_received_total{type=...}`: what a client message asked
/// for, `invalid` when it could not be decoded.
pub const MESSAGE_KINDS: [&str; 6] = [
    "subscribe",
    "unsubscribe",
    "unsubscribe_all",
    "publish",
    "ping",
    "invalid",
];

/// Counters one shard owns. All are monotonic totals except the `*_active`/`queue_*` gauges.
#[derive(Debug)]
#[repr(align(128))]
pub struct ShardStats {
    /// Open WebSocket connections (gauge).
    pub connections_active: AtomicU64,
    /// WebSocket connections ever accepted.
    pub connections_total: AtomicU64,
    /// Client messages received (text messages decoded).
    pub messages_in: AtomicU64,
    /// Publications accepted on this shard (API or client).
    pub published: AtomicU64,
    /// Frames queued to subscribers.
    pub delivered: AtomicU64,
    /// Frames dropped by `drop_oldest` / `drop_newest`.
    pub dropped_queue_full: AtomicU64,
    /// Connections closed as slow consumers.
    pub slow_disconnects: AtomicU64,
    /// Active subscriptions (gauge).
    pub subscriptions: AtomicU64,
    /// Frames waiting in outboxes (gauge, refreshed per batch).
    pub queue_frames: AtomicU64,
    /// Bytes written to sockets.
    pub bytes_out: AtomicU64,
    /// Write syscalls (`writev`) made.
    pub writes: AtomicU64,
    /// Frames completed by those writes (frames / writes = batching factor).
    pub frames_written: AtomicU64,
    /// Times a connection's input was left unread because shard inboxes were congested.
    pub read_pauses: AtomicU64,
    /// Upgraded connections handed to a less loaded shard (`shard::placement`).
    pub connections_moved: AtomicU64,
    /// Connections other shards have handed here that are not adopted yet (gauge;
    /// written by those shards, so placement decisions in a burst see each other).
    pub adopting: AtomicU64,
    /// Client messages by what they asked for ([`MESSAGE_KINDS`] order).
    pub messages_by_kind: [AtomicU64; MESSAGE_KINDS.len()],
    /// Frames discarded from the outbox of a connection closed as a slow consumer.
    pub dropped_slow_consumer: AtomicU64,
    /// Rejections by reason (`Reject::index`).
    pub rejections: [AtomicU64; Reject::LABELS.len()],
    /// Delivery latency, publish accepted -> frame written, in microseconds.
    pub latency_us: Mutex<Histogram<u64>>,
    /// permessage-deflate counters.
    pub deflate: crate::deflate::Stats,
    /// SemStreams counters (per shard: every peer message touches them).
    pub semstreams: super::semstreams::SemstreamsStats,
}

impl Default for ShardStats {
    fn default() -> Self {
        ShardStats {
            connections_active: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            messages_in: AtomicU64::new(0),
            published: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            dropped_queue_full: AtomicU64::new(0),
            slow_disconnects: AtomicU64::new(0),
            subscriptions: AtomicU64::new(0),
            queue_frames: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            frames_written: AtomicU64::new(0),
            read_pauses: AtomicU64::new(0),
            connections_moved: AtomicU64::new(0),
            adopting: AtomicU64::new(0),
            messages_by_kind: std::array::from_fn(|_| AtomicU64::new(0)),
            dropped_slow_consumer: AtomicU64::new(0),
            rejections: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_us: Mutex::new(new_histogram()),
            deflate: crate::deflate::Stats::default(),
            semstreams: Default::default(),
        }
    }
}

/// A latency histogram: 1 µs to 60 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).expect("invariant: 3 sigfigs is valid"))
}

impl ShardStats {
    /// Adds `n` to a counter (relaxed: totals, not synchronization).
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Subtracts `n` from a gauge.
    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }

    /// Counts one rejection.
    pub fn reject(&self, reject: Reject) {
        if let Some(c) = self.rejections.get(reject.index()) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

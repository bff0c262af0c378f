//! What a shard does for SemStreams peers (SPEC §11): `data` ingest with `ack`/`nack`,
//! `request`/`reply` (status, backpressure, subscribe, history, routing), the peer's
//! bounded queue with `slow` signals and `semstreams.on_full`, plus dialect detection
//! for clients that chose none (`server.default_dialect = "auto"`).
//!
//! Per-peer state (recent ids, the send rate it asked for, when it was last told it is
//! slow) lives in the shard's `peers` map, not on [`Conn`], so connections of the other
//! dialects pay nothing for it; the delivery loop reaches it only for SemStreams peers.

use super::Shard;
use crate::config::{OnFull, SemstreamsOnFull};
use crate::conn::outbox::{self, Pushed};
use crate::conn::reader::Flow;
use crate::conn::{Conn, Phase, RateLimiter};
use crate::error::Reject;
use crate::protocol::semstreams::{self as wire, Request, METHODS, TYPES};
use crate::protocol::{Command, DecodeFailure, Dialect};
use bytes::Bytes;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Why a frame for a SemStreams peer was not queued (`shardcast_semstreams_dropped_total`).
pub const DROP_REASONS: [&str; 2] = ["queue_full", "rate_limit"];

/// One shard's SemStreams counters (touched only by SemStreams peers, and by detection
/// once per auto-detected connection); [`SemstreamsStats::total`] adds the shards up.
#[derive(Debug, Default)]
pub struct SemstreamsStats {
    /// Messages received from peers, by `type` ([`TYPES`] order, last = invalid).
    pub received: [AtomicU64; TYPES.len()],
    /// `data` messages published.
    pub published: AtomicU64,
    /// `ack`s sent.
    pub acks: AtomicU64,
    /// `nack`s sent.
    pub nacks: AtomicU64,
    /// Frames for peers dropped, by [`DROP_REASONS`].
    pub dropped: [AtomicU64; DROP_REASONS.len()],
    /// Requests received, by method ([`METHODS`] order).
    pub requests: [AtomicU64; METHODS.len()],
    /// Microseconds spent answering requests, by method.
    pub request_micros: [AtomicU64; METHODS.len()],
    /// Replies sent: `[ok, error]`.
    pub replies: [AtomicU64; 2],
    /// `slow` signals sent.
    pub slow_sent: AtomicU64,
    /// Times a peer's socket was left unread because its queue was full (`block`).
    pub blocked: AtomicU64,
    /// Connected peers (gauge).
    pub peers: AtomicU64,
    /// Frames queued for peers, as of each peer's last delivery, ack or flush (gauge).
    pub queue_depth: AtomicU64,
    /// Connections whose dialect was detected from their first message, by dialect.
    pub detected: [AtomicU64; Dialect::COUNT],
}

impl SemstreamsStats {
    /// The sum over all shards, for `/metrics` and `/healthz`.
    pub fn total<'a>(shards: impl IntoIterator<Item = &'a SemstreamsStats>) -> SemstreamsStats {
        let sum = SemstreamsStats::default();
        let one = |to: &AtomicU64, from: &AtomicU64| {
            to.fetch_add(from.load(Ordering::Relaxed), Ordering::Relaxed);
        };
        let many = |to: &[AtomicU64], from: &[AtomicU64]| {
            to.iter().zip(from).for_each(|(t, f)| one(t, f));
        };
        for s in shards {
            for (to, from) in [
                (&sum.published, &s.published),
                (&sum.acks, &s.acks),
                (&sum.nacks, &s.nacks),
                (&sum.slow_sent, &s.slow_sent),
                (&sum.blocked, &s.blocked),
                (&sum.peers, &s.peers),
                (&sum.queue_depth, &s.queue_depth),
            ] {
                one(to, from);
            }
            many(&sum.received, &s.received);
            many(&sum.dropped, &s.dropped);
            many(&sum.requests, &s.requests);
            many(&sum.request_micros, &s.request_micros);
            many(&sum.replies, &s.replies);
            many(&sum.detected, &s.detected);
        }
        sum
    }
}

/// Adds `n` to one shard's counter. Only the owning shard writes its counters, so a
/// plain load and store is exact, and spares the locked instruction that stalled a busy
/// ingest shard on every message.
pub(super) fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// Takes `n` off one shard's gauge (see [`bump`]).
fn lower(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_sub(n), Ordering::Relaxed);
}

fn add(c: Option<&AtomicU64>, n: u64) {
    if let Some(c) = c {
        bump(c, n);
    }
}

/// One peer's state, kept by its shard.
#[derive(Debug, Default)]
pub(super) struct Peer {
    /// Hashes of its recently accepted ids (`semstreams.id_window`).
    ids: super::recent_ids::RecentIds,
    /// What it asked to be sent at most (msg/s, 0 = unlimited), and the bucket for it.
    send_rate: f64,
    bucket: RateLimiter,
    /// Shard clock of the last `slow` sent.
    last_slow_ms: Option<u64>,
    /// Its queue depth as last added to the gauge.
    depth: u64,
}

/// The peers of one shard, by connection key.
pub(super) type Peers = HashMap<usize, Peer, Spreading>;

/// A hasher for keys peers do not choose (slab keys): one multiply instead of SipHash.
#[derive(Default)]
pub(super) struct Spread(u64);

impl Hasher for Spread {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(self.0.rotate_left(8) ^ u64::from(*b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

type Spreading = BuildHasherDefault<Spread>;

/// The outbox bounds of a peer: `semstreams.queue_size` frames, `client.queue_bytes`,
/// and `on_full` (`block` stops reading the peer once its queue is full; other
/// publishers' data that finds it full is dropped, its own is not: `deliver_to_peer`).
pub(super) fn peer_limits(config: &crate::config::Config) -> outbox::Limits {
    outbox::Limits {
        frames: config.semstreams.queue_size,
        bytes: config.client.queue_bytes,
        on_full: match config.semstreams.on_full {
            SemstreamsOnFull::DropOldest => OnFull::DropOldest,
            SemstreamsOnFull::DropNewest | SemstreamsOnFull::Block => OnFull::DropNewest,
        },
    }
}

/// An envelope id's hash, keyed per process (so peers cannot aim ids at one bucket of
/// the set); only called when `semstreams.id_window` is on.
fn id_hash(id: &str) -> u64 {
    static KEYS: OnceLock<RandomState> = OnceLock::new();
    KEYS.get_or_init(RandomState::new).hash_one(id)
}

impl Shard {
    /// The first message of a client that chose no dialect decides it (SPEC §11).
    pub(super) fn detect_dialect(&self, conn: &mut Conn, key: usize, payload: &[u8]) {
        let Some(dialect) = Dialect::detect(payload) else {
            return; // still undecided: answered as gows
        };
        conn.detect = false;
        conn.dialect = dialect;
        add(self.stats.semstreams.detected.get(dialect.index()), 1);
        if dialect == Dialect::Semstreams {
            self.peer_opened(key);
        }
    }

    /// A connection became a SemStreams peer.
    pub(super) fn peer_opened(&self, key: usize) {
        self.peers.borrow_mut().insert(key, Peer::default());
        bump(&self.stats.semstreams.peers, 1);
    }

    /// A SemStreams peer's connection is gone.
    pub(super) fn peer_closed(&self, key: usize) {
        if let Some(peer) = self.peers.borrow_mut().remove(&key) {
            let stats = &self.stats.semstreams;
            lower(&stats.peers, 1);
            lower(&stats.queue_depth, peer.depth);
        }
    }

    /// Records `depth` as the peer's queue depth in the gauge.
    pub(super) fn note_peer_depth(&self, key: usize, depth: usize) {
        if let Some(peer) = self.peers.borrow_mut().get_mut(&key) {
            let depth = depth as u64;
            let gauge = &self.stats.semstreams.queue_depth;
            if depth > peer.depth {
                bump(gauge, depth - peer.depth);
            } else {
                lower(gauge, peer.depth - depth);
            }
            peer.depth = depth;
        }
    }

    /// Handles a decoded SemStreams message.
    pub(super) fn on_semstreams(&self, conn: &mut Conn, key: usize, command: Command<'_>) -> Flow {
        let stats = &self.stats.semstreams;
        match command {
            Command::Publish {
                topic,
                data,
                headers,
                id,
            } => {
                add(stats.received.first(), 1);
                self.on_data(conn, key, topic, data, headers, id.as_deref())
            }
            Command::Request { id, request } => {
                add(stats.received.get(1), 1);
                self.on_request(conn, key, &id, request)
            }
            Command::Signal(kind) => {
                add(stats.received.get(usize::from(kind)), 1);
                Flow::Continue
            }
            // The SemStreams decoder makes none of these.
            _ => self.refuse_semstreams(conn, DecodeFailure::new(Reject::UnknownType)),
        }
    }

    /// A SemStreams message that could not be decoded: counted, answered with a `nack`
    /// (an error `reply` for a request); the connection stays open.
    pub(super) fn refuse_semstreams(&self, conn: &mut Conn, failure: DecodeFailure) -> Flow {
        let stats = &self.stats.semstreams;
        let kind = match failure.reject {
            _ if failure.request => 1,
            Reject::UnsolicitedReply => 2,
            _ => TYPES.len() - 1,
        };
        add(stats.received.get(kind), 1);
        if failure.request {
            self.error_reply(conn, failure.id.as_deref(), failure.reject)
        } else {
            self.refuse(conn, failure.reject, failure.id.as_deref())
        }
    }

    /// `data`: publish on the named topic or the data channel, then `ack` (after the
    /// history append, which the router does before returning) or `nack`.
    fn on_data(
        &self,
        conn: &mut Conn,
        key: usize,
        topic: &str,
        data: Bytes,
        headers: Option<Bytes>,
        id: Option<&str>,
    ) -> Flow {
        let config = &self.broker.config.semstreams;
        if data.len() > config.max_payload_bytes {
            return self.refuse(conn, Reject::PayloadTooLarge, id);
        }
        let hash = self.id_hash(id);
        if self.id_reused(key, hash) {
            return self.refuse(conn, Reject::ReusedId, id);
        }
        // Ingest on the data channel, named or not, is what the dialect is for.
        let topic = if topic.is_empty() {
            config.data_channel.as_str()
        } else {
            topic
        };
        let ingest = topic == config.data_channel;
        let block = self.broker.config.semstreams.on_full == SemstreamsOnFull::Block;
        let origin = if block { self.origin_tag(key) } else { 0 };
        match self.client_publish(conn, topic, data, headers, ingest, origin) {
            Ok(offset) => {
                self.remember_id(key, hash);
                let stats = &self.stats.semstreams;
                bump(&stats.published, 1);
                let flow = match id {
                    Some(id) => {
                        bump(&stats.acks, 1);
                        let landed = (offset != 0).then_some((topic, offset));
                        let at = self.read_accepted().wall;
                        self.reply(conn, wire::render_ack(id, landed, at))
                    }
                    None => Flow::Continue,
                };
                if flow != Flow::Continue {
                    return flow;
                }
                self.maybe_slow(key, conn);
                self.note_peer_depth(key, conn.outbox.len());
                if self.broker.router.congested() || self.peer_blocked(conn) {
                    // Leave the peer's next messages unread (see `poll_conn`).
                    return Flow::Pause;
                }
                Flow::Continue
            }
            Err(Reject::RateLimitAbuse) => {
                self.close_for(conn, Reject::RateLimitAbuse);
                Flow::Stop
            }
            Err(reject) => self.refuse(conn, reject, id),
        }
    }

    /// `request`: answered with a `reply` of the same id.
    fn on_request(&self, conn: &mut Conn, key: usize, id: &str, request: Request) -> Flow {
        let started = Instant::now();
        let method = request.index();
        let stats = &self.stats.semstreams;
        add(stats.requests.get(method), 1);
        let hash = self.id_hash(Some(id));
        if self.id_reused(key, hash) {
            return self.error_reply(conn, Some(id), Reject::ReusedId);
        }
        self.remember_id(key, hash);
        let result = match request {
            Request::Status => Ok(crate::api::health::health(&self.broker).1),
            Request::Backpressure { rate_limit } => {
                let now = self.now_ms();
                if let Some(peer) = self.peers.borrow_mut().get_mut(&key) {
                    peer.send_rate = rate_limit;
                    peer.bucket = RateLimiter::new(burst(rate_limit), now);
                }
                Ok(json!({ "adjusted_to": rate_limit, "unit": "msg/sec" }))
            }
            Request::Subscribe { patterns } => self.peer_subscribe(conn, key, &patterns),
            Request::History { channel, since } => {
                match self.subscribe(conn, key, &channel, true) {
                    Ok(added) => {
                        bump(&stats.replies[0], 1);
                        let flow =
                            self.attach_history(conn, &channel, Some(since), added, Some(id));
                        self.note_duration(method, started);
                        return flow;
                    }
                    Err(reject) => Err(reject),
                }
            }
            Request::Routing => Ok(self.routing()),
        };
        self.note_duration(method, started);
        match result {
            Ok(value) => {
                bump(&stats.replies[0], 1);
                self.reply(conn, wire::render_reply(id, &value))
            }
            Err(reject) => self.error_reply(conn, Some(id), reject),
        }
    }

    fn note_duration(&self, method: usize, started: Instant) {
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        add(self.stats.semstreams.request_micros.get(method), us.max(1));
    }

    /// A refused request: counted, answered with an error `reply`.
    fn error_reply(&self, conn: &mut Conn, id: Option<&str>, reject: Reject) -> Flow {
        self.stats.reject(reject);
        bump(&self.stats.semstreams.replies[1], 1);
        self.reply(conn, wire::render_error_reply(id, &reject))
    }

    /// `subscribe`: each pattern as a vws subscribe would be; refused patterns are listed
    /// (an error reply when none could be subscribed).
    fn peer_subscribe(
        &self,
        conn: &mut Conn,
        key: usize,
        patterns: &[Box<str>],
    ) -> Result<Value, Reject> {
        let mut subscribed = Vec::new();
        let mut refused = Vec::new();
        let mut first_refusal = None;
        for pattern in patterns {
            match self.subscribe(conn, key, pattern, false) {
                Ok(added) => {
                    // Places a history cursor where the channel has one (no answer here).
                    let _ = self.attach_history(conn, pattern, None, added, None);
                    subscribed.push(json!(pattern));
                }
                Err(reject) => {
                    self.stats.reject(reject);
                    first_refusal.get_or_insert(reject);
                    refused.push(json!({ "pattern": pattern, "error": reject.to_string() }));
                }
            }
        }
        match first_refusal {
            Some(reject) if subscribed.is_empty() => Err(reject),
            _ => Ok(json!({ "subscribed": subscribed, "refused": refused })),
        }
    }

    /// `routing`: what this node offers.
    fn routing(&self) -> Value {
        let config = &self.broker.config;
        let node_id = self
            .broker
            .cluster
            .as_ref()
            .map_or(config.cluster.node_id.as_str(), |c| c.node_id.as_str());
        json!({
            "node_id": node_id,
            "dialects": Dialect::ALL.iter().map(|d| d.name()).collect::<Vec<_>>(),
            "features": ["data", "ack", "nack", "slow", "status", "backpressure",
                         "subscribe", "history", "routing"],
            "data_channel": config.semstreams.data_channel,
            "queue_capacity": config.semstreams.queue_size,
            "on_full": config.semstreams.on_full,
            "shards": self.broker.router.shard_count(),
        })
    }

    /// The hash reuse is checked by, when there is an id and `semstreams.id_window` is on.
    fn id_hash(&self, id: Option<&str>) -> Option<u64> {
        id.filter(|_| self.broker.config.semstreams.id_window > 0)
            .map(id_hash)
    }

    /// True when the id hashed to `hash` was accepted from this peer recently
    /// (`semstreams.id_window`).
    fn id_reused(&self, key: usize, hash: Option<u64>) -> bool {
        let Some(h) = hash else {
            return false;
        };
        self.peers
            .borrow()
            .get(&key)
            .is_some_and(|p| p.ids.contains(h))
    }

    fn remember_id(&self, key: usize, hash: Option<u64>) {
        let window = self.broker.config.semstreams.id_window;
        let Some(h) = hash else {
            return;
        };
        if let Some(peer) = self.peers.borrow_mut().get_mut(&key) {
            peer.ids.insert(h, window);
        }
    }

    /// This shard's tag for connection `key` in [`Publication::origin`] (never 0).
    ///
    /// [`Publication::origin`]: crate::publication::Publication::origin
    pub(super) fn origin_tag(&self, key: usize) -> u64 {
        (1 << 63) | (u64::from(self.id) << 40) | (key as u64 & ((1 << 40) - 1))
    }

    /// `block`: the peer's queue is full, so its socket is not read until it drains.
    pub(super) fn peer_blocked(&self, conn: &Conn) -> bool {
        self.broker.config.semstreams.on_full == SemstreamsOnFull::Block
            && conn.outbox.len() >= self.peer_limits.frames
    }

    /// Queues a publication's frame for a peer under its send rate and queue bound;
    /// true when queued. `origin` is the publication's: under `block`, the peer's own
    /// publications coming back to it are always queued, since it sent them before its
    /// reads stopped (the reads' pause, not the drop, bounds them).
    pub(super) fn deliver_to_peer(
        &self,
        key: usize,
        conn: &mut Conn,
        frame: Bytes,
        origin: u64,
    ) -> bool {
        let stats = &self.stats.semstreams;
        let limited = self
            .peers
            .borrow()
            .get(&key)
            .is_some_and(|p| p.send_rate > 0.0);
        if limited {
            let now = self.now_ms();
            let allowed = self
                .peers
                .borrow_mut()
                .get_mut(&key)
                .is_none_or(|p| p.bucket.allow(p.send_rate, burst(p.send_rate), now));
            if !allowed {
                add(stats.dropped.get(1), 1);
                return false;
            }
        }
        if origin != 0 && origin == self.origin_tag(key) {
            conn.outbox.push_unbounded(frame);
            self.maybe_slow(key, conn);
            self.note_peer_depth(key, conn.outbox.len());
            return true;
        }
        let limits = &self.peer_limits;
        if !conn.outbox.has_room(frame.len(), limits) && self.flush(conn).is_err() {
            conn.phase = Phase::Done;
            conn.wake();
            return false;
        }
        let queued = match conn.outbox.push(frame, limits) {
            Pushed::Queued => true,
            Pushed::DroppedOldest(n) => {
                add(stats.dropped.first(), n as u64);
                true
            }
            Pushed::DroppedNewest | Pushed::Full => {
                add(stats.dropped.first(), 1);
                false
            }
        };
        self.maybe_slow(key, conn);
        self.note_peer_depth(key, conn.outbox.len());
        queued
    }

    /// Sends `slow` when the peer's queue is past 80%, at most once per
    /// `semstreams.slow_interval` (so again while it stays there).
    fn maybe_slow(&self, key: usize, conn: &mut Conn) {
        let capacity = self.peer_limits.frames;
        let depth = conn.outbox.len();
        if depth.saturating_mul(5) <= capacity.saturating_mul(4) {
            return;
        }
        let now = self.now_ms();
        let interval = self.broker.config.semstreams.slow_interval.as_millis() as u64;
        {
            let mut peers = self.peers.borrow_mut();
            let Some(peer) = peers.get_mut(&key) else {
                return;
            };
            if peer
                .last_slow_ms
                .is_some_and(|t| now.saturating_sub(t) < interval)
            {
                return;
            }
            peer.last_slow_ms = Some(now);
        }
        conn.outbox
            .push_unbounded(wire::render_slow(depth, capacity));
        bump(&self.stats.semstreams.slow_sent, 1);
    }
}

/// The bucket size for a send rate: one second's worth, at least one message.
fn burst(rate: f64) -> u32 {
    rate.ceil().clamp(1.0, f64::from(u32::MAX)) as u32
}

//! `Broker`: the state every shard shares, immutable or atomic.
//!
//! Holds the validated config, the router (interest table + shard inboxes), each shard's
//! stats block, and the few broker-wide counters of cold paths (accept, HTTP API).
//! Nothing here is touched per delivery except through the router's generation counter.

use crate::auth::{Authenticator, IpLimits, Policies, Secret};
use crate::config::Config;
use crate::error::Reject;
use crate::router::Router;
use crate::shard::stats::ShardStats;
use crate::sys_stats::Rates;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Broker-wide counters for paths that are not per-shard (HTTP API, accept).
#[derive(Debug)]
pub struct GlobalStats {
    /// HTTP API requests served.
    pub api_requests: AtomicU64,
    /// Rejections outside WebSocket connections (handshake, API), by `Reject::index`.
    pub rejections: [AtomicU64; Reject::LABELS.len()],
    /// API requests refused (4xx/5xx), whatever the reason.
    pub api_errors: AtomicU64,
    /// `accept` calls that failed (out of file descriptors, and the like).
    pub accept_errors: AtomicU64,
}

impl Default for GlobalStats {
    fn default() -> Self {
        GlobalStats {
            api_requests: AtomicU64::new(0),
            rejections: std::array::from_fn(|_| AtomicU64::new(0)),
            api_errors: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
        }
    }
}

impl GlobalStats {
    /// Counts a rejection.
    pub fn reject(&self, reject: Reject) {
        if let Some(c) = self.rejections.get(reject.index()) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Sockets accepted beyond `server.max_connections` so that the HTTP API (publishing,
/// health checks, metrics) still answers while WebSocket connections are at the limit.
/// Only sockets that have sent a complete request head count here: silent ones have
/// their own budget (`server.max_pending_handshakes`, see `server::pending`).
pub const HTTP_HEADROOM: usize = 256;

/// Shared state of one running broker.
pub struct Broker {
    /// Validated configuration.
    pub config: Config,
    /// Interest table and shard inboxes.
    pub router: Router,
    /// One stats block per shard, index = shard id.
    pub shard_stats: Vec<Arc<ShardStats>>,
    /// Counters of non-shard paths.
    pub global: GlobalStats,
    /// TCP sockets open (HTTP and WebSocket) that have sent a complete request head;
    /// refused beyond `server.max_connections` plus [`HTTP_HEADROOM`].
    pub open_sockets: AtomicUsize,
    /// WebSocket connections open or being upgraded, checked against `server.max_connections`.
    pub ws_connections: AtomicUsize,
    /// Set when graceful shutdown begins (health reports 503, no new connections).
    pub draining: AtomicBool,
    /// Set once every shard is up and listening (`/readyz`).
    pub ready: AtomicBool,
    /// The HTTP API key, read from the variable `api.key_env` names (None = loopback only).
    pub api_key: Option<Secret>,
    /// Checks WebSocket clients' credentials (`[auth]`).
    pub auth: Authenticator,
    /// Who may subscribe and publish where (`[[policy]]`).
    pub policies: Policies,
    /// Per-IP connection counts and rates.
    pub ip_limits: Arc<IpLimits>,
    /// Message rates over the last second (refreshed by the `$sys/stats` tick).
    pub rates: parking_lot::Mutex<Rates>,
    /// When the broker started.
    pub started: Instant,
    /// The NATS link's status and counters, in cluster mode.
    pub cluster: Option<crate::cluster::Cluster>,
    /// Retained publications of history channels (SPEC §9); the router appends to it.
    pub history: Arc<crate::history::History>,
    /// Native TLS on the listener (`server.tls_cert`), `None` for plain.
    pub tls: Option<Arc<crate::tls::Tls>>,
    /// This node's id and its upstream links' state (`[[upstream]]`).
    pub links: crate::links::Links,
}

impl Broker {
    /// True once every shard is listening.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// False only in cluster mode while NATS is not connected.
    pub fn backplane_up(&self) -> bool {
        self.cluster
            .as_ref()
            .is_none_or(|c| c.stats.connected.load(Ordering::Acquire))
    }

    /// True once shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Reserves a WebSocket slot; false when `server.max_connections` are open.
    pub fn reserve_ws(&self) -> bool {
        let max = self.config.server.max_connections;
        if self.ws_connections.fetch_add(1, Ordering::AcqRel) >= max {
            self.ws_connections.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// A WebSocket connection (or a reserved slot whose upgrade failed) is gone.
    pub fn ws_closed(&self) {
        self.ws_connections.fetch_sub(1, Ordering::AcqRel);
    }

    /// A socket sent its first complete request head: it counts as open from now on
    /// (until [`Broker::socket_closed`]). False when that is more than
    /// `server.max_connections` + [`HTTP_HEADROOM`] (it still counts: it is answered 503).
    pub fn socket_opened(&self) -> bool {
        let max = self.config.server.max_connections + HTTP_HEADROOM;
        self.open_sockets.fetch_add(1, Ordering::AcqRel) < max
    }

    /// A socket closed.
    pub fn socket_closed(&self) {
        self.open_sockets.fetch_sub(1, Ordering::AcqRel);
    }

    /// Sum of one counter over all shards.
    pub fn sum(&self, pick: impl Fn(&ShardStats) -> &AtomicU64) -> u64 {
        self.shard_stats
            .iter()
            .map(|s| pick(s).load(Ordering::Relaxed))
            .sum()
    }

    /// Total rejections of one reason, shards plus broker-wide.
    pub fn rejections(&self, index: usize) -> u64 {
        let shards: u64 = self
            .shard_stats
            .iter()
            .filter_map(|s| s.rejections.get(index))
            .map(|c| c.load(Ordering::Relaxed))
            .sum();
        let global = self
            .global
            .rejections
            .get(index)
            .map_or(0, |c| c.load(Ordering::Relaxed));
        shards + global
    }
}

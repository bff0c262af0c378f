//! One link's state as `/healthz`, `/metrics` and the dashboard show it.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Why a publication did not cross a link (the `reason` label of
/// `shardcast_link_dropped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Push, `on_full = "drop_oldest"`: the oldest queued publication made room.
    DropOldest,
    /// Push, `on_full = "drop_newest"`: the new publication did not fit.
    DropNewest,
    /// Push, `on_full = "block"`: the local publish was refused (queue full).
    Blocked,
    /// It was already on the node on the other side (`sc-via`).
    Loop,
    /// It crossed `max_hops` links already.
    Hops,
    /// Push: the upstream refused it (nack, e.g. not allowed to publish there).
    Nack,
    /// Pull: it could not be published here (bad topic after `prefix`, cluster refusal,
    /// shutting down).
    Local,
}

impl Dropped {
    /// Labels, in `Dropped as usize` order.
    pub const LABELS: [&'static str; 7] = [
        "drop_oldest",
        "drop_newest",
        "blocked",
        "loop",
        "hops",
        "nack",
        "local",
    ];
}

/// Counters and status of one link (shared by its tasks and the HTTP endpoints).
#[derive(Debug)]
pub struct LinkStats {
    /// `[[upstream]] name` (or `upstream-N`).
    pub name: String,
    /// `pull` or `push`.
    pub mode: &'static str,
    /// `vws` or `semstreams`.
    pub dialect: &'static str,
    /// The upstream's URL.
    pub remote_url: String,
    /// Push queue capacity (`queue_size`).
    pub queue_capacity: u64,
    /// Whether the WebSocket to the upstream is open now.
    pub connected: AtomicBool,
    /// Connection attempts that failed or connections that ended (each one is retried
    /// after a backoff delay).
    pub reconnect_attempts: AtomicU64,
    /// Publications queued now (push).
    pub queue_depth: AtomicU64,
    /// Publications carried: republished here (pull) or acked by the upstream (push).
    pub forwarded: AtomicU64,
    /// Publications not carried, by [`Dropped`].
    pub dropped: [AtomicU64; Dropped::LABELS.len()],
    /// Pull: resumes after which the upstream could not replay everything missed.
    pub gaps: AtomicU64,
    /// Pull: resubscriptions after a cut that had no position to resume from (a wildcard
    /// pattern, or a channel the upstream keeps no history for): what the upstream
    /// published while the link was down was not brought over.
    pub resumes_from_now: AtomicU64,
    /// SemStreams: `slow` signals received (the upstream's queue for this link past 80%).
    pub slow_signals: AtomicU64,
    /// Whether the link gave up (`max_retries`).
    pub gave_up: AtomicBool,
    /// The upstream's node id, once learned (`/healthz` `details.node_id`).
    pub remote_node: parking_lot::Mutex<String>,
    /// The last failure, "" when none yet.
    pub last_error: parking_lot::Mutex<String>,
}

impl LinkStats {
    /// A link with nothing counted yet.
    pub fn new(
        name: String,
        mode: &'static str,
        dialect: &'static str,
        remote_url: String,
        capacity: usize,
    ) -> Self {
        LinkStats {
            name,
            mode,
            dialect,
            remote_url,
            queue_capacity: capacity as u64,
            connected: AtomicBool::new(false),
            reconnect_attempts: AtomicU64::new(0),
            queue_depth: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            dropped: std::array::from_fn(|_| AtomicU64::new(0)),
            gaps: AtomicU64::new(0),
            resumes_from_now: AtomicU64::new(0),
            slow_signals: AtomicU64::new(0),
            gave_up: AtomicBool::new(false),
            remote_node: parking_lot::Mutex::new(String::new()),
            last_error: parking_lot::Mutex::new(String::new()),
        }
    }

    /// Counts one publication not carried.
    pub fn count_drop(&self, why: Dropped, n: u64) {
        if let Some(c) = self.dropped.get(why as usize) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Publications not carried for `why`.
    pub fn dropped(&self, why: Dropped) -> u64 {
        self.dropped
            .get(why as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Queue depth over capacity, 0..1.
    pub fn utilization(&self) -> f64 {
        self.queue_depth.load(Ordering::Relaxed) as f64 / self.queue_capacity.max(1) as f64
    }

    /// What `/api/stats` and `$sys/stats` (the dashboard) show of the link: its state and
    /// counts, not its URL or errors (those are in `/healthz`).
    pub fn summary(&self) -> serde_json::Value {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "name": self.name,
            "mode": self.mode,
            "connected": self.connected.load(Ordering::Relaxed),
            "queue_depth": get(&self.queue_depth),
            "queue_utilization": self.utilization(),
            "reconnect_attempts": get(&self.reconnect_attempts),
            "forwarded": get(&self.forwarded),
            "dropped": self.dropped.iter().map(get).sum::<u64>(),
        })
    }

    /// The link as `/healthz` details show it.
    pub fn json(&self) -> serde_json::Value {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let dropped: serde_json::Map<String, serde_json::Value> = Dropped::LABELS
            .iter()
            .zip(&self.dropped)
            .map(|(l, n)| ((*l).to_owned(), get(n).into()))
            .collect();
        let error = self.last_error.lock().clone();
        let remote = self.remote_node.lock().clone();
        serde_json::json!({
            "name": self.name,
            "mode": self.mode,
            "dialect": self.dialect,
            "connected": self.connected.load(Ordering::Relaxed),
            "remote_url": self.remote_url,
            "remote_node_id": if remote.is_empty() { serde_json::Value::Null } else { remote.into() },
            "queue_depth": get(&self.queue_depth),
            "queue_capacity": self.queue_capacity,
            "queue_utilization": self.utilization(),
            "reconnect_attempts": get(&self.reconnect_attempts),
            "forwarded": get(&self.forwarded),
            "dropped": dropped,
            "gaps": get(&self.gaps),
            "resumes_from_now": get(&self.resumes_from_now),
            "slow_signals": get(&self.slow_signals),
            "gave_up": self.gave_up.load(Ordering::Relaxed),
            "last_error": if error.is_empty() { serde_json::Value::Null } else { error.into() },
        })
    }
}

/// One per-link metric: name, type, help, and its value for a link.
type Series = (
    &'static str,
    &'static str,
    &'static str,
    fn(&LinkStats) -> f64,
);

/// `shardcast_link_*` metrics, one sample per link (label `link`).
pub fn render(out: &mut String, links: &[std::sync::Arc<LinkStats>]) {
    if links.is_empty() {
        return;
    }
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let series: [Series; 8] = [
        (
            "link_connected",
            "gauge",
            "1 while the link's WebSocket to its upstream is open.",
            |l| f64::from(u8::from(l.connected.load(Ordering::Relaxed))),
        ),
        (
            "link_reconnect_attempts_total",
            "counter",
            "Failed connects and ended connections of the link (each retried after a backoff).",
            |l| l.reconnect_attempts.load(Ordering::Relaxed) as f64,
        ),
        (
            "link_queue_depth",
            "gauge",
            "Publications in the push link's queue.",
            |l| l.queue_depth.load(Ordering::Relaxed) as f64,
        ),
        (
            "link_queue_utilization",
            "gauge",
            "Push queue depth over queue_size (0..1).",
            LinkStats::utilization,
        ),
        (
            "link_forwarded_total",
            "counter",
            "Publications carried: republished here (pull) or acked upstream (push).",
            |l| l.forwarded.load(Ordering::Relaxed) as f64,
        ),
        (
            "link_gaps_total",
            "counter",
            "Pull resumes after which the upstream could not replay everything missed.",
            |l| l.gaps.load(Ordering::Relaxed) as f64,
        ),
        (
            "link_resumes_from_now_total",
            "counter",
            "Pull resubscriptions after a cut with no position to resume from (a wildcard pattern, or no history upstream): what was published meanwhile was not brought over.",
            |l| l.resumes_from_now.load(Ordering::Relaxed) as f64,
        ),
        (
            "link_slow_signals_total",
            "counter",
            "SemStreams slow signals received: the upstream's queue for the link past 80%.",
            |l| l.slow_signals.load(Ordering::Relaxed) as f64,
        ),
    ];
    for (name, kind, help, value) in series {
        let _ = writeln!(
            out,
            "# HELP shardcast_{name} {help}\n# TYPE shardcast_{name} {kind}"
        );
        for l in links {
            let _ = writeln!(
                out,
                "shardcast_{name}{{link=\"{}\",mode=\"{}\"}} {}",
                l.name,
                l.mode,
                value(l)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP shardcast_link_dropped_total Publications a link did not carry, by reason ({}).\n# TYPE shardcast_link_dropped_total counter",
        Dropped::LABELS.join(", ")
    );
    for l in links {
        for (reason, n) in Dropped::LABELS.iter().zip(&l.dropped) {
            let _ = writeln!(
                out,
                "shardcast_link_dropped_total{{link=\"{}\",reason=\"{reason}\"}} {}",
                l.name,
                get(n)
            );
        }
    }
}

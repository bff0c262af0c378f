//! `$sys/stats`: the broker's own figures, published once a second on a topic any client
//! may subscribe to (the dashboard at `GET /` lives on it). The same object answers
//! `GET /api/stats`.
//!
//! One task on shard 0 ticks every second: it turns the counters' growth into rates
//! (kept in [`Rates`] for `/api/stats` and `/metrics`), and when some shard has a
//! subscriber on `$sys/stats` it renders the stats once and routes them like any
//! publication. Its own frames are left out of the next delivery rate, and `$sys/stats`
//! is not counted as a channel. The `$` topic is out of reach of `#` and `+` at the first level
//! (`topic::is_broker_topic`), and clients cannot publish to it. Ticks are not counted as
//! published messages; their deliveries are counted as deliveries.

use crate::api::stats;
use crate::broker::Broker;
use crate::publication::{Kind, Publication};
use crate::router::MatchCache;
use crate::shard::stats::new_histogram;
use crate::shard::Shard;
use bytes::Bytes;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The topic.
pub const TOPIC: &str = "$sys/stats";
/// `type` of the gows rendering.
pub const GOWS_TYPE: &str = "stats";
/// How often the stats are published and the rates refreshed.
pub const PERIOD: Duration = Duration::from_secs(1);

/// Messages per second over the last tick.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    /// Client messages received.
    pub received_per_s: f64,
    /// Publications accepted (API and clients).
    pub published_per_s: f64,
    /// Frames queued to subscribers.
    pub delivered_per_s: f64,
    /// Delivery latency over the last [`WINDOW`] (not since start).
    pub latency: crate::metrics::Latency,
}

/// How far back the dashboard / `/api/stats` latency looks.
pub const WINDOW: Duration = Duration::from_secs(60);
/// The window is this many rotating histograms, each covering `WINDOW / SLOTS`.
const SLOTS: usize = 6;

/// Delivery latency over a sliding window: each tick adds what the shards' (cumulative)
/// histograms gained since the last tick to the current slot; every `WINDOW / SLOTS`
/// the oldest slot is cleared and becomes current. The window is the sum of the slots:
/// the last 50 to 60 seconds.
struct LatencyWindow {
    slots: Vec<hdrhistogram::Histogram<u64>>,
    current: usize,
    ticks: u64,
    /// The shards' merged histogram at the last tick.
    last_total: hdrhistogram::Histogram<u64>,
}

impl LatencyWindow {
    fn new() -> Self {
        LatencyWindow {
            slots: (0..SLOTS).map(|_| new_histogram()).collect(),
            current: 0,
            ticks: 0,
            last_total: new_histogram(),
        }
    }

    /// Takes in the merged cumulative histogram `total` at a tick; returns the window.
    fn tick(&mut self, total: hdrhistogram::Histogram<u64>) -> crate::metrics::Latency {
        let per_slot = (WINDOW.as_secs() / SLOTS as u64 / PERIOD.as_secs().max(1)).max(1);
        self.ticks += 1;
        if self.ticks.is_multiple_of(per_slot) {
            self.current = (self.current + 1) % SLOTS;
            if let Some(slot) = self.slots.get_mut(self.current) {
                slot.reset();
            }
        }
        let mut gained = total.clone();
        if gained.subtract(&self.last_total).is_err() {
            gained = total.clone(); // counts went down: a shard reset; start over
        }
        if let Some(slot) = self.slots.get_mut(self.current) {
            let _ = slot.add(&gained);
        }
        self.last_total = total;
        let mut window = new_histogram();
        for slot in &self.slots {
            let _ = window.add(slot);
        }
        crate::metrics::Latency {
            p50: window.value_at_quantile(0.5),
            p99: window.value_at_quantile(0.99),
            p999: window.value_at_quantile(0.999),
            max: window.max(),
            count: window.len(),
        }
    }
}

fn merged_latency(broker: &Broker) -> hdrhistogram::Histogram<u64> {
    let mut merged = new_histogram();
    for s in &broker.shard_stats {
        let _ = merged.add(&*s.latency_us.lock());
    }
    merged
}

/// Counter values at one tick, to difference with the next.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    received: u64,
    published: u64,
    delivered: u64,
}

impl Sample {
    fn take(broker: &Broker) -> Sample {
        Sample {
            at: Instant::now(),
            received: broker.sum(|s| &s.messages_in),
            published: broker.sum(|s| &s.published),
            delivered: broker.sum(|s| &s.delivered),
        }
    }

    /// Rates from `earlier` to this sample, not counting `own` deliveries (the broker's
    /// own `$sys/stats` frames) made in between.
    fn rates_since(&self, earlier: &Sample, own: u64) -> Rates {
        let secs = self.at.duration_since(earlier.at).as_secs_f64();
        if secs <= 0.0 {
            return Rates::default();
        }
        let per_s = |now: u64, then: u64| now.saturating_sub(then) as f64 / secs;
        Rates {
            received_per_s: per_s(self.received, earlier.received),
            published_per_s: per_s(self.published, earlier.published),
            delivered_per_s: per_s(self.delivered.saturating_sub(own), earlier.delivered),
            latency: crate::metrics::Latency::default(),
        }
    }
}

/// Runs on shard 0 until the shard begins shutting down (noticed within a period).
pub async fn run(shard: Rc<Shard>) {
    let broker = shard.broker.clone();
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut cache = MatchCache::default();
    tick.tick().await; // the first tick is immediate: rates start a period from now
    let mut last = Sample::take(&broker);
    // Frames of the last `$sys/stats` tick: not traffic, left out of the next rates.
    let mut own = 0u64;
    let mut window = LatencyWindow::new();
    loop {
        tick.tick().await;
        // Checked per tick, not through `accept_stopped`: that notification wakes one
        // waiter, and it belongs to the accept loop.
        if shard.is_draining() {
            return;
        }
        let now = Sample::take(&broker);
        let mut rates = now.rates_since(&last, own);
        rates.latency = window.tick(merged_latency(&broker));
        *broker.rates.lock() = rates;
        last = now;
        own = 0;
        if broker.router.targets(TOPIC, &mut cache) == 0 {
            continue; // nobody listening: do not gather channel lists for nothing
        }
        let Ok(body) = stats::snapshot(&broker, stats::Readers::Subscribers).await else {
            continue; // a shard did not answer in time; next tick
        };
        let data = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        let publication = Arc::new(Publication::new(
            TOPIC.into(),
            Kind::Channel {
                gows_type: GOWS_TYPE.into(),
            },
            data,
            None,
        ));
        broker.router.publish(&publication, &mut cache);
        own = stats::reach(&broker, TOPIC).await.map_or(0, |n| n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_growth_over_elapsed_time() {
        let t0 = Instant::now();
        let a = Sample {
            at: t0,
            received: 10,
            published: 100,
            delivered: 1000,
        };
        let b = Sample {
            at: t0 + Duration::from_millis(500),
            received: 20,
            published: 150,
            delivered: 1000,
        };
        let r = b.rates_since(&a, 0);
        assert_eq!(
            r,
            Rates {
                received_per_s: 20.0,
                published_per_s: 100.0,
                delivered_per_s: 0.0,
                latency: Default::default(),
            }
        );
        assert_eq!(a.rates_since(&a, 0), Rates::default(), "no time, no rate");
        let c = Sample {
            delivered: 1003,
            ..b
        };
        assert_eq!(
            c.rates_since(&a, 3).delivered_per_s,
            0.0,
            "own frames left out"
        );
    }

    #[test]
    fn latency_is_over_the_last_minute_only() {
        let mut w = LatencyWindow::new();
        let mut total = new_histogram();
        let _ = total.record_n(50_000, 10); // a slow burst: 50 ms
        assert_eq!(w.tick(total.clone()).count, 10);
        // A minute of fast deliveries later, the burst has left the window.
        for _ in 0..60 {
            let _ = total.record_n(100, 5);
            let l = w.tick(total.clone());
            assert!(l.count <= 5 * 60 + 10, "{l:?}");
        }
        let l = w.tick(total.clone());
        assert!(l.count >= 5 * 50 && l.count <= 5 * 60, "{l:?}");
        assert!(
            l.max < 1_000,
            "the 50 ms burst is older than the window: {l:?}"
        );
        assert!(l.p99 <= 101, "{l:?}");
    }
}

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
    loop {
        tick.tick().await;
        // Checked per tick, not through `accept_stopped`: that notification wakes one
        // waiter, and it belongs to the accept loop.
        if shard.is_draining() {
            return;
        }
        let now = Sample::take(&broker);
        *broker.rates.lock() = now.rates_since(&last, own);
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
                delivered_per_s: 0.0
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
}

//! What a run does: the scenarios, their defaults, and the settings every run shares.

use crate::wire::{Dialect, Target};
use anyhow::{bail, Result};
use std::time::Duration;

/// The scenarios. Each is a preset of the same engine (subscribers, publishers, topics,
/// rate) plus, for some, one extra behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// S subscribers on T topics, P publishers at R publishes/s in all.
    Fanout,
    /// Many topics with a few subscribers each.
    ManyTopics,
    /// Many publishers, few subscribers.
    Fanin,
    /// N idle subscribed connections: setup rate and broker RSS per connection.
    Idle,
    /// Connections opening and closing at a steady rate while publishing.
    Churn,
    /// Fan-out with some subscribers that never read.
    Slow,
    /// Publishers on one node, subscribers on another (`--pub-url`).
    Cluster,
}

/// Every setting of one run, after scenario defaults and flags are combined.
#[derive(Clone, Debug)]
pub struct Plan {
    pub scenario: Scenario,
    pub label: String,
    pub sub_target: Target,
    pub pub_target: Target,
    pub dialect: Dialect,
    pub pub_dialect: Dialect,
    pub subs: usize,
    pub topics: usize,
    pub pubs: usize,
    /// Publishes per second over all publishers.
    pub rate: f64,
    /// Size of each message's data object in bytes.
    pub payload: usize,
    /// Subscribers that subscribe and then never read.
    pub slow: usize,
    /// Connections opened (and later closed) per second.
    pub churn: f64,
    pub churn_hold: Duration,
    pub warmup: Duration,
    pub duration: Duration,
    /// After publishing stops, how long stragglers may still arrive.
    pub drain: Duration,
    pub setup_timeout: Duration,
    pub threads: usize,
    pub connect_concurrency: usize,
    pub pid: Option<u32>,
    /// shardcast's HTTP address, to read its write counters from /api/stats.
    pub broker_stats: Option<std::net::SocketAddr>,
    pub topic_prefix: String,
}

/// The scenario presets: (subs, topics, pubs, rate, slow, churn).
pub struct Preset {
    pub subs: usize,
    pub topics: usize,
    pub pubs: usize,
    pub rate: f64,
    pub slow: usize,
    pub churn: f64,
}

impl Scenario {
    pub fn preset(self) -> Preset {
        let p = |subs, topics, pubs, rate, slow, churn| Preset {
            subs,
            topics,
            pubs,
            rate,
            slow,
            churn,
        };
        match self {
            Scenario::Fanout | Scenario::Cluster => p(1000, 1, 1, 1000.0, 0, 0.0),
            Scenario::ManyTopics => p(2000, 1000, 4, 20_000.0, 0, 0.0),
            Scenario::Fanin => p(10, 1, 500, 20_000.0, 0, 0.0),
            Scenario::Idle => p(1000, 1000, 0, 0.0, 0, 0.0),
            Scenario::Churn => p(500, 1, 1, 200.0, 0, 200.0),
            Scenario::Slow => p(500, 1, 1, 1000.0, 1, 0.0),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Fanout => "fanout",
            Scenario::ManyTopics => "many-topics",
            Scenario::Fanin => "fanin",
            Scenario::Idle => "idle",
            Scenario::Churn => "churn",
            Scenario::Slow => "slow",
            Scenario::Cluster => "cluster",
        }
    }
}

/// Hard bounds: a run never opens more connections or lasts longer than this.
pub const MAX_CONNECTIONS: usize = 100_000;
pub const MAX_RUN: Duration = Duration::from_secs(600);

impl Plan {
    /// Checks the plan is runnable and bounded.
    pub fn check(&self, fd_limit: u64) -> Result<()> {
        if self.subs == 0 && self.slow == 0 {
            bail!("no subscribers: give --subs");
        }
        if self.rate > 0.0 && self.pubs == 0 {
            bail!("--rate needs at least one publisher (--pubs)");
        }
        if self.topics == 0 {
            bail!("--topics must be at least 1");
        }
        if self.threads == 0 || self.connect_concurrency == 0 {
            bail!("--threads and --connect-concurrency must be at least 1");
        }
        if !(self.rate.is_finite()
            && self.rate >= 0.0
            && self.churn.is_finite()
            && self.churn >= 0.0)
        {
            bail!("--rate and --churn must be finite and not negative");
        }
        let churn_open = (self.churn * self.churn_hold.as_secs_f64()).ceil() as usize + 16;
        let conns = self.subs + self.slow + self.pubs + churn_open;
        if conns > MAX_CONNECTIONS {
            bail!("{conns} connections is over the harness bound of {MAX_CONNECTIONS}");
        }
        if conns as u64 + 64 > fd_limit {
            bail!("{conns} connections need more open files than this process may have ({fd_limit}); raise the hard limit (ulimit -Hn)");
        }
        let total = self.setup_timeout + self.warmup + self.duration + self.drain;
        if total > MAX_RUN {
            bail!("setup timeout + warm-up + duration + drain is {total:?}, over the bound of {MAX_RUN:?}");
        }
        Ok(())
    }

    /// Runs with many connections spread their source addresses (see `conn::open`).
    pub fn spread_sources(&self) -> bool {
        self.subs + self.slow + self.pubs > 1_000
    }

    /// The topic a subscriber (by index) listens on.
    pub fn topic_of(&self, sub: usize) -> usize {
        sub % self.topics
    }

    pub fn topic_name(&self, topic: usize) -> String {
        format!("{}/{}", self.topic_prefix, topic)
    }

    /// Deliveries per second the publishers offer when every subscriber reads.
    pub fn offered_deliveries(&self) -> f64 {
        self.rate * self.subs as f64 / self.topics as f64
    }
}

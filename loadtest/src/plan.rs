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
    /// A steady stream to healthy subscribers through a clean window, then a window of
    /// the same length under attack (see `abuse`), then recovery.
    Abuse,
    /// History (SPEC §9): `--fill` publications delivered live to S subscribers of a
    /// history channel, then S late joiners replay all of them (see `replay`).
    Replay,
    /// Issue 19's ingest: P edges publish on the data channel with acks, each keeping
    /// `--window` publishes in flight, in `--pub-dialect` vws or semstreams; S vws
    /// subscribers of the channel check nothing acked is lost (see `ingest`).
    Ingest,
    /// Issue 19's `block`: one SemStreams edge subscribed to the data channel pushes as
    /// fast as its socket takes and reads at `--read-rate`; the broker's `on_full` decides
    /// what happens (see `backpressure`).
    Backpressure,
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
    /// The measured window; the abuse scenario has two of this length (clean, abuse).
    pub duration: Duration,
    /// After publishing stops, how long stragglers may still arrive.
    pub drain: Duration,
    /// Abuse scenario: the recovery after the abuse window, healthy traffic still
    /// flowing: the broker must have let go of the attackers' connections by its end,
    /// when its RSS is read.
    pub settle: Duration,
    /// Abuse scenario: seconds of every attack before the warm-up, so one-time costs
    /// (allocator pages, tables grown to peak connections) are paid before "before".
    pub prime: Duration,
    /// Abuse scenario: the attack kinds to run (empty: all of them).
    pub attacks: Vec<String>,
    /// Abuse scenario: the clean and abuse windows are cut into this many slices each
    /// and alternate (clean, abuse, clean, …); 1 = one clean window, then one abuse window.
    pub cycles: usize,
    /// Abuse scenario: how the healthy latency under abuse is judged.
    pub latency_rule: crate::abuse::soak::LatencyRule,
    pub setup_timeout: Duration,
    pub threads: usize,
    pub connect_concurrency: usize,
    pub pid: Option<u32>,
    /// shardcast's HTTP address, to read its write counters from /api/stats.
    pub broker_stats: Option<std::net::SocketAddr>,
    pub topic_prefix: String,
    /// Replay scenario: publications made (and retained) before the joiners subscribe;
    /// 0 = replay what the channel already holds.
    pub fill: u64,
    /// Ingest scenario: publishes each edge keeps in flight (sent, not yet answered).
    pub window: usize,
    /// Ingest and backpressure scenarios: the topic everything goes to, the broker's
    /// `semstreams.data_channel` (SemStreams data carries no topic).
    pub ingest_topic: String,
    /// Backpressure scenario: frames per second the edge reads from its socket.
    pub read_rate: f64,
}

/// The scenario presets: (subs, topics, pubs, rate, slow, churn) and the timing.
pub struct Preset {
    pub subs: usize,
    pub topics: usize,
    pub pubs: usize,
    pub rate: f64,
    pub slow: usize,
    pub churn: f64,
    pub timing: Timing,
}

/// Seconds of each phase, unless flags say otherwise.
#[derive(Clone, Copy)]
pub struct Timing {
    pub prime: f64,
    pub warmup: f64,
    pub duration: f64,
    pub drain: f64,
    pub settle: f64,
}

/// Every scenario but `abuse`: 2 s warm-up, a 5 s window, up to 5 s of drain.
const TIMING: Timing = Timing {
    prime: 0.0,
    warmup: 2.0,
    duration: 5.0,
    drain: 5.0,
    settle: 0.0,
};

/// `replay`: the live phase lasts `fill / rate`; the drain bounds each phase's wait for
/// deliveries (the live stragglers, then the whole replay).
const REPLAY_TIMING: Timing = Timing {
    prime: 0.0,
    warmup: 0.0,
    duration: 0.0,
    drain: 30.0,
    settle: 0.0,
};

/// `backpressure`: no warm-up (the first second is the one before the broker pushes
/// back), a 10 s window, and the drain bounds reading back what is still queued.
const BACKPRESSURE_TIMING: Timing = Timing {
    prime: 0.0,
    warmup: 0.0,
    duration: 10.0,
    drain: 10.0,
    settle: 0.0,
};

/// Publishes each ingest edge keeps in flight unless `--window` says otherwise.
pub const INGEST_WINDOW: usize = 32;
/// The SemStreams default data channel.
pub const DATA_CHANNEL: &str = "federated/data";
/// Frames per second the backpressure edge reads unless `--read-rate` says otherwise.
pub const READ_RATE: f64 = 2000.0;

/// Publications the replay scenario makes before its joiners subscribe.
pub const REPLAY_FILL: u64 = 10_000;

/// `abuse`: at most a minute after the setup: priming 2 s + its recovery (at most 3 + 1),
/// warm-up 2, clean and abuse windows of 18 each, recovery at most 14 (still publishing),
/// drain at most 2 (see [`Plan::abuse_time`]); about 45 s when the broker recovers at once.
const ABUSE_TIMING: Timing = Timing {
    prime: 2.0,
    warmup: 2.0,
    duration: 18.0,
    drain: 2.0,
    settle: 14.0,
};

impl Scenario {
    pub fn preset(self) -> Preset {
        let p = |subs, topics, pubs, rate, slow, churn| Preset {
            subs,
            topics,
            pubs,
            rate,
            slow,
            churn,
            timing: TIMING,
        };
        match self {
            Scenario::Fanout | Scenario::Cluster => p(1000, 1, 1, 1000.0, 0, 0.0),
            Scenario::ManyTopics => p(2000, 1000, 4, 20_000.0, 0, 0.0),
            Scenario::Fanin => p(10, 1, 500, 20_000.0, 0, 0.0),
            Scenario::Idle => p(1000, 1000, 0, 0.0, 0, 0.0),
            Scenario::Churn => p(500, 1, 1, 200.0, 0, 200.0),
            Scenario::Slow => p(500, 1, 1, 1000.0, 1, 0.0),
            // 20 readers per topic at 1000 publishes/s: 20,000 deliveries/s. Two
            // publishers keep each under a per-connection publish limit of 1000/s.
            Scenario::Abuse => Preset {
                timing: ABUSE_TIMING,
                ..p(200, 10, 2, 1000.0, 0, 0.0)
            },
            // 1000 live subscribers at 1000 publishes/s (the fanout-1m shape) for 10 s,
            // then 1000 joiners replaying the 10,000 publications.
            Scenario::Replay => Preset {
                timing: REPLAY_TIMING,
                ..p(1000, 1, 1, 1000.0, 0, 0.0)
            },
            // 100 edges as fast as their acks come back (rate 0 = no cap), one checker.
            Scenario::Ingest => p(1, 1, 100, 0.0, 0, 0.0),
            Scenario::Backpressure => Preset {
                timing: BACKPRESSURE_TIMING,
                ..p(1, 1, 1, 0.0, 0, 0.0)
            },
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
            Scenario::Abuse => "abuse",
            Scenario::Replay => "replay",
            Scenario::Ingest => "ingest",
            Scenario::Backpressure => "backpressure",
        }
    }
}

/// Hard bounds: a run never opens more connections or lasts longer than this.
pub const MAX_CONNECTIONS: usize = 100_000;
pub const MAX_RUN: Duration = Duration::from_secs(600);

impl Plan {
    /// Checks the plan is runnable and bounded.
    pub fn check(&self, fd_limit: u64) -> Result<()> {
        if self.subs == 0 && self.slow == 0 && !self.is_backpressure() {
            bail!("no subscribers: give --subs");
        }
        if self.is_edges() {
            if self.topics != 1 {
                bail!("the ingest and backpressure scenarios use one topic (--ingest-topic)");
            }
            if self.ingest_topic.is_empty() {
                bail!("--ingest-topic must not be empty");
            }
            if self.pubs == 0 {
                bail!("the ingest scenario needs edges: --pubs above 0");
            }
            if self.is_ingest() && self.window == 0 {
                bail!("--window must be at least 1");
            }
            if self.is_ingest() && self.pub_dialect == crate::wire::Dialect::Gows {
                bail!("the ingest scenario publishes with acks: --pub-dialect vws or semstreams");
            }
            if self.is_backpressure() {
                if self.pubs != 1 {
                    bail!("the backpressure scenario has one edge (--pubs 1)");
                }
                if !(self.read_rate.is_finite() && self.read_rate > 0.0) {
                    bail!("--read-rate must be a number of frames per second above 0");
                }
                if self.pub_target.is_wss() {
                    bail!("the backpressure edge needs a ws:// target (it writes without waiting)");
                }
            }
        }
        if self.rate > 0.0 && self.pubs == 0 && !self.is_replay() {
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
        let attackers = if self.is_abuse() {
            if self.pid.is_none() {
                bail!(
                    "the abuse scenario needs --pid: it checks the broker's RSS before and after"
                );
            }
            if self.rate == 0.0 {
                bail!("the abuse scenario needs healthy traffic: --rate above 0");
            }
            if self.cycles == 0 {
                bail!("--cycles must be at least 1");
            }
            let rule = &self.latency_rule;
            if !(rule.p99_floor_ms.is_finite() && rule.p99_floor_ms >= 0.0) {
                bail!("--p99-floor must be a number of milliseconds, 0 or more");
            }
            if !(rule.busy_host_ms.is_finite() && rule.busy_host_ms > 0.0) {
                bail!("--busy-host-ms must be a number of milliseconds per second above 0");
            }
            if !(rule.p99_ceiling_ms.is_finite() && rule.p99_ceiling_ms > 0.0) {
                bail!("--p99-ceiling must be a number of milliseconds above 0");
            }
            if let Some(k) = self
                .attacks
                .iter()
                .find(|k| !crate::abuse::kinds().any(|known| known == k.as_str()))
            {
                let known: Vec<_> = crate::abuse::kinds().collect();
                bail!(
                    "--attacks: no attack named {k:?} (known: {})",
                    known.join(", ")
                );
            }
            crate::abuse::MAX_OPEN
        } else {
            0
        };
        if self.is_replay() {
            if self.subs == 0 {
                bail!("the replay scenario needs joiners: --subs above 0");
            }
            if self.fill > 0 && !(self.rate > 0.0 && self.pubs == 1) {
                bail!("the replay scenario fills its channel from one publisher at --rate above 0 (or give --fill 0)");
            }
        }
        let conns = self.subs + self.listeners() + self.pubs + churn_open + attackers;
        if conns > MAX_CONNECTIONS {
            bail!("{conns} connections is over the harness bound of {MAX_CONNECTIONS}");
        }
        if conns as u64 + 64 > fd_limit {
            bail!("{conns} connections need more open files than this process may have ({fd_limit}); raise the hard limit (ulimit -Hn)");
        }
        let total =
            self.setup_timeout + self.warmup + self.measured() + self.drain + self.abuse_time();
        if total > MAX_RUN {
            bail!("setup timeout + warm-up + measured windows + drain + priming and recovery is {total:?}, over the bound of {MAX_RUN:?}");
        }
        Ok(())
    }

    pub fn is_abuse(&self) -> bool {
        self.scenario == Scenario::Abuse
    }

    pub fn is_replay(&self) -> bool {
        self.scenario == Scenario::Replay
    }

    pub fn is_ingest(&self) -> bool {
        self.scenario == Scenario::Ingest
    }

    pub fn is_backpressure(&self) -> bool {
        self.scenario == Scenario::Backpressure
    }

    /// The scenarios whose publishers are edges on the data channel, with acks.
    pub fn is_edges(&self) -> bool {
        self.is_ingest() || self.is_backpressure()
    }

    /// Whether the run has publishers (or churn) at all; edges publish uncapped at rate 0.
    pub fn publishes(&self) -> bool {
        self.rate > 0.0 || self.churn > 0.0 || self.is_edges()
    }

    /// Replay scenario: the live subscribers (one per joiner when there is a fill);
    /// every other scenario: the stalled subscribers.
    pub fn listeners(&self) -> usize {
        match self.scenario {
            Scenario::Replay if self.fill > 0 => self.subs,
            Scenario::Replay => 0,
            _ => self.slow,
        }
    }

    /// The whole measured window: the abuse scenario's clean and abuse windows together;
    /// the replay scenario's fill at its rate.
    pub fn measured(&self) -> Duration {
        if self.is_abuse() {
            self.duration * 2
        } else if self.is_replay() {
            if self.fill == 0 || self.rate <= 0.0 {
                return Duration::ZERO;
            }
            Duration::try_from_secs_f64(self.fill as f64 / self.rate).unwrap_or(MAX_RUN)
        } else {
            self.duration
        }
    }

    /// Abuse scenario: the length of each clean and each abuse slice of the window.
    pub fn slice(&self) -> Duration {
        if self.is_abuse() {
            self.duration / self.cycles.max(1) as u32
        } else {
            Duration::ZERO
        }
    }

    /// How long publishing may go on after the measured window: in the abuse scenario,
    /// the broker recovers under the same healthy traffic it had before the abuse, and
    /// the publishers are stopped when the recovery ends (it starts a moment after the
    /// window, hence the margin).
    pub fn tail(&self) -> Duration {
        if self.is_abuse() {
            self.settle + Duration::from_secs(2)
        } else {
            Duration::ZERO
        }
    }

    /// Abuse scenario: the time outside the windows, at the most: priming, and two
    /// recoveries (each bounded by `settle`, then 1 s for the allocator).
    pub fn abuse_time(&self) -> Duration {
        if !self.is_abuse() {
            return Duration::ZERO;
        }
        // The recovery after the abuse lasts up to `settle` (with traffic); the one after
        // priming up to its own bound, then the allocator gets its second.
        let priming = if self.prime.is_zero() {
            Duration::ZERO
        } else {
            self.prime + crate::abuse::soak::PRIME_SETTLE + crate::abuse::soak::RSS_SETTLE
        };
        priming + self.tail()
    }

    /// The longest a run may take, whatever the broker does: every phase has its own
    /// limit, and a watchdog stops anything that still hangs past this.
    pub fn bound(&self) -> Duration {
        self.setup_timeout
            + self.warmup
            + self.measured()
            + self.drain * 3
            + self.abuse_time()
            + Duration::from_secs(30)
    }

    /// Runs with many connections spread their source addresses (see `conn::open`).
    pub fn spread_sources(&self) -> bool {
        self.subs + self.listeners() + self.pubs > 1_000
    }

    /// The topic a subscriber (by index) listens on.
    pub fn topic_of(&self, sub: usize) -> usize {
        sub % self.topics
    }

    pub fn topic_name(&self, topic: usize) -> String {
        if self.is_edges() {
            return self.ingest_topic.clone();
        }
        format!("{}/{}", self.topic_prefix, topic)
    }

    /// Deliveries per second the publishers offer when every subscriber reads.
    pub fn offered_deliveries(&self) -> f64 {
        self.rate * self.subs as f64 / self.topics as f64
    }
}

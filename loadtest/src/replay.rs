//! The `replay` scenario: what history (SPEC §9) costs a late joiner against live
//! delivery, in one run on one broker.
//!
//! 1. **Setup.** S live subscribers subscribe plainly to one history channel
//!    (`PREFIX/0`), and S joiners connect and upgrade but do not subscribe yet.
//! 2. **Live phase** (skipped with `--fill 0`). One publisher sends `--fill` stamped
//!    publications at `--rate`; the live subscribers read them, so the broker delivers
//!    S x fill frames live and retains every publication. Measured from the first
//!    publish to the last arrival.
//! 3. **Replay phase.** All joiners send `{"k":"s","t":C,"i":1,"o":0}` (gows: `since`
//!    offset 0) at once, read the position ack (TOP, recovered) and then events until
//!    offset TOP: S x TOP replayed frames, each checked to come once and in order.
//!    Measured from the subscribes to the last joiner's last event.
//!
//! Each phase reports deliveries per broker CPU-second (`/proc/PID/stat`), frames per
//! write and the history replay counter (shardcast's `/api/stats`, `--broker-stats`),
//! so the two can be compared: same broker, same channel, same frames, same number of
//! deliveries. The channel must keep at least `--fill` publications (a `[[history]]`
//! rule with `size` >= fill, see loadtest/history.toml).

use crate::brokerstats;
use crate::conn::{self, Conn, ReadEnd};
use crate::plan::Plan;
use crate::plot::Series;
use crate::procfs::{self, Proc};
use crate::progress::Progress;
use crate::report::{grouped, Latency};
use crate::tally::{new_histogram, now_ns, Live, SeqTracker, Tally, Times};
use crate::wire::{self, Dialect, Stamp};
use anyhow::{bail, Result};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};

/// Pause between phases, so one's stragglers (and the allocator) are done.
const SETTLE: Duration = Duration::from_millis(500);
const POLL: Duration = Duration::from_millis(10);
/// Publisher pacing tick and lead-in, as in the other scenarios.
const TICK: Duration = Duration::from_micros(500);
const LEAD_IN: Duration = Duration::from_millis(50);

/// Where the run is; the main thread moves it forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Setup,
    Replay,
    Stop,
}

/// Counters the main thread watches.
#[derive(Default)]
struct Shared {
    /// ready / failed connections, live deliveries (received), publishes, the window.
    live: Live,
    /// Replayed events received by the joiners.
    replayed: AtomicU64,
    /// Joiners that have received everything up to their TOP.
    done: AtomicUsize,
    /// Joiners that gave up (refused, closed, error).
    gave_up: AtomicUsize,
    /// Latest live arrival and latest joiner completion (`now_ns`).
    last_live_ns: AtomicU64,
    last_done_ns: AtomicU64,
    /// Connections ready of each kind.
    listeners_ready: AtomicUsize,
    joiners_ready: AtomicUsize,
}

/// What the joiners of one thread counted.
struct Joined {
    /// Replayed events received once and in order.
    received: u64,
    /// Offsets skipped (an offset above the next one expected).
    gaps: u64,
    /// Offsets at or below one already received.
    duplicates: u64,
    /// Acks with `r: false`.
    not_recovered: u64,
    /// Sum, least and most of the TOPs the acks announced.
    tops: (u64, u64, u64),
    acks: u64,
    /// Subscribe to last replayed event, per joiner.
    completion: Histogram<u64>,
    /// Subscribe to first replayed event, per joiner.
    first: Histogram<u64>,
}

impl Default for Joined {
    fn default() -> Self {
        Joined {
            received: 0,
            gaps: 0,
            duplicates: 0,
            not_recovered: 0,
            tops: (0, u64::MAX, 0),
            acks: 0,
            completion: new_histogram(),
            first: new_histogram(),
        }
    }
}

impl Joined {
    fn merge(&mut self, o: Joined, tally: &mut Tally) {
        self.received += o.received;
        self.gaps += o.gaps;
        self.duplicates += o.duplicates;
        self.not_recovered += o.not_recovered;
        self.tops = (
            self.tops.0 + o.tops.0,
            self.tops.1.min(o.tops.1),
            self.tops.2.max(o.tops.2),
        );
        self.acks += o.acks;
        if self.completion.add(&o.completion).is_err() || self.first.add(&o.first).is_err() {
            tally.error("replay histograms could not be merged");
        }
    }
}

/// One thread's counts: the live subscribers' in `tally` (with every error), the
/// joiners' in `joined`.
#[derive(Default)]
struct Counts {
    tally: Tally,
    joined: Joined,
}

/// One phase's figures.
#[derive(Serialize, Debug, Default)]
pub struct Phase {
    /// Distinct frames received (live: stamped deliveries; replay: replayed events).
    pub deliveries: u64,
    /// Owed: live, subscribers x published; replay, the TOPs announced summed over joiners.
    pub expected: u64,
    pub lost: u64,
    pub gaps: u64,
    pub duplicates: u64,
    /// First publish (live) or the subscribes (replay) to the last delivery.
    pub wall_s: f64,
    pub deliveries_per_s: f64,
    /// Live: send to arrival of every delivery. Replay: subscribe to the last replayed
    /// event, one value per joiner.
    pub latency_ms: Latency,
    /// Replay: subscribe to the first replayed event, per joiner.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_ms: Option<Latency>,
    /// Broker utime + stime over the phase.
    pub broker_cpu_s: Option<f64>,
    pub deliveries_per_cpu_s: Option<f64>,
    /// Broker CPU microseconds per delivery.
    pub broker_us_per_delivery: Option<f64>,
    /// Socket writes and frames written in the phase, from /api/stats.
    pub writes: Option<u64>,
    pub frames_written: Option<u64>,
    pub frames_per_write: Option<f64>,
    /// shardcast's history replay counter over the phase (publications sent from history).
    pub history_replayed: Option<u64>,
    /// The harness's own CPU over the phase.
    pub harness_cpu_s: f64,
    /// Replay: acks that said `recovered: false`.
    pub not_recovered: u64,
}

#[derive(Serialize, Debug)]
pub struct ReplayConnections {
    pub ready: usize,
    pub failed: usize,
    pub setup_s: f64,
}

#[derive(Serialize, Debug, Default)]
pub struct Rss {
    pub before_kib: Option<u64>,
    pub after_setup_kib: Option<u64>,
    pub after_live_kib: Option<u64>,
    pub after_replay_kib: Option<u64>,
}

/// The result of a replay run.
#[derive(Serialize, Debug)]
pub struct ReplayReport {
    pub label: String,
    pub scenario: String,
    pub url: String,
    pub dialect: Dialect,
    pub channel: String,
    /// Joiners (and live subscribers, when there is a fill).
    pub subs: usize,
    pub fill: u64,
    pub rate: f64,
    pub payload: usize,
    pub threads: usize,
    pub connections: ReplayConnections,
    pub published: u64,
    pub live: Option<Phase>,
    pub replay: Phase,
    /// Replay deliveries per broker CPU-second / live deliveries per broker CPU-second.
    pub replay_vs_live_per_cpu: Option<f64>,
    pub broker_rss: Rss,
    /// The live phase's latency curve (for `plot`).
    pub latency_curve: Vec<(f64, f64)>,
    pub errors: BTreeMap<String, u64>,
    pub closes: BTreeMap<String, u64>,
}

/// Broker and harness figures at one instant.
#[derive(Clone, Copy, Default)]
struct Sample {
    cpu: Option<f64>,
    rss: Option<u64>,
    writes: Option<brokerstats::Writes>,
    replayed: Option<u64>,
    own_cpu: f64,
}

fn sample(plan: &Plan) -> Sample {
    let broker = plan.pid.map(Proc::Pid);
    Sample {
        cpu: broker.and_then(Proc::cpu_seconds),
        rss: broker.and_then(Proc::rss_kib),
        writes: plan.broker_stats.and_then(brokerstats::fetch),
        replayed: plan.broker_stats.and_then(brokerstats::history_replayed),
        own_cpu: Proc::Slf.cpu_seconds().unwrap_or(0.0),
    }
}

impl Phase {
    /// A phase of `deliveries` out of `expected` over `wall_s`, with the broker's and
    /// the harness's figures between samples `a` and `b`.
    fn new(deliveries: u64, expected: u64, wall_s: f64, a: &Sample, b: &Sample) -> Phase {
        let cpu = a.cpu.zip(b.cpu).map(|(a, b)| b - a);
        let (writes, frames_written) = match (a.writes, b.writes) {
            (Some(x), Some(y)) => (
                y.writes.checked_sub(x.writes),
                y.frames.checked_sub(x.frames),
            ),
            _ => (None, None),
        };
        Phase {
            deliveries,
            expected,
            lost: expected.saturating_sub(deliveries),
            wall_s,
            deliveries_per_s: deliveries as f64 / wall_s.max(1e-9),
            broker_cpu_s: cpu,
            deliveries_per_cpu_s: cpu.filter(|&c| c > 0.0).map(|c| deliveries as f64 / c),
            broker_us_per_delivery: cpu
                .filter(|_| deliveries > 0)
                .map(|c| c * 1e6 / deliveries as f64),
            writes,
            frames_written,
            frames_per_write: brokerstats::frames_per_write(a.writes, b.writes),
            history_replayed: a.replayed.zip(b.replayed).map(|(a, b)| b.saturating_sub(a)),
            harness_cpu_s: b.own_cpu - a.own_cpu,
            ..Phase::default()
        }
    }
}

/// The live phase as measured, before the counts are merged.
struct LiveRun {
    start: u64,
    expected: u64,
    a: Sample,
    b: Sample,
}

/// The replay phase as measured, before the counts are merged.
struct ReplayRun {
    wall_s: f64,
    c: Sample,
    d: Sample,
}

pub fn run(plan: Plan, progress: &Progress) -> Result<ReplayReport> {
    let fd_limit = procfs::raise_fd_limit();
    plan.check(fd_limit)?;
    if let Some(pid) = plan.pid {
        if !Proc::Pid(pid).alive() {
            bail!("--pid {pid}: no such process");
        }
    }
    let plan = Arc::new(plan);
    let shared = Arc::new(Shared::default());
    let joiners = plan.subs;
    let listeners = plan.listeners();
    let wanted = joiners + listeners;
    let mut rss = Rss {
        before_kib: plan.pid.and_then(|p| Proc::Pid(p).rss_kib()),
        ..Rss::default()
    };
    let mut problems = Vec::new();

    // Setup: live subscribers subscribe, joiners only connect.
    let (stage_tx, stage_rx) = watch::channel(Stage::Setup);
    let setup_start = now_ns();
    let threads: Vec<_> = (0..plan.threads)
        .map(|t| {
            let (plan, shared, stage) = (plan.clone(), shared.clone(), stage_rx.clone());
            thread::spawn(move || thread_main(plan, shared, stage, t))
        })
        .collect();
    loop {
        let live = &shared.live;
        let done = live.ready.load(Ordering::Relaxed) + live.failed.load(Ordering::Relaxed);
        if done >= wanted {
            break;
        }
        if now_ns() - setup_start > plan.setup_timeout.as_nanos() as u64 {
            problems.push(format!(
                "setup timed out: {done} of {wanted} connections done"
            ));
            break;
        }
        progress.show("connecting", live, wanted);
        thread::sleep(POLL * 5);
    }
    let setup_s = shared
        .live
        .last_ready_ns
        .load(Ordering::Relaxed)
        .saturating_sub(setup_start) as f64
        / 1e9;
    thread::sleep(SETTLE);
    rss.after_setup_kib = plan.pid.and_then(|p| Proc::Pid(p).rss_kib());

    // Live phase: the fill, delivered to the live subscribers.
    let mut published = (0, Tally::default());
    let mut live_run = None;
    if plan.fill > 0 && problems.is_empty() {
        let publisher = {
            let (plan, shared) = (plan.clone(), shared.clone());
            thread::spawn(move || publisher_main(&plan, &shared))
        };
        while shared.live.window.get().0 == u64::MAX && !publisher.is_finished() {
            thread::sleep(Duration::from_millis(1));
        }
        let start = shared.live.window.get().0;
        let a = sample(&plan);
        while !publisher.is_finished() {
            progress.show("live", &shared.live, wanted);
            thread::sleep(POLL * 5);
        }
        published = match publisher.join() {
            Ok(p) => p,
            Err(_) => bail!("the publisher thread panicked"),
        };
        let ready_listeners = shared.listeners_ready.load(Ordering::Relaxed) as u64;
        let expected = published.0 * ready_listeners;
        let drain_end = now_ns() + plan.drain.as_nanos() as u64;
        while shared.live.received.load(Ordering::Relaxed) < expected && now_ns() < drain_end {
            progress.show("draining", &shared.live, wanted);
            thread::sleep(POLL);
        }
        let b = sample(&plan);
        rss.after_live_kib = b.rss;
        live_run = Some(LiveRun {
            start,
            expected,
            a,
            b,
        });
        thread::sleep(SETTLE);
    }

    // Replay phase: every joiner subscribes from offset 0 at once.
    let mut replay_run = None;
    if problems.is_empty() {
        let c = sample(&plan);
        let go = now_ns();
        let _ = stage_tx.send(Stage::Replay);
        let deadline = go + plan.drain.as_nanos() as u64;
        let joined = shared.joiners_ready.load(Ordering::Relaxed);
        let settled =
            || shared.done.load(Ordering::Relaxed) + shared.gave_up.load(Ordering::Relaxed);
        while settled() < joined && now_ns() < deadline {
            // The progress line shows the replayed events as "received".
            let live = &shared.live;
            live.received
                .store(shared.replayed.load(Ordering::Relaxed), Ordering::Relaxed);
            progress.show("replaying", live, wanted);
            thread::sleep(POLL);
        }
        let d = sample(&plan);
        if settled() < joined {
            problems.push(format!(
                "replay not finished within --drain {:?}: {} of {joined} joiners done",
                plan.drain,
                shared.done.load(Ordering::Relaxed)
            ));
        }
        let last = shared.last_done_ns.load(Ordering::Relaxed).max(go);
        rss.after_replay_kib = d.rss;
        replay_run = Some(ReplayRun {
            wall_s: (last - go) as f64 / 1e9,
            c,
            d,
        });
    }
    let _ = stage_tx.send(Stage::Stop);
    let mut tally = Tally::default();
    let mut joined = Joined::default();
    for t in threads {
        match t.join() {
            Ok(counts) => {
                tally.merge(counts.tally);
                joined.merge(counts.joined, &mut tally);
            }
            Err(_) => tally.error("a connection thread panicked"),
        }
    }
    progress.finish();
    let (published, publisher_tally) = published;
    tally.merge(publisher_tally);
    for p in problems {
        tally.error(p);
    }

    let live = live_run.map(|l| {
        let last = shared.last_live_ns.load(Ordering::Relaxed).max(l.start);
        let wall_s = (last - l.start) as f64 / 1e9;
        Phase {
            gaps: tally.gaps,
            duplicates: tally.duplicates,
            latency_ms: Latency::from_histogram(&tally.latency),
            ..Phase::new(tally.received, l.expected, wall_s, &l.a, &l.b)
        }
    });
    // Every joiner is owed what its ack announced; one that never got an ack is owed
    // what the others were told (or the fill).
    let per_joiner = if joined.tops.2 > 0 {
        joined.tops.2
    } else {
        published
    };
    let unacked = joiners.saturating_sub(joined.acks as usize) as u64;
    let expected = joined.tops.0 + unacked * per_joiner;
    let replay = match replay_run {
        Some(r) => Phase::new(joined.received, expected, r.wall_s, &r.c, &r.d),
        None => Phase {
            expected,
            lost: expected,
            ..Phase::default()
        },
    };
    let replay = Phase {
        gaps: joined.gaps,
        duplicates: joined.duplicates,
        not_recovered: joined.not_recovered,
        latency_ms: Latency::from_histogram(&joined.completion),
        first_ms: Some(Latency::from_histogram(&joined.first)),
        ..replay
    };
    let ratio = live
        .as_ref()
        .and_then(|l| l.deliveries_per_cpu_s)
        .zip(replay.deliveries_per_cpu_s)
        .map(|(l, r)| r / l);
    Ok(ReplayReport {
        label: plan.label.clone(),
        scenario: plan.scenario.name().to_string(),
        url: plan.sub_target.url.clone(),
        dialect: plan.dialect,
        channel: plan.topic_name(0),
        subs: joiners,
        fill: plan.fill,
        rate: plan.rate,
        payload: plan.payload,
        threads: plan.threads,
        connections: ReplayConnections {
            ready: shared.live.ready.load(Ordering::Relaxed),
            failed: shared.live.failed.load(Ordering::Relaxed),
            setup_s,
        },
        published,
        latency_curve: Latency::curve(&tally.latency),
        live,
        replay,
        replay_vs_live_per_cpu: ratio,
        broker_rss: rss,
        errors: tally.errors,
        closes: tally.closes,
    })
}

/// Runs connections `thread, thread + threads, …`: the live subscribers first (indices
/// below `listeners`), then the joiners.
fn thread_main(
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    stage: watch::Receiver<Stage>,
    t: usize,
) -> Counts {
    let counts = Rc::new(RefCell::new(Counts::default()));
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let mut c = Counts::default();
            c.tally.error(format!("runtime: {e}"));
            return c;
        }
    };
    let listeners = plan.listeners();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let gate = Rc::new(Semaphore::new(plan.connect_concurrency));
        let mut tasks = Vec::new();
        for index in (t..listeners + plan.subs).step_by(plan.threads) {
            let ctx = Ctx {
                plan: plan.clone(),
                shared: shared.clone(),
                stage: stage.clone(),
                counts: counts.clone(),
                gate: gate.clone(),
                index,
            };
            tasks.push(if index < listeners {
                tokio::task::spawn_local(listener(ctx))
            } else {
                tokio::task::spawn_local(joiner(ctx))
            });
        }
        for task in tasks {
            if task.await.is_err() {
                counts.borrow_mut().tally.error("connection task failed");
            }
        }
    });
    drop(local);
    Rc::try_unwrap(counts)
        .map(RefCell::into_inner)
        .unwrap_or_default()
}

/// What every connection task gets.
struct Ctx {
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    stage: watch::Receiver<Stage>,
    counts: Rc<RefCell<Counts>>,
    gate: Rc<Semaphore>,
    index: usize,
}

impl Ctx {
    /// Opens the connection (and subscribes plainly when `subscribe`), counting it ready
    /// or failed; `None` when it failed or the run stopped first.
    async fn open(&mut self, subscribe: bool) -> Option<Conn> {
        let (plan, gate, index) = (self.plan.clone(), self.gate.clone(), self.index);
        let connected = async move {
            let _permit = gate.acquire().await;
            let mut c =
                conn::open(&plan.sub_target, plan.dialect, index, plan.spread_sources()).await?;
            if subscribe {
                c.subscribe(plan.dialect, &[plan.topic_name(0)]).await?;
            }
            anyhow::Ok(c)
        };
        let c = tokio::select! {
            c = connected => c,
            _ = self.stage.wait_for(|s| *s >= Stage::Stop) => return None,
        };
        let shared = &self.shared;
        match c {
            Ok(c) => {
                let kind = if subscribe {
                    &shared.listeners_ready
                } else {
                    &shared.joiners_ready
                };
                kind.fetch_add(1, Ordering::Relaxed);
                shared.live.ready.fetch_add(1, Ordering::Relaxed);
                shared
                    .live
                    .last_ready_ns
                    .fetch_max(now_ns(), Ordering::Relaxed);
                Some(c)
            }
            Err(e) => {
                let role = if subscribe {
                    "live subscriber"
                } else {
                    "joiner"
                };
                self.counts
                    .borrow_mut()
                    .tally
                    .error(format!("{role} setup: {e:#}"));
                shared.live.failed.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Reads (answering pings, ignoring the rest) until the stage reaches `until`;
    /// false when the connection ended first.
    async fn idle_until(&mut self, c: &mut Conn, until: Stage, role: &str) -> bool {
        loop {
            let end = tokio::select! {
                r = c.read_round(|_| {}) => r,
                _ = self.stage.wait_for(|s| *s >= until) => return true,
            };
            if !self.keep_going(end, role) {
                return false;
            }
        }
    }

    /// Records how a read round ended; false when the connection is over.
    fn keep_going(&self, end: Result<ReadEnd>, role: &str) -> bool {
        match end {
            Ok(ReadEnd::Drained) => true,
            Ok(ReadEnd::Closed(code, reason)) => {
                self.counts.borrow_mut().tally.close(role, code, &reason);
                false
            }
            Err(e) => {
                self.counts
                    .borrow_mut()
                    .tally
                    .error(format!("{role} read: {e:#}"));
                false
            }
        }
    }
}

/// A live subscriber: subscribed before the fill, reads and counts every stamped event.
async fn listener(mut ctx: Ctx) {
    let Some(mut c) = ctx.open(true).await else {
        return;
    };
    let mut seqs = SeqTracker::new(1);
    loop {
        let mut got = 0u64;
        let (counts, shared) = (&ctx.counts, &ctx.shared);
        let round = c.read_round(|msg| {
            let Some(Stamp {
                publisher,
                seq,
                sent_ns,
            }) = wire::find_stamp(msg)
            else {
                return;
            };
            let t = &mut counts.borrow_mut().tally;
            if seqs.see(publisher, seq, t) {
                got += 1;
                t.arrived(&shared.live.window.times(), sent_ns, now_ns());
            }
        });
        let end = tokio::select! {
            r = round => r,
            _ = ctx.stage.wait_for(|s| *s >= Stage::Stop) => return,
        };
        if got > 0 {
            shared.live.received.fetch_add(got, Ordering::Relaxed);
            shared.last_live_ns.fetch_max(now_ns(), Ordering::Relaxed);
        }
        if !ctx.keep_going(end, "live subscriber") {
            return;
        }
    }
}

/// Where one joiner is in its replay.
struct Replaying {
    /// TOP from the ack, once it has come.
    top: Option<u64>,
    /// Next offset expected.
    next: u64,
    received: u64,
    gaps: u64,
    duplicates: u64,
    first_ns: Option<u64>,
    refused: Option<String>,
    done: bool,
}

impl Replaying {
    /// Takes one text frame: the ack first, then the replayed events.
    fn take(&mut self, dialect: Dialect, msg: &[u8], joined: &mut Joined) {
        let Some(top) = self.top else {
            match wire::position_ack(dialect, msg) {
                Some(Ok(ack)) => {
                    self.top = Some(ack.top);
                    joined.acks += 1;
                    joined.tops.0 += ack.top;
                    joined.tops.1 = joined.tops.1.min(ack.top);
                    joined.tops.2 = joined.tops.2.max(ack.top);
                    if !ack.recovered {
                        joined.not_recovered += 1;
                    }
                    self.done = ack.top == 0;
                }
                Some(Err(m)) => self.refused = Some(m),
                None => {}
            }
            return;
        };
        if self.done {
            return;
        }
        let Some(offset) = wire::find_offset(dialect, msg) else {
            return;
        };
        if offset < self.next {
            self.duplicates += 1;
            return;
        }
        self.gaps += offset - self.next;
        self.next = offset + 1;
        self.received += 1;
        if self.first_ns.is_none() {
            self.first_ns = Some(now_ns());
        }
        self.done = offset >= top;
    }
}

/// A late joiner: connected during the setup, subscribes from offset 0 when told and
/// reads until it has the offset its ack announced.
async fn joiner(mut ctx: Ctx) {
    let Some(mut c) = ctx.open(false).await else {
        return;
    };
    if !ctx.idle_until(&mut c, Stage::Replay, "joiner").await {
        ctx.shared.gave_up.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if *ctx.stage.borrow() >= Stage::Stop {
        return;
    }
    let plan = ctx.plan.clone();
    let mut request = Vec::new();
    wire::subscribe_from(plan.dialect, &plan.topic_name(0), 1, 0, &mut request);
    let t0 = now_ns();
    if let Err(e) = c.send(&request).await {
        ctx.counts
            .borrow_mut()
            .tally
            .error(format!("joiner subscribe: {e:#}"));
        ctx.shared.gave_up.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut r = Replaying {
        top: None,
        next: 1,
        received: 0,
        gaps: 0,
        duplicates: 0,
        first_ns: None,
        refused: None,
        done: false,
    };
    let finished = loop {
        let before = r.received;
        let round = {
            let counts = &ctx.counts;
            c.read_round(|msg| r.take(plan.dialect, msg, &mut counts.borrow_mut().joined))
        };
        let end = tokio::select! {
            e = round => e,
            _ = ctx.stage.wait_for(|s| *s >= Stage::Stop) => break false,
        };
        ctx.shared
            .replayed
            .fetch_add(r.received - before, Ordering::Relaxed);
        if let Some(m) = r.refused.take() {
            ctx.counts
                .borrow_mut()
                .tally
                .error(format!("joiner refused: {m}"));
            break false;
        }
        if r.done {
            break true;
        }
        if !ctx.keep_going(end, "joiner") {
            break false;
        }
    };
    let now = now_ns();
    {
        let mut counts = ctx.counts.borrow_mut();
        let j = &mut counts.joined;
        j.received += r.received;
        j.gaps += r.gaps;
        j.duplicates += r.duplicates;
        if finished {
            let _ = j.completion.record((now - t0).max(1_000));
            if let Some(f) = r.first_ns {
                let _ = j.first.record((f - t0).max(1_000));
            }
        }
    }
    if finished {
        ctx.shared.last_done_ns.fetch_max(now, Ordering::Relaxed);
        ctx.shared.done.fetch_add(1, Ordering::Relaxed);
        ctx.idle_until(&mut c, Stage::Stop, "joiner").await;
    } else {
        ctx.shared.gave_up.fetch_add(1, Ordering::Relaxed);
    }
}

/// The fill: one publisher sends `plan.fill` stamped publications at `plan.rate`, then
/// closes cleanly (so every publish was taken). Returns how many it sent.
fn publisher_main(plan: &Plan, shared: &Shared) -> (u64, Tally) {
    let mut tally = Tally::default();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tally.error(format!("publisher runtime: {e}"));
            return (0, tally);
        }
    };
    let sent = rt.block_on(async {
        let index = plan.listeners() + plan.subs;
        let mut c = match conn::open(
            &plan.pub_target,
            plan.pub_dialect,
            index,
            plan.spread_sources(),
        )
        .await
        {
            Ok(c) => c,
            Err(e) => {
                tally.error(format!("publisher setup: {e:#}"));
                shared.live.window.set(Times {
                    start: 1,
                    end: 1,
                    slice: 0,
                });
                return 0;
            }
        };
        let topic = plan.topic_name(0);
        let t0 = now_ns() + LEAD_IN.as_nanos() as u64;
        let end = t0 + (plan.measured() + plan.drain).as_nanos() as u64;
        shared.live.window.set(Times {
            start: t0,
            end,
            slice: 0,
        });
        tokio::time::sleep(Duration::from_nanos(t0.saturating_sub(now_ns()))).await;
        let (mut data, mut scratch, mut batch) = (Vec::new(), Vec::new(), Vec::new());
        // Queued into the batch, and written to the socket.
        let (mut sent, mut written) = (0u64, 0u64);
        while sent < plan.fill {
            let now = now_ns();
            let due = (((now - t0) as f64 * plan.rate / 1e9) as u64 + 1).min(plan.fill);
            while sent < due {
                let stamp = Stamp {
                    publisher: 0,
                    seq: sent,
                    sent_ns: now,
                };
                wire::stamped_data(stamp, plan.payload, &mut data);
                let id = wire::publish_needs_id(plan.pub_dialect).then_some(sent + 1);
                wire::publish(
                    plan.pub_dialect,
                    &topic,
                    &data,
                    id,
                    &mut scratch,
                    &mut batch,
                );
                sent += 1;
            }
            let mut pongs = Vec::new();
            match c.read_available(
                |msg| {
                    if let Some(wire::Answer::Ack(_)) = wire::answer(plan.pub_dialect, msg) {
                        return;
                    }
                    let shown: String = String::from_utf8_lossy(msg).chars().take(80).collect();
                    tally.error(format!("publisher got: {shown}"));
                },
                &mut pongs,
            ) {
                Ok(ReadEnd::Drained) => {}
                Ok(ReadEnd::Closed(code, reason)) => {
                    tally.close("publisher", code, &reason);
                    return written;
                }
                Err(e) => {
                    tally.error(format!("publisher read: {e:#}"));
                    return written;
                }
            }
            batch.extend_from_slice(&pongs);
            if !batch.is_empty() {
                match tokio::time::timeout(end_in(end), c.send(&batch)).await {
                    Ok(Ok(())) => written = sent,
                    Ok(Err(e)) => {
                        tally.error(format!("publisher write: {e:#}"));
                        return written;
                    }
                    Err(_) => {
                        // Some of the batch may have gone; count it as sent.
                        tally.error("publisher write blocked past the fill and the drain time");
                        return sent;
                    }
                }
                batch.clear();
            }
            shared.live.published.store(written, Ordering::Relaxed);
            if sent < plan.fill {
                tokio::time::sleep(TICK).await;
            }
        }
        c.close_and_wait(plan.drain).await;
        sent
    });
    (sent, tally)
}

fn end_in(end: u64) -> Duration {
    Duration::from_nanos(end.saturating_sub(now_ns()))
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
}

impl Phase {
    fn rows(&self, name: &str, what: &str) -> Vec<(String, String)> {
        let l = &self.latency_ms;
        let mut rows = vec![
            (
                name.to_string(),
                format!(
                    "{} of {} expected in {:.2} s = {}/s; lost {} (gaps {}, duplicates {})",
                    grouped(self.deliveries as f64),
                    grouped(self.expected as f64),
                    self.wall_s,
                    grouped(self.deliveries_per_s),
                    self.lost,
                    self.gaps,
                    self.duplicates
                ),
            ),
            (
                format!("{name} ms"),
                format!(
                    "{what}: p50 {:.2}  p99 {:.2}  max {:.2}  (n={})",
                    l.p50, l.p99, l.max, l.count
                ),
            ),
        ];
        if let Some(f) = &self.first_ms {
            rows.push((
                format!("{name} first"),
                format!(
                    "subscribe to first replayed event: p50 {:.2}  p99 {:.2}  max {:.2} ms",
                    f.p50, f.p99, f.max
                ),
            ));
        }
        rows.push((
            format!("{name} broker"),
            format!(
                "{} CPU-s = {} deliveries per CPU-second ({} µs each); {} frames/write ({} writes); history replayed {}",
                opt(self.broker_cpu_s, 2),
                self.deliveries_per_cpu_s.map_or("-".into(), grouped),
                opt(self.broker_us_per_delivery, 3),
                opt(self.frames_per_write, 1),
                self.writes.map_or("-".into(), |w| grouped(w as f64)),
                self.history_replayed
                    .map_or("-".into(), |w| grouped(w as f64)),
            ),
        ));
        rows.push((
            format!("{name} harness"),
            format!("{:.2} CPU-s", self.harness_cpu_s),
        ));
        rows
    }
}

impl ReplayReport {
    /// The summary table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = vec![
            (
                "scenario".into(),
                format!("{} ({})", self.scenario, self.label),
            ),
            ("target".into(), self.url.clone()),
            (
                "shape".into(),
                format!(
                    "{} joiners{} on {}, fill {} at {}/s, {} B",
                    self.subs,
                    if self.live.is_some() {
                        format!(" + {} live subscribers", self.subs)
                    } else {
                        String::new()
                    },
                    self.channel,
                    grouped(self.fill as f64),
                    grouped(self.rate),
                    self.payload
                ),
            ),
            (
                "connections".into(),
                format!(
                    "{} ready, {} failed, set up in {:.2} s",
                    self.connections.ready, self.connections.failed, self.connections.setup_s
                ),
            ),
        ];
        if let Some(live) = &self.live {
            rows.extend(live.rows("live", "send to arrival"));
        }
        rows.extend(
            self.replay
                .rows("replay", "subscribe to last replayed event"),
        );
        if self.replay.not_recovered > 0 {
            rows.push((
                "not recovered".into(),
                format!("{} acks said r: false", self.replay.not_recovered),
            ));
        }
        if let Some(r) = self.replay_vs_live_per_cpu {
            rows.push((
                "replay/live".into(),
                format!("{r:.2}x the deliveries per broker CPU-second"),
            ));
        }
        let kib = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
        rows.push((
            "broker rss".into(),
            format!(
                "{} KiB before, {} after setup, {} after live, {} after replay",
                kib(self.broker_rss.before_kib),
                kib(self.broker_rss.after_setup_kib),
                kib(self.broker_rss.after_live_kib),
                kib(self.broker_rss.after_replay_kib)
            ),
        ));
        for (what, n) in &self.closes {
            rows.push(("closed".into(), format!("{n} x {what}")));
        }
        for (what, n) in &self.errors {
            rows.push(("error".into(), format!("{n} x {what}")));
        }
        let mut out = String::new();
        for (k, v) in rows {
            let _ = writeln!(out, "{k:>15}  {v}");
        }
        out
    }

    /// Nothing lost, duplicated or refused, every ack complete, nothing failed.
    pub fn clean(&self) -> bool {
        let phase_ok = |p: &Phase| p.lost == 0 && p.duplicates == 0 && p.gaps == 0;
        self.live.as_ref().is_none_or(phase_ok)
            && phase_ok(&self.replay)
            && self.replay.expected > 0
            && self.replay.not_recovered == 0
            && self.connections.failed == 0
            && self.errors.is_empty()
            && self.closes.is_empty()
    }

    /// The live phase's latency curve, for `--plot`.
    pub fn live_series(&self) -> Series {
        Series {
            label: self.label.clone(),
            points: self.latency_curve.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn event(offset: u64) -> Vec<u8> {
        format!(
            r#"{{"t":"r/0","d":{{"_p":0,"_s":{},"_ts":1,"x":""}},"o":{offset}}}"#,
            offset - 1
        )
        .into_bytes()
    }

    #[test]
    fn a_joiner_counts_its_replay_once_and_in_order() {
        let mut j = Joined::default();
        let mut r = Replaying {
            top: None,
            next: 1,
            received: 0,
            gaps: 0,
            duplicates: 0,
            first_ns: None,
            refused: None,
            done: false,
        };
        // Events before the ack are not counted (there are none in practice).
        r.take(Dialect::Vws, &event(1), &mut j);
        assert_eq!(r.received, 0);
        r.take(
            Dialect::Vws,
            br#"{"k":"a","i":1,"o":5,"e":"e1","r":true}"#,
            &mut j,
        );
        assert_eq!((r.top, j.acks, j.tops), (Some(5), 1, (5, 5, 5)));
        for o in [1, 2, 2, 4, 5] {
            r.take(Dialect::Vws, &event(o), &mut j);
        }
        assert_eq!((r.received, r.duplicates, r.gaps), (4, 1, 1));
        assert!(r.done && r.first_ns.is_some());
        assert_eq!(j.not_recovered, 0);

        let mut r2 = Replaying {
            top: None,
            next: 1,
            received: 0,
            gaps: 0,
            duplicates: 0,
            first_ns: None,
            refused: None,
            done: false,
        };
        r2.take(Dialect::Vws, br#"{"k":"n","i":1,"e":"no"}"#, &mut j);
        assert!(r2.refused.is_some());
        r2.take(
            Dialect::Vws,
            br#"{"k":"a","i":1,"o":0,"e":"e1","r":false}"#,
            &mut j,
        );
        assert!(r2.done);
        assert_eq!((j.acks, j.not_recovered, j.tops.1), (2, 1, 0));
    }
}

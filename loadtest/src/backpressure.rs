//! The backpressure scenario's edge (issue 19, `semstreams.on_full = "block"`): one
//! SemStreams peer subscribes to the data channel itself, pushes stamped `data` as fast
//! as its socket takes it (never waiting for acks), and reads its own socket at
//! `--read-rate` frames a second. Every publish brings back an ack and its own echo, so
//! the broker's queue for this peer fills; with `block` the broker then stops reading
//! the peer, TCP fills, and the edge's writes slow to what its reading lets through
//! (about `read_rate / 2` publishes a second); nothing is lost. With `drop_newest` the
//! echoes that find the queue full are dropped instead and the edge keeps its pace.
//!
//! Reported second by second: what the edge sent, what came back (echoes, acks, nacks,
//! `slow` signals) and, with `--broker-stats`, the broker's blocked reads and drops from
//! `/metrics`. After the window the edge stops sending and reads at full speed until
//! every publish is answered, so the totals compare what was sent with what came back.

use crate::brokerstats;
use crate::conn::{Conn, ReadEnd};
use crate::plan::Plan;
use crate::publishers::{self, Published};
use crate::tally::{now_ns, Live, SeqTracker, Tally};
use crate::wire::{self, Answer, Dialect, Stamp};
use serde::Serialize;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Publishes written per refill of the send buffer.
const BATCH: usize = 64;
/// How often the edge reads its share and tries to write.
const TICK: Duration = Duration::from_millis(2);
/// Bytes one loop iteration writes at most before reading again.
const MAX_WRITE_PER_TICK: usize = 1 << 20;
/// With everything answered, how long the drain waits for echoes still on their way.
const QUIET: Duration = Duration::from_millis(500);

/// One second of the edge's life (deltas over that second).
#[derive(Serialize, Debug, Default, Clone)]
pub struct Second {
    /// Seconds since the first publish (1 = the first second).
    pub t: u32,
    pub sent: u64,
    /// Its own publications read back (distinct).
    pub echoed: u64,
    pub acks: u64,
    pub nacks: u64,
    pub slow: u64,
    /// Frames read (everything: echoes, acks, nacks, slow).
    pub read: u64,
    /// What the vws subscribers received in this second, all together.
    pub delivered: u64,
    /// The broker's blocked reads and drops in this second (`--broker-stats`).
    pub read_blocks: Option<u64>,
    pub dropped: Option<u64>,
}

/// What the edge did, for the report.
#[derive(Serialize, Debug, Default, Clone)]
pub struct Figures {
    pub read_rate: f64,
    pub seconds: Vec<Second>,
    pub sent: u64,
    /// Own publications that came back (distinct), in the window and the drain.
    pub echoed: u64,
    pub echo_gaps: u64,
    pub acks: u64,
    pub nacks: u64,
    pub slow: u64,
    /// Publishes per second written in the first second.
    pub send_rate_first: f64,
    /// Publishes per second written over the last (up to) three seconds of the window.
    pub send_rate_last: f64,
    /// The broker's counters over the run (`--broker-stats`): blocked reads, drops.
    pub read_blocks: Option<u64>,
    pub dropped: Option<u64>,
}

impl Figures {
    /// Whether everything sent came back to the edge and was acked.
    pub fn lossless(&self) -> bool {
        self.sent > 0 && self.acks == self.sent && self.echoed == self.sent && self.nacks == 0
    }

    /// The per-second table rows.
    pub fn rows(&self) -> Vec<(&'static str, String)> {
        let mut rows = vec![(
            "edge",
            format!(
                "sent {}, echoed {} (gaps {}), acks {}, nacks {}, slow {}; reads {}/s",
                self.sent,
                self.echoed,
                self.echo_gaps,
                self.acks,
                self.nacks,
                self.slow,
                crate::report::grouped(self.read_rate)
            ),
        )];
        rows.push((
            "send rate",
            format!(
                "{}/s in the first second, {}/s in the last seconds",
                crate::report::grouped(self.send_rate_first),
                crate::report::grouped(self.send_rate_last)
            ),
        ));
        if let (Some(b), Some(d)) = (self.read_blocks, self.dropped) {
            rows.push(("broker", format!("{b} blocked reads, {d} frames dropped")));
        }
        for s in &self.seconds {
            let broker = match (s.read_blocks, s.dropped) {
                (Some(b), Some(d)) => format!(", blocked {b}, dropped {d}"),
                _ => String::new(),
            };
            rows.push((
                "second",
                format!(
                    "{:>3}: sent {:>7} echoed {:>7} acks {:>7} nacks {} slow {} read {}, subscribers got {}{}",
                    s.t, s.sent, s.echoed, s.acks, s.nacks, s.slow, s.read, s.delivered, broker
                ),
            ));
        }
        rows
    }
}

/// Running counts of the edge, diffed into [`Second`]s.
#[derive(Default, Clone, Copy)]
struct Counts {
    sent: u64,
    echoed: u64,
    acks: u64,
    nacks: u64,
    slow: u64,
    read: u64,
}

/// Connects and subscribes the edge, runs it until `live.stop`, drains, fills `out`.
pub async fn run(plan: &Plan, live: &Live, out: &mut Published) {
    let Some(mut conns) = publishers::open_all(plan, live, out).await else {
        return;
    };
    let Some(mut c) = conns.pop() else {
        publishers::no_start(live);
        return;
    };
    if let Err(e) = c
        .subscribe(
            Dialect::Semstreams,
            std::slice::from_ref(&plan.ingest_topic),
        )
        .await
    {
        out.tally
            .error(format!("backpressure edge subscribe: {e:#}"));
        publishers::no_start(live);
        return;
    }
    let (t0, _) = publishers::start_clock(plan, live);
    let stop = live.stop.load(Ordering::Acquire);
    tokio::time::sleep(Duration::from_nanos(t0.saturating_sub(now_ns()))).await;
    let mut edge = EdgeRun {
        plan,
        t0,
        counts: Counts::default(),
        seqs: SeqTracker::new(1),
        tally: Tally::default(),
        pongs: Vec::new(),
    };
    let mut figures = Figures {
        read_rate: plan.read_rate,
        ..Figures::default()
    };
    let metrics_at_start = metrics(plan.broker_stats).await;
    edge.push(&mut c, (stop, live), &mut figures, metrics_at_start)
        .await;
    edge.drain(&mut c, stop + plan.drain.as_nanos() as u64)
        .await;
    let metrics_at_end = metrics(plan.broker_stats).await;
    if let (Some(a), Some(b)) = (metrics_at_start, metrics_at_end) {
        figures.read_blocks = Some(b.read_blocks.saturating_sub(a.read_blocks));
        figures.dropped = Some(b.dropped.saturating_sub(a.dropped));
    }
    let n = edge.counts;
    figures.sent = n.sent;
    figures.echoed = n.echoed;
    figures.echo_gaps = edge.tally.gaps;
    figures.acks = n.acks;
    figures.nacks = n.nacks;
    figures.slow = n.slow;
    figures.send_rate_first = figures.seconds.first().map_or(0.0, |s| s.sent as f64);
    let last: Vec<_> = figures.seconds.iter().skip(1).rev().take(3).collect();
    figures.send_rate_last = match last.len() {
        0 => figures.send_rate_first,
        k => last.iter().map(|s| s.sent).sum::<u64>() as f64 / k as f64,
    };
    // Its own echoes' gaps are figures here (drop_newest makes them), not a subscriber's loss.
    edge.tally.gaps = 0;
    out.tally.merge(edge.tally);
    // The vws subscribers are owed what the broker accepted.
    if let Some(c) = out.counts.get_mut(0).and_then(|c| c.get_mut(0)) {
        *c = n.acks;
    }
    live.published.store(n.sent, Ordering::Relaxed);
    out.answers = Some(crate::ingest::Answers {
        sent: n.sent,
        acks: n.acks,
        nacks: n.nacks,
        unanswered: n.sent.saturating_sub(n.acks + n.nacks),
        ..Default::default()
    });
    out.backpressure = Some(figures);
    c.close_and_wait(plan.drain).await;
}

/// The broker's SemStreams counters, read off the runtime thread.
async fn metrics(addr: Option<SocketAddr>) -> Option<brokerstats::Semstreams> {
    let addr = addr?;
    tokio::task::spawn_blocking(move || brokerstats::semstreams(addr))
        .await
        .ok()
        .flatten()
}

struct EdgeRun<'a> {
    plan: &'a Plan,
    t0: u64,
    counts: Counts,
    seqs: SeqTracker,
    tally: Tally,
    pongs: Vec<u8>,
}

impl EdgeRun<'_> {
    /// Sorts one frame the edge read.
    fn take(&mut self, msg: &[u8]) {
        self.counts.read += 1;
        match wire::answer(Dialect::Semstreams, msg) {
            Some(Answer::Ack(_)) => self.counts.acks += 1,
            Some(Answer::Nack(_)) => {
                self.counts.nacks += 1;
                if self.counts.nacks == 1 {
                    let shown: String = String::from_utf8_lossy(msg).chars().take(160).collect();
                    self.tally.error(format!("first nack: {shown}"));
                }
            }
            None if wire::is_slow_signal(msg) => self.counts.slow += 1,
            None => match wire::find_stamp(msg) {
                Some(stamp) => {
                    if self.seqs.see(stamp.publisher, stamp.seq, &mut self.tally) {
                        self.counts.echoed += 1;
                    }
                }
                None => {
                    let shown: String = String::from_utf8_lossy(msg).chars().take(80).collect();
                    self.tally.error(format!("backpressure edge got: {shown}"));
                }
            },
        }
    }

    /// Reads up to `max` frames; false when the connection ended.
    fn read(&mut self, c: &mut Conn, max: usize) -> bool {
        let mut pongs = std::mem::take(&mut self.pongs);
        let result = c.read_limited(max, |msg| self.take(msg), &mut pongs);
        self.pongs = pongs;
        match result {
            Ok((_, ReadEnd::Drained)) => true,
            Ok((_, ReadEnd::Closed(code, reason))) => {
                self.tally.close("backpressure edge", code, &reason);
                false
            }
            Err(e) => {
                self.tally.error(format!("backpressure edge read: {e:#}"));
                false
            }
        }
    }

    /// Pushes until `stop`, writing what the socket takes and reading at the read rate;
    /// closes a [`Second`] each second.
    async fn push(
        &mut self,
        c: &mut Conn,
        (stop, live): (u64, &Live),
        figures: &mut Figures,
        mut at_last_second: Option<brokerstats::Semstreams>,
    ) {
        let (mut data, mut scratch, mut out) = (Vec::new(), Vec::new(), Vec::new());
        // Ends of the publishes in `out`, so a partial write counts whole ones only.
        let mut ends: std::collections::VecDeque<usize> = Default::default();
        let mut written = 0usize;
        let (mut queued, mut last) = (0u64, Counts::default());
        let mut delivered_before = live.received.load(Ordering::Relaxed);
        let mut second_end = self.t0 + 1_000_000_000;
        loop {
            let now = now_ns();
            if now >= second_end || now >= stop {
                let m = metrics(self.plan.broker_stats).await;
                let n = self.counts;
                let delivered = live.received.load(Ordering::Relaxed);
                figures.seconds.push(Second {
                    delivered: delivered.saturating_sub(delivered_before),
                    t: figures.seconds.len() as u32 + 1,
                    sent: n.sent - last.sent,
                    echoed: n.echoed - last.echoed,
                    acks: n.acks - last.acks,
                    nacks: n.nacks - last.nacks,
                    slow: n.slow - last.slow,
                    read: n.read - last.read,
                    read_blocks: m
                        .zip(at_last_second)
                        .map(|(m, a)| m.read_blocks.saturating_sub(a.read_blocks)),
                    dropped: m
                        .zip(at_last_second)
                        .map(|(m, a)| m.dropped.saturating_sub(a.dropped)),
                });
                (last, at_last_second, delivered_before) = (n, m, delivered);
                second_end += 1_000_000_000;
                if now >= stop {
                    return;
                }
            }
            // Write what the socket takes, a bounded amount per tick.
            let mut this_tick = 0usize;
            let blocked = loop {
                if written == out.len() {
                    out.clear();
                    ends.clear();
                    written = 0;
                    for _ in 0..BATCH {
                        let stamp = Stamp {
                            publisher: 0,
                            seq: queued,
                            sent_ns: now_ns(),
                        };
                        wire::stamped_data(stamp, self.plan.payload, &mut data);
                        queued += 1;
                        let id = Some(queued);
                        wire::publish(Dialect::Semstreams, "", &data, id, &mut scratch, &mut out);
                        ends.push_back(out.len());
                    }
                }
                let Some(rest) = out.get(written..) else {
                    break false;
                };
                match c.try_send(rest) {
                    Ok(n) => {
                        written += n;
                        this_tick += n;
                        while ends.front().is_some_and(|&e| e <= written) {
                            ends.pop_front();
                            self.counts.sent += 1;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break true,
                    Err(e) => {
                        self.tally.error(format!("backpressure edge write: {e:#}"));
                        return;
                    }
                }
                if this_tick >= MAX_WRITE_PER_TICK {
                    break false;
                }
            };
            // Read this moment's share of the read rate.
            let allowed = ((now_ns() - self.t0) as f64 * self.plan.read_rate / 1e9) as u64;
            let budget = allowed.saturating_sub(self.counts.read) as usize;
            if budget > 0 && !self.read(c, budget) {
                return;
            }
            if !self.pongs.is_empty() {
                let pongs = std::mem::take(&mut self.pongs);
                if c.send(&pongs).await.is_err() {
                    return;
                }
            }
            if blocked {
                tokio::select! {
                    _ = c.stream.writable() => {}
                    _ = tokio::time::sleep(TICK) => {}
                }
            } else {
                tokio::task::yield_now().await;
            }
        }
    }

    /// After the window: reads at full speed until every publish is answered and its
    /// echo had time to come back, or `give_up`.
    async fn drain(&mut self, c: &mut Conn, give_up: u64) {
        let mut quiet_since: Option<u64> = None;
        loop {
            let before = self.counts.read;
            if !self.read(c, usize::MAX) {
                return;
            }
            if self.counts.read > before {
                quiet_since = None;
            }
            if !self.pongs.is_empty() {
                let pongs = std::mem::take(&mut self.pongs);
                if c.send(&pongs).await.is_err() {
                    return;
                }
            }
            let n = self.counts;
            let answered = n.acks + n.nacks >= n.sent;
            if answered && n.echoed >= n.acks {
                return;
            }
            let now = now_ns();
            if now >= give_up {
                if !answered {
                    self.tally.error(format!(
                        "backpressure edge: {} publishes unanswered after the drain time",
                        n.sent - n.acks - n.nacks
                    ));
                }
                return;
            }
            if answered {
                // Echoes dropped by the broker never come: stop once nothing more arrives.
                let since = *quiet_since.get_or_insert(now);
                if now - since >= QUIET.as_nanos() as u64 {
                    return;
                }
            }
            let wait = Duration::from_nanos(give_up - now).min(QUIET);
            let _ = tokio::time::timeout(wait, c.stream.readable()).await;
        }
    }
}

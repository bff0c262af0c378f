//! The attackers of the abuse scenario: one thread (a single-threaded runtime) running
//! every kind of hostile client at once against the broker under test, while the
//! ordinary subscribers and publishers carry on (see `run`).
//!
//! Each kind is one small function that loops until the abuse window ends, with every
//! wait bounded, so all of them stop by themselves; the thread also cuts them off a little
//! after the window. They count what they did and what the broker answered (replies,
//! close codes, HTTP statuses) under one label each. An answer that contradicts SPEC §4
//! (for instance a binary frame not closed with 1003) is labelled `unexpected: …`.
//!
//! - `messages`: hostile messages on an upgraded connection (bad JSON, deep JSON,
//!   subscription and publish floods).
//! - `frames`: WebSocket protocol violations, one fresh connection each.
//! - `sockets`: attacks on the connection itself (slowloris, garbage instead of HTTP,
//!   reset churn, bursts past the connection limit).
//! - `heads`: request heads that never come (idle sockets) or never end (big heads).
//! - `storm`: a subscribe/unsubscribe storm from one client.
//!
//! Not here: the measuring around them (`soak`), and anything that leaves loopback.

mod frames;
mod heads;
mod messages;
pub mod soak;
mod sockets;
mod storm;

use crate::conn::{self, Conn, ReadEnd};
use crate::plan::Plan;
use crate::tally::now_ns;
use crate::wire::{self, Dialect, Reply, Target};
use anyhow::Result;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::rc::Rc;
use std::thread;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Connections the attackers hold at once at the most: a burst, the slowloris clients,
/// the idle sockets, the big heads and one or two per other kind.
pub const MAX_OPEN: usize =
    sockets::BURST + sockets::SLOWLORIS + heads::IDLE_SOCKETS + heads::BIG_HEADS + 50;

/// The longest any single wait for the broker lasts (an answer, a close, a connect).
const ANSWER_WAIT: Duration = Duration::from_secs(3);

/// After the window ends, how long attackers still in a wait may take before they are cut off.
const GRACE: Duration = Duration::from_secs(4);

/// First source-address index of attack connections (`conn::connect` spreads them over
/// 127.0.x.y), past the ones the subscribers and publishers use.
const FIRST_SOURCE: usize = 20_000;

/// Outcome label -> count, per attack kind.
pub type Attacks = BTreeMap<String, BTreeMap<String, u64>>;

/// What every attacker shares: where to go, until when, and the counts.
pub struct Ctx {
    target: Target,
    /// A topic the healthy subscribers read, for attackers that want to be in the way.
    busy_topic: String,
    until: Instant,
    counts: RefCell<Attacks>,
    next_source: Cell<usize>,
}

impl Ctx {
    /// Whether the abuse window is still open.
    fn running(&self) -> bool {
        Instant::now() < self.until
    }

    /// Counts `n` of `what` for attack `kind`.
    fn count(&self, kind: &str, what: impl Into<String>, n: u64) {
        if n == 0 {
            return;
        }
        let mut counts = self.counts.borrow_mut();
        *counts
            .entry(kind.to_string())
            .or_default()
            .entry(what.into())
            .or_default() += n;
    }

    /// Counts an answer that contradicts SPEC §4.
    fn unexpected(&self, kind: &str, what: impl std::fmt::Display) {
        self.count(kind, format!("unexpected: {what}"), 1);
    }

    /// Sleeps `pause`, but not past the end of the window.
    async fn pause(&self, pause: Duration) {
        tokio::time::sleep_until((Instant::now() + pause).min(self.until)).await;
    }

    fn source(&self) -> usize {
        let s = self.next_source.get();
        self.next_source.set(s + 1);
        FIRST_SOURCE + s
    }

    /// A TCP connection to the broker (no upgrade), each from its own loopback source
    /// address so thousands of short connections never run out of ports.
    async fn connect(&self) -> Result<TcpStream> {
        within(conn::connect(&self.target, self.source(), true)).await
    }

    /// An upgraded vws connection.
    async fn open(&self) -> Result<Conn> {
        within(conn::open(&self.target, Dialect::Vws, self.source(), true)).await
    }

    /// Opens a connection for `kind`, counting a failure (and pausing, so a broker that
    /// refuses does not make the attacker spin).
    async fn open_counted(&self, kind: &str) -> Option<Conn> {
        match self.open().await {
            Ok(c) => Some(c),
            Err(e) => {
                self.count(kind, format!("connect failed: {}", short(&e)), 1);
                self.pause(Duration::from_millis(100)).await;
                None
            }
        }
    }
}

/// Runs `f` for at most [`ANSWER_WAIT`].
/// Runs `n` copies of an attacker (`attacker(i)`) on this thread and waits for them all.
async fn run_copies<F: Future<Output = ()> + 'static>(n: usize, attacker: impl Fn(usize) -> F) {
    let tasks: Vec<_> = (0..n)
        .map(|i| tokio::task::spawn_local(attacker(i)))
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

async fn within<T>(f: impl Future<Output = Result<T>>) -> Result<T> {
    match tokio::time::timeout(ANSWER_WAIT, f).await {
        Ok(r) => r,
        Err(_) => anyhow::bail!("no answer in {} s", ANSWER_WAIT.as_secs()),
    }
}

/// An error's text without the addresses that would make every label unique.
fn short(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    match text.rsplit_once(": ") {
        Some((_, last)) if text.starts_with("connect ") || text.starts_with("bind ") => {
            last.to_string()
        }
        _ => text,
    }
}

/// The replies a connection sent to a batch of requests, and whether it closed.
#[derive(Default)]
struct Answer {
    acks: u64,
    nacks: u64,
    other: u64,
    closed: Option<(u16, String)>,
}

/// Reads replies until `want` have arrived, the broker closes, or [`ANSWER_WAIT`] passes.
async fn answers(c: &mut Conn, want: u64) -> Answer {
    let mut a = Answer::default();
    let deadline = Instant::now() + ANSWER_WAIT;
    while a.acks + a.nacks + a.other < want {
        let round = c.read_round(|msg| match wire::reply(Dialect::Vws, msg) {
            Reply::Done => a.acks += 1,
            Reply::Refused(_) => a.nacks += 1,
            Reply::Other => a.other += 1,
        });
        match tokio::time::timeout_at(deadline, round).await {
            Ok(Ok(ReadEnd::Drained)) => {}
            Ok(Ok(ReadEnd::Closed(code, reason))) => {
                a.closed = Some((code, reason));
                break;
            }
            Ok(Err(e)) => {
                a.closed = Some((1006, format!("{e:#}")));
                break;
            }
            Err(_) => break,
        }
    }
    a
}

/// Waits (up to [`ANSWER_WAIT`]) for the broker to close `c`; ignores what comes before.
async fn close_of(c: &mut Conn) -> Option<(u16, String)> {
    answers(c, u64::MAX).await.closed
}

/// Starts the attacker thread running the plan's attacks; it returns the counts once the
/// window ending at `until_ns` (in `now_ns` time) is over and every attacker has stopped.
pub fn spawn(plan: &Plan, until_ns: u64) -> thread::JoinHandle<Attacks> {
    let target = plan.sub_target.clone();
    let busy_topic = plan.topic_name(0);
    let chosen = chosen(plan);
    thread::spawn(move || {
        let until = Instant::now() + Duration::from_nanos(until_ns.saturating_sub(now_ns()));
        let ctx = Rc::new(Ctx {
            target,
            busy_topic,
            until,
            counts: RefCell::new(Attacks::new()),
            next_source: Cell::new(0),
        });
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                ctx.count("harness", format!("attacker runtime: {e}"), 1);
                return ctx.counts.take();
            }
        };
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, run_all(ctx.clone(), chosen));
        drop(local);
        ctx.counts.take()
    })
}

type Attack = fn(Rc<Ctx>, &'static str) -> std::pin::Pin<Box<dyn Future<Output = ()>>>;

/// Every attack kind and the function that runs it.
fn attacks() -> [(&'static str, Attack); 12] {
    [
        ("bad-json", |c, k| Box::pin(messages::bad_json(c, k))),
        ("deep-json", |c, k| Box::pin(messages::deep_json(c, k))),
        ("sub-flood", |c, k| Box::pin(messages::sub_flood(c, k))),
        ("publish-flood", |c, k| {
            Box::pin(messages::publish_flood(c, k))
        }),
        ("bad-frames", |c, k| Box::pin(frames::bad_frames(c, k))),
        ("slowloris", |c, k| Box::pin(sockets::slowloris(c, k))),
        ("garbage-http", |c, k| Box::pin(sockets::garbage_http(c, k))),
        ("rst-churn", |c, k| Box::pin(sockets::rst_churn(c, k))),
        ("conn-burst", |c, k| Box::pin(sockets::conn_burst(c, k))),
        ("idle-sockets", |c, k| Box::pin(heads::idle_sockets(c, k))),
        ("big-heads", |c, k| Box::pin(heads::big_heads(c, k))),
        ("sub-storm", |c, k| Box::pin(storm::sub_storm(c, k))),
    ]
}

/// The names of the attack kinds.
pub fn kinds() -> impl Iterator<Item = &'static str> {
    attacks().into_iter().map(|(kind, _)| kind)
}

/// The attack kinds a plan runs: those `--attacks` names, or all.
pub fn chosen(plan: &Plan) -> Vec<&'static str> {
    kinds()
        .filter(|k| plan.attacks.is_empty() || plan.attacks.iter().any(|a| a == k))
        .collect()
}

/// Runs the `chosen` attacks until the window ends.
async fn run_all(ctx: Rc<Ctx>, chosen: Vec<&'static str>) {
    let cutoff = ctx.until + GRACE;
    let tasks: Vec<_> = attacks()
        .into_iter()
        .filter(|(kind, _)| chosen.contains(kind))
        .map(|(kind, attack)| {
            let ctx = ctx.clone();
            tokio::task::spawn_local(async move {
                let attack = attack(ctx.clone(), kind);
                if tokio::time::timeout_at(cutoff, attack).await.is_err() {
                    ctx.count(kind, "cut off after the window", 1);
                }
            })
        })
        .collect();
    for t in tasks {
        if t.await.is_err() {
            ctx.count("harness", "an attacker task failed", 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_labels_drop_addresses() {
        let e = anyhow::anyhow!("connection refused").context("connect 127.0.0.1:9");
        assert_eq!(short(&e), "connection refused");
        let e = anyhow::anyhow!("upgrade refused: HTTP 503");
        assert_eq!(short(&e), "upgrade refused: HTTP 503");
    }
}

//! The publisher thread: opens the publisher connections, starts the clock, paces
//! publishes at the plan's aggregate rate (one write per publisher per tick, however
//! many messages are due), and runs the churn connections when the plan has churn.
//! The ingest and backpressure scenarios run their edges (`ingest`, `backpressure`) on
//! this thread instead of the pacing loop.

use crate::conn::{self, Conn, ReadEnd};
use crate::plan::Plan;
use crate::tally::{now_ns, Live, Tally, Times};
use crate::wire::{self, Stamp};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Delay between the publishers being connected and the first publish.
const LEAD_IN: Duration = Duration::from_millis(50);
/// Pacing tick: every tick writes all messages that have come due.
const TICK: Duration = Duration::from_micros(500);
/// A tick writes at most this much per publisher before writing it out.
const MAX_BATCH_BYTES: usize = 1 << 20;
/// At most this many churn connections open at once.
const MAX_CHURN_OPEN: usize = 5_000;

/// What the publishers did.
pub struct Published {
    /// Messages sent per publisher per topic: `counts[publisher][topic]`.
    pub counts: Vec<Vec<u64>>,
    /// The part of `counts` sent in the window's abuse slices.
    pub counts_abused: Vec<Vec<u64>>,
    pub tally: Tally,
    /// Churn connections that opened, subscribed and closed as planned.
    pub churned: u64,
    /// Ingest and backpressure: what the edges sent and what the broker answered.
    /// `counts` then holds what was acked, which is what subscribers are owed.
    pub answers: Option<crate::ingest::Answers>,
    /// Backpressure: the edge's figures, second by second.
    pub backpressure: Option<crate::backpressure::Figures>,
}

impl Published {
    pub fn total(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }

    /// Messages sent to one topic by all publishers.
    pub fn to_topic(&self, topic: usize) -> u64 {
        self.counts.iter().filter_map(|c| c.get(topic)).sum()
    }

    /// Messages sent to one topic by all publishers in the window's abuse slices.
    pub fn to_topic_abused(&self, topic: usize) -> u64 {
        self.counts_abused.iter().filter_map(|c| c.get(topic)).sum()
    }
}

pub fn thread_main(plan: Arc<Plan>, live: Arc<Live>) -> Published {
    let mut published = Published {
        counts: vec![vec![0; plan.topics]; plan.pubs],
        counts_abused: vec![vec![0; plan.topics]; plan.pubs],
        tally: Tally::default(),
        churned: 0,
        answers: None,
        backpressure: None,
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            published.tally.error(format!("publisher runtime: {e}"));
            return published;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        if plan.is_ingest() {
            crate::ingest::run(&plan, &live, &mut published).await;
        } else if plan.is_backpressure() {
            crate::backpressure::run(&plan, &live, &mut published).await;
        } else {
            run(&plan, &live, &mut published).await;
        }
    });
    published
}

/// Opens the publisher connections; on a failure, reports it, starts nothing (without
/// all publishers the sequences would not add up) and returns `None`.
pub(crate) async fn open_all(plan: &Plan, live: &Live, out: &mut Published) -> Option<Vec<Conn>> {
    let mut conns = Vec::with_capacity(plan.pubs);
    for p in 0..plan.pubs {
        match conn::open(
            &plan.pub_target,
            plan.pub_dialect,
            plan.subs + plan.slow + p,
            plan.spread_sources(),
        )
        .await
        {
            Ok(c) => conns.push(c),
            Err(e) => {
                out.tally.error(format!("publisher setup: {e:#}"));
                no_start(live);
                return None;
            }
        }
    }
    Some(conns)
}

/// Tells the main thread that publishing will not start.
pub(crate) fn no_start(live: &Live) {
    live.window.set(Times {
        start: 1,
        end: 1,
        slice: 0,
    });
}

/// Starts the clock: the first publish at the returned `t0` (a moment from now), the
/// window after the warm-up, publishing until `live.stop`.
pub(crate) fn start_clock(plan: &Plan, live: &Live) -> (u64, Times) {
    let t0 = now_ns() + LEAD_IN.as_nanos() as u64;
    let start = t0 + plan.warmup.as_nanos() as u64;
    let end = start + plan.measured().as_nanos() as u64;
    let times = Times {
        start,
        end,
        slice: plan.slice().as_nanos() as u64,
    };
    live.stop
        .store(end + plan.tail().as_nanos() as u64, Ordering::Release);
    live.window.set(times);
    (t0, times)
}

async fn run(plan: &Arc<Plan>, live: &Arc<Live>, out: &mut Published) {
    let Some(mut conns) = open_all(plan, live, out).await else {
        return;
    };
    let (t0, times) = start_clock(plan, live);
    let end = times.end;

    let churn_state = Rc::new(ChurnState::default());
    if plan.churn > 0.0 {
        tokio::task::spawn_local(churn(plan.clone(), t0, end, churn_state.clone()));
    }

    tokio::time::sleep(Duration::from_nanos(t0.saturating_sub(now_ns()))).await;
    pace(plan, live, &mut conns, (t0, times), out).await;

    // Let the churn connections that are still open finish their hold.
    while churn_state.open.get() > 0 && now_ns() < end + plan.churn_hold.as_nanos() as u64 * 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    out.churned = churn_state.done.get();
    out.tally.merge(churn_state.tally.take());
    for c in conns {
        c.close_and_wait(plan.drain).await;
    }
}

/// Sends every publish that has come due, tick by tick, from `t0` until `live.stop`,
/// counting apart what is sent in the window's abuse slices.
async fn pace(
    plan: &Plan,
    live: &Live,
    conns: &mut [Conn],
    (t0, window): (u64, Times),
    out: &mut Published,
) {
    let topics: Vec<String> = (0..plan.topics).map(|t| plan.topic_name(t)).collect();
    let pubs = conns.len() as u64;
    let mut batches: Vec<Vec<u8>> = vec![Vec::new(); conns.len()];
    // SemStreams publishes carry an id, unique per connection; the acks are read below.
    let mut ids = vec![0u64; conns.len()];
    let with_id = wire::publish_needs_id(plan.pub_dialect);
    let (mut data, mut scratch) = (Vec::new(), Vec::new());
    let mut sent = 0u64;
    loop {
        let now = now_ns();
        let stop = live.stop.load(Ordering::Acquire);
        if now >= stop {
            break;
        }
        // Every message of this tick carries this send time.
        let abused = window.abused(now);
        let due = ((now - t0) as f64 * plan.rate / 1e9) as u64;
        while sent < due {
            let p = (sent % pubs) as usize;
            let topic = ((sent / pubs) % plan.topics as u64) as usize;
            let Some(seq) = out.counts.get_mut(p).and_then(|c| c.get_mut(topic)) else {
                break;
            };
            let stamp = Stamp {
                publisher: p as u32,
                seq: *seq,
                sent_ns: now,
            };
            *seq += 1;
            sent += 1;
            if abused {
                if let Some(n) = out.counts_abused.get_mut(p).and_then(|c| c.get_mut(topic)) {
                    *n += 1;
                }
            }
            wire::stamped_data(stamp, plan.payload, &mut data);
            if let (Some(b), Some(id)) = (batches.get_mut(p), ids.get_mut(p)) {
                *id += 1;
                let id = with_id.then_some(*id);
                wire::publish(plan.pub_dialect, &topics[topic], &data, id, &mut scratch, b);
                if b.len() >= MAX_BATCH_BYTES {
                    break;
                }
            }
        }
        for (c, b) in conns.iter_mut().zip(batches.iter_mut()) {
            let mut pongs = Vec::new();
            let replies = c.read_available(
                |msg| {
                    if let Some(wire::Answer::Ack(_)) = wire::answer(plan.pub_dialect, msg) {
                        return;
                    }
                    let shown: String = String::from_utf8_lossy(msg).chars().take(80).collect();
                    out.tally.error(format!("publisher got: {shown}"));
                },
                &mut pongs,
            );
            match replies {
                Ok(ReadEnd::Drained) => {}
                Ok(ReadEnd::Closed(code, reason)) => {
                    out.tally.close("publisher", code, &reason);
                    return;
                }
                Err(e) => {
                    out.tally.error(format!("publisher read: {e:#}"));
                    return;
                }
            }
            b.extend_from_slice(&pongs);
            if !b.is_empty() {
                // A broker that stops reading would block this write forever: give up
                // once the drain time after the window has passed too.
                let give_up = Duration::from_nanos(
                    (stop + plan.drain.as_nanos() as u64).saturating_sub(now_ns()),
                );
                match tokio::time::timeout(give_up, c.send(b)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        out.tally.error(format!("publisher write: {e:#}"));
                        return;
                    }
                    Err(_) => {
                        out.tally.error(
                            "publisher write blocked past the window and the drain time (the broker stopped reading); the last batch counts as sent",
                        );
                        return;
                    }
                }
                b.clear();
            }
        }
        live.published.store(sent, Ordering::Relaxed);
        tokio::time::sleep(TICK).await;
    }
    live.published.store(sent, Ordering::Relaxed);
}

/// What the churn connections share on the publisher thread.
#[derive(Default)]
struct ChurnState {
    /// Churn connections open right now.
    open: Cell<usize>,
    /// Churn connections that opened, subscribed and closed as planned.
    done: Cell<u64>,
    /// Their errors.
    tally: RefCell<Tally>,
}

/// Opens a connection every `1 / churn` seconds from `t0` to `end`; each subscribes,
/// reads for `churn_hold`, then closes (cleanly or by dropping the socket, alternately).
async fn churn(plan: Arc<Plan>, t0: u64, end: u64, state: Rc<ChurnState>) {
    let every = Duration::from_secs_f64(1.0 / plan.churn);
    tokio::time::sleep(Duration::from_nanos(t0.saturating_sub(now_ns()))).await;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut k = 0usize;
    while now_ns() < end {
        tick.tick().await;
        if state.open.get() >= MAX_CHURN_OPEN {
            state
                .tally
                .borrow_mut()
                .error("churn connection skipped: too many still open");
            continue;
        }
        state.open.set(state.open.get() + 1);
        let (plan, state) = (plan.clone(), state.clone());
        tokio::task::spawn_local(async move {
            let index = plan.subs + plan.slow + plan.pubs + k;
            let topic = plan.topic_name(plan.topic_of(k));
            let result = async {
                let mut c =
                    conn::open(&plan.sub_target, plan.dialect, index, plan.spread_sources())
                        .await?;
                c.subscribe(plan.dialect, std::slice::from_ref(&topic))
                    .await?;
                let hold = tokio::time::sleep(plan.churn_hold);
                tokio::pin!(hold);
                loop {
                    tokio::select! {
                        _ = &mut hold => break,
                        r = c.read_round(|_| {}) => if let ReadEnd::Closed(code, reason) = r? {
                            anyhow::bail!("closed during hold: {code} {reason}");
                        },
                    }
                }
                if k.is_multiple_of(2) {
                    c.close().await;
                }
                anyhow::Ok(())
            }
            .await;
            match result {
                Ok(()) => state.done.set(state.done.get() + 1),
                Err(e) => state.tally.borrow_mut().error(format!("churn: {e:#}")),
            }
            state.open.set(state.open.get() - 1);
        });
        k += 1;
    }
}

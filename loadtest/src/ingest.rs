//! The ingest scenario's edges (issue 19): each publishes stamped messages on the data
//! channel with an id, keeps up to `--window` of them unanswered, and sends the next as
//! acks come back (paced by `--rate` only when one is given). vws edges publish
//! `{"t":TOPIC,"d":DATA,"i":N}`, SemStreams edges `{"type":"data","id":"N","payload":DATA}`
//! with no topic, so the broker puts it on `semstreams.data_channel`. The acks in the
//! measured window, against the broker's CPU in it, are the figure the two dialects are
//! compared by. What the subscribers must get is what was acked (`Published::counts`).

use crate::conn::{Conn, ReadEnd};
use crate::plan::Plan;
use crate::publishers::{self, Published};
use crate::tally::{now_ns, Live, Tally, Times};
use crate::wire::{self, Answer, Dialect, Stamp};
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// What the edges sent and what the broker answered.
#[derive(Serialize, Debug, Default, Clone)]
pub struct Answers {
    /// Publishes written to the socket.
    pub sent: u64,
    pub acks: u64,
    pub nacks: u64,
    /// Acks that arrived inside the measured window.
    pub window_acks: u64,
    /// Sent and never answered by the end of the drain.
    pub unanswered: u64,
    /// Answers whose id was not the next one the edge waited for (acks keep order).
    pub out_of_order: u64,
    /// The first nack, as the broker sent it (cut to 160 characters).
    pub first_nack: Option<String>,
}

impl Answers {
    /// Counts one answer received at `now`; `expected` is the id the edge waited for.
    pub fn take(&mut self, answer: Answer, expected: u64, window: &Times, now: u64, msg: &[u8]) {
        let id = match answer {
            Answer::Ack(id) => {
                self.acks += 1;
                if window.contains(now) {
                    self.window_acks += 1;
                }
                Some(id)
            }
            Answer::Nack(id) => {
                self.nacks += 1;
                if self.first_nack.is_none() {
                    self.first_nack =
                        Some(String::from_utf8_lossy(msg).chars().take(160).collect());
                }
                id
            }
        };
        if id.is_some_and(|id| id != expected) {
            self.out_of_order += 1;
        }
    }

    pub fn merge(&mut self, other: &Answers) {
        self.sent += other.sent;
        self.acks += other.acks;
        self.nacks += other.nacks;
        self.window_acks += other.window_acks;
        self.unanswered += other.unanswered;
        self.out_of_order += other.out_of_order;
        if self.first_nack.is_none() {
            self.first_nack.clone_from(&other.first_nack);
        }
    }
}

/// The topic a publish names: SemStreams data goes to the data channel without one.
pub fn publish_topic(plan: &Plan) -> &str {
    match plan.pub_dialect {
        Dialect::Semstreams => "",
        Dialect::Vws | Dialect::Gows => &plan.ingest_topic,
    }
}

/// Runs the edges until `live.stop`, then waits (up to the drain time) for the answers
/// still owed, and fills `out`.
pub async fn run(plan: &Plan, live: &Live, out: &mut Published) {
    let Some(conns) = publishers::open_all(plan, live, out).await else {
        return;
    };
    let (t0, times) = publishers::start_clock(plan, live);
    tokio::time::sleep(Duration::from_nanos(t0.saturating_sub(now_ns()))).await;
    let edges: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(p, c)| {
            let edge = Edge {
                index: p,
                dialect: plan.pub_dialect,
                topic: publish_topic(plan).to_string(),
                window: plan.window,
                per_edge_rate: plan.rate / plan.pubs as f64,
                payload: plan.payload,
                t0,
                times,
                stop: live.stop.load(Ordering::Acquire),
                drain: plan.drain,
            };
            tokio::task::spawn_local(async move {
                let mut tally = Tally::default();
                let answers = edge.run(c, &mut tally).await;
                (answers, tally)
            })
        })
        .collect();
    let mut all = Answers::default();
    for (e, counts) in edges.into_iter().zip(out.counts.iter_mut()) {
        match e.await {
            Ok((answers, tally)) => {
                all.merge(&answers);
                out.tally.merge(tally);
                // Subscribers are owed what the broker acked.
                if let Some(c) = counts.get_mut(0) {
                    *c = answers.acks;
                }
            }
            Err(_) => out.tally.error("an ingest edge task failed"),
        }
    }
    live.published.store(all.sent, Ordering::Relaxed);
    out.answers = Some(all);
}

/// One edge's settings, copied out of the plan.
struct Edge {
    index: usize,
    dialect: Dialect,
    topic: String,
    window: usize,
    /// Publishes per second for this edge; 0 = as fast as acks come back.
    per_edge_rate: f64,
    payload: usize,
    t0: u64,
    times: Times,
    stop: u64,
    drain: Duration,
}

impl Edge {
    /// Publishes until `stop`, then collects the answers still owed.
    async fn run(&self, mut c: Conn, tally: &mut Tally) -> Answers {
        let mut answers = Answers::default();
        let (mut data, mut scratch, mut batch) = (Vec::new(), Vec::new(), Vec::new());
        // Ids are 1, 2, 3, … on this connection; acks come back in that order.
        let (mut sent, mut answered) = (0u64, 0u64);
        let give_up = self.stop + self.drain.as_nanos() as u64;
        loop {
            let now = now_ns();
            let sending = now < self.stop;
            let in_flight = (sent - answered) as usize;
            if !sending && in_flight == 0 {
                break;
            }
            if now >= give_up {
                answers.unanswered = sent - answered;
                tally.error(format!(
                    "ingest edge: {} publishes unanswered after the drain time",
                    sent - answered
                ));
                break;
            }
            if sending {
                let due = if self.per_edge_rate > 0.0 {
                    ((now - self.t0) as f64 * self.per_edge_rate / 1e9) as u64 + 1
                } else {
                    u64::MAX
                };
                while ((sent - answered) as usize) < self.window && sent < due {
                    let stamp = Stamp {
                        publisher: self.index as u32,
                        seq: sent,
                        sent_ns: now,
                    };
                    wire::stamped_data(stamp, self.payload, &mut data);
                    sent += 1;
                    let id = Some(sent);
                    wire::publish(
                        self.dialect,
                        &self.topic,
                        &data,
                        id,
                        &mut scratch,
                        &mut batch,
                    );
                }
                if !batch.is_empty() {
                    let wait = Duration::from_nanos(give_up.saturating_sub(now_ns()));
                    match tokio::time::timeout(wait, c.send(&batch)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tally.error(format!("ingest edge write: {e:#}"));
                            break;
                        }
                        Err(_) => {
                            tally.error("ingest edge write blocked past the drain time");
                            break;
                        }
                    }
                    batch.clear();
                }
            }
            // Wake for answers, for the next paced publish, or at the stop / give-up time.
            let next_due = if sending && self.per_edge_rate > 0.0 {
                // Publish number `sent` comes due once `sent / rate` seconds have passed.
                self.t0 + (sent as f64 * 1e9 / self.per_edge_rate) as u64
            } else if sending {
                self.stop
            } else {
                give_up
            };
            let wake = Duration::from_nanos(next_due.saturating_sub(now_ns()));
            let round = c.read_round(|msg| match wire::answer(self.dialect, msg) {
                Some(a) if answered < sent => {
                    answered += 1;
                    answers.take(a, answered, &self.times, now_ns(), msg);
                }
                Some(_) => tally.error("ingest edge: an answer with nothing in flight"),
                None if wire::find_stamp(msg).is_some() || wire::is_slow_signal(msg) => {}
                None => {
                    let shown: String = String::from_utf8_lossy(msg).chars().take(80).collect();
                    tally.error(format!("ingest edge got: {shown}"));
                }
            });
            let end = tokio::select! {
                r = round => Some(r),
                _ = tokio::time::sleep(wake) => None,
            };
            match end {
                None | Some(Ok(ReadEnd::Drained)) => {}
                Some(Ok(ReadEnd::Closed(code, reason))) => {
                    tally.close("ingest edge", code, &reason);
                    answers.unanswered = sent - answered;
                    break;
                }
                Some(Err(e)) => {
                    tally.error(format!("ingest edge read: {e:#}"));
                    answers.unanswered = sent - answered;
                    break;
                }
            }
        }
        answers.sent = sent;
        c.close_and_wait(self.drain).await;
        answers
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn answers_count_window_acks_nacks_and_order() {
        let window = Times {
            start: 100,
            end: 200,
            slice: 0,
        };
        let mut a = Answers::default();
        a.take(Answer::Ack(1), 1, &window, 50, b"");
        a.take(Answer::Ack(2), 2, &window, 150, b"");
        a.take(
            Answer::Nack(Some(3)),
            3,
            &window,
            160,
            b"{\"k\":\"n\",\"i\":3}",
        );
        a.take(Answer::Ack(9), 4, &window, 170, b"");
        assert_eq!((a.acks, a.window_acks, a.nacks), (3, 2, 1));
        assert_eq!(a.out_of_order, 1);
        assert_eq!(a.first_nack.as_deref(), Some("{\"k\":\"n\",\"i\":3}"));
        let mut b = Answers::default();
        b.merge(&a);
        b.merge(&a);
        assert_eq!((b.acks, b.nacks, b.out_of_order), (6, 2, 2));
    }
}

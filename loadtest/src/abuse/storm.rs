//! A subscribe/unsubscribe storm from one client (issue 16, finding 4): as many
//! subscription changes as the broker will take, each subscribe undone at once, on a few
//! hundred topics of its own and on a topic the healthy subscribers read. Every change
//! must be answered (an ack, or a nack once a rate limit refuses it), a close must be
//! 1008, and the healthy subscribers of the busy topic must not miss a delivery.

use super::{short, within, Ctx, ANSWER_WAIT};
use crate::conn::ReadEnd;
use crate::wire::{self, Dialect, Reply};
use std::rc::Rc;
use std::time::Duration;
use tokio::time::Instant;

/// Subscribe/unsubscribe pairs written at once; the next batch goes when the broker has
/// answered this one (or after [`ANSWER_WAIT`]).
pub const STORM_PAIRS: usize = 500;

/// The batch: a subscribe and an unsubscribe for each of [`STORM_PAIRS`] topics (every
/// tenth the busy topic), ids 1..=1000.
fn storm_batch(busy_topic: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for n in 0..STORM_PAIRS {
        let topic = if n % 10 == 0 {
            busy_topic.to_string()
        } else {
            format!("abuse/storm/{n}")
        };
        wire::subscribe(Dialect::Vws, &topic, 2 * n + 1, &mut out);
        let unsubscribe = format!(r#"{{"k":"u","t":"{topic}","i":{}}}"#, 2 * n + 2);
        wire::push_frame(wire::OP_TEXT, unsubscribe.as_bytes(), &mut out);
    }
    out
}

/// The reason in a nack, short enough to be a label.
fn reason(nack: &[u8]) -> String {
    let e = serde_json::from_slice::<serde_json::Value>(nack)
        .ok()
        .and_then(|v| v.get("e").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| "no reason".into());
    e.chars().take(60).collect()
}

/// What one batch got back.
#[derive(Default)]
struct Batch {
    acks: u64,
    nacks: u64,
    /// The first nack's reason.
    first_nack: Option<String>,
    closed: Option<(u16, String)>,
}

/// Reads answers to one batch (events from the busy topic are skipped) until all
/// `want` came, the broker closed, or [`ANSWER_WAIT`] passed.
async fn read_batch(c: &mut crate::conn::Conn, want: u64) -> Batch {
    let mut b = Batch::default();
    let deadline = Instant::now() + ANSWER_WAIT;
    while b.acks + b.nacks < want {
        let round = c.read_round(|msg| match wire::reply(Dialect::Vws, msg) {
            Reply::Done => b.acks += 1,
            Reply::Refused(m) => {
                b.nacks += 1;
                if b.first_nack.is_none() {
                    b.first_nack = Some(reason(m));
                }
            }
            Reply::Other => {}
        });
        match tokio::time::timeout_at(deadline, round).await {
            Ok(Ok(ReadEnd::Drained)) => {}
            Ok(Ok(ReadEnd::Closed(code, why))) => {
                b.closed = Some((code, why));
                break;
            }
            Ok(Err(e)) => {
                b.closed = Some((1006, short(&e)));
                break;
            }
            Err(_) => break,
        }
    }
    b
}

/// Writes batches of subscription changes on one connection as fast as the broker
/// answers them; opens a new connection when the broker closes one.
pub async fn sub_storm(ctx: Rc<Ctx>, kind: &'static str) {
    let batch = storm_batch(&ctx.busy_topic);
    let want = 2 * STORM_PAIRS as u64;
    while ctx.running() {
        let Some(mut c) = ctx.open_counted(kind).await else {
            continue;
        };
        let opened = Instant::now();
        let mut changes = 0u64;
        let ended = loop {
            if !ctx.running() {
                break None;
            }
            if let Err(e) = within(c.send(&batch)).await {
                break Some(format!("write failed: {}", short(&e)));
            }
            changes += want;
            let b = read_batch(&mut c, want).await;
            ctx.count(kind, "ack", b.acks);
            if let Some(why) = &b.first_nack {
                ctx.count(kind, format!("nack: {why}"), b.nacks);
            }
            if let Some((code, why)) = b.closed {
                break Some(match code {
                    1008 => format!("closed 1008 {why}"),
                    _ => format!("unexpected: closed {code} {why}"),
                });
            }
            let answered = b.acks + b.nacks;
            if answered < want {
                ctx.count(kind, "unexpected: no answer in 3 s", want - answered);
            }
        };
        ctx.count(kind, "subscription changes sent", changes);
        let secs = opened.elapsed().as_secs_f64();
        if secs > 0.0 && changes > 0 {
            // Rounded to thousands, so the label stays one of a few.
            let per_s = (changes as f64 / secs / 1000.0).round() as u64;
            ctx.count(kind, format!("connection at about {per_s}k changes/s"), 1);
        }
        match ended {
            Some(what) => {
                ctx.count(kind, what, 1);
                c.close().await;
                ctx.pause(Duration::from_millis(200)).await;
            }
            None => {
                ctx.count(kind, "still open at the end of the slice", 1);
                c.close_and_wait(ANSWER_WAIT).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storm_batch_pairs_every_subscribe_with_an_unsubscribe() {
        let batch = storm_batch("bench/0");
        let mut at = 0;
        let mut texts = Vec::new();
        while at < batch.len() {
            // Client frames are masked: only count them and check the kinds by length.
            let len = usize::from(batch[at + 1] & 0x7f);
            assert!(len < 126);
            texts.push(len);
            at += 2 + 4 + len;
        }
        assert_eq!(texts.len(), 2 * STORM_PAIRS);
        assert_eq!(
            reason(br#"{"k":"n","i":3,"e":"rate limited"}"#),
            "rate limited"
        );
        assert_eq!(reason(b"{}"), "no reason");
    }
}

//! Hostile messages on upgraded connections: each must be refused one by one (a nack),
//! or, for a publish flood, end in a 1008 close; the connection otherwise stays open.

use super::{answers, short, within, Answer, Ctx, ANSWER_WAIT};
use crate::conn::ReadEnd;
use crate::wire::{self, Dialect, OP_TEXT};
use std::rc::Rc;
use std::time::Duration;

/// Nesting depth of the deep-JSON messages.
const DEEP: usize = 10_000;
/// Subscriptions asked for on one connection, far past any sane `max_subscriptions`.
const SUBS_PER_CONN: usize = 2_000;
/// Publishes written per write by the publish flood.
const FLOOD_BATCH: usize = 200;
/// Publishes one flood connection writes at the most; then it waits for the broker's
/// answer. The socket buffers take megabytes, so the writer is far ahead of the broker.
const FLOOD_MAX: u64 = 10_000;

/// Messages the broker must refuse with a nack, staying open (SPEC §4): malformed JSON,
/// unknown kinds, missing or mistyped fields, invalid topics and patterns.
fn bad_messages() -> Vec<Vec<u8>> {
    let mut m: Vec<Vec<u8>> = [
        r#"{"k":"s","t":"abuse/x","i":1"#,
        "not json at all",
        "[1,2,3]",
        r#"{"k":"zz","t":"abuse/x","i":3}"#,
        r#"{"k":"s","i":4}"#,
        r#"{"k":"s","t":"","i":5}"#,
        r#"{"k":"s","t":"abuse/#/x","i":6}"#,
        r#"{"k":"s","t":"abuse/\u0001","i":7}"#,
        r#"{"k":"s","t":"abuse/a+","i":8}"#,
        r#"{"t":"abuse/+","d":1,"i":9}"#,
        r#"{"k":"s","t":123,"i":10}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    m.push(format!(r#"{{"k":"s","t":"abuse/{}","i":11}}"#, "x".repeat(5_000)).into_bytes());
    m.push(format!(r#"{{"k":"s","t":"{}x","i":12}}"#, "a/".repeat(100)).into_bytes());
    m
}

/// Messages nested [`DEEP`] levels: arrays in a subscribe, objects, and an unterminated
/// array. Each fits in the default 64 KiB message limit and must get a nack.
fn deep_messages() -> Vec<Vec<u8>> {
    vec![
        format!(
            r#"{{"k":"s","t":"abuse/deep","i":1,"x":{}{}}}"#,
            "[".repeat(DEEP),
            "]".repeat(DEEP)
        )
        .into_bytes(),
        format!("{}1{}", r#"{"a":"#.repeat(DEEP), "}".repeat(DEEP)).into_bytes(),
        "[".repeat(DEEP).into_bytes(),
    ]
}

/// What the broker should answer to a round of requests.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A nack for every request; an ack is unexpected.
    AllRefused,
    /// Acks up to a limit, nacks past it; a round with no nack is unexpected.
    SomeRefused,
}

/// Sends rounds of requests (`build` appends round `n`'s frames and says how many) on a
/// connection, `per_conn` rounds before opening a new one, and counts the answers.
async fn request_rounds(
    ctx: &Ctx,
    kind: &str,
    (pace, per_conn, expect): (Duration, u64, Expect),
    mut build: impl FnMut(u64, &mut Vec<u8>) -> u64,
) {
    let mut round = 0u64;
    let mut out = Vec::new();
    while ctx.running() {
        let Some(mut c) = ctx.open_counted(kind).await else {
            continue;
        };
        for _ in 0..per_conn {
            if !ctx.running() {
                break;
            }
            out.clear();
            let sent = build(round, &mut out);
            round += 1;
            if let Err(e) = within(c.send(&out)).await {
                ctx.unexpected(kind, format!("write failed: {}", short(&e)));
                break;
            }
            ctx.count(kind, "requests sent", sent);
            let a = answers(&mut c, sent).await;
            if !judge(ctx, kind, sent, &a, expect) {
                break;
            }
            ctx.pause(pace).await;
        }
        c.close_and_wait(super::ANSWER_WAIT).await;
    }
}

/// Counts one round's answers; false when the connection is gone.
fn judge(ctx: &Ctx, kind: &str, sent: u64, a: &Answer, expect: Expect) -> bool {
    ctx.count(kind, "nack", a.nacks);
    match expect {
        Expect::AllRefused => ctx.count(kind, "unexpected: accepted", a.acks),
        Expect::SomeRefused => {
            ctx.count(kind, "ack", a.acks);
            if a.nacks == 0 && a.closed.is_none() {
                ctx.unexpected(kind, "nothing refused");
            }
        }
    }
    ctx.count(kind, "other reply", a.other);
    if let Some((code, reason)) = &a.closed {
        ctx.unexpected(kind, format!("closed {code} {reason}"));
        return false;
    }
    let answered = a.acks + a.nacks + a.other;
    if answered < sent {
        ctx.count(kind, "unexpected: no answer in 3 s", sent - answered);
    }
    true
}

/// Floods one connection with messages that must each be refused: malformed JSON,
/// unknown kinds, invalid topics. About 1,100 a second.
pub async fn bad_json(ctx: Rc<Ctx>, kind: &'static str) {
    refused_rounds(&ctx, kind, &bad_messages(), Duration::from_millis(10)).await;
}

/// Sends JSON nested 10,000 deep, about 60 messages a second on one connection.
pub async fn deep_json(ctx: Rc<Ctx>, kind: &'static str) {
    refused_rounds(&ctx, kind, &deep_messages(), Duration::from_millis(50)).await;
}

/// Sends all of `messages` every `pace` on one connection; each must get a nack.
async fn refused_rounds(ctx: &Ctx, kind: &str, messages: &[Vec<u8>], pace: Duration) {
    let rounds = (pace, u64::MAX, Expect::AllRefused);
    request_rounds(ctx, kind, rounds, |_, out| {
        for m in messages {
            wire::push_frame(OP_TEXT, m, out);
        }
        messages.len() as u64
    })
    .await;
}

/// Asks for 2,000 subscriptions to new topics on a fresh connection, then leaves, five
/// times a second: the broker accepts up to `client.max_subscriptions` and refuses the
/// rest, and must free what it accepted.
pub async fn sub_flood(ctx: Rc<Ctx>, kind: &'static str) {
    let rounds = (Duration::from_millis(200), 1, Expect::SomeRefused);
    request_rounds(&ctx, kind, rounds, |round, out| {
        for i in 0..SUBS_PER_CONN {
            wire::subscribe(Dialect::Vws, &format!("abuse/subs/{round}/{i}"), i, out);
        }
        SUBS_PER_CONN as u64
    })
    .await;
}

/// Publishes as fast as the socket takes them until the broker closes the connection
/// for it (SPEC §4: nack "rate limited", then close 1008), then reconnects and repeats.
pub async fn publish_flood(ctx: Rc<Ctx>, kind: &'static str) {
    let mut batch = Vec::new();
    let mut scratch = Vec::new();
    for _ in 0..FLOOD_BATCH {
        wire::publish(
            Dialect::Vws,
            "abuse/flood",
            b"{\"x\":1}",
            None,
            &mut scratch,
            &mut batch,
        );
    }
    while ctx.running() {
        let Some(mut c) = ctx.open_counted(kind).await else {
            continue;
        };
        let mut sent = 0u64;
        let ended = loop {
            if !ctx.running() {
                break None;
            }
            if sent >= FLOOD_MAX {
                let a = answers(&mut c, u64::MAX).await;
                ctx.count(kind, "nack", a.nacks);
                break Some(match a.closed {
                    Some((code, reason)) => flood_closed(code, &reason),
                    None => format!(
                        "unexpected: not closed {} s after {FLOOD_MAX} publishes",
                        ANSWER_WAIT.as_secs()
                    ),
                });
            }
            if let Err(e) = within(c.send(&batch)).await {
                break Some(format!("write failed: {}", short(&e)));
            }
            sent += FLOOD_BATCH as u64;
            let mut nacks = 0;
            let mut pongs = Vec::new();
            let end = c.read_available(
                |msg| {
                    if matches!(wire::reply(Dialect::Vws, msg), wire::Reply::Refused(_)) {
                        nacks += 1;
                    }
                },
                &mut pongs,
            );
            ctx.count(kind, "nack", nacks);
            match end {
                Ok(ReadEnd::Drained) => {}
                Ok(ReadEnd::Closed(code, reason)) => break Some(flood_closed(code, &reason)),
                Err(e) => break Some(format!("unexpected: {}", short(&e))),
            }
            // Let the broker's answers come back between writes.
            tokio::task::yield_now().await;
        };
        ctx.count(kind, "publishes sent", sent);
        match ended {
            Some(what) => ctx.count(kind, what, 1),
            None => ctx.count(kind, "still open at the end of the window", 1),
        }
        ctx.pause(Duration::from_millis(200)).await;
    }
}

/// The label of a flood connection's close: 1008 is the answer SPEC §4 gives.
fn flood_closed(code: u16, reason: &str) -> String {
    match code {
        1008 => format!("closed 1008 {reason}"),
        _ => format!("unexpected: closed {code} {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_messages_fit_the_default_message_limit() {
        for m in deep_messages() {
            assert!(m.len() <= 65_536, "{}", m.len());
            assert!(m.iter().filter(|&&b| b == b'[' || b == b'{').count() >= DEEP);
        }
        assert_eq!(bad_messages().len(), 13);
    }
}

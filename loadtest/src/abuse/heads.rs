//! Connections that never finish their request head (issue 16, findings 2 and 3): many
//! idle sockets that send nothing at all, and a few sockets that send a huge head slowly
//! and never end it. The broker must drop both in time and give back what they held;
//! meanwhile the idle-socket attacker checks that health checks and new WebSockets still
//! get through.

use super::{short, Ctx};
use crate::wire;
use std::rc::Rc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// Idle sockets held at once, all from one source address: more than `abuse.toml`'s
/// `max_connections` (500) plus the broker's 256 sockets of headroom.
pub const IDLE_SOCKETS: usize = 1_000;
/// Idle connects in flight at once.
const IDLE_CONCURRENCY: usize = 64;
/// After the broker lets an idle socket go, the attacker waits this long before the
/// next one (so a broker that refuses at once costs at most 1,000 connects a second).
const IDLE_REOPEN: Duration = Duration::from_secs(1);
/// How often the idle-socket attacker probes `/healthz` and a WebSocket upgrade.
const PROBE_EVERY: Duration = Duration::from_millis(250);

/// Sockets sending a big head at once.
pub const BIG_HEADS: usize = 50;
/// How much of a head each sends (never the blank line that ends it): about what a
/// hyper-based server buffered by default before answering (issue 16 finding 3).
pub const BIG_HEAD_BYTES: usize = 400 * 1024;
/// A big head goes out in chunks of this size...
const BIG_HEAD_CHUNK: usize = 16 * 1024;
/// ... one every this often: 400 KiB in 1 s.
const BIG_HEAD_PACE: Duration = Duration::from_millis(40);

/// The source address index all idle sockets share (one attacker, one address).
const IDLE_SOURCE: usize = 10_000;

/// Waits until the broker answers or closes `s`, or the window ends: "closed",
/// "reset", "answered HTTP 503"…, or `None` when still open at the end.
async fn ending(ctx: &Ctx, s: &mut TcpStream) -> Option<String> {
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout_at(ctx.until, s.read(&mut buf)).await;
    match read {
        Err(_) => None,
        Ok(Ok(0)) => Some("closed".into()),
        Ok(Ok(n)) => Some(format!("answered {}", super::sockets::status_of(&buf[..n]))),
        Ok(Err(_)) => Some("reset".into()),
    }
}

/// Holds [`IDLE_SOCKETS`] TCP connections from one address that never send a byte,
/// opening a new one a second after the broker drops one; labels say how each ended and
/// after how long. Every [`PROBE_EVERY`] it asks `/healthz` and tries an upgrade from
/// another address: both should still work while the idle sockets are held.
pub async fn idle_sockets(ctx: Rc<Ctx>, kind: &'static str) {
    let gate = Rc::new(Semaphore::new(IDLE_CONCURRENCY));
    let holders: Vec<_> = (0..IDLE_SOCKETS)
        .map(|_| tokio::task::spawn_local(idle_socket(ctx.clone(), kind, gate.clone())))
        .collect();
    while ctx.running() {
        probe(&ctx, kind).await;
        ctx.pause(PROBE_EVERY).await;
    }
    for h in holders {
        let _ = h.await;
    }
}

async fn idle_socket(ctx: Rc<Ctx>, kind: &'static str, gate: Rc<Semaphore>) {
    while ctx.running() {
        let connected = {
            let _permit = gate.acquire().await;
            super::within(crate::conn::connect(&ctx.target, IDLE_SOURCE, true)).await
        };
        let mut s = match connected {
            Ok(s) => s,
            Err(e) => {
                ctx.count(kind, format!("connect failed: {}", short(&e)), 1);
                ctx.pause(IDLE_REOPEN).await;
                continue;
            }
        };
        let opened = Instant::now();
        match ending(&ctx, &mut s).await {
            Some(how) => {
                let secs = opened.elapsed().as_secs();
                ctx.count(kind, format!("idle: {how} after {secs} s"), 1);
            }
            None => ctx.count(kind, "idle: still open at the end of the slice", 1),
        }
        ctx.pause(IDLE_REOPEN).await;
    }
}

/// One `/healthz` request and one WebSocket upgrade, each on a fresh connection.
async fn probe(ctx: &Ctx, kind: &str) {
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        ctx.target.addr
    );
    let health = super::within(async {
        let mut s = ctx.connect().await?;
        s.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        while wire::response_head(&answer).is_none() {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
        Ok(super::sockets::status_of(&answer))
    })
    .await;
    match health {
        Ok(status) => ctx.count(kind, format!("probe /healthz: {status}"), 1),
        Err(e) => ctx.count(kind, format!("probe /healthz: {}", short(&e)), 1),
    }
    match ctx.open().await {
        Ok(c) => {
            ctx.count(kind, "probe upgrade: upgraded", 1);
            c.close().await;
        }
        Err(e) => ctx.count(kind, format!("probe upgrade: {}", short(&e)), 1),
    }
}

/// The start of an upgrade request whose head goes on with one endless header.
fn big_head_start() -> Vec<u8> {
    let mut head = Vec::from(&b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"[..]);
    head.extend_from_slice(b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n");
    head.extend_from_slice(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Pad: ");
    head
}

/// [`BIG_HEADS`] connections at once, each sending an upgrade request whose head grows
/// by [`BIG_HEAD_CHUNK`] every [`BIG_HEAD_PACE`] up to [`BIG_HEAD_BYTES`], never ended,
/// then waiting. The right answer is HTTP 431 (or a close) once the head is past what
/// the broker accepts, or a close at its handshake timeout; the label says how much had
/// been sent by then.
pub async fn big_heads(ctx: Rc<Ctx>, kind: &'static str) {
    super::run_copies(BIG_HEADS, |i| big_head(ctx.clone(), kind, i)).await;
}

async fn big_head(ctx: Rc<Ctx>, kind: &'static str, i: usize) {
    let start = big_head_start();
    let pad = vec![b'a'; BIG_HEAD_CHUNK];
    // Staggered, so the heads do not all reach the same size at the same instant.
    ctx.pause(BIG_HEAD_PACE * i as u32 / BIG_HEADS as u32).await;
    while ctx.running() {
        let mut s = match ctx.connect().await {
            Ok(s) => s,
            Err(e) => {
                ctx.count(kind, format!("connect failed: {}", short(&e)), 1);
                ctx.pause(Duration::from_secs(1)).await;
                continue;
            }
        };
        let opened = Instant::now();
        let mut sent = 0usize;
        let mut ended = None;
        while ended.is_none() && sent < BIG_HEAD_BYTES && ctx.running() {
            let chunk = if sent == 0 { &start[..] } else { &pad[..] };
            match super::within(async { Ok(s.write_all(chunk).await?) }).await {
                Ok(()) => sent += chunk.len(),
                Err(_) => ended = Some("write failed".to_string()),
            }
            // Whatever the broker said so far (a 431, a close) ends the head.
            let mut buf = [0u8; 1024];
            match s.try_read(&mut buf) {
                Ok(0) => ended = Some("closed".into()),
                Ok(n) => ended = Some(format!("answered {}", super::sockets::status_of(&buf[..n]))),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => ended = Some("reset".into()),
            }
            if ended.is_none() {
                ctx.pause(BIG_HEAD_PACE).await;
            }
        }
        let ended = match ended {
            Some(how) => Some(how),
            None => ending(&ctx, &mut s).await,
        };
        // In whole chunks, so the labels stay few.
        let kib = sent / BIG_HEAD_CHUNK * BIG_HEAD_CHUNK / 1024;
        match ended {
            Some(how) => ctx.count(
                kind,
                format!(
                    "{how} with {kib} KiB of head sent, after {} s",
                    opened.elapsed().as_secs()
                ),
                1,
            ),
            None => ctx.count(kind, format!("still open at the end, {kib} KiB sent"), 1),
        }
        ctx.pause(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_big_head_is_an_upgrade_that_never_ends() {
        let head = big_head_start();
        assert!(head.starts_with(b"GET /ws HTTP/1.1\r\n"));
        assert!(memchr::memmem::find(&head, b"\r\n\r\n").is_none());
        assert!(head.len() < BIG_HEAD_CHUNK);
        const { assert!(IDLE_SOCKETS > 500 + 256) };
    }
}

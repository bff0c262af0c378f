//! Attacks on connections themselves rather than on what they carry: handshakes that
//! never finish, garbage instead of HTTP, connections reset mid-way, and bursts past the
//! connection limit.

use super::{short, within, Ctx, ANSWER_WAIT};
use crate::wire::{self, Dialect, OP_TEXT};
use std::rc::Rc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// Slowloris connections held at once.
pub const SLOWLORIS: usize = 200;
/// Connection attempts in one burst.
pub const BURST: usize = 600;
/// Burst attempts in flight at once.
const BURST_CONCURRENCY: usize = 64;

/// "HTTP 400" for an answer that starts with a status line, else what it looked like.
pub(super) fn status_of(answer: &[u8]) -> String {
    match wire::response_head(answer) {
        Some((status, _)) if status > 0 => format!("HTTP {status}"),
        _ if answer.starts_with(b"HTTP/") => "a partial HTTP answer".into(),
        _ => "bytes that are not HTTP".into(),
    }
}

/// Holds [`SLOWLORIS`] connections that never finish their request: a quarter send
/// nothing, the rest a request line and then one header line a second. Each is reopened
/// when the broker lets it go; the label says after how long (whole seconds).
pub async fn slowloris(ctx: Rc<Ctx>, kind: &'static str) {
    super::run_copies(SLOWLORIS, |i| slow_client(ctx.clone(), kind, i)).await;
}

async fn slow_client(ctx: Rc<Ctx>, kind: &'static str, i: usize) {
    let silent = i.is_multiple_of(4);
    let mode = if silent { "silent" } else { "dribbling" };
    // Staggered, so the broker's timeouts do not all fire in the same instant.
    ctx.pause(Duration::from_millis(10 * i as u64)).await;
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
        let ended = dribble(&ctx, &mut s, silent).await;
        let secs = opened.elapsed().as_secs();
        match ended {
            Some(how) => ctx.count(kind, format!("{mode}: {how} after {secs} s"), 1),
            None => ctx.count(kind, format!("{mode}: still open at the end ({secs} s)"), 1),
        }
    }
}

/// Sends a header line a second (unless `silent`) until the broker answers or closes;
/// `None` when the window ended first.
async fn dribble(ctx: &Ctx, s: &mut TcpStream, silent: bool) -> Option<String> {
    if !silent
        && s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
            .await
            .is_err()
    {
        return Some("reset".into());
    }
    let mut buf = [0u8; 1024];
    let mut line = 0u64;
    while ctx.running() {
        let wait = (Instant::now() + Duration::from_secs(1)).min(ctx.until);
        match tokio::time::timeout_at(wait, s.read(&mut buf)).await {
            Ok(Ok(0)) => return Some("closed".into()),
            Ok(Ok(n)) => return Some(format!("answered {}", status_of(&buf[..n]))),
            Ok(Err(_)) => return Some("reset".into()),
            Err(_) if silent => {}
            Err(_) => {
                line += 1;
                let header = format!("X-Slow-{line}: 1\r\n");
                if s.write_all(header.as_bytes()).await.is_err() {
                    return Some("reset".into());
                }
            }
        }
    }
    None
}

/// Requests that are not HTTP, not valid HTTP, or not a valid upgrade.
fn garbage() -> Vec<(&'static str, Vec<u8>)> {
    let mut random = Vec::with_capacity(2048);
    let mut x: u32 = 0x9e37_79b9;
    for _ in 0..2048 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        random.push(x as u8);
    }
    let upgrade = |line: &str, extra: &str| {
        format!(
            "{line}\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{extra}\r\n"
        )
        .into_bytes()
    };
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    vec![
        ("random bytes", random),
        ("not HTTP", b"HELLO BROKER\r\n\r\n".to_vec()),
        ("HTTP/9.9", b"GET /ws HTTP/9.9\r\nHost: x\r\n\r\n".to_vec()),
        (
            "NUL in the path",
            b"GET /\0\0 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "200 KB header",
            format!(
                "GET /ws HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "a".repeat(200_000)
            )
            .into_bytes(),
        ),
        (
            "10,000 headers",
            format!("GET /ws HTTP/1.1\r\n{}\r\n", "X-A: b\r\n".repeat(10_000)).into_bytes(),
        ),
        (
            "upgrade without a key",
            upgrade("GET /ws HTTP/1.1", "Sec-WebSocket-Version: 13\r\n"),
        ),
        (
            "upgrade version 99",
            upgrade(
                "GET /ws HTTP/1.1",
                &format!("{key}Sec-WebSocket-Version: 99\r\n"),
            ),
        ),
        (
            "unknown dialect",
            upgrade(
                "GET /ws?dialect=mqtt HTTP/1.1",
                &format!("{key}Sec-WebSocket-Version: 13\r\n"),
            ),
        ),
        (
            "POST upgrade",
            upgrade(
                "POST /ws HTTP/1.1",
                &format!("{key}Sec-WebSocket-Version: 13\r\n"),
            ),
        ),
    ]
}

/// Sends garbage instead of an upgrade, about 40 connections a second, and records the
/// answer: a 4xx or a plain close is right; a 1xx-3xx (an upgrade, say) is not.
pub async fn garbage_http(ctx: Rc<Ctx>, kind: &'static str) {
    let cases = garbage();
    for (name, bytes) in cases.iter().cycle() {
        if !ctx.running() {
            break;
        }
        ctx.pause(Duration::from_millis(25)).await;
        let mut s = match ctx.connect().await {
            Ok(s) => s,
            Err(e) => {
                ctx.count(kind, format!("connect failed: {}", short(&e)), 1);
                continue;
            }
        };
        // A broker may answer and close before a long request is all written.
        let _ = within(async { Ok(s.write_all(bytes).await?) }).await;
        let mut answer = Vec::new();
        let read = tokio::time::timeout(ANSWER_WAIT, async {
            let mut buf = [0u8; 1024];
            while wire::response_head(&answer).is_none() {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        let label = match (read, answer.is_empty()) {
            (Err(_), true) => format!("{name}: no answer in 3 s"),
            (_, true) => format!("{name}: closed without an answer"),
            _ => format!("{name}: {}", status_of(&answer)),
        };
        match wire::response_head(&answer) {
            Some((status, _)) if status < 400 => ctx.unexpected(kind, label),
            _ => ctx.count(kind, label, 1),
        }
    }
}

/// Connects and resets (SO_LINGER 0) at four points of a connection's life, about 60
/// times a second: before sending anything, in the middle of the request, right after
/// subscribing to a topic the healthy subscribers read, and in the middle of a frame.
pub async fn rst_churn(ctx: Rc<Ctx>, kind: &'static str) {
    let request = ctx.target.upgrade_request(Dialect::Vws);
    let mut half_publish = Vec::new();
    wire::push_frame(OP_TEXT, &[b'x'; 1000], &mut half_publish);
    half_publish.truncate(500);
    let topics = [ctx.busy_topic.clone()];
    for step in 0u64.. {
        if !ctx.running() {
            break;
        }
        ctx.pause(Duration::from_millis(15)).await;
        let (name, stream) = match step % 4 {
            0 => ("after connect", ctx.connect().await),
            1 => (
                "mid request",
                async {
                    let mut s = ctx.connect().await?;
                    within(async { Ok(s.write_all(&request[..request.len() / 2]).await?) }).await?;
                    Ok(s)
                }
                .await,
            ),
            2 => (
                "after subscribing",
                async {
                    let mut c = ctx.open().await?;
                    within(c.subscribe(Dialect::Vws, &topics)).await?;
                    // Let some deliveries be on their way when the reset lands.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok(c.stream)
                }
                .await,
            ),
            _ => (
                "mid frame",
                async {
                    let mut c = ctx.open().await?;
                    within(c.send(&half_publish)).await?;
                    Ok(c.stream)
                }
                .await,
            ),
        };
        match stream.and_then(|s| Ok(s.set_zero_linger()?)) {
            Ok(()) => ctx.count(kind, format!("{name}: reset"), 1),
            Err(e) => ctx.count(kind, format!("{name}: {}", short(&e)), 1),
        }
    }
}

/// Every 3 s, tries [`BURST`] upgrades at once (64 in flight), holds what it got for a
/// second, then lets go (half with a close frame, half with a reset). Past the broker's
/// `max_connections` the answer must be HTTP 503.
pub async fn conn_burst(ctx: Rc<Ctx>, kind: &'static str) {
    while ctx.running() {
        let gate = Rc::new(Semaphore::new(BURST_CONCURRENCY));
        let opens: Vec<_> = (0..BURST)
            .map(|_| {
                let (ctx, gate) = (ctx.clone(), gate.clone());
                tokio::task::spawn_local(async move {
                    let _permit = gate.acquire().await;
                    ctx.open().await
                })
            })
            .collect();
        let mut held = Vec::new();
        for open in opens {
            match open.await {
                Ok(Ok(c)) => held.push(c),
                Ok(Err(e)) => ctx.count(kind, short(&e), 1),
                Err(_) => ctx.count(kind, "attempt failed", 1),
            }
        }
        ctx.count(kind, "upgraded", held.len() as u64);
        ctx.pause(Duration::from_secs(1)).await;
        for (i, c) in held.into_iter().enumerate() {
            if i % 2 == 0 {
                let _ = c.stream.set_zero_linger();
            } else {
                c.close().await;
            }
        }
        ctx.pause(Duration::from_secs(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_named_by_status() {
        assert_eq!(status_of(b"HTTP/1.1 400 Bad Request\r\n\r\n"), "HTTP 400");
        assert_eq!(status_of(b"HTTP/1.1 40"), "a partial HTTP answer");
        assert_eq!(status_of(b"\x88\x02"), "bytes that are not HTTP");
        assert_eq!(garbage().len(), 10);
    }
}

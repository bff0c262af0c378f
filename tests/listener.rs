//! Attacks on the listener, before any request is complete (issue 16): thousands of
//! silent sockets, oversized and slow request heads, a dual-stack listener seeing IPv4
//! clients as IPv4-mapped IPv6, and running out of file descriptors. Each case runs the
//! real binary on loopback and checks that health, readiness, the API and new
//! WebSockets still work, and that the refusal was counted.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;
use common::*;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn rejected(broker: &Broker, reason: &str) -> f64 {
    rejections(&broker.metrics().await)
        .get(reason)
        .copied()
        .unwrap_or_else(|| panic!("no rejection reason {reason:?} in metrics"))
}

/// Opens `n` TCP connections that never send a byte.
async fn idle_sockets(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(
            within(HTTP, "an idle connect", TcpStream::connect(addr))
                .await
                .unwrap(),
        );
    }
    held
}

/// 2,000 silent sockets (far over `max_connections` + the 256 sockets of HTTP headroom)
/// must not lock anyone out: health, readiness, publishing and a new WebSocket work
/// while they are held, and the sockets closed to make room are counted.
#[tokio::test]
async fn thousands_of_idle_sockets_do_not_lock_out_health_api_or_upgrades() {
    let broker = Broker::start(
        "[server]\nshards = 2\nmax_connections = 50\nmax_pending_handshakes = 64\n\
         first_byte_timeout = \"60s\"\nhandshake_timeout = \"60s\"\n",
    );
    let held = idle_sockets(broker.addr, 2000).await;
    for path in ["/healthz", "/readyz"] {
        let r = within(HTTP, path, broker.get(path)).await;
        assert_eq!(r.status, 200, "{path} under 2,000 idle sockets: {}", r.text);
    }
    let mut sub = within(HTTP, "an upgrade", broker.vws_subscriber("idle/ok")).await;
    let r = broker.publish("idle/ok", json!({"n": 1})).await;
    assert!(r.is_success(), "publish: {} {}", r.status, r.text);
    let got = sub.recv_json(RECV).await;
    assert_eq!(got["d"], json!({"n": 1}), "{got}");
    assert!(
        rejected(&broker, "pending_handshake_evicted").await >= 1000.0,
        "the idle sockets were closed to make room, and counted"
    );
    drop(held);
}

/// A socket that sends nothing is closed after `server.first_byte_timeout`, well before
/// `server.handshake_timeout`, and counted as a handshake timeout.
#[tokio::test]
async fn a_silent_socket_is_closed_after_the_first_byte_timeout() {
    let broker =
        Broker::start("[server]\nfirst_byte_timeout = \"300ms\"\nhandshake_timeout = \"30s\"\n");
    let before = rejected(&broker, "handshake_timeout").await;
    let mut s = TcpStream::connect(broker.addr).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let r = within(RECV, "the silent socket to be closed", s.read(&mut buf)).await;
    assert!(matches!(r, Ok(0) | Err(_)), "answered {r:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
    eventually("the timeout counted", RECV, || async {
        rejected(&broker, "handshake_timeout").await > before
    })
    .await;
}

/// A request head longer than `server.max_request_head_bytes` gets 431 on both paths: a
/// head the lean upgrade path reads whole (3 KiB over a 2 KiB limit) and one only hyper
/// sees (40 KiB over the 16 KiB default).
#[tokio::test]
async fn an_oversized_request_head_gets_431() {
    for (toml, pad) in [
        ("[server]\nmax_request_head_bytes = 2048\n", 3 * 1024),
        ("", 40 * 1024),
    ] {
        let broker = Broker::start(toml);
        let before = rejected(&broker, "request_head_too_large").await;
        let extra = format!("Host: x\r\nX-Pad: {}\r\n", "a".repeat(pad));
        let head = raw_http(broker.addr, upgrade_request("/ws", &extra).as_bytes()).await;
        assert_eq!(status_of(&head), 431, "{pad} bytes of padding: {head:?}");
        eventually("the 431 counted", RECV, || async {
            rejected(&broker, "request_head_too_large").await > before
        })
        .await;
        let r = broker.get("/healthz").await;
        assert_eq!(r.status, 200);
    }
}

/// A head whose first byte comes late and whose rest trickles in is cut
/// `server.handshake_timeout` after accept, not a fresh timeout after its first byte.
#[tokio::test]
async fn a_slow_head_is_cut_at_the_handshake_timeout_once() {
    let broker =
        Broker::start("[server]\nfirst_byte_timeout = \"1s\"\nhandshake_timeout = \"1s\"\n");
    let before = rejected(&broker, "handshake_timeout").await;
    let s = TcpStream::connect(broker.addr).await.unwrap();
    let started = Instant::now();
    let (mut rd, mut wr) = s.into_split();
    // The first byte just before first_byte_timeout, then a byte every 100 ms.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let trickle = tokio::spawn(async move {
        for b in b"GET /ws HTTP/1.1\r\nHost: x\r\nX-Slow: ".iter().cycle() {
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut buf = [0u8; 256];
    let r = match within(RECV, "the slow head to be cut", rd.read(&mut buf)).await {
        Ok(0) | Err(_) => Ok(()),
        Ok(n) => Err(String::from_utf8_lossy(&buf[..n]).into_owned()),
    };
    let waited = started.elapsed();
    trickle.abort();
    assert_eq!(r, Ok(()), "a head that never ended was answered");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(1500),
        "cut after {waited:?} (handshake_timeout 1s, counted from accept)"
    );
    eventually("the timeout counted", RECV, || async {
        rejected(&broker, "handshake_timeout").await > before
    })
    .await;
}

/// An upgrade carrying a large JWT (a 12 KiB head: more than the lean path's 8 KiB first
/// read, less than the 16 KiB default limit) is still accepted.
#[tokio::test]
async fn a_large_jwt_upgrade_within_the_limit_is_accepted() {
    const SECRET: &str = "test-jwt-secret-0123456789";
    let broker = Broker::start_with(
        "[auth]\ntype = \"jwt\"\njwt_secret_env = \"TEST_JWT\"\n",
        &[],
        &[("TEST_JWT", SECRET)],
    );
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = encode(
        &Header::default(),
        &json!({"sub": "big", "exp": exp, "note": "n".repeat(9000)}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert!(token.len() > 11_000, "token of {} bytes", token.len());
    let extra =
        format!("Host: x\r\nAuthorization: Bearer {token}\r\nSec-WebSocket-Protocol: vws\r\n");
    let request = upgrade_request("/ws", &extra);
    assert!((8 * 1024..16 * 1024).contains(&request.len()));
    let head = raw_http(broker.addr, request.as_bytes()).await;
    assert_eq!(status_of(&head), 101, "{head:?}");
}

/// A listener on `[::]` sees an IPv4 client as `::ffff:127.0.0.1`: that is loopback,
/// so the keyless API (loopback only) still answers it.
#[tokio::test]
async fn a_dual_stack_listener_treats_mapped_ipv4_loopback_as_loopback() {
    let broker = Broker::start_on("", "[::]:0".parse().unwrap());
    let v4 = SocketAddr::from(([127, 0, 0, 1], broker.addr.port()));
    let body = json!({"channel": "dual/stack", "data": 1}).to_string();
    let r = http(
        v4,
        "POST",
        "/api/publish",
        Some("application/json"),
        body.into(),
    )
    .await;
    assert!(
        r.is_success(),
        "keyless publish over IPv4 to [::]: {} {}",
        r.status,
        r.text
    );
}

/// Out of file descriptors, `accept` fails on every attempt: the broker pauses accepting
/// (backing off), logs it at most once per period per shard instead of ~50 lines a
/// second, counts every failure, and serves again once descriptors are free.
#[tokio::test]
async fn running_out_of_descriptors_pauses_accepting_and_logs_rarely() {
    let broker = Broker::start("[server]\nshards = 1\nfirst_byte_timeout = \"30s\"\n");
    let open = broker.open_fds().expect("/proc is readable");
    // Room for a few more descriptors only.
    let limit = libc::rlimit {
        rlim_cur: (open + 8) as libc::rlim_t,
        rlim_max: (open + 8) as libc::rlim_t,
    };
    let pid = broker.pid() as libc::pid_t;
    // SAFETY: prlimit reads `limit`, which lives across the call; the old value is not asked for.
    let set = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &limit, std::ptr::null_mut()) };
    assert_eq!(set, 0, "prlimit: {}", std::io::Error::last_os_error());
    let held = idle_sockets(broker.addr, 40).await;
    // The one fixed wait: failures must go on for a while to show how often they log.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(held);
    until_ok("accepting again, failures counted", RECV, || async {
        let r = broker.get("/healthz").await;
        let failures = counter(&broker.metrics().await, "shardcast_accept_errors_total");
        if r.status == 200 && failures >= 1.0 {
            Ok(())
        } else {
            Err(format!("healthz {}, {failures} accept errors", r.status))
        }
    })
    .await;
    let stderr = broker.stderr();
    let lines = stderr.matches("accept failed").count();
    assert!(
        (1..=2).contains(&lines),
        "{lines} 'accept failed' lines in 1.5 s:\n{stderr}"
    );
}

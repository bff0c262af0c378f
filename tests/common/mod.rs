//! Test harness shared by every behaviour test in `tests/`: runs the real `shardcast`
//! binary on `127.0.0.1:0`, talks to it with a real WebSocket client (tokio-tungstenite),
//! a hand-rolled raw WebSocket client (for frames a well-behaved client cannot send), and a
//! small hyper HTTP/1.1 client.
//!
//! House rule (STYLE.md rule 11): no sleeps. Readiness is the broker's
//! `shardcast listening on ADDR` stdout line; a subscription is known to be in place once
//! it is acked (vws `i`) or once a gows ping sent after it has been answered. Every await is
//! bounded by a timeout so a broken server fails a test instead of hanging it. The only
//! fixed-length waits are `expect_silence`-style assertions of absence; `eventually` polls
//! an observable counter (e.g. `/api/stats` clients) where the broker offers no event.
//!
//! Files: `broker` (the process), `cli` (bounded CLI runs), `http`, `ws` (tokio-tungstenite
//! client + gows/vws helpers + canary), `raw` (hand-made frames), `proxy` (a TCP proxy that
//! cuts connections). Set `SHARDCAST_TEST_BIN` to run the suite against another build of
//! the binary (e.g. `target/release/shardcast`).

#![allow(dead_code, unused_imports)]

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Default bound for one expected reply / delivery.
pub const RECV: Duration = Duration::from_secs(5);
/// Bound for the broker to print its ready line.
pub const READY: Duration = Duration::from_secs(20);
/// Bound for one HTTP exchange.
pub const HTTP: Duration = Duration::from_secs(10);
/// Short window used only to assert that something does *not* arrive.
pub const SILENCE: Duration = Duration::from_millis(300);

/// Await `fut` for at most `d`, panicking with `what` on timeout.
pub async fn within<F: Future>(d: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(d, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {d:?} waiting for {what}"),
    }
}

/// Poll an observable condition (e.g. a counter in `/api/stats`) until it holds, at most
/// `d`. Used only where the broker exposes no event to await; the poll interval is short
/// and the bound makes a broken server fail the test.
pub async fn eventually<F, Fut>(what: &str, d: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    until_ok(what, d, || {
        let held = check();
        async move { held.await.then_some(()).ok_or_else(String::new) }
    })
    .await
}

/// Like [`eventually`], for a check that says what it saw (`Err(observation)`): the last
/// observation is in the panic message when the condition never holds within `d`.
pub async fn until_ok<F, Fut>(what: &str, d: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + d;
    loop {
        let last = match check().await {
            Ok(()) => return,
            Err(seen) => seen,
        };
        assert!(
            Instant::now() < deadline,
            "condition never held within {d:?}: {what} {last}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Number of clients `/api/stats` reports.
pub async fn stats_clients(broker: &Broker) -> u64 {
    let s = broker.stats().await;
    s["clients"]
        .as_u64()
        .unwrap_or_else(|| panic!("stats.clients is not a count: {s}"))
}

mod broker;
mod cli;
mod external;
mod http;
pub mod proxy;
mod raw;
mod ws;

pub use broker::*;
pub use cli::*;
pub use external::*;
pub use http::*;
pub use raw::*;
pub use ws::*;

/// Reference MQTT-style matcher used to cross-check the wildcard table.
pub fn mqtt_matches(pattern: &str, topic: &str) -> bool {
    let p: Vec<&str> = pattern.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    let mut i = 0;
    loop {
        match (p.get(i), t.get(i)) {
            (Some(&"#"), _) => return true, // also matches the parent (`a/#` ~ `a`)
            (Some(&"+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
        i += 1;
    }
}

/// Find a numeric field whose key mentions subscribers/count anywhere in `v`.
pub fn find_count(v: &Value) -> Option<u64> {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let k = k.to_ascii_lowercase();
                if (k.contains("subscriber") || k.contains("count")) && x.is_u64() {
                    return x.as_u64();
                }
            }
            m.values().find_map(find_count)
        }
        Value::Array(a) => a.iter().find_map(find_count),
        _ => None,
    }
}

/// Reads a counter or gauge (`name` with its labels, exactly) from `/metrics` text.
pub fn counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from metrics"))
}

/// Every `shardcast_rejections_total{reason=...}` counter in `/metrics` text, by reason.
pub fn rejections(metrics: &str) -> std::collections::BTreeMap<String, f64> {
    metrics
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("shardcast_rejections_total{reason=\"")?;
            let (reason, value) = rest.split_once("\"} ")?;
            Some((reason.to_string(), value.parse().ok()?))
        })
        .collect()
}

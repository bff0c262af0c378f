//! What the client costs against a running broker (BENCHMARKS.md, "Upstream links and the
//! Rust client (issue 20)"):
//!
//! 1. publish-with-ack round trips, one at a time: round trips per second and their
//!    p50/p99/max;
//! 2. publishes with acks, `WINDOW` in flight at once: publishes acked per second;
//! 3. subscription throughput: one client subscribed to a channel while another publishes
//!    `N` messages on it (acked, `WINDOW` in flight): events read per second through
//!    [`shardcast_client::Subscription::next`], counted until every one arrived.
//!
//! The broker must allow client publishes (`[client] allow_publish = true`, and
//! `publish_rate = 0.0` to lift the per-connection limit; `loadtest/bench.toml` has both).
//!
//! ```sh
//! cargo run --release -p shardcast-client --example bench -- ws://127.0.0.1:8080/ws [N] [WINDOW]
//! ```

use shardcast_client::{Client, Error};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:8080/ws".into());
    let n: usize = args.next().map_or(Ok(20_000), |a| a.parse())?;
    let window: usize = args.next().map_or(Ok(64), |a| a.parse())?;
    let payload = serde_json::json!({"x": "x".repeat(100)});

    let publisher = Client::builder(&url)
        .queue_size(window.max(1) * 2)
        .connect()?;
    // The first publish waits for the connection; it is not measured.
    publisher
        .publish("clientbench/warm", &payload, BTreeMap::new())
        .await?;

    // 1. One at a time.
    let mut rtts = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        publisher
            .publish("clientbench/rtt", &payload, BTreeMap::new())
            .await?;
        rtts.push(t.elapsed());
    }
    let wall = start.elapsed();
    rtts.sort_unstable();
    println!(
        "publish with ack, 1 in flight:  {n} round trips in {:.2} s = {:.0}/s; p50 {} p99 {} max {}",
        wall.as_secs_f64(),
        n as f64 / wall.as_secs_f64(),
        us(pct(&rtts, 0.50)),
        us(pct(&rtts, 0.99)),
        us(pct(&rtts, 1.0)),
    );

    // 2. `window` in flight.
    let wall = pipelined(&publisher, "clientbench/pipe", &payload, n, window).await?;
    println!(
        "publish with ack, {window} in flight: {n} acked in {:.2} s = {:.0}/s",
        wall.as_secs_f64(),
        n as f64 / wall.as_secs_f64()
    );

    // 3. A subscriber reading what another client publishes.
    let subscriber = Client::builder(&url)
        .events_per_subscription(4096)
        .connect()?;
    let mut sub = subscriber.subscribe("clientbench/sub").await?;
    let reader = tokio::spawn(async move {
        let mut got = 0usize;
        while got < n {
            match tokio::time::timeout(Duration::from_secs(30), sub.next()).await {
                Ok(Some(_event)) => got += 1,
                Ok(None) | Err(_) => break,
            }
        }
        got
    });
    let start = Instant::now();
    pipelined(&publisher, "clientbench/sub", &payload, n, window).await?;
    let got = reader.await?;
    let wall = start.elapsed();
    println!(
        "subscription: {got} of {n} events read in {:.2} s (first publish to last event) = {:.0}/s",
        wall.as_secs_f64(),
        got as f64 / wall.as_secs_f64()
    );
    Ok(())
}

/// Publishes `n` times on `topic` with at most `window` acks outstanding; the time taken.
async fn pipelined(
    client: &Client,
    topic: &str,
    payload: &serde_json::Value,
    n: usize,
    window: usize,
) -> Result<Duration, Error> {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        while tasks.len() >= window.max(1) {
            if let Some(r) = tasks.join_next().await {
                r.map_err(|e| Error::Encode(e.to_string()))??;
            }
        }
        let (c, t, p) = (client.clone(), topic.to_owned(), payload.clone());
        tasks.spawn(async move { c.publish(&t, &p, BTreeMap::new()).await });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| Error::Encode(e.to_string()))??;
    }
    Ok(start.elapsed())
}

/// The `q` quantile of sorted durations.
fn pct(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn us(d: Duration) -> String {
    format!("{} µs", d.as_micros())
}

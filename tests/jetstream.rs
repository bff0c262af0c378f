//! Durable history on NATS JetStream (`[cluster] history = "jetstream"`, SPEC §12)
//! against the real binary and a real `nats-server -js` on a free port with a temporary
//! store directory. Needs `nats-server` (and `haproxy` for the failover test): without
//! one a test prints a NOTICE and passes, unless `SHARDCAST_REQUIRE_NATS=1` /
//! `SHARDCAST_REQUIRE_HAPROXY=1` (set by `.ci/run`). Child processes die with their handles.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;
use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bound for reading a whole channel.
const STREAM: Duration = Duration::from_secs(30);

/// `nats-server` on `port`, with JetStream storing in `store` (or without JetStream).
async fn nats(bin: &Path, port: u16, store: Option<&Path>) -> Server {
    let dir = store.map(|s| s.display().to_string());
    let js = match &dir {
        Some(d) => vec!["-js", "-sd", d.as_str()],
        None => Vec::new(),
    };
    start_nats(bin, port, &js).await
}

const HISTORY: &str = r#"
[client]
allow_publish = true
publish_rate = 0.0

[[history]]
pattern = "feed/+"
size = 10000
"#;

fn node_config(port: u16, id: &str) -> String {
    format!(
        "{HISTORY}\n[cluster]\nnats_url = \"nats://127.0.0.1:{port}\"\nnode_id = \"{id}\"\nsubject_prefix = \"sctest\"\nhistory = \"jetstream\"\njetstream_timeout = \"2s\"\n"
    )
}

fn node(port: u16, id: &str) -> Broker {
    Broker::start(&node_config(port, id))
}

/// Waits until the node's JetStream history is up.
async fn js_up(b: &Broker) {
    eventually("JetStream history up", READY, || async {
        counter(&b.metrics().await, "shardcast_jetstream_up") == 1.0
    })
    .await;
}

/// Waits until the node holds at least `n` NATS subscriptions.
async fn subscriptions(b: &Broker, n: f64) {
    eventually("NATS subscriptions", READY, || async {
        counter(&b.metrics().await, "shardcast_cluster_subscriptions") >= n
    })
    .await;
}

/// A vws client resuming `channel` after `offset` (of `epoch`, if given); returns the ack.
async fn resume(b: &Broker, channel: &str, offset: u64, epoch: Option<&str>) -> (Ws, Value) {
    let mut ws = b.ws(Dialect::Subprotocol("vws")).await;
    let mut msg = json!({"k": "s", "t": channel, "i": 1, "o": offset});
    if let Some(e) = epoch {
        msg["e"] = json!(e);
    }
    ws.send_json(&msg).await;
    let ack = ws.recv_json(STREAM).await;
    assert_eq!(ack["k"], "a", "{ack}");
    (ws, ack)
}

/// Reads events with offsets `from..=to`, asserting each comes once, in order; returns
/// their data.
async fn read_offsets(ws: &mut Ws, from: u64, to: u64, what: &str) -> Vec<Value> {
    let deadline = Instant::now() + STREAM;
    let mut out = Vec::new();
    for expect in from..=to {
        let left = deadline.saturating_duration_since(Instant::now());
        let v = ws.recv_json(left).await;
        assert_eq!(
            v["o"].as_u64(),
            Some(expect),
            "{what}: offsets must follow each other: {v}"
        );
        out.push(v["d"].clone());
    }
    out
}

/// `b` publishes 0..n/2 on `channel` while `c` publishes n/2..n: the two nodes race for
/// every offset.
async fn race(b: &Broker, c: &Broker, channel: &str, n: u64) {
    let on_b = async {
        for i in 0..n / 2 {
            b.publish(channel, json!(i)).await;
        }
    };
    let on_c = async {
        for i in n / 2..n {
            c.publish(channel, json!(i)).await;
        }
    };
    tokio::join!(on_b, on_c);
}

#[tokio::test]
async fn offsets_are_gapless_across_nodes_and_any_node_replays() {
    let Some(bin) = require_nats() else { return };
    let store = tempfile::tempdir().unwrap();
    let port = free_port();
    let _nats = nats(&bin, port, Some(store.path())).await;
    let (a, b, c) = (node(port, "a"), node(port, "b"), node(port, "c"));
    for n in [&a, &b, &c] {
        js_up(n).await;
    }
    let (mut sub, ack) = resume(&a, "feed/x", 0, None).await;
    assert_eq!(ack["r"], true, "an empty channel is complete: {ack}");
    let epoch = ack["e"].as_str().unwrap().to_owned();
    subscriptions(&a, 2.0).await;
    const N: u64 = 200;
    race(&b, &c, "feed/x", N).await;
    let data = read_offsets(&mut sub, 1, N, "live on A").await;
    let mut seen: Vec<u64> = data.iter().map(|d| d.as_u64().unwrap()).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..N).collect::<Vec<_>>(), "each publication once");
    sub.expect_silence(SILENCE).await;

    // A node that never saw the channel replays it whole, in the same epoch.
    let d = node(port, "d");
    js_up(&d).await;
    let (mut late, ack) = resume(&d, "feed/x", 0, Some(&epoch)).await;
    assert_eq!(
        (ack["r"].as_bool(), ack["o"].as_u64()),
        (Some(true), Some(N)),
        "{ack}"
    );
    let replayed = read_offsets(&mut late, 1, N, "replay on D").await;
    assert_eq!(replayed, data, "the same publications at the same offsets");
    // And so does its history endpoint.
    let page = d.get("/api/history/feed%2Fx?since=150").await.json();
    assert_eq!(page["epoch"], epoch.as_str(), "{page}");
    assert_eq!(page["publications"][0]["offset"], 151, "{page}");
    // Both publishers got every publication into the stream, however often they raced.
    for (name, n) in [("B", &b), ("C", &c)] {
        let metrics = n.metrics().await;
        assert_eq!(
            counter(&metrics, "shardcast_jetstream_appended_total"),
            (N / 2) as f64,
            "{name} appended its half"
        );
        assert_eq!(
            counter(&metrics, "shardcast_jetstream_unrecorded_total"),
            0.0,
            "{name}"
        );
    }
}

/// Publishes `payload` on `subject` with NATS headers over a raw connection.
async fn hpub(port: u16, subject: &str, headers: &[(&str, &str)], payload: &[u8]) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut info = vec![0u8; 4096];
    let _ = s.read(&mut info).await.unwrap();
    let mut head = String::from("NATS/1.0\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let total = head.len() + payload.len();
    let mut msg = format!(
        "CONNECT {{\"verbose\":false,\"headers\":true}}\r\nHPUB {subject} {} {total}\r\n{head}",
        head.len()
    )
    .into_bytes();
    msg.extend_from_slice(payload);
    msg.extend_from_slice(b"\r\nPING\r\n");
    s.write_all(&msg).await.unwrap();
    let mut pong = vec![0u8; 256];
    let n = within(RECV, "PONG", s.read(&mut pong)).await.unwrap();
    assert!(String::from_utf8_lossy(&pong[..n]).contains("PONG"));
}

#[tokio::test]
async fn a_gap_in_live_delivery_is_filled_from_the_stream() {
    let Some(bin) = require_nats() else { return };
    let store = tempfile::tempdir().unwrap();
    let port = free_port();
    let _nats = nats(&bin, port, Some(store.path())).await;
    let (a, b) = (node(port, "a"), node(port, "b"));
    js_up(&a).await;
    js_up(&b).await;
    let (mut sub, _) = resume(&a, "feed/gap", 0, None).await;
    subscriptions(&a, 2.0).await;
    b.publish("feed/gap", json!("one")).await;
    read_offsets(&mut sub, 1, 1, "first").await;
    // Offset 2 goes into the stream only (as if its announcement were lost), straight
    // through NATS; then B publishes offset 3. A must deliver 2 (read from the stream)
    // before 3.
    let envelope =
        json!({"o": "x", "i": 1, "s": 1, "k": "c", "n": "message", "t": "feed/gap", "d": "two"});
    hpub(
        port,
        "sctest.h.feed.gap",
        &[
            ("Shardcast-Offset", "2"),
            ("Nats-Expected-Last-Subject-Sequence", "1"),
        ],
        envelope.to_string().as_bytes(),
    )
    .await;
    b.publish("feed/gap", json!("three")).await;
    let data = read_offsets(&mut sub, 2, 3, "after the gap").await;
    assert_eq!(data, vec![json!("two"), json!("three")]);
    sub.expect_silence(SILENCE).await;
    assert!(counter(&a.metrics().await, "shardcast_jetstream_read_total") >= 1.0);
}

#[tokio::test]
async fn without_jetstream_live_delivery_goes_on_and_resumes_are_not_recovered() {
    let Some(bin) = require_nats() else { return };
    let port = free_port();
    let _nats = nats(&bin, port, None).await; // no -js
    let (a, b) = (node(port, "a"), node(port, "b"));
    eventually("the node to be ready", READY, || async {
        a.get("/readyz").await.status == 200 && b.get("/readyz").await.status == 200
    })
    .await;
    let (mut sub, ack) = resume(&a, "feed/down", 0, None).await;
    assert_eq!(
        ack["r"], false,
        "nothing can be recovered without the stream: {ack}"
    );
    subscriptions(&a, 2.0).await;
    b.publish("feed/down", json!("live")).await;
    let v = sub.recv_json(STREAM).await;
    assert_eq!(v["d"], "live", "{v}");
    assert!(v.get("o").is_none(), "no offset without the stream: {v}");
    let health = a.get("/healthz").await.json();
    assert_eq!(
        health["details"]["cluster"]["jetstream"]["up"], false,
        "{health}"
    );
    let metrics = a.metrics().await;
    assert_eq!(counter(&metrics, "shardcast_jetstream_up"), 0.0);
    assert!(counter(&metrics, "shardcast_jetstream_sync_failed_total") >= 1.0);
    assert!(counter(&b.metrics().await, "shardcast_jetstream_unrecorded_total") >= 1.0);
}

#[tokio::test]
async fn node_and_nats_server_restarts_keep_the_epoch_and_the_history() {
    let Some(bin) = require_nats() else { return };
    let store = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut nats_server = nats(&bin, port, Some(store.path())).await;
    let a = node(port, "a");
    js_up(&a).await;
    for i in 1..=5 {
        a.publish("feed/keep", json!(i)).await;
    }
    let (_, ack) = resume(&a, "feed/keep", 0, None).await;
    assert_eq!(ack["o"], 5, "{ack}");
    let epoch = ack["e"].as_str().unwrap().to_owned();
    // The node restarts: same epoch, everything still there.
    drop(a);
    let a = node(port, "a");
    js_up(&a).await;
    let (mut ws, ack) = resume(&a, "feed/keep", 2, Some(&epoch)).await;
    assert_eq!(
        (ack["r"].as_bool(), ack["e"].as_str()),
        (Some(true), Some(epoch.as_str())),
        "{ack}"
    );
    read_offsets(&mut ws, 3, 5, "after a node restart").await;
    // nats-server restarts on the same store directory: history survives, offsets go on.
    drop(nats_server);
    eventually("the node to see JetStream gone", READY, || async {
        counter(&a.metrics().await, "shardcast_jetstream_up") == 0.0
    })
    .await;
    nats_server = nats(&bin, port, Some(store.path())).await;
    js_up(&a).await;
    let b = node(port, "b");
    js_up(&b).await;
    b.publish("feed/keep", json!(6)).await;
    let (mut ws, ack) = resume(&b, "feed/keep", 0, Some(&epoch)).await;
    assert_eq!(
        (ack["r"].as_bool(), ack["o"].as_u64()),
        (Some(true), Some(6)),
        "{ack}"
    );
    let data = read_offsets(&mut ws, 1, 6, "after a nats-server restart").await;
    assert_eq!(data, (1..=6).map(|i| json!(i)).collect::<Vec<_>>());
    drop(nats_server);
}

/// haproxy with the shipped `config/haproxy.cfg`, its bind and servers replaced.
async fn haproxy(bin: &Path, nodes: &[&Broker]) -> (Server, u16, tempfile::NamedTempFile) {
    let port = free_port();
    let mut cfg = String::new();
    let mut servers = 0;
    for line in include_str!("../config/haproxy.cfg").lines() {
        match line.split_whitespace().next().unwrap_or("") {
            "bind" => cfg.push_str(&format!("    bind 127.0.0.1:{port}\n")),
            "server" => {
                if servers == 0 {
                    for (i, n) in nodes.iter().enumerate() {
                        // Health checks every 200 ms so a dead node leaves rotation soon.
                        cfg.push_str(&format!(
                            "    server node{i} {} check inter 200ms fall 1\n",
                            n.addr
                        ));
                    }
                }
                servers += 1;
            }
            _ => {
                cfg.push_str(line);
                cfg.push('\n');
            }
        }
    }
    let config = config_file(&cfg);
    let server = Server::start(bin, &["-db", "-f", config.path().to_str().unwrap()], port).await;
    (server, port, config)
}

/// The headline (issue 21): three nodes behind haproxy, subscribers on A, publications
/// on B and C, A SIGKILLed mid-stream; the subscribers reconnect through haproxy with
/// their positions and every one ends with every offset exactly once, in order.
#[tokio::test]
async fn subscribers_of_a_killed_node_resume_through_haproxy_with_nothing_lost() {
    let Some(bin) = require_nats() else { return };
    let Some(hap) = require_haproxy() else {
        return;
    };
    let store = tempfile::tempdir().unwrap();
    let port = free_port();
    let _nats = nats(&bin, port, Some(store.path())).await;
    let (a, b, c) = (node(port, "a"), node(port, "b"), node(port, "c"));
    for n in [&a, &b, &c] {
        js_up(n).await;
    }
    let (_haproxy, hport, _cfg) = haproxy(&hap, &[&a, &b, &c]).await;
    const SUBS: usize = 4;
    const N: u64 = 600;
    let mut subs = Vec::new();
    let mut epoch = String::new();
    for _ in 0..SUBS {
        let (ws, ack) = resume(&a, "feed/ha", 0, None).await;
        epoch = ack["e"].as_str().unwrap().to_owned();
        subs.push(ws);
    }
    subscriptions(&a, 2.0).await;
    let publishers = async {
        race(&b, &c, "feed/ha", N).await;
        Instant::now()
    };
    let url = format!("ws://127.0.0.1:{hport}/ws");
    let subscribers = async {
        let mut got: Vec<Vec<u64>> = vec![Vec::new(); SUBS];
        // Everyone reads a first part from A.
        for (ws, seen) in subs.iter_mut().zip(got.iter_mut()) {
            let data = read_offsets(ws, 1, 100, "from A").await;
            seen.extend(data.iter().map(|d| d.as_u64().unwrap()));
        }
        drop(a); // SIGKILL
        let killed = Instant::now();
        drop(subs);
        // Timings for BENCHMARKS.md (issue 21), seen with `-- --nocapture`.
        let mut times = Vec::new();
        let mut resumed = Vec::new();
        for seen in got.iter_mut() {
            let last = seen.len() as u64;
            let deadline = Instant::now() + READY;
            let mut ws = loop {
                assert!(Instant::now() < deadline, "no node took the reconnect");
                if let Ok(mut ws) = try_ws(&url, Dialect::Subprotocol("vws")).await {
                    ws.send_json(&json!({"k": "s", "t": "feed/ha", "i": 1, "o": last, "e": epoch}))
                        .await;
                    if let Some(Event::Json(ack)) = ws.next_event(RECV).await {
                        if ack["k"] == "a" {
                            assert_eq!(ack["r"], true, "{ack}");
                            times.push(killed.elapsed());
                            break ws;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let data = read_offsets(&mut ws, last + 1, N, "after the failover").await;
            seen.extend(data.iter().map(|d| d.as_u64().unwrap()));
            times.push(killed.elapsed());
            resumed.push(ws);
        }
        for ws in &mut resumed {
            ws.expect_silence(SILENCE).await;
        }
        (got, killed, times)
    };
    let (published, (got, killed, times)) = tokio::join!(publishers, subscribers);
    let published = published.saturating_duration_since(killed);
    for (i, t) in times.chunks(2).enumerate() {
        eprintln!(
            "failover timing: subscriber {i} resumed (recovered) {:?} and complete {:?} after \
             SIGKILL; the last publication was sent {published:?} after it",
            t[0],
            t.get(1).copied().unwrap_or_default()
        );
    }
    for seen in got {
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            (0..N).collect::<Vec<_>>(),
            "every publication exactly once"
        );
    }
}

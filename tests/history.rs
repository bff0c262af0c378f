//! History and recovery (SPEC §9) against the real binary: late joiners, resumes after a
//! dropped connection, the join race under full-speed publishing from several shards and
//! the HTTP API, retention limits and expiry, policy on replay, bad positions, the HTTP
//! history endpoint and paced replay.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bound for long streams (thousands of events).
const STREAM: Duration = Duration::from_secs(60);

/// The offset of a vws event (`o`) or a gows one (`offset`), if it has one.
fn offset(v: &Value) -> Option<u64> {
    v.get("o")
        .or_else(|| v.get("offset"))
        .and_then(Value::as_u64)
}

/// Reads events until one with offset >= `until`, asserting every offset is `expect`,
/// `expect + 1`, … (no gap, no duplicate, in order). Returns the offsets seen.
async fn read_contiguous(ws: &mut Ws, mut expect: u64, until: u64, what: &str) -> u64 {
    let deadline = Instant::now() + STREAM;
    while expect <= until {
        let left = deadline.saturating_duration_since(Instant::now());
        let v = ws.recv_json(left).await;
        let Some(o) = offset(&v) else {
            panic!("{what}: expected an event with an offset, got {v}");
        };
        assert_eq!(o, expect, "{what}: offsets must follow each other: {v}");
        expect += 1;
    }
    expect
}

#[tokio::test]
async fn gows_late_joiner_gets_a_finished_builds_whole_output_then_its_status() {
    let broker = Broker::start("");
    let url = broker.http_url();
    let run = run_cli(
        &[
            "run",
            "--url",
            &url,
            "--id",
            "b1",
            "--",
            "sh",
            "-c",
            "seq 1 5000",
        ],
        &[],
        STREAM,
    )
    .await;
    assert_eq!(run.code, Some(0), "run: {}", run.stderr);

    // The go-ws snippet, unchanged: no subprotocol, a plain subscribe.
    let mut ws = broker.ws(Dialect::Default).await;
    ws.send_json(&json!({"type": "subscribe", "data": "process:b1"}))
        .await;
    let mut lines = 0u64;
    let mut last = 0;
    loop {
        let v = ws.recv_json(STREAM).await;
        assert_eq!(v["channel"], "process:b1", "{v}");
        assert_eq!(offset(&v), Some(last + 1), "in order, no gap: {v}");
        last += 1;
        match v["type"].as_str() {
            Some("process_output") => {
                lines += 1;
                assert_eq!(v["data"], lines.to_string(), "line {lines}: {v}");
            }
            Some("process_status") if v["data"]["status"] != "running" => {
                assert_eq!(v["data"]["status"], "exited", "{v}");
                break;
            }
            Some("process_status") => {}
            _ => panic!("unexpected event {v}"),
        }
    }
    assert_eq!(lines, 5000, "every line of the finished build");
    ws.expect_silence(SILENCE).await;
}

/// Publishes `count` events on `channel` at about `rate` per second from a vws client.
async fn publish_stream(broker: &Broker, channel: &str, count: u64, rate: u64) {
    let mut publisher = broker.ws(Dialect::Subprotocol("vws")).await;
    let started = Instant::now();
    let per_tick = (rate / 100).max(1);
    let mut sent = 0;
    while sent < count {
        for _ in 0..per_tick.min(count - sent) {
            sent += 1;
            publisher
                .send_json(&json!({"t": channel, "d": {"n": sent}}))
                .await;
        }
        let due = started + Duration::from_millis(sent * 1000 / rate);
        tokio::time::sleep_until(due.into()).await;
    }
    // An id'd request after the stream: its ack means every publish before it was handled.
    publisher
        .send_json(&json!({"k": "s", "t": "sync/x", "i": 1}))
        .await;
    let ack = publisher.recv_json(STREAM).await;
    assert_eq!(ack["k"], "a", "{ack}");
}

const STREAM_CONFIG: &str = r#"
[client]
allow_publish = true
publish_rate = 0.0

[[history]]
pattern = "feed/+"
size = 100000
bytes = 100000000
"#;

#[tokio::test]
async fn vws_resume_after_a_dropped_connection_gets_exactly_what_was_missed() {
    let broker = Broker::start(STREAM_CONFIG);
    const TOTAL: u64 = 60_000;
    let mut sub = broker.ws(Dialect::Subprotocol("vws")).await;
    sub.send_json(&json!({"k": "s", "t": "feed/a", "i": 1}))
        .await;
    let ack = sub.recv().await;
    assert_eq!(
        (ack["k"].as_str(), ack["o"].as_u64()),
        (Some("a"), Some(0)),
        "{ack}"
    );
    let epoch = ack["e"].as_str().expect("epoch").to_owned();
    assert!(ack.get("r").is_none(), "r only for a resume: {ack}");

    let stream = publish_stream(&broker, "feed/a", TOTAL, 20_000);
    let reader = async {
        // Read part of the stream, then drop the connection without a close handshake.
        let next = read_contiguous(&mut sub, 1, 5_000, "before the drop").await;
        drop(sub);
        // Reconnect while the stream goes on and resume after the last offset seen.
        let mut again = broker.ws(Dialect::Subprotocol("vws")).await;
        let last = next - 1;
        again
            .send_json(&json!({"k": "s", "t": "feed/a", "i": 2, "o": last, "e": epoch}))
            .await;
        let ack = again.recv().await;
        assert_eq!(ack["k"], "a", "{ack}");
        assert_eq!(ack["r"], true, "everything after {last} is retained: {ack}");
        assert_eq!(ack["e"], epoch.as_str());
        assert!(ack["o"].as_u64().unwrap() >= last, "{ack}");
        read_contiguous(&mut again, last + 1, TOTAL, "after the resume").await;
        again.expect_silence(SILENCE).await;
    };
    tokio::join!(stream, reader);

    // An unknown epoch: not recovered, and everything retained from the oldest.
    let mut other = broker.ws(Dialect::Subprotocol("vws")).await;
    other
        .send_json(&json!({"k": "s", "t": "feed/a", "i": 3, "o": 10, "e": "not-an-epoch"}))
        .await;
    let ack = other.recv().await;
    assert_eq!(
        (ack["r"].as_bool(), ack["o"].as_u64()),
        (Some(false), Some(TOTAL)),
        "{ack}"
    );
    read_contiguous(&mut other, 1, TOTAL, "unknown epoch replays all retained").await;

    let metrics = broker.metrics().await;
    assert_eq!(
        counter(
            &metrics,
            "shardcast_history_resumes_total{recovered=\"true\"}"
        ),
        1.0
    );
    assert_eq!(
        counter(
            &metrics,
            "shardcast_history_resumes_total{recovered=\"false\"}"
        ),
        1.0
    );
    assert!(counter(&metrics, "shardcast_history_replayed_total") >= TOTAL as f64);
}

#[tokio::test]
async fn joining_under_full_speed_publishing_neither_loses_nor_duplicates() {
    // Two shards; publishers on both (client connections land where the kernel puts
    // them) plus the HTTP API, all on one channel, as fast as they can.
    let broker = Broker::start(&format!(
        "[server]\nshards = 2\n{}",
        STREAM_CONFIG.replace(
            "publish_rate = 0.0",
            "publish_rate = 0.0\nqueue_frames = 100000\nqueue_bytes = 100000000"
        )
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let mut publishers = Vec::new();
    for _ in 0..3 {
        let mut ws = broker.ws(Dialect::Subprotocol("vws")).await;
        let (stop, published) = (stop.clone(), published.clone());
        publishers.push(tokio::spawn(async move {
            let mut n = 0u64;
            // About 15k publications/s each, in bursts: as fast as a busy client goes
            // while leaving the machine's two cores some room for the joiners.
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                ws.send_json(&json!({"t": "feed/race", "d": n})).await;
                if n.is_multiple_of(32) {
                    published.fetch_add(32, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }));
    }
    {
        let url = broker.http_url();
        let stop = stop.clone();
        let batch: Value = (0..50)
            .map(|i| json!({"channel": "feed/race", "data": i}))
            .collect();
        publishers.push(tokio::spawn(async move {
            let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();
            let mut http = Http::connect(addr).await;
            while !stop.load(Ordering::Relaxed) {
                let r = http.post_json("/api/publish", &batch).await;
                assert_eq!(r.status, 200, "{}", r.text);
            }
        }));
    }
    eventually("the publishers to be going", STREAM, || {
        let published = published.clone();
        async move { published.load(Ordering::Relaxed) > 10_000 }
    })
    .await;

    // Hundreds of joins on fresh connections, from four tasks at once: half plain
    // (replay = "none": the first event must be TOP + 1), half resuming 50 back (the
    // first must be TOP - 49); then 200 more in a row each, every offset checked.
    let mut joiners = Vec::new();
    for task in 0..4u64 {
        let url = broker.ws_url();
        joiners.push(tokio::spawn(async move {
            for join in 0..60u64 {
                let mut ws = Ws::connect(&url, Dialect::Subprotocol("vws")).await;
                let resume = (task + join).is_multiple_of(2);
                ws.send_json(&json!({"k": "s", "t": "feed/race", "i": 1}))
                    .await;
                let ack = ws.recv_json(RECV).await;
                let top = ack["o"].as_u64().expect("TOP in the ack");
                let epoch = ack["e"].clone();
                let first = if resume && top > 50 {
                    // Resume on a second connection, from 50 before the first's TOP.
                    let mut again = Ws::connect(&url, Dialect::Subprotocol("vws")).await;
                    again
                        .send_json(
                            &json!({"k": "s", "t": "feed/race", "i": 2, "o": top - 50, "e": epoch}),
                        )
                        .await;
                    let ack = again.recv_json(RECV).await;
                    assert_eq!(ack["r"], true, "{ack}");
                    ws = again;
                    top - 49
                } else {
                    top + 1
                };
                let what = format!("join {task}/{join} (resume: {resume}, top {top})");
                read_contiguous(&mut ws, first, first + 200, &what).await;
            }
        }));
    }
    for j in joiners {
        j.await.expect("joiner");
    }
    stop.store(true, Ordering::Relaxed);
    for p in publishers {
        p.await.expect("publisher");
    }
}

#[tokio::test]
async fn retention_limits_evict_and_idle_channels_expire() {
    let broker = Broker::start(
        r#"
[history]
max_bytes = 200000

[[history.rules]]
pattern = "many/+"
size = 50
ttl = "1s"
"#,
    );
    // 40 channels x 50 publications of ~100 bytes: far over the 200 kB cap.
    let blob = "x".repeat(100);
    for ch in 0..40 {
        let batch: Value = (0..50)
            .map(|i| json!({"channel": format!("many/{ch}"), "data": {"i": i, "b": blob}}))
            .collect();
        assert!(broker.post_json("/api/publish", &batch).await.is_success());
    }
    let stats = broker.stats().await;
    let h = &stats["history"];
    assert!(h["retained_bytes"].as_u64().unwrap() <= 200_000, "{h}");
    assert!(h["evicted"]["max_bytes"].as_u64().unwrap() > 0, "{h}");
    // The most recently published channel kept its last 50; the oldest lost most.
    let newest = broker.get("/api/history/many%2F39?limit=100").await.json();
    assert_eq!(
        newest["publications"].as_array().unwrap().len(),
        50,
        "{newest}"
    );
    let oldest = broker.get("/api/history/many%2F0?limit=100").await.json();
    assert!(
        oldest["publications"].as_array().unwrap().len() < 50,
        "{oldest}"
    );
    let epoch = newest["epoch"].as_str().unwrap().to_owned();

    // A subscribed channel stays; the rest expire a second after their last publication.
    let mut keeper = broker.vws_subscriber("many/39").await;
    eventually("idle channels to expire", STREAM, || {
        let broker = &broker;
        async move { broker.stats().await["history"]["channels"] == 1 }
    })
    .await;
    let h = broker.stats().await["history"].clone();
    assert!(h["evicted"]["ttl"].as_u64().unwrap() > 0, "{h}");
    let kept = broker.get("/api/history/many%2F39").await.json();
    assert_eq!(
        kept["epoch"],
        epoch.as_str(),
        "a subscribed channel never expires"
    );
    keeper.expect_silence(SILENCE).await;

    // Once its last subscriber is gone it expires too; a resume then learns it.
    drop(keeper);
    eventually("the last channel to expire", STREAM, || {
        let broker = &broker;
        async move { broker.stats().await["history"]["retained"] == 0 }
    })
    .await;
    let mut late = broker.ws(Dialect::Subprotocol("vws")).await;
    late.send_json(&json!({"k": "s", "t": "many/39", "i": 1, "o": 50, "e": epoch}))
        .await;
    let ack = late.recv().await;
    assert_eq!(
        (ack["r"].as_bool(), ack["o"].as_u64()),
        (Some(false), Some(0)),
        "{ack}"
    );
    assert_ne!(ack["e"], epoch.as_str(), "a new epoch after expiry");
}

#[tokio::test]
async fn replay_obeys_the_subscribe_policy() {
    let broker = Broker::start(
        r#"
[[policy]]
pattern = "secret/#"
subscribe = "nobody"
publish = "nobody"

[[history]]
prefix = "secret/"
replay = "all"
"#,
    );
    for i in 0..5 {
        assert!(broker.publish("secret/plans", json!(i)).await.is_success());
    }
    let mut vws = broker.ws(Dialect::Subprotocol("vws")).await;
    let e = vws
        .vws_expect_nack(&json!({"k": "s", "t": "secret/plans", "i": 1, "o": 0}))
        .await;
    assert!(e.contains("not allowed"), "{e}");
    vws.expect_silence(SILENCE).await;
    let mut gows = broker.ws(Dialect::Subprotocol("gows")).await;
    gows.send_json(&json!({"type": "subscribe", "data": "secret/plans", "since": {"offset": 0}}))
        .await;
    let err = gows.recv().await;
    assert_eq!(err["type"], "error", "{err}");
    gows.expect_silence(SILENCE).await;
}

#[tokio::test]
async fn bad_positions_are_refused_and_the_connection_stays() {
    let broker = Broker::start("[[history]]\npattern = \"h/+\"\n");
    let mut ws = broker.ws(Dialect::Subprotocol("vws")).await;
    for (req, needle) in [
        (
            json!({"k": "s", "t": "h/a", "i": 1, "o": -1}),
            "must not be negative",
        ),
        (
            json!({"k": "s", "t": "h/a", "i": 2, "o": "7"}),
            "whole number",
        ),
        (
            json!({"k": "s", "t": "h/a", "i": 3, "o": 1.5}),
            "whole number",
        ),
        (
            json!({"k": "s", "t": "h/a", "i": 4, "o": 1, "e": 5}),
            "must be a string",
        ),
        (
            json!({"k": "s", "t": "h/+", "i": 5, "o": 0}),
            "recovery needs an exact channel",
        ),
        (
            json!({"k": "s", "t": "h/#", "i": 6, "o": 3, "e": "x"}),
            "recovery needs an exact channel",
        ),
    ] {
        let e = ws.vws_expect_nack(&req).await;
        assert!(e.contains(needle), "{req}: {e}");
    }
    // Still open and working.
    ws.send_json(&json!({"k": "s", "t": "h/a", "i": 7, "o": 0}))
        .await;
    let ack = ws.recv().await;
    assert_eq!(
        (ack["k"].as_str(), ack["r"].as_bool()),
        (Some("a"), Some(true)),
        "{ack}"
    );

    let mut gows = broker.ws(Dialect::Subprotocol("gows")).await;
    for (req, needle) in [
        (
            json!({"type": "subscribe", "data": "h/a", "since": {"offset": -3}}),
            "must not be negative",
        ),
        (
            json!({"type": "subscribe", "data": "h/a", "since": 5}),
            "since",
        ),
        (
            json!({"type": "subscribe", "data": "h/a", "since": {"epoch": "x"}}),
            "since.offset",
        ),
        (
            json!({"type": "subscribe", "data": "h/a", "since": {"offset": 1, "epoch": []}}),
            "must be a string",
        ),
        (
            json!({"type": "subscribe", "data": "h/#", "since": {"offset": 1}}),
            "recovery needs an exact channel",
        ),
    ] {
        gows.send_json(&req).await;
        let err = gows.recv().await;
        assert_eq!(err["type"], "error", "{req}: {err}");
        assert!(
            err["data"].as_str().unwrap().contains(needle),
            "{req}: {err}"
        );
    }
    gows.send_json(&json!({"type": "subscribe", "data": "h/a", "since": {"offset": 0}}))
        .await;
    let ok = gows.recv().await;
    assert_eq!(ok["type"], "subscribed", "{ok}");
    assert_eq!(ok["data"]["recovered"], true, "{ok}");
    let metrics = broker.metrics().await;
    assert_eq!(rejections(&metrics).get("bad_position").copied(), Some(8.0));
    assert_eq!(
        rejections(&metrics)
            .get("recovery_needs_exact_channel")
            .copied(),
        Some(3.0)
    );
}

#[tokio::test]
async fn http_history_pages_through_a_channel() {
    let broker = Broker::start("[[history]]\npattern = \"log/+\"\nsize = 10\n");
    for i in 1..=15 {
        let r = broker
            .post_json("/api/publish", &json!({"channel": "log/a", "data": {"i": i}, "type": "line", "headers": {"k": "v"}}))
            .await;
        assert!(r.is_success(), "{}", r.text);
    }
    let page = broker.get("/api/history/log%2Fa?since=8&limit=3").await;
    assert_eq!(page.status, 200, "{}", page.text);
    let page = page.json();
    assert_eq!(
        (page["first"].as_u64(), page["top"].as_u64()),
        (Some(6), Some(15))
    );
    assert_eq!(page["channel"], "log/a");
    let pubs = page["publications"].as_array().unwrap();
    assert_eq!(
        pubs.iter()
            .map(|p| p["offset"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![9, 10, 11]
    );
    assert_eq!(pubs[0]["data"], json!({"i": 9}));
    assert_eq!(pubs[0]["type"], "line");
    assert_eq!(pubs[0]["headers"], json!({"k": "v"}));
    assert_timestamp(&pubs[0]);
    let all = broker.get("/api/history/log%2Fa").await.json();
    assert_eq!(all["publications"].as_array().unwrap().len(), 10);

    assert_eq!(broker.get("/api/history/nohistory").await.status, 404);
    for bad in ["since=-1", "since=x", "limit=0", "limit=100000"] {
        let r = broker.get(&format!("/api/history/log%2Fa?{bad}")).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
        assert!(!r.error_reason().is_empty());
    }

    // With an API key configured, the endpoint needs it.
    let keyed = Broker::start_with(
        "[api]\nkey_env = \"HIST_KEY\"\n",
        &[],
        &[("HIST_KEY", "s3cret")],
    );
    assert_eq!(keyed.get("/api/history/process:x").await.status, 401);
}

#[tokio::test]
async fn a_big_replay_is_paced_through_a_small_outbox() {
    // 10,000 retained publications to a client whose outbox holds 64 frames, with the
    // default slow-consumer policy (disconnect): the replay must not trip it.
    let broker = Broker::start(
        "[client]\nqueue_frames = 64\n\n[[history]]\npattern = \"big\"\nsize = 10000\nreplay = \"all\"\n",
    );
    for chunk in 0..10 {
        let batch: Value = (0..1000)
            .map(|i| json!({"channel": "big", "data": chunk * 1000 + i}))
            .collect();
        assert!(broker.post_json("/api/publish", &batch).await.is_success());
    }
    let mut ws = broker.ws(Dialect::Subprotocol("gows")).await;
    ws.send_json(&json!({"type": "subscribe", "data": "big"}))
        .await;
    let end = read_contiguous(&mut ws, 1, 10_000, "paced replay").await;
    assert_eq!(end, 10_001);
    // Live ones follow.
    assert!(broker.publish("big", json!("live")).await.is_success());
    let v = ws.recv().await;
    assert_eq!(
        (offset(&v), &v["data"]),
        (Some(10_001), &json!("live")),
        "{v}"
    );
    let metrics = broker.metrics().await;
    assert_eq!(
        rejections(&metrics)
            .get("slow_consumer")
            .copied()
            .unwrap_or(0.0),
        0.0
    );
}

/// The broker's resident memory in KiB, from `/proc/<pid>/status`.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test]
async fn a_flood_of_history_channels_is_bounded_and_memory_returns_after_expiry() {
    // 8 MiB of history at most; 20,000 distinct channels of 1 KiB publications.
    let broker = Broker::start(
        "[history]\nmax_bytes = 8388608\n\n[[history.rules]]\npattern = \"flood/+\"\nttl = \"1s\"\n",
    );
    let baseline = rss_kib(broker.pid());
    let blob = "y".repeat(1000);
    let mut peak = baseline;
    for chunk in 0..20 {
        let batch: Value = (0..1000)
            .map(|i| json!({"channel": format!("flood/{}", chunk * 1000 + i), "data": blob}))
            .collect();
        let r = broker.post_json("/api/publish", &batch).await;
        assert!(r.is_success(), "{}", r.text);
        peak = peak.max(rss_kib(broker.pid()));
    }
    let h = broker.stats().await["history"].clone();
    assert!(h["retained_bytes"].as_u64().unwrap() <= 8_388_608, "{h}");
    assert!(h["evicted"]["max_bytes"].as_u64().unwrap() > 15_000, "{h}");
    // 20 MB of payload went through; history held at most its 8 MiB (plus the channels'
    // small records and what the HTTP path and allocator keep in flight).
    assert!(
        peak < baseline + 40 * 1024,
        "RSS grew from {baseline} KiB to {peak} KiB"
    );
    eventually("every flood channel to expire", STREAM, || {
        let broker = &broker;
        async move { broker.stats().await["history"]["channels"] == 0 }
    })
    .await;
    eventually("RSS back near its baseline", STREAM, || {
        let pid = broker.pid();
        async move { rss_kib(pid) < baseline + 6 * 1024 }
    })
    .await;
}

//! What operators see: `/metrics` moving with real traffic, `$sys/stats` arriving once a
//! second, `/api/stats` rates and top channels, and `/healthz` / `/readyz` through a
//! graceful shutdown. Real binary, real clients.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;
use common::*;
use serde_json::json;
use std::time::Duration;

const VWS: Dialect = Dialect::Subprotocol("vws");

async fn metrics(broker: &Broker) -> String {
    broker.get("/metrics").await.text
}

#[tokio::test]
async fn metrics_move_with_real_traffic() {
    let broker = Broker::start("[server]\nshards = 2\n");
    let before = metrics(&broker).await;
    let mut sub = broker.vws_subscriber("news/eu").await; // one subscribe
    let mut gows = broker.ws(Dialect::Subprotocol("gows")).await;
    gows.gows_expect_error("{not json").await; // one invalid
    gows.gows_sync().await; // one ping
    for n in 0..3 {
        broker.publish("news/eu", json!(n)).await;
        assert_eq!(sub.recv().await["d"], n);
    }
    let evil = try_ws_with(&broker.ws_url(), VWS, &[("Origin", "http://evil.example")]).await;
    assert_eq!(evil.err().map(|r| r.status), Some(403));

    let after = metrics(&broker).await;
    let moved = |name: &str| counter(&after, name) - counter(&before, name);
    assert_eq!(
        moved("shardcast_messages_received_total{type=\"subscribe\"}"),
        1.0
    );
    assert_eq!(
        moved("shardcast_messages_received_total{type=\"invalid\"}"),
        1.0
    );
    assert_eq!(
        moved("shardcast_messages_received_total{type=\"ping\"}"),
        1.0
    );
    assert_eq!(moved("shardcast_publications_total"), 3.0);
    assert_eq!(moved("shardcast_deliveries_total"), 3.0);
    assert_eq!(moved("shardcast_dropped_total{reason=\"invalid\"}"), 1.0);
    assert_eq!(
        moved("shardcast_errors_total{class=\"invalid\"}"),
        2.0,
        "bad JSON and the origin"
    );
    assert_eq!(
        moved("shardcast_handshake_failures_total{reason=\"origin_not_allowed\"}"),
        1.0
    );
    assert_eq!(counter(&after, "shardcast_connections_active"), 2.0);
    let per_shard: f64 = (0..2)
        .map(|s| {
            counter(
                &after,
                &format!("shardcast_shard_connections_active{{shard=\"{s}\"}}"),
            )
        })
        .sum();
    assert_eq!(per_shard, 2.0, "per-shard gauges add up to the total");
    assert_eq!(counter(&after, "shardcast_subscriptions"), 1.0);
    // The latency histogram saw the three deliveries; buckets are cumulative.
    let count = counter(&after, "shardcast_delivery_latency_seconds_count");
    assert!(count >= 3.0, "latency count {count}");
    assert_eq!(
        counter(
            &after,
            "shardcast_delivery_latency_seconds_bucket{le=\"+Inf\"}"
        ),
        count
    );
    assert!(
        counter(
            &after,
            "shardcast_delivery_latency_seconds_bucket{le=\"0.001\"}"
        ) <= counter(
            &after,
            "shardcast_delivery_latency_seconds_bucket{le=\"0.01\"}"
        )
    );
    for line in after.lines().filter(|l| l.starts_with("# TYPE")) {
        let kind = line.rsplit(' ').next().unwrap();
        assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
    }
}

#[tokio::test]
async fn sys_stats_arrive_every_second_for_those_who_ask() {
    let broker = Broker::start("");
    let mut everything = broker.vws_subscriber("#").await;
    let mut stats = broker.vws_subscriber("$sys/stats").await;
    let mut gows = broker.ws(Dialect::Subprotocol("gows")).await;
    gows.send_json(&json!({"type": "subscribe", "data": "$sys/stats"}))
        .await;
    let _crowd = [
        broker.vws_subscriber("busy").await,
        broker.vws_subscriber("busy").await,
    ];
    broker.publish("busy", json!("x")).await;
    // A tick gathered before the crowd subscribed may come first; the next one sees it.
    let mut first = within(Duration::from_secs(3), "a $sys/stats tick", stats.recv()).await;
    if first["d"]["top_channels"][0]["channel"] != "busy" {
        first = within(Duration::from_secs(3), "a $sys/stats tick", stats.recv()).await;
    }
    assert_eq!(first["t"], "$sys/stats", "{first}");
    let d = &first["d"];
    for key in ["clients", "channels", "uptime_s"] {
        assert!(d[key].is_u64(), "{key} in {d}");
    }
    for key in ["received_per_s", "published_per_s", "delivered_per_s"] {
        assert!(d["rates"][key].is_f64(), "rates.{key} in {d}");
    }
    assert!(d["latency_us"]["p99"].is_u64(), "{d}");
    assert!(d["shards"].as_array().is_some_and(|s| !s.is_empty()), "{d}");
    let top = d["top_channels"].as_array().unwrap();
    assert_eq!(top[0], json!({"channel": "busy", "subscribers": 2}), "{d}");
    assert!(
        top.iter()
            .all(|c| !c["channel"].as_str().unwrap().starts_with('$')),
        "broker topics are not listed: {d}"
    );
    // Once a second: the next tick follows within a couple of seconds, and counts on.
    let second = within(Duration::from_secs(3), "the next tick", stats.recv()).await;
    assert!(second["d"]["uptime_s"].as_u64() >= first["d"]["uptime_s"].as_u64());
    let g = within(Duration::from_secs(3), "gows tick", gows.recv()).await;
    assert_eq!(
        (g["type"].clone(), g["channel"].clone()),
        (json!("stats"), json!("$sys/stats"))
    );
    // `#` is the application's topics only (MQTT: `$` topics are not matched by it).
    let v = everything.recv().await;
    assert_eq!(v["t"], "busy");
    everything.expect_silence(Duration::from_millis(1500)).await;
    // Nobody may publish to it.
    let mut c = broker.ws(VWS).await;
    c.vws_expect_nack(&json!({"t": "$sys/stats", "d": 1, "i": 1}))
        .await;
    // /api/stats is the same object, with rates over the last second.
    let api = broker.get("/api/stats").await.json();
    assert_eq!(api["top_channels"][0]["channel"], "busy");
    assert!(api["rates"]["delivered_per_s"].is_f64());
}

#[tokio::test]
async fn health_and_readiness_through_a_graceful_shutdown() {
    // One shard, so the HTTP connection below lives on the shard that is kept draining.
    let mut broker = Broker::start("[server]\nshards = 1\nshutdown_grace = \"3s\"\n");
    let ready = broker.get("/readyz").await;
    assert_eq!(
        (ready.status, ready.json()["status"].clone()),
        (200, json!("listening"))
    );
    let health = broker.get("/healthz").await.json();
    assert_eq!(health["healthy"], true);
    assert_eq!(health["status"], "listening");
    assert_eq!(health["details"]["mode"], "server");

    // A client that does not read keeps the broker draining for the grace period.
    let _raw = RawWs::stalled_with_backlog(&broker, "stall").await;
    // A kept-alive connection made before the signal still gets answers while draining.
    let mut http = Http::connect(broker.addr).await;
    assert_eq!(
        http.request("GET", "/readyz", None, Vec::new())
            .await
            .status,
        200
    );
    broker.sigterm();
    // Polled on the one connection (a new one would be refused: the listener is closed).
    let deadline = std::time::Instant::now() + RECV;
    loop {
        let ready = http.request("GET", "/readyz", None, Vec::new()).await;
        let health = http.request("GET", "/healthz", None, Vec::new()).await;
        if ready.status == 503 && health.status == 503 {
            assert_eq!(ready.json()["status"], "draining");
            assert_eq!(health.json()["healthy"], false);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still {} / {} after SIGTERM",
            ready.status,
            health.status
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        broker
            .wait_exit(Duration::from_secs(10))
            .await
            .and_then(|s| s.code()),
        Some(0)
    );
}

#[tokio::test]
async fn json_logs_have_one_line_per_connection_open_and_close_with_the_reason() {
    let broker = Broker::start_with(
        "[server]\nlog_format = \"json\"\n",
        &[],
        &[("RUST_LOG", "shardcast=debug")],
    );
    let polite = broker.vws_subscriber("x").await;
    polite.close().await;
    let mut rude = RawWs::connect(broker.addr, "vws").await;
    rude.send_raw(&encode_frame(true, OP_BINARY, b"\x00", true))
        .await;
    rude.expect_close(1003, RECV).await;
    eventually("both close lines", RECV, || async {
        broker.stderr().matches("connection closed").count() >= 2
    })
    .await;
    let lines: Vec<serde_json::Value> = broker
        .stderr()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let with = |message: &str| -> Vec<&serde_json::Value> {
        lines
            .iter()
            .filter(|l| l["fields"]["message"] == message)
            .collect()
    };
    assert_eq!(with("connection open").len(), 2, "{}", broker.stderr());
    let reasons: Vec<_> = with("connection closed")
        .iter()
        .map(|l| l["fields"]["reason"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        reasons.contains(&"client closed".to_string()),
        "{reasons:?}"
    );
    assert!(reasons.contains(&"binary_frame".to_string()), "{reasons:?}");
    assert!(
        lines.iter().all(|l| l["fields"]["message"] != "delivered"),
        "no line per message"
    );
}

#[tokio::test]
async fn a_channel_counts_its_pattern_subscribers_once_each() {
    // Issue 17 item 11: `sensors/#` and `sensors/+/temp` receive `sensors/eu/temp` too.
    let broker = Broker::start("");
    let _exact = broker.vws_subscriber("sensors/eu/temp").await;
    let _deep = broker.vws_subscriber("sensors/#").await;
    let mut both = broker.vws_subscriber("sensors/+/temp").await;
    both.vws_subscribe("sensors/#", 2).await; // one connection, two matching patterns
    let _other = broker.vws_subscriber("sensors/us/#").await;
    let count = |path: &'static str| {
        let broker = &broker;
        async move {
            let r = broker.get(path).await;
            assert_eq!(r.status, 200, "{}", r.text);
            r.json()["subscribers"].as_u64()
        }
    };
    assert_eq!(count("/api/channels/sensors%2Feu%2Ftemp").await, Some(3));
    assert_eq!(count("/api/channels/sensors%2Fus%2Ftemp").await, Some(3));
    assert_eq!(count("/api/channels/sensors%2Feu%2Fhum").await, Some(2));
    assert_eq!(count("/api/channels/other").await, Some(0));
}

#[tokio::test]
async fn the_dashboards_own_subscription_is_neither_a_channel_nor_traffic() {
    // Issue 17 item 11: a quiet broker watched by the dashboard showed one channel and
    // a delivery rate made of its own `$sys/stats` frames.
    let broker = Broker::start("");
    let mut dashboards = Vec::new();
    for _ in 0..3 {
        dashboards.push(broker.vws_subscriber("$sys/stats").await);
    }
    let mut seen = 0;
    while seen < 3 {
        let v = dashboards[0].recv().await;
        if v["t"] != "$sys/stats" {
            continue;
        }
        seen += 1;
        let d = &v["d"];
        assert_eq!(d["channels"], 0, "{d}");
        assert_eq!(d["top_channels"], json!([]), "{d}");
        // The first frame's rates may predate the subscriptions' first tick.
        if seen > 1 {
            assert_eq!(d["rates"]["delivered_per_s"], 0.0, "{d}");
        }
    }
    let stats = broker.stats().await;
    assert_eq!(stats["channels"], 0, "{stats}");
    let list = broker.get("/api/channels").await.json();
    assert_eq!(list["count"], 0, "{list}");
}

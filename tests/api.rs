//! HTTP API against the real broker: publish (single, batch, errors), broadcast, process
//! output/status, stats, channels, health, metrics, status codes (SPEC §2).
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;
use common::*;
use serde_json::json;

#[tokio::test]
async fn publish_single_returns_json_and_delivers() {
    let broker = Broker::start("");
    let mut ws = broker.gows_subscriber("api-one").await;
    let r = broker
        .post_json(
            "/api/publish",
            &json!({"channel": "api-one", "data": {"k": "v"}}),
        )
        .await;
    assert!(r.is_success(), "{} {}", r.status, r.text);
    assert!(
        r.json().is_object() || r.json().is_array(),
        "publish answers JSON: {}",
        r.text
    );
    let v = ws.recv().await;
    assert_eq!(v["channel"], "api-one");
    assert_eq!(v["data"], json!({"k": "v"}));
}

#[tokio::test]
async fn publish_batch_delivers_every_item_in_order() {
    let broker = Broker::start("");
    let mut g = broker.gows_subscriber("batch").await;
    let mut v = broker.vws_subscriber("batch").await;
    let batch: Vec<_> = (0..50)
        .map(|i| json!({"channel": "batch", "data": i}))
        .collect();
    let r = broker.post_json("/api/publish", &json!(batch)).await;
    assert!(r.is_success(), "{} {}", r.status, r.text);
    r.json();
    for i in 0..50 {
        assert_eq!(g.recv().await["data"], i);
        assert_eq!(v.recv().await["d"], i);
    }
    g.expect_silence(SILENCE).await;
}

#[tokio::test]
async fn publish_errors_are_json_with_fitting_status() {
    let broker = Broker::start("");
    let mut canary = Canary::new(&broker).await;

    let r = http(
        broker.addr,
        "POST",
        "/api/publish",
        Some("application/json"),
        b"{nope".to_vec(),
    )
    .await;
    assert_eq!(r.status, 400, "bad JSON: {}", r.text);
    r.error_reason();

    let r = broker.post_json("/api/publish", &json!({"data": 1})).await;
    assert_eq!(r.status, 400, "missing channel: {}", r.text);
    assert!(
        r.error_reason().contains("channel"),
        "reason should name the field: {}",
        r.text
    );

    let r = broker
        .post_json("/api/publish", &json!({"channel": "", "data": 1}))
        .await;
    assert_eq!(r.status, 400, "empty channel: {}", r.text);
    r.error_reason();

    let r = broker
        .post_json("/api/publish", &json!({"channel": "a/#", "data": 1}))
        .await;
    assert_eq!(r.status, 400, "wildcard channel: {}", r.text);
    r.error_reason();

    let r = broker.post_json("/api/publish", &json!(42)).await;
    assert_eq!(r.status, 400, "not an object: {}", r.text);
    r.error_reason();

    canary.check(&broker).await;
}

#[tokio::test]
async fn wrong_method_is_405_and_unknown_path_is_404() {
    let broker = Broker::start("");
    let r = broker.get("/api/publish").await;
    assert_eq!(r.status, 405, "{}", r.text);
    let r = http(broker.addr, "DELETE", "/api/stats", None, Vec::new()).await;
    assert_eq!(r.status, 405, "{}", r.text);
    let r = broker.get("/api/does-not-exist").await;
    assert_eq!(r.status, 404, "{}", r.text);
    let r = broker.get("/nothing/here").await;
    assert_eq!(r.status, 404, "{}", r.text);
}

#[tokio::test]
async fn non_upgrade_get_on_ws_path_is_400() {
    let broker = Broker::start("");
    let r = broker.get("/ws").await;
    assert_eq!(r.status, 400, "{}", r.text);
}

#[tokio::test]
async fn process_output_json_and_text_plain_lines() {
    let broker = Broker::start("");
    let mut g = broker.gows_subscriber("process:p1").await;
    let r = broker
        .post_json("/api/process/p1/output", &json!({"line": "x"}))
        .await;
    assert!(r.is_success(), "{} {}", r.status, r.text);
    let v = g.recv().await;
    assert_eq!(
        (v["type"].clone(), v["data"].clone()),
        (json!("process_output"), json!("x"))
    );

    let r = http(
        broker.addr,
        "POST",
        "/api/process/p1/output",
        Some("text/plain"),
        b"line one\nline two\nline three\n".to_vec(),
    )
    .await;
    assert!(r.is_success(), "{} {}", r.status, r.text);
    for want in ["line one", "line two", "line three"] {
        let v = g.recv().await;
        assert_eq!(v["type"], "process_output");
        assert_eq!(v["processId"], "p1");
        assert_eq!(v["channel"], "process:p1");
        assert_eq!(v["data"], want);
    }
    g.expect_silence(SILENCE).await;
}

#[tokio::test]
async fn process_status_is_delivered_with_status_and_exit_code() {
    let broker = Broker::start("");
    let mut g = broker.gows_subscriber("process:p2").await;
    for (status, code) in [("running", 0), ("exited", 3), ("killed", -1)] {
        let r = broker
            .post_json(
                "/api/process/p2/status",
                &json!({"status": status, "exitCode": code}),
            )
            .await;
        assert!(r.is_success(), "{} {}", r.status, r.text);
        let v = g.recv().await;
        assert_eq!(v["type"], "process_status");
        assert_eq!(v["processId"], "p2");
        // A running process has no exit code yet (the go-ws snippet prints it).
        let want = if status == "running" {
            json!({"status": status})
        } else {
            json!({"status": status, "exitCode": code})
        };
        assert_eq!(v["data"], want);
    }
}

#[tokio::test]
async fn process_status_rejects_unknown_status() {
    let broker = Broker::start("");
    let r = broker
        .post_json(
            "/api/process/p3/status",
            &json!({"status": "dancing", "exitCode": 0}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    r.error_reason();
}

#[tokio::test]
async fn broadcast_reaches_both_dialects() {
    let broker = Broker::start("");
    let mut g = broker.ws(Dialect::Subprotocol("gows")).await;
    g.gows_sync().await;
    let mut v = broker.ws(Dialect::Subprotocol("vws")).await;
    v.vws_subscribe("nothing", 1).await;
    let r = broker
        .post_json(
            "/api/broadcast",
            &json!({"event": "deploy", "data": {"env": "prod"}}),
        )
        .await;
    assert!(r.is_success(), "{} {}", r.status, r.text);
    let gm = g.recv().await;
    assert_eq!(gm["type"], "event");
    assert_eq!(
        gm["data"],
        json!({"event": "deploy", "data": {"env": "prod"}})
    );
    assert!(gm.get("channel").is_none());
    assert_timestamp(&gm);
    let vm = v.recv().await;
    assert_eq!(
        vm,
        json!({"t": "$broadcast", "d": {"event": "deploy", "data": {"env": "prod"}}, "h": {"type": "event"}})
    );
}

#[tokio::test]
async fn stats_has_the_documented_shape() {
    let broker = Broker::start("");
    let _a = broker.gows_subscriber("s1").await;
    let _b = broker.vws_subscriber("s2").await;
    broker.publish("s1", json!(1)).await;
    let s = broker.stats().await;
    assert_eq!(s["clients"], 2, "stats: {s}");
    assert!(
        s["channels"].is_u64() || s["channels"].is_array() || s["channels"].is_object(),
        "stats: {s}"
    );
    assert!(
        s["shards"].as_array().is_some_and(|a| !a.is_empty()),
        "shards array: {s}"
    );
    assert!(s["messages"].is_object(), "messages: {s}");
    for k in ["p50", "p99", "p999", "max"] {
        assert!(s["latency_us"][k].is_number(), "latency_us.{k}: {s}");
    }
}

#[tokio::test]
async fn channels_list_and_single_channel_counts() {
    let broker = Broker::start("");
    let _a = broker.gows_subscriber("room1").await;
    let _b = broker.gows_subscriber("room1").await;
    let _c = broker.vws_subscriber("room2").await;

    let r = broker.get("/api/channels").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let list = r.json();
    assert!(
        r.text.contains("room1") && r.text.contains("room2"),
        "channels: {list}"
    );

    let r = broker.get("/api/channels/room1").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(find_count(&r.json()), Some(2), "room1 count: {}", r.text);

    let r = broker.get("/api/channels/room2").await;
    assert_eq!(find_count(&r.json()), Some(1), "room2 count: {}", r.text);

    let r = broker.get("/api/channels/nobody-here").await;
    assert!(
        r.status == 404 || find_count(&r.json()) == Some(0),
        "empty channel: {} {}",
        r.status,
        r.text
    );
}

#[tokio::test]
async fn healthz_is_semstreams_shaped() {
    let broker = Broker::start("");
    let _c = broker.gows_subscriber("h").await;
    let r = broker.get("/healthz").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["healthy"], true, "{v}");
    assert!(v["status"].is_string(), "{v}");
    assert!(v["details"].is_object(), "{v}");
    assert!(
        v["details"]["connections"]["active"].is_u64(),
        "details.connections.active: {v}"
    );
    assert!(v["details"]["queue"].is_object(), "details.queue: {v}");
}

#[tokio::test]
async fn metrics_is_prometheus_text() {
    let broker = Broker::start("");
    let mut c = broker.ws(Dialect::Subprotocol("gows")).await;
    // One rejection so the counter exists.
    c.gows_expect_error("{bad").await;
    let r = broker.get("/metrics").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("shardcast_"), "{}", r.text);
    assert!(
        r.text.contains("# TYPE") || r.text.contains("# HELP"),
        "exposition format: {}",
        r.text
    );
}

#[tokio::test]
async fn index_page_is_served() {
    // The live dashboard and /client.js arrive with the observability issue; until then
    // `/` is a small page pointing at the endpoints.
    let broker = Broker::start("");
    let r = broker.get("/").await;
    assert_eq!(r.status, 200);
    assert!(
        r.content_type.contains("text/html"),
        "content-type {}",
        r.content_type
    );
    assert!(r.text.contains("/api/stats"), "{}", r.text);
}

#[tokio::test]
async fn a_body_that_never_finishes_gets_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let broker = Broker::start("[server]\nhandshake_timeout = \"1s\"\n");
    let mut s = tokio::net::TcpStream::connect(broker.addr).await.unwrap();
    s.write_all(
        b"POST /api/publish HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"chan",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    within(RECV, "408 and close", s.read_to_end(&mut out))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("handshake_timeout"), "{text}");
}

#[tokio::test]
async fn head_answers_like_get_without_a_body() {
    let broker = Broker::start("");
    for path in [
        "/",
        "/healthz",
        "/readyz",
        "/client.js",
        "/api/stats",
        "/metrics",
    ] {
        let get = broker.get(path).await;
        let head = http(broker.addr, "HEAD", path, None, Vec::new()).await;
        assert_eq!(head.status, get.status, "HEAD {path}");
        assert_eq!(head.status, 200, "HEAD {path}: {}", head.text);
        assert!(head.text.is_empty(), "HEAD {path} sent a body");
    }
    // Still only reads: HEAD on a publishing endpoint is not a publish.
    let r = http(broker.addr, "HEAD", "/api/publish", None, Vec::new()).await;
    assert_eq!(r.status, 405);
}

#[tokio::test]
async fn logs_to_a_pipe_carry_no_colour_codes() {
    let broker = Broker::start_with("", &[], &[("RUST_LOG", "info")]);
    // A refused upgrade is logged at info or above, whatever else is.
    let _ = broker.get("/api/nothing-here").await;
    eventually("a log line on stderr", RECV, || {
        let broker = &broker;
        async move { !broker.stderr().trim().is_empty() }
    })
    .await;
    let logs = broker.stderr();
    assert!(
        !logs.contains('\u{1b}'),
        "ANSI escapes in piped logs: {logs:?}"
    );
}

#[tokio::test]
async fn api_data_is_compacted_and_headers_keep_their_order() {
    // Issue 17 item 10 (docs/PROTOCOL.md §3): pretty-printed `data` must not put raw
    // newlines in frames (line-oriented consumers split them), and headers must not
    // come out sorted.
    let broker = Broker::start("");
    let mut raw = RawWs::connect(broker.addr, "vws").await;
    raw.send_text(r#"{"k":"s","t":"c","i":1}"#).await;
    assert_eq!(raw.recv_json(RECV).await["k"], "a");
    let mut gows = broker.gows_subscriber("c").await;
    let body = "{\n  \"channel\": \"c\",\n  \"data\": {\n    \"b\": [1, 2.50, \"x  y\"],\n    \"a\": null\n  },\n  \"headers\": {\"z\": \"1\", \"a\": \"2\", \"m\": \"3\"}\n}";
    let r = http(
        broker.addr,
        "POST",
        "/api/publish",
        Some("application/json"),
        body.as_bytes().to_vec(),
    )
    .await;
    assert!(r.is_success(), "{}", r.text);
    let frame = loop {
        match raw.read_frame(RECV).await {
            Ok(Some((_, OP_TEXT, p))) => break String::from_utf8(p).unwrap(),
            Ok(Some(_)) => continue,
            other => panic!("no frame: {other:?}"),
        }
    };
    assert_eq!(
        frame,
        r#"{"t":"c","d":{"b":[1,2.50,"x  y"],"a":null},"h":{"z":"1","a":"2","m":"3"}}"#
    );
    let v = gows.recv().await;
    assert_eq!(v["data"]["b"][2], "x  y");

    // Broadcast data too.
    let body = "{\"event\": \"e\",\n \"data\": {\n  \"k\": [ 1 ]\n }\n}";
    let r = http(
        broker.addr,
        "POST",
        "/api/broadcast",
        Some("application/json"),
        body.as_bytes().to_vec(),
    )
    .await;
    assert!(r.is_success(), "{}", r.text);
    let frame = loop {
        match raw.read_frame(RECV).await {
            Ok(Some((_, OP_TEXT, p))) => break String::from_utf8(p).unwrap(),
            Ok(Some(_)) => continue,
            other => panic!("no frame: {other:?}"),
        }
    };
    assert_eq!(
        frame,
        r#"{"t":"$broadcast","d":{"event":"e","data":{"k":[1]}},"h":{"type":"event"}}"#
    );
    // Headers must still be strings.
    let r = broker
        .post_json(
            "/api/publish",
            &json!({"channel": "c", "data": 1, "headers": {"a": 1}}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
}

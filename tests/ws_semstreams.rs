//! The SemStreams dialect (SPEC §11, issue 19) against the real binary with real WebSocket
//! clients: every message type, the `slow` signal, each `semstreams.on_full` policy and
//! each bad input; plus dialect detection from the first message
//! (`server.default_dialect = "auto"`, the default).
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

async fn peer(broker: &Broker) -> Ws {
    let ws = broker.ws(Dialect::Subprotocol("semstreams")).await;
    assert_eq!(ws.protocol.as_deref(), Some("semstreams"), "echoed");
    ws
}

fn data(id: &str, payload: Value) -> Value {
    json!({"type": "data", "id": id, "timestamp": 1_704_844_800_000u64, "payload": payload})
}

fn request(id: &str, method: &str, params: Value) -> Value {
    json!({"type": "request", "id": id, "timestamp": 1_704_844_800_000u64,
           "payload": {"method": method, "params": params}})
}

/// Sends `msg`, returns the next message (skipping `slow`).
async fn ask(ws: &mut Ws, msg: &Value) -> Value {
    ws.send_json(msg).await;
    loop {
        let v = ws.recv().await;
        if v["type"] != "slow" {
            return v;
        }
    }
}

fn assert_reply_ok(v: &Value, id: &str) -> Value {
    assert_eq!(v["type"], "reply", "{v}");
    assert_eq!(v["id"], id, "{v}");
    assert_eq!(v["payload"]["status"], "ok", "{v}");
    assert!(v["timestamp"].is_u64(), "unix ms timestamp: {v}");
    v["payload"]["result"].clone()
}

#[tokio::test]
async fn data_d1_is_acked_and_reaches_a_vws_subscriber_of_the_data_channel() {
    let broker = Broker::start("");
    let mut vws = broker.ws(Dialect::Subprotocol("vws")).await;
    vws.vws_subscribe("federated/data", 1).await;
    let mut gows = broker.gows_subscriber("federated/data").await;
    let mut edge = peer(&broker).await;
    let v = ask(
        &mut edge,
        &data("d1", json!({"sensor_id": "temp-01", "value": 23.5})),
    )
    .await;
    assert_eq!(v["type"], "ack", "{v}");
    assert_eq!(v["id"], "d1", "{v}");
    assert!(v["timestamp"].is_u64(), "{v}");
    let e = vws.recv().await;
    assert_eq!(e["t"], "federated/data", "{e}");
    assert_eq!(e["d"], json!({"sensor_id": "temp-01", "value": 23.5}));
    let g = gows.recv().await;
    assert_eq!(
        (&g["type"], &g["channel"]),
        (&json!("event"), &json!("federated/data"))
    );
    let m = broker.metrics().await;
    assert_eq!(
        counter(
            &m,
            "shardcast_semstreams_messages_received_total{type=\"data\"}"
        ),
        1.0
    );
    assert_eq!(counter(&m, "shardcast_semstreams_acks_total"), 1.0);
    assert_eq!(
        counter(&m, "shardcast_semstreams_messages_published_total"),
        1.0
    );
    assert_eq!(counter(&m, "shardcast_semstreams_connections_active"), 1.0);
}

#[tokio::test]
async fn requests_status_routing_backpressure_and_unknown_method() {
    let broker = Broker::start("");
    let mut edge = broker.ws(Dialect::Query("semstreams")).await;
    let r = assert_reply_ok(
        &ask(&mut edge, &request("r1", "status", json!({}))).await,
        "r1",
    );
    assert_eq!(r["healthy"], true, "{r}");
    assert_eq!(r["details"]["semstreams"]["peers"], 1, "{r}");
    assert!(r["details"]["semstreams"]["queue"]["utilization"].is_number());
    let r = assert_reply_ok(
        &ask(&mut edge, &request("r2", "routing", json!(null))).await,
        "r2",
    );
    assert_eq!(r["dialects"], json!(["gows", "vws", "semstreams"]), "{r}");
    assert_eq!(r["data_channel"], "federated/data");
    let r = assert_reply_ok(
        &ask(
            &mut edge,
            &request(
                "r3",
                "backpressure",
                json!({"rate_limit": 100, "unit": "msg/sec"}),
            ),
        )
        .await,
        "r3",
    );
    assert_eq!(r["adjusted_to"], 100.0, "{r}");
    // An unknown method is an error reply, not a close.
    let v = ask(&mut edge, &request("r4", "reboot", json!({}))).await;
    assert_eq!(
        (&v["type"], &v["id"]),
        (&json!("reply"), &json!("r4")),
        "{v}"
    );
    assert_eq!(v["payload"]["status"], "error", "{v}");
    assert!(
        v["payload"]["error"]
            .as_str()
            .unwrap()
            .contains("unknown method"),
        "{v}"
    );
    assert_reply_ok(
        &ask(&mut edge, &request("r5", "status", json!({}))).await,
        "r5",
    );
    let m = broker.metrics().await;
    assert_eq!(
        counter(&m, "shardcast_semstreams_requests_total{method=\"status\"}"),
        2.0
    );
    assert_eq!(
        counter(&m, "shardcast_semstreams_replies_total{status=\"error\"}"),
        1.0
    );
    assert_eq!(rejections(&m).get("unknown_method"), Some(&1.0));
}

#[tokio::test]
async fn backpressure_rate_limit_caps_what_the_peer_is_sent() {
    let broker = Broker::start("");
    let mut edge = peer(&broker).await;
    let p = json!({"rate_limit": 2});
    assert_reply_ok(
        &ask(&mut edge, &request("bp", "backpressure", p)).await,
        "bp",
    );
    let p = json!({"patterns": ["fast/#"]});
    assert_reply_ok(&ask(&mut edge, &request("s", "subscribe", p)).await, "s");
    let batch: Vec<Value> = (0..50)
        .map(|i| json!({"channel": "fast/x", "data": i}))
        .collect();
    assert!(broker
        .post_json("/api/publish", &json!(batch))
        .await
        .is_success());
    // The bucket holds one second's worth (2): the rest is dropped, counted.
    eventually("rate-limited drops counted", RECV, || async {
        counter(
            &broker.metrics().await,
            "shardcast_semstreams_messages_dropped_total{reason=\"rate_limit\"}",
        ) >= 40.0
    })
    .await;
    let first = edge.recv().await;
    assert_eq!(
        (&first["type"], &first["payload"]),
        (&json!("data"), &json!(0))
    );
}

#[tokio::test]
async fn subscribe_request_delivers_publications_as_data_with_the_topic() {
    let broker = Broker::start("");
    let mut edge = peer(&broker).await;
    let p = json!({"patterns": ["news/#", "bad/#/x"]});
    let r = assert_reply_ok(&ask(&mut edge, &request("s1", "subscribe", p)).await, "s1");
    assert_eq!(r["subscribed"], json!(["news/#"]), "{r}");
    assert_eq!(r["refused"][0]["pattern"], "bad/#/x", "{r}");
    let r = broker.publish("news/today", json!({"headline": "x"})).await;
    assert!(r.is_success());
    let v = edge.recv().await;
    assert_eq!(v["type"], "data", "{v}");
    assert_eq!(v["topic"], "news/today", "{v}");
    assert_eq!(v["payload"], json!({"headline": "x"}));
    assert!(v["id"].is_string() && v["timestamp"].is_u64(), "{v}");
    // Only refused patterns: an error reply.
    let v = ask(
        &mut edge,
        &request("s2", "subscribe", json!({"patterns": ["#/a"]})),
    )
    .await;
    assert_eq!(v["payload"]["status"], "error", "{v}");
    assert_eq!(v["payload"]["reason"], "invalid", "{v}");
}

#[tokio::test]
async fn history_request_replays_from_a_position_and_data_acks_carry_the_offset() {
    let broker = Broker::start(
        "[client]\nallow_publish = true\n[[history]]\npattern = \"hist/#\"\nsize = 100\n",
    );
    for i in 1..=3 {
        assert!(broker.publish("hist/x", json!(i)).await.is_success());
    }
    let mut edge = peer(&broker).await;
    let p = json!({"channel": "hist/x", "since": 1});
    let r = assert_reply_ok(&ask(&mut edge, &request("h1", "history", p)).await, "h1");
    assert_eq!(
        (&r["top"], &r["recovered"]),
        (&json!(3), &json!(true)),
        "{r}"
    );
    for want in [2, 3] {
        let v = edge.recv().await;
        assert_eq!(
            (&v["type"], &v["offset"]),
            (&json!("data"), &json!(want)),
            "{v}"
        );
        assert_eq!(v["payload"], want);
    }
    // A data message on a history channel is acked after the append, with its offset.
    let v = ask(&mut edge, &data("d9", json!({"topic": "hist/x", "n": 4}))).await;
    assert_eq!(v["type"], "ack", "{v}");
    assert_eq!(v["payload"], json!({"topic": "hist/x", "offset": 4}), "{v}");
    let live = edge.recv().await;
    assert_eq!(
        (&live["offset"], &live["topic"]),
        (&json!(4), &json!("hist/x"))
    );
}

/// The envelope's own `topic` and `headers` (what the broker renders, and what a
/// SemStreams upstream link sends) become the publication's topic and headers.
#[tokio::test]
async fn data_with_an_envelope_topic_and_headers_keeps_both() {
    let broker = Broker::start("[client]\nallow_publish = true\n");
    let mut sub = broker.vws_subscriber("plant/#").await;
    let mut edge = peer(&broker).await;
    let mut msg = data("e1", json!({"topic": "ignored/here", "v": 1}));
    msg["topic"] = json!("plant/line1");
    msg["headers"] = json!({"traceparent": "00-abc-01"});
    let v = ask(&mut edge, &msg).await;
    assert_eq!((&v["type"], &v["id"]), (&json!("ack"), &json!("e1")), "{v}");
    let got = sub.recv().await;
    assert_eq!(got["t"], "plant/line1", "the envelope's topic wins: {got}");
    assert_eq!(got["d"], json!({"topic": "ignored/here", "v": 1}));
    assert_eq!(got["h"]["traceparent"], "00-abc-01", "{got}");
}

#[tokio::test]
async fn policy_closes_the_data_channel_and_guards_payload_topics() {
    let broker = Broker::start(
        "[[policy]]\npattern = \"federated/#\"\nsubscribe = \"anyone\"\npublish = \"nobody\"\n",
    );
    let mut edge = peer(&broker).await;
    for (id, payload) in [
        ("p1", json!({"v": 1})),
        ("p2", json!({"topic": "elsewhere", "v": 1})),
    ] {
        let v = ask(&mut edge, &data(id, payload)).await;
        assert_eq!((&v["type"], &v["id"]), (&json!("nack"), &json!(id)), "{v}");
        assert_eq!(v["payload"]["reason"], "not_allowed", "{v}");
        assert!(v["payload"]["error"].is_string(), "{v}");
    }
}

#[tokio::test]
async fn bad_input_is_nacked_with_a_reason_counted_and_the_connection_kept() {
    let broker = Broker::start("[semstreams]\nmax_payload_bytes = 64\n");
    let mut canary = Canary::new(&broker).await;
    let mut edge = peer(&broker).await;
    assert_eq!(ask(&mut edge, &data("once", json!(1))).await["type"], "ack");
    let cases: Vec<(Value, &str, Option<&str>, &str)> = vec![
        (
            json!({"id": "a", "payload": 1}),
            "nack",
            None,
            "missing field 'type'",
        ),
        (
            json!({"type": 5, "id": "a"}),
            "nack",
            None,
            "'type' has the wrong type",
        ),
        (
            json!({"type": "data", "payload": 1}),
            "nack",
            None,
            "missing field 'id'",
        ),
        (
            json!({"type": "data", "id": 7, "payload": 1}),
            "nack",
            None,
            "'id' has the wrong type",
        ),
        (
            json!({"type": "data", "id": "b"}),
            "nack",
            Some("b"),
            "missing field 'payload'",
        ),
        (
            json!({"type": "data", "id": "t", "topic": 9, "payload": {}}),
            "nack",
            Some("t"),
            "'topic' has the wrong type",
        ),
        (
            json!({"type": "data", "id": "h", "headers": {"n": 1}, "payload": {}}),
            "nack",
            Some("h"),
            "'headers' has the wrong type",
        ),
        (
            json!({"type": "data", "id": "h2", "headers": {"type": "x"}, "payload": {}}),
            "nack",
            Some("h2"),
            "type",
        ),
        (
            json!({"type": "data", "id": "b", "payload": {"topic": 1}}),
            "nack",
            Some("b"),
            "'payload.topic'",
        ),
        (
            json!({"type": "data", "id": "t", "timestamp": "noon", "payload": 1}),
            "nack",
            Some("t"),
            "'timestamp'",
        ),
        (
            json!({"type": "teleport", "id": "c"}),
            "nack",
            Some("c"),
            "unknown message type",
        ),
        (
            json!({"type": "reply", "id": "d", "payload": {"status": "ok"}}),
            "nack",
            Some("d"),
            "never sent",
        ),
        (data("once", json!(2)), "nack", Some("once"), "already used"),
        (
            data("big", json!("x".repeat(100))),
            "nack",
            Some("big"),
            "max_payload_bytes",
        ),
        (
            json!({"type": "request", "id": "e"}),
            "reply",
            Some("e"),
            "missing field 'payload'",
        ),
        (
            json!({"type": "request", "id": "f", "payload": {"method": 3}}),
            "reply",
            Some("f"),
            "'payload.method'",
        ),
        (
            request("g", "backpressure", json!({"rate_limit": "fast"})),
            "reply",
            Some("g"),
            "params.rate_limit",
        ),
        (
            request("h", "subscribe", json!({"patterns": "a"})),
            "reply",
            Some("h"),
            "params.patterns",
        ),
    ];
    for (msg, kind, id, needle) in &cases {
        let v = ask(&mut edge, msg).await;
        assert_eq!(v["type"], *kind, "{msg} -> {v}");
        assert_eq!(v["id"].as_str(), *id, "{msg} -> {v}");
        let error = v["payload"]["error"].as_str().unwrap_or_default();
        assert!(error.contains(needle), "{msg} -> {v}, wanted {needle:?}");
        let reason = v["payload"]["reason"].as_str().unwrap_or_default();
        assert_eq!(reason, "invalid", "{msg} -> {v}");
    }
    edge.send_text("{not json").await;
    let v = edge.recv().await;
    assert_eq!(v["payload"]["error"], "malformed JSON", "{v}");
    // Still open and served; nobody else noticed.
    assert_reply_ok(
        &ask(&mut edge, &request("z", "status", json!({}))).await,
        "z",
    );
    canary.check(&broker).await;
    let m = broker.metrics().await;
    let r = rejections(&m);
    for label in [
        "unsolicited_reply",
        "reused_id",
        "payload_too_large",
        "unknown_type",
        "bad_params",
    ] {
        assert!(
            r.get(label).copied().unwrap_or(0.0) >= 1.0,
            "{label} counted: {r:?}"
        );
    }
    assert!(
        counter(
            &m,
            "shardcast_semstreams_messages_received_total{type=\"invalid\"}"
        ) >= 8.0,
        "{m}"
    );
}

/// A peer whose socket is not read (tiny receive buffer) is sent publications until its
/// queue overflows; returns what it then reads, in order.
async fn overflow(on_full: &str) -> (Broker, Vec<Value>) {
    let broker = Broker::start(&format!(
        "[semstreams]\nqueue_size = 10\non_full = \"{on_full}\"\nslow_interval = \"10ms\"\n"
    ));
    let mut raw = RawWs::connect_with(broker.addr, "/ws", Some("semstreams"), Some(4096)).await;
    let sub = request("s", "subscribe", json!({"patterns": ["firehose"]}));
    raw.send_text(&sub.to_string()).await;
    assert_eq!(raw.recv_json(RECV).await["type"], "reply");
    let pad = "x".repeat(1000);
    let total = 3000;
    for start in (0..total).step_by(100) {
        let batch: Vec<Value> = (start..start + 100)
            .map(|n| json!({"channel": "firehose", "data": {"n": n, "pad": pad}}))
            .collect();
        assert!(broker
            .post_json("/api/publish", &json!(batch))
            .await
            .is_success());
    }
    eventually(
        "queue-full drops counted",
        Duration::from_secs(10),
        || async {
            counter(
                &broker.metrics().await,
                "shardcast_semstreams_messages_dropped_total{reason=\"queue_full\"}",
            ) > 0.0
        },
    )
    .await;
    let mut got = Vec::new();
    loop {
        match raw.read_frame(Duration::from_millis(500)).await {
            Ok(Some((_, 1, p))) => got.push(serde_json::from_slice(&p).unwrap()),
            Ok(Some(_)) => {}
            Ok(None) => panic!("the broker closed a SemStreams peer instead of {on_full}"),
            Err(()) => break, // drained
        }
    }
    (broker, got)
}

fn numbers(got: &[Value]) -> Vec<u64> {
    got.iter()
        .filter(|v| v["type"] == "data")
        .map(|v| v["payload"]["n"].as_u64().unwrap())
        .collect()
}

fn assert_slow_signal(got: &[Value]) {
    let slow = got
        .iter()
        .find(|v| v["type"] == "slow")
        .unwrap_or_else(|| panic!("no slow signal in {} messages", got.len()));
    let p = &slow["payload"];
    assert_eq!(p["queue_capacity"], 10, "{slow}");
    assert!(p["queue_depth"].as_u64().unwrap() > 8, "{slow}");
    assert!(p["utilization"].as_f64().unwrap() > 0.8, "{slow}");
}

#[tokio::test]
async fn drop_oldest_keeps_the_newest_and_signals_slow() {
    let (broker, got) = overflow("drop_oldest").await;
    assert_slow_signal(&got);
    let n = numbers(&got);
    assert!(n.windows(2).all(|w| w[0] < w[1]), "in order");
    assert_eq!(n.last(), Some(&2999), "the newest survives drop_oldest");
    assert!(n.len() < 3000, "some were dropped");
    let m = broker.metrics().await;
    assert!(counter(&m, "shardcast_semstreams_slow_total") >= 1.0);
}

#[tokio::test]
async fn drop_newest_keeps_the_oldest_and_signals_slow() {
    let (_broker, got) = overflow("drop_newest").await;
    assert_slow_signal(&got);
    let n = numbers(&got);
    assert!(n.windows(2).all(|w| w[0] < w[1]), "in order");
    assert_eq!(n.first(), Some(&0));
    assert_ne!(
        n.last(),
        Some(&2999),
        "the newest is what drop_newest drops"
    );
}

/// A raw tokio-tungstenite connection with a small receive buffer, split so that the
/// test can keep writing while it does not read.
async fn small_buffer_peer(
    broker: &Broker,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.set_send_buffer_size(4096).unwrap();
    let stream = socket.connect(broker.addr).await.unwrap();
    let mut req = broker.ws_url().into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("semstreams"),
    );
    let (ws, _) = within(
        RECV,
        "handshake",
        tokio_tungstenite::client_async(req, stream),
    )
    .await
    .unwrap();
    ws
}

#[tokio::test]
async fn block_stops_reading_the_peer_without_loss_and_without_blocking_others() {
    // Nothing lost means both ways: every message the peer pushes is published and acked,
    // and every one comes back to it on its own subscription.
    // No publish rate limit: the edge pushes as fast as it can.
    let broker = Broker::start(
        "[client]\npublish_rate = 0.0\n[semstreams]\nqueue_size = 8\non_full = \"block\"\n",
    );
    let (mut sink, mut stream) = small_buffer_peer(&broker).await.split();
    // The peer also subscribes to its own data channel, so what the broker sends it
    // (acks and ~1 KiB data frames) outgrows the socket buffers quickly.
    let sub = request("s", "subscribe", json!({"patterns": ["federated/data"]}));
    sink.send(Message::text(sub.to_string())).await.unwrap();
    let reply = within(RECV, "subscribe reply", stream.next())
        .await
        .unwrap()
        .unwrap();
    assert!(reply.to_text().unwrap().contains("\"reply\""), "{reply}");
    const N: usize = 40_000;
    let pad = "x".repeat(1000);
    let writer = tokio::spawn(async move {
        for i in 0..N {
            let msg = data(&format!("d{i}"), json!({"i": i, "pad": pad}));
            sink.send(Message::text(msg.to_string())).await.unwrap();
        }
        sink
    });
    // The peer reads nothing: its acks fill its queue, and the broker stops reading it.
    eventually(
        "the broker blocks the peer",
        Duration::from_secs(20),
        || async {
            counter(
                &broker.metrics().await,
                "shardcast_semstreams_read_blocks_total",
            ) > 0.0
        },
    )
    .await;
    assert!(!writer.is_finished(), "the peer's writes are held back");
    // Other connections are served meanwhile.
    let mut other = broker.ws(Dialect::Subprotocol("gows")).await;
    other.gows_sync().await;
    // Now it reads: every data message is acked, in order, and comes back on its own
    // subscription, in order; none is lost.
    let mut next = 0;
    let mut echoed = 0;
    while next < N || echoed < N {
        let msg = within(Duration::from_secs(30), "acks", stream.next())
            .await
            .unwrap()
            .unwrap();
        let Message::Text(text) = msg else { continue };
        let v: Value = serde_json::from_str(&text).unwrap();
        match v["type"].as_str() {
            Some("ack") => {
                assert_eq!(v["id"], format!("d{next}"), "acks in order, none lost");
                next += 1;
            }
            Some("data") => {
                assert_eq!(v["payload"]["i"], echoed, "echoes in order, none lost");
                echoed += 1;
            }
            Some("slow") => {}
            _ => panic!("unexpected {v}"),
        }
    }
    let _sink = within(Duration::from_secs(30), "writer", writer)
        .await
        .unwrap();
    let m = broker.metrics().await;
    assert_eq!(
        counter(&m, "shardcast_semstreams_messages_published_total"),
        N as f64
    );
    assert_eq!(counter(&m, "shardcast_semstreams_nacks_total"), 0.0);
}

// Dialect detection (SPEC §11): no subprotocol, no ?dialect=, default config.

#[tokio::test]
async fn auto_detects_a_vws_client_from_its_first_message() {
    let broker = Broker::start("");
    let mut ws = broker.ws(Dialect::Default).await;
    assert_eq!(ws.protocol, None);
    ws.vws_subscribe("a/+", 1).await;
    assert!(broker.publish("a/b", json!({"x": 1})).await.is_success());
    let v = ws.recv().await;
    assert_eq!((&v["t"], &v["d"]), (&json!("a/b"), &json!({"x": 1})), "{v}");
    // An event-shaped first message (`t` with `d`) is vws too.
    let mut publisher = broker.ws(Dialect::Default).await;
    let nack = publisher
        .vws_expect_nack(&json!({"t": "a/c", "d": 1, "i": 7}))
        .await;
    assert!(nack.contains("not allowed"), "{nack}");
    let m = broker.metrics().await;
    assert_eq!(
        counter(&m, "shardcast_dialect_detected_total{dialect=\"vws\"}"),
        2.0
    );
}

#[tokio::test]
async fn auto_detects_gows_and_semstreams_clients() {
    let broker = Broker::start("");
    let mut gows = broker.ws(Dialect::Default).await;
    gows.send_json(&json!({"type": "ping"})).await;
    assert_eq!(gows.recv().await["type"], "pong");
    let mut edge = broker.ws(Dialect::Default).await;
    let v = ask(&mut edge, &data("d1", json!({"v": 1}))).await;
    assert_eq!((&v["type"], &v["id"]), (&json!("ack"), &json!("d1")), "{v}");
    let r = ask(&mut edge, &request("r1", "status", json!({}))).await;
    assert_reply_ok(&r, "r1");
}

#[tokio::test]
async fn a_client_that_never_speaks_gets_gows_broadcasts() {
    let broker = Broker::start("");
    let mut silent = broker.ws(Dialect::Default).await;
    eventually("the client is registered", RECV, || async {
        stats_clients(&broker).await == 1
    })
    .await;
    let r = broker
        .post_json("/api/broadcast", &json!({"event": "deploy", "data": 1}))
        .await;
    assert!(r.is_success(), "{}", r.text);
    let v = silent.recv().await;
    assert_eq!(v["type"], "event", "{v}");
    assert_eq!(v["data"], json!({"event": "deploy", "data": 1}));
    assert_timestamp(&v);
    // An undecidable first message is answered as gows, and the client stays undecided.
    silent.send_json(&json!({"hello": 1})).await;
    assert_eq!(silent.recv().await["type"], "error");
    silent.send_json(&json!({"k": "s", "t": "x", "i": 1})).await;
    assert_eq!(silent.recv().await, json!({"k": "a", "i": 1}));
}

#[tokio::test]
async fn a_forced_default_dialect_is_not_detected() {
    let broker = Broker::start("[server]\ndefault_dialect = \"gows\"\n");
    let mut ws = broker.ws(Dialect::Default).await;
    let e = ws.gows_expect_error(r#"{"k":"s","t":"x","i":1}"#).await;
    assert!(e.contains("'type'"), "answered as gows: {e}");
}

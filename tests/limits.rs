//! SPEC §4 row by row: hostile or over-limit input gets the documented answer (error /
//! nack / close code / HTTP status), and a separate canary subscriber still receives a
//! fresh publication afterwards ("other clients never notice").
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;
use common::*;
use serde_json::json;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const CLOSE: Duration = Duration::from_secs(5);

#[tokio::test]
async fn malformed_json_unknown_type_and_missing_fields() {
    let broker = Broker::start("");
    let mut canary = Canary::new(&broker).await;

    let mut g = broker.ws(Dialect::Subprotocol("gows")).await;
    assert!(g
        .gows_expect_error("{\"type\":")
        .await
        .contains("malformed JSON"));
    assert!(g
        .gows_expect_error("{\"type\":\"jump\"}")
        .await
        .contains("unknown message type"));
    assert!(g
        .gows_expect_error("{\"type\":\"unsubscribe\"}")
        .await
        .contains("missing field"));
    g.gows_sync().await;
    canary.check(&broker).await;

    let mut v = broker.ws(Dialect::Subprotocol("vws")).await;
    v.send_text("{\"k\":").await;
    assert!(v.recv().await["e"]
        .as_str()
        .unwrap_or("")
        .contains("malformed JSON"));
    assert!(v
        .vws_expect_nack(&json!({"k": "q", "i": 1}))
        .await
        .contains("unknown kind"));
    assert!(v
        .vws_expect_nack(&json!({"k": "s", "i": 2}))
        .await
        .contains("missing field 't'"));
    v.vws_subscribe("ok", 3).await;
    canary.check(&broker).await;
}

#[tokio::test]
async fn invalid_topics_are_refused() {
    let broker = Broker::start("[client]\nmax_topic_bytes = 64\nmax_topic_levels = 4\n");
    let mut canary = Canary::new(&broker).await;
    let mut v = broker.ws(Dialect::Subprotocol("vws")).await;
    let long = "x".repeat(65);
    let deep = "a/b/c/d/e";
    let cases = [
        ("", "invalid pattern"),
        (long.as_str(), "invalid pattern"),
        (deep, "invalid pattern"),
        ("ctl\u{1}char", "invalid pattern"),
        ("new\nline", "invalid pattern"),
        ("a/#/b", "invalid pattern"),
        ("a/b+", "invalid pattern"),
        ("+a", "invalid pattern"),
    ];
    for (n, (t, want)) in cases.iter().enumerate() {
        let e = v.vws_expect_nack(&json!({"k": "s", "t": t, "i": n})).await;
        assert!(e.contains(want), "nack for {t:?}: {e:?}");
    }
    v.vws_subscribe(&"y".repeat(64), 100).await; // exactly at the limit is fine
    v.vws_subscribe("a/b/c/d", 101).await;

    let mut g = broker.ws(Dialect::Subprotocol("gows")).await;
    for t in ["", long.as_str(), "ctl\u{1}char"] {
        let e = g
            .gows_expect_error(&json!({"type": "subscribe", "data": t}).to_string())
            .await;
        assert!(e.contains("invalid"), "gows error for {t:?}: {e:?}");
    }
    g.gows_sync().await;

    for t in ["", long.as_str(), "ctl\u{1}char", "a/+/c"] {
        let r = broker
            .post_json("/api/publish", &json!({"channel": t, "data": 1}))
            .await;
        assert_eq!(r.status, 400, "API publish to {t:?}: {}", r.text);
        r.error_reason();
    }
    canary.check(&broker).await;
}

#[tokio::test]
async fn max_subscriptions_is_enforced_and_named() {
    let broker = Broker::start("[client]\nmax_subscriptions = 3\n");
    let mut canary = Canary::new(&broker).await;
    let mut v = broker.ws(Dialect::Subprotocol("vws")).await;
    for i in 1..=3 {
        v.vws_subscribe(&format!("lim/{i}"), i).await;
    }
    let e = v
        .vws_expect_nack(&json!({"k": "s", "t": "lim/4", "i": 4}))
        .await;
    assert!(
        e.contains("subscription limit reached (client.max_subscriptions)"),
        "{e:?}"
    );
    // Freeing one makes room again.
    v.send_json(&json!({"k": "u", "t": "lim/1", "i": 5})).await;
    assert_eq!(v.recv().await, json!({"k": "a", "i": 5}));
    v.vws_subscribe("lim/4", 6).await;

    let mut g = broker.ws(Dialect::Subprotocol("gows")).await;
    for i in 0..3 {
        g.gows_subscribe(&format!("glim{i}")).await;
    }
    let e = g
        .gows_expect_error(r#"{"type":"subscribe","data":"glim3"}"#)
        .await;
    assert!(e.contains("client.max_subscriptions"), "{e:?}");
    g.gows_sync().await;
    canary.check(&broker).await;
}

#[tokio::test]
async fn publish_rate_limit_nacks_then_closes_persistent_abuse_with_1008() {
    let broker = Broker::start(
        "[client]\nallow_publish = true\npublish_rate = 5.0\npublish_burst = 5\nrate_limit_strikes = 20\n",
    );
    let mut canary = Canary::new(&broker).await;
    let mut v = broker.ws(Dialect::Subprotocol("vws")).await;

    // A burst of 10: the bucket holds 5, so some must be refused; 10 stays under 20 strikes.
    for i in 0..10 {
        v.send_json(&json!({"t": "rl/x", "d": i, "i": i})).await;
    }
    let (mut acks, mut limited) = (0, 0);
    for i in 0..10 {
        let r = v.recv().await;
        assert_eq!(r["i"], i, "one reply per request, in order: {r}");
        match r["k"].as_str() {
            Some("a") => acks += 1,
            Some("n") => {
                assert!(
                    r["e"].as_str().unwrap_or("").contains("rate limited"),
                    "{r}"
                );
                limited += 1;
            }
            _ => panic!("unexpected reply {r}"),
        }
    }
    assert!(acks >= 5, "the burst allowance is honoured ({acks} acks)");
    assert!(
        limited >= 3,
        "fast publishes are rate limited ({limited} nacks)"
    );
    v.vws_subscribe("still/open", 100).await; // subscribing is not rate limited
    canary.check(&broker).await;

    // Persistent abuse: keep publishing without pause until the broker gives up on us.
    for i in 0..200 {
        if !v
            .send_text_lossy(json!({"t": "rl/x", "d": i, "i": 1000 + i}).to_string())
            .await
        {
            break;
        }
    }
    v.expect_close(1008, CLOSE).await;
    canary.check(&broker).await;
}

#[tokio::test]
async fn invalid_utf8_text_frame_closes_1007() {
    let broker = Broker::start("");
    let mut canary = Canary::new(&broker).await;
    let mut raw = RawWs::connect(broker.addr, "gows").await;
    raw.send_raw(&encode_frame(
        true,
        OP_TEXT,
        &[b'{', 0xff, 0xfe, b'}'],
        true,
    ))
    .await;
    raw.expect_close(1007, CLOSE).await;
    canary.check(&broker).await;
}

#[tokio::test]
async fn invalid_utf8_split_across_fragments_closes_1007() {
    let broker = Broker::start("");
    let mut canary = Canary::new(&broker).await;
    let mut raw = RawWs::connect(broker.addr, "vws").await;
    // "é" = C3 A9 split over two fragments is fine only if completed; here it is not.
    raw.send_raw(&encode_frame(false, OP_TEXT, b"{\"k\":\"\xC3", true))
        .await;
    raw.send_raw(&encode_frame(true, OP_CONT, b"\"}", true))
        .await;
    raw.expect_close(1007, CLOSE).await;
    canary.check(&broker).await;
}

#[tokio::test]
async fn fragmented_valid_message_is_reassembled() {
    let broker = Broker::start("");
    let mut raw = RawWs::connect(broker.addr, "gows").await;
    raw.send_raw(&encode_frame(false, OP_TEXT, b"{\"type\":", true))
        .await;
    raw.send_raw(&encode_frame(true, OP_CONT, b"\"ping\"}", true))
        .await;
    let v = raw.recv_json(RECV).await;
    assert_eq!(v["type"], "pong");
}

#[tokio::test]
async fn oversize_message_closes_1009() {
    let broker = Broker::start("[server]\nmax_message_bytes = 1024\n");
    let mut canary = Canary::new(&broker).await;
    let mut ws = broker.ws(Dialect::Subprotocol("gows")).await;
    // Just under the limit is fine.
    let ok = json!({"type": "subscribe", "data": "p".repeat(900)}).to_string();
    assert!(ok.len() <= 1024);
    ws.send_text(ok).await;
    ws.gows_sync().await;
    let big = json!({"type": "subscribe", "data": "p".repeat(2000)}).to_string();
    ws.send_text(big).await;
    ws.expect_close(1009, CLOSE).await;
    canary.check(&broker).await;
}

#[tokio::test]
async fn oversize_message_split_into_small_fragments_closes_1009() {
    let broker = Broker::start("[server]\nmax_message_bytes = 1024\n");
    let mut canary = Canary::new(&broker).await;
    let mut raw = RawWs::connect(broker.addr, "gows").await;
    let chunk = vec![b' '; 400];
    raw.send_raw(&encode_frame(false, OP_TEXT, &chunk, true))
        .await;
    for _ in 0..3 {
        raw.send_raw(&encode_frame(false, OP_CONT, &chunk, true))
            .await;
    }
    raw.send_raw(&encode_frame(true, OP_CONT, b"{}", true))
        .await;
    raw.expect_close(1009, CLOSE).await;
    canary.check(&broker).await;
}

#[tokio::test]
async fn binary_frame_closes_1003() {
    let broker = Broker::start("");
    let mut canary = Canary::new(&broker).await;
    let mut ws = broker.ws(Dialect::Subprotocol("vws")).await;
    ws.send_message(Message::Binary(vec![1, 2, 3])).await;
    ws.expect_close(1003, CLOSE).await;
    canary.check(&broker).await;
}

#[tokio::test]
async fn unmasked_client_frame_closes_1002() {
    let broker = Broker::start("");
    let mut canary = Canary::new(&broker).await;
    let mut raw = RawWs::connect(broker.addr, "gows").await;
    raw.send_raw(&encode_frame(true, OP_TEXT, br#"{"type":"ping"}"#, false))
        .await;
    raw.expect_close(1002, CLOSE).await;
    canary.check(&broker).await;
}

#[tokio::test]
async fn reserved_opcode_closes_1002() {
    let broker = Broker::start("");
    let mut canary = Canary::new(&broker).await;
    let mut raw = RawWs::connect(broker.addr, "gows").await;
    raw.send_raw(&encode_frame(true, 0x3, b"??", true)).await;
    raw.expect_close(1002, CLOSE).await;
    canary.check(&broker).await;
}

#[tokio::test]
async fn reserved_bits_close_1002() {
    let broker = Broker::start("");
    let mut canary = Canary::new(&broker).await;
    let mut raw = RawWs::connect(broker.addr, "gows").await;
    let mut frame = encode_frame(true, OP_TEXT, br#"{"type":"ping"}"#, true);
    frame[0] |= 0x40; // RSV1 without a negotiated extension
    raw.send_raw(&frame).await;
    raw.expect_close(1002, CLOSE).await;
    canary.check(&broker).await;
}

#[tokio::test]
async fn oversized_control_frame_closes_1002() {
    let broker = Broker::start("");
    let mut canary = Canary::new(&broker).await;
    let mut raw = RawWs::connect(broker.addr, "gows").await;
    raw.send_raw(&encode_frame(true, OP_PING, &[b'x'; 126], true))
        .await;
    raw.expect_close(1002, CLOSE).await;
    canary.check(&broker).await;
}

#[tokio::test]
async fn fragmented_control_frame_closes_1002() {
    let broker = Broker::start("");
    let mut canary = Canary::new(&broker).await;
    let mut raw = RawWs::connect(broker.addr, "gows").await;
    raw.send_raw(&encode_frame(false, OP_PING, b"x", true))
        .await;
    raw.expect_close(1002, CLOSE).await;
    canary.check(&broker).await;
}

#[tokio::test]
async fn continuation_without_start_closes_1002() {
    let broker = Broker::start("");
    let mut canary = Canary::new(&broker).await;
    let mut raw = RawWs::connect(broker.addr, "gows").await;
    raw.send_raw(&encode_frame(true, OP_CONT, b"{}", true))
        .await;
    raw.expect_close(1002, CLOSE).await;
    canary.check(&broker).await;
}

#[tokio::test]
async fn ping_is_answered_with_pong_echoing_payload() {
    let broker = Broker::start("");
    let mut raw = RawWs::connect(broker.addr, "gows").await;
    raw.send_raw(&encode_frame(true, OP_PING, b"hello", true))
        .await;
    loop {
        match raw.read_frame(RECV).await {
            Ok(Some((_, OP_PONG, p))) => {
                assert_eq!(p, b"hello");
                break;
            }
            Ok(Some((_, OP_PING, _))) => continue,
            other => panic!("expected pong, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn idle_client_that_never_answers_pings_is_closed() {
    let broker = Broker::start("[server]\nidle_timeout = \"1s\"\nping_interval = \"500ms\"\n");
    let mut canary_http = Http::connect(broker.addr).await;
    let mut raw = RawWs::connect(broker.addr, "gows").await;
    // Never write anything (no pong either): the broker pings, then gives up.
    let (end, _, pings) = raw.wait_end(Duration::from_secs(6)).await;
    assert!(
        pings >= 1,
        "the broker pings before declaring a client idle"
    );
    if let RawEnd::Close(Some(code), _) = end {
        assert!(
            code == 1001 || code == 1000 || code == 1008 || code == 1011,
            "idle close code {code}"
        );
    }
    // The connection is freed.
    let s = canary_http
        .request("GET", "/api/stats", None, Vec::new())
        .await
        .json();
    assert!(s["clients"].as_u64().is_some(), "stats: {s}");
    eventually("idle client removed from stats", RECV, || async {
        stats_clients(&broker).await == 0
    })
    .await;
}

#[tokio::test]
async fn client_answering_pings_survives_idle_timeout() {
    let broker = Broker::start("[server]\nidle_timeout = \"1s\"\nping_interval = \"300ms\"\n");
    // tokio-tungstenite answers pings while we read; 2.5 s of silence from the app side.
    let mut ws = broker.gows_subscriber("alive").await;
    ws.expect_silence(Duration::from_millis(2500)).await;
    ws.gows_sync().await;
}

#[tokio::test]
async fn non_upgrade_request_is_400() {
    let broker = Broker::start("");
    let mut canary = Canary::new(&broker).await;
    let r = broker.get("/ws").await;
    assert_eq!(r.status, 400, "{}", r.text);
    // Upgrade with a wrong version is a bad handshake too.
    let r = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(broker.addr)
            .await
            .expect("connect");
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
            broker.addr
        );
        within(RECV, "write", s.write_all(req.as_bytes()))
            .await
            .expect("write");
        let mut buf = vec![0u8; 1024];
        let n = within(RECV, "response", s.read(&mut buf))
            .await
            .expect("read");
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    assert!(
        r.starts_with("HTTP/1.1 400") || r.starts_with("HTTP/1.1 426"),
        "bad version: {r}"
    );
    canary.check(&broker).await;
}

#[tokio::test]
async fn over_max_connections_is_503() {
    let broker = Broker::start("[server]\nmax_connections = 2\n");
    let mut canary = Canary::new(&broker).await; // connection 1
    let mut second = broker.ws(Dialect::Subprotocol("vws")).await; // connection 2
    second.vws_subscribe("x", 1).await;
    match try_ws(&broker.ws_url(), Dialect::Subprotocol("gows")).await {
        Err(status) => assert_eq!(status, 503),
        Ok(_) => panic!("third connection must be refused with 503"),
    }
    canary.check(&broker).await;
    // A freed slot can be reused.
    second.close().await;
    eventually("the closed client is counted out", RECV, || async {
        stats_clients(&broker).await == 1
    })
    .await;
    let mut again = Ws::connect(&broker.ws_url(), Dialect::Subprotocol("gows")).await;
    again.gows_sync().await;
}

#[tokio::test]
async fn deeply_nested_json_is_refused_and_the_connection_survives() {
    let broker = Broker::start("");
    let mut canary = Canary::new(&broker).await;
    let nest = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));

    let mut g = broker.ws(Dialect::Subprotocol("gows")).await;
    let e = g
        .gows_expect_error(&format!("{{\"type\":\"subscribe\",\"data\":{nest}}}"))
        .await;
    assert!(e.contains("JSON nested too deeply"), "{e:?}");
    g.gows_sync().await;

    let mut v = broker.ws(Dialect::Subprotocol("vws")).await;
    v.send_text(format!("{{\"t\":\"deep\",\"d\":{nest},\"i\":1}}"))
        .await;
    let r = v.recv().await;
    assert_eq!(r["k"], "n", "{r}");
    assert!(
        r["e"]
            .as_str()
            .unwrap_or("")
            .contains("JSON nested too deeply"),
        "{r}"
    );
    v.vws_subscribe("fine", 2).await;

    // Also through the API.
    let r = http(
        broker.addr,
        "POST",
        "/api/publish",
        Some("application/json"),
        format!("{{\"channel\":\"deep\",\"data\":{nest}}}").into_bytes(),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text);
    canary.check(&broker).await;
}

#[tokio::test]
async fn ping_flood_without_reading_is_cut_as_a_slow_consumer() {
    // Replies are never dropped by on_full, but they are bounded: a client that keeps
    // asking and never reads is cut once twice the outbox bounds are queued.
    let broker = Broker::start("[client]\nqueue_frames = 64\nqueue_bytes = 65536\n");
    let mut canary = Canary::new(&broker).await;
    let mut flood = RawWs::connect_with(broker.addr, "/ws", Some("gows"), Some(4096)).await;
    // 120-byte pings: each pong echoes the payload back; 100,000 of them (12 MB) cannot
    // hide in socket buffers.
    let ping = encode_frame(true, 0x9, &[b'p'; 120], true);
    let burst: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 1000)
        .collect();
    let mut cut = false;
    for _ in 0..100 {
        if !flood.send_raw_checked(&burst).await {
            cut = true;
            break;
        }
    }
    if !cut {
        let (end, _, _) = flood.wait_end(RECV).await;
        if let RawEnd::Close(code, reason) = end {
            assert_eq!(code, Some(1008), "{reason}");
        }
    }
    eventually("the flooding client is dropped", RECV, || async {
        stats_clients(&broker).await == 1
    })
    .await;
    let metrics = broker.get("/metrics").await.text;
    assert!(
        metrics.contains("shardcast_slow_consumer_disconnects_total 1"),
        "{metrics}"
    );
    canary.check(&broker).await;
}

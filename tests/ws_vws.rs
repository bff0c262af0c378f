//! vws dialect (Vinculum WebSocket protocol) against the real broker: acks/nacks with and
//! without `i`, unsubscribe / unsubscribe-all, event rendering and headers, client publish
//! policy, MQTT wildcards (table of cases run live), one copy per client, cross-dialect
//! delivery and dialect negotiation (SPEC §3).
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;
use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn subprotocol_vws_is_echoed() {
    let broker = Broker::start("");
    let mut ws = broker.ws(Dialect::Subprotocol("vws")).await;
    assert_eq!(ws.protocol.as_deref(), Some("vws"));
    ws.vws_subscribe("x", 1).await;
}

#[tokio::test]
async fn query_parameter_selects_vws() {
    let broker = Broker::start("");
    let mut ws = broker.ws(Dialect::Query("vws")).await;
    ws.vws_subscribe("x/y", 42).await;
    broker.publish("x/y", json!(5)).await;
    assert_eq!(ws.recv().await, json!({"t": "x/y", "d": 5}));
}

#[tokio::test]
async fn default_dialect_can_be_configured_to_vws() {
    let broker = Broker::start("[server]\ndefault_dialect = \"vws\"\n");
    let mut ws = broker.ws(Dialect::Default).await;
    ws.vws_subscribe("d", 1).await;
}

#[tokio::test]
async fn ack_echoes_any_id_and_requests_without_id_get_no_ack() {
    let broker = Broker::start("");
    let mut ws = broker.ws(Dialect::Subprotocol("vws")).await;
    ws.send_json(&json!({"k": "s", "t": "ids", "i": "abc"}))
        .await;
    assert_eq!(ws.recv().await, json!({"k": "a", "i": "abc"}));

    // Success without `i`: nothing. The next reply must belong to the next request.
    ws.send_json(&json!({"k": "s", "t": "quiet"})).await;
    ws.send_json(&json!({"k": "s", "t": "loud", "i": 2})).await;
    assert_eq!(ws.recv().await, json!({"k": "a", "i": 2}));

    // The silent subscription is in place.
    broker.publish("quiet", json!("q")).await;
    assert_eq!(ws.recv().await, json!({"t": "quiet", "d": "q"}));
}

#[tokio::test]
async fn failure_without_id_gets_nack_without_id() {
    let broker = Broker::start("");
    let mut ws = broker.ws(Dialect::Subprotocol("vws")).await;
    ws.send_json(&json!({"k": "s", "t": "a/#/b"})).await;
    let v = ws.recv().await;
    assert_eq!(v["k"], "n", "got {v}");
    assert!(v.get("i").is_none(), "nack must carry no i: {v}");
    assert!(
        v["e"].as_str().unwrap_or("").contains("invalid pattern"),
        "got {v}"
    );
}

#[tokio::test]
async fn bad_requests_are_nacked_and_the_connection_stays_open() {
    let broker = Broker::start("");
    let mut ws = broker.ws(Dialect::Subprotocol("vws")).await;
    let cases: Vec<(Value, &str)> = vec![
        (json!({"k": "z", "t": "a", "i": 1}), "unknown kind"),
        (json!({"k": "s", "i": 2}), "missing field 't'"),
        (json!({"k": "u", "i": 3}), "missing field 't'"),
        (json!({"k": "s", "t": "a/#/b", "i": 4}), "invalid pattern"),
        (json!({"k": "s", "t": "a/b+", "i": 5}), "invalid pattern"),
        (json!({"k": "s", "t": "a/#b", "i": 6}), "invalid pattern"),
        (json!({"k": "s", "t": "", "i": 7}), "invalid pattern"),
        (
            json!({"k": "s", "t": "bell\u{7}", "i": 8}),
            "invalid pattern",
        ),
        (
            json!({"k": "s", "t": "x".repeat(1025), "i": 9}),
            "invalid pattern",
        ),
    ];
    for (req, want) in &cases {
        let e = ws.vws_expect_nack(req).await;
        assert!(e.contains(want), "nack for {req} was {e:?}, want {want:?}");
    }
    // Not an object / not JSON: no id can be read, so the nack has none.
    for (raw, want) in [
        ("{oops", "malformed JSON"),
        ("[]", "message must be a JSON object"),
    ] {
        ws.send_text(raw).await;
        let v = ws.recv().await;
        assert_eq!(v["k"], "n", "got {v}");
        assert!(
            v["e"].as_str().unwrap_or("").contains(want),
            "nack for {raw:?}: {v}"
        );
    }
    ws.vws_subscribe("still/open", 10).await;
}

#[tokio::test]
async fn unsubscribe_and_unsubscribe_all() {
    let broker = Broker::start("");
    let mut ws = broker.ws(Dialect::Subprotocol("vws")).await;
    ws.vws_subscribe("u/1", 1).await;
    ws.vws_subscribe("u/2", 2).await;
    ws.vws_subscribe("u/3", 3).await;

    ws.send_json(&json!({"k": "u", "t": "u/1", "i": 4})).await;
    assert_eq!(ws.recv().await, json!({"k": "a", "i": 4}));
    broker.publish("u/1", json!(1)).await;
    broker.publish("u/2", json!(2)).await;
    assert_eq!(
        ws.recv().await,
        json!({"t": "u/2", "d": 2}),
        "u/1 must not arrive after unsubscribe"
    );

    ws.send_json(&json!({"k": "U", "i": 5})).await;
    assert_eq!(ws.recv().await, json!({"k": "a", "i": 5}));
    broker.publish("u/2", json!(2)).await;
    broker.publish("u/3", json!(3)).await;
    // Sentinel on a fresh subscription: nothing from u/* may come before it.
    ws.vws_subscribe("u/sentinel", 6).await;
    broker.publish("u/sentinel", json!("end")).await;
    assert_eq!(ws.recv().await, json!({"t": "u/sentinel", "d": "end"}));
}

#[tokio::test]
async fn events_have_no_kind_and_non_event_types_become_a_type_header() {
    let broker = Broker::start("");
    let mut ws = broker.ws(Dialect::Subprotocol("vws")).await;
    ws.vws_subscribe("process:job-9", 1).await;
    ws.vws_subscribe("plain", 2).await;

    broker.publish("plain", json!({"a": [1, 2]})).await;
    let v = ws.recv().await;
    assert_eq!(
        v,
        json!({"t": "plain", "d": {"a": [1, 2]}}),
        "plain event rendering"
    );

    let r = broker
        .post_json("/api/process/job-9/output", &json!({"line": "hi"}))
        .await;
    assert!(r.is_success(), "{} {}", r.status, r.text);
    let v = ws.recv().await;
    assert!(v.get("k").is_none(), "events carry no k: {v}");
    assert_eq!(v["t"], "process:job-9");
    assert_eq!(v["d"], "hi");
    assert_eq!(v["h"]["type"], "process_output");
}

#[tokio::test]
async fn api_headers_pass_through_to_vws() {
    let broker = Broker::start("");
    let mut ws = broker.vws_subscriber("traced").await;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = broker
        .post_json(
            "/api/publish",
            &json!({"channel": "traced", "data": 1, "headers": {"traceparent": tp}}),
        )
        .await;
    assert!(r.is_success(), "{} {}", r.status, r.text);
    let v = ws.recv().await;
    assert_eq!(v["h"]["traceparent"], tp, "got {v}");
}

#[tokio::test]
async fn broadcast_reaches_vws_clients_as_dollar_broadcast() {
    let broker = Broker::start("");
    let mut ws = broker.ws(Dialect::Subprotocol("vws")).await;
    ws.vws_subscribe("unrelated", 1).await;
    let r = broker
        .post_json(
            "/api/broadcast",
            &json!({"event": "deploy", "data": {"v": 2}}),
        )
        .await;
    assert!(r.is_success(), "{} {}", r.status, r.text);
    let v = ws.recv().await;
    assert_eq!(
        v,
        json!({"t": "$broadcast", "d": {"event": "deploy", "data": {"v": 2}}, "h": {"type": "event"}})
    );
}

#[tokio::test]
async fn client_publish_is_refused_by_default() {
    let broker = Broker::start("");
    let mut sub = broker.vws_subscriber("chat").await;
    let mut publisher = broker.ws(Dialect::Subprotocol("vws")).await;
    let e = publisher
        .vws_expect_nack(&json!({"t": "chat", "d": "hi", "i": 5}))
        .await;
    assert!(
        e.contains("not allowed to publish to this topic"),
        "got {e:?}"
    );
    sub.expect_silence(SILENCE).await;
    publisher.vws_subscribe("open", 6).await;
}

#[tokio::test]
async fn client_publish_when_allowed_reaches_both_dialects_with_headers() {
    let broker = Broker::start("[client]\nallow_publish = true\n");
    let mut vsub = broker.vws_subscriber("chat/room1").await;
    let mut gsub = broker.gows_subscriber("chat/room1").await;
    let mut publisher = broker.ws(Dialect::Subprotocol("vws")).await;
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    publisher
        .send_json(
            &json!({"t": "chat/room1", "d": {"msg": "hi"}, "i": 5, "h": {"traceparent": tp}}),
        )
        .await;
    assert_eq!(publisher.recv().await, json!({"k": "a", "i": 5}));

    let v = vsub.recv().await;
    assert_eq!(v["t"], "chat/room1");
    assert_eq!(v["d"], json!({"msg": "hi"}));
    assert_eq!(
        v["h"]["traceparent"], tp,
        "headers pass through unchanged: {v}"
    );

    let g = gsub.recv().await;
    assert_eq!(g["type"], "event");
    assert_eq!(g["channel"], "chat/room1");
    assert_eq!(g["data"], json!({"msg": "hi"}));

    // Publishing to a wildcard topic is refused.
    let e = publisher
        .vws_expect_nack(&json!({"t": "chat/+", "d": 1, "i": 6}))
        .await;
    assert!(e.contains("invalid topic"), "got {e:?}");
}

#[tokio::test]
async fn one_publication_reaches_gows_and_vws_with_their_own_rendering() {
    let broker = Broker::start("");
    let mut g = broker.gows_subscriber("metrics/cpu").await;
    let mut v = broker.vws_subscriber("metrics/+").await;
    broker.publish("metrics/cpu", json!({"load": 0.5})).await;

    let gm = g.recv().await;
    assert_eq!(gm["type"], "event");
    assert_eq!(gm["channel"], "metrics/cpu");
    assert_eq!(gm["data"], json!({"load": 0.5}));
    assert_timestamp(&gm);

    let vm = v.recv().await;
    assert_eq!(vm, json!({"t": "metrics/cpu", "d": {"load": 0.5}}));
}

#[tokio::test]
async fn two_matching_patterns_deliver_one_copy() {
    let broker = Broker::start("");
    let mut ws = broker.ws(Dialect::Subprotocol("vws")).await;
    ws.vws_subscribe("dup/+", 1).await;
    ws.vws_subscribe("dup/#", 2).await;
    ws.vws_subscribe("dup/x", 3).await;
    ws.vws_subscribe("#", 4).await;
    broker.publish("dup/x", json!(1)).await;
    assert_eq!(ws.recv().await, json!({"t": "dup/x", "d": 1}));
    // Any duplicate would already be queued before this ack.
    ws.send_json(&json!({"k": "s", "t": "after", "i": 9})).await;
    assert_eq!(
        ws.recv().await,
        json!({"k": "a", "i": 9}),
        "duplicate delivery"
    );
}

/// (pattern, topic, delivered?)
const WILDCARDS: &[(&str, &str, bool)] = &[
    ("a/b/c", "a/b/c", true),
    ("a/b/c", "a/b", false),
    ("a/+/c", "a/x/c", true),
    ("a/+/c", "a/x/y/c", false),
    ("a/+", "a", false),
    ("a/#", "a", true),
    ("a/#", "a/x/y/z", true),
    ("a/#", "ab/x", false),
    ("#", "solo", true),
    ("+", "solo", true),
    ("+", "solo/two", false),
    ("+/+", "p/q", true),
    ("+/b/#", "z/b", true),
    ("+/b/#", "z/c/b", false),
    ("x/+/+/#", "x/1/2", true),
    ("x/+/+/#", "x/1", false),
    ("Case/Sensitive", "case/sensitive", false),
    ("dots.and-dash/ok", "dots.and-dash/ok", true),
    ("process:build-1", "process:build-1", true),
    ("a/b/+", "a/b/c/d", false),
];

const SENTINEL: &str = "zz/sentinel";

#[test]
fn reference_matcher_agrees_with_the_wildcard_table() {
    // The live test predicts cross pairs (pattern i vs topic j) with this matcher.
    assert!(WILDCARDS.len() >= 15);
    for (p, t, want) in WILDCARDS {
        assert_eq!(mqtt_matches(p, t), *want, "table row ({p}, {t})");
    }
}

#[tokio::test]
async fn wildcard_table_runs_against_the_live_broker() {
    let broker = Broker::start("");
    // One connection per pattern, so every delivery can be attributed to its pattern.
    let mut conns = Vec::new();
    for (n, (pattern, _, _)) in WILDCARDS.iter().enumerate() {
        let mut ws = broker.ws(Dialect::Subprotocol("vws")).await;
        ws.vws_subscribe(pattern, 2 * n as u64 + 1).await;
        ws.vws_subscribe(SENTINEL, 2 * n as u64 + 2).await;
        conns.push(ws);
    }
    let mut topics: Vec<&str> = WILDCARDS.iter().map(|(_, t, _)| *t).collect();
    topics.sort_unstable();
    topics.dedup();
    let mut http = Http::connect(broker.addr).await;
    for t in &topics {
        let r = http
            .post_json("/api/publish", &json!({"channel": t, "data": t}))
            .await;
        assert!(r.is_success(), "publish {t}: {} {}", r.status, r.text);
    }
    let r = http
        .post_json("/api/publish", &json!({"channel": SENTINEL, "data": "end"}))
        .await;
    assert!(r.is_success());

    for (n, (pattern, _, _)) in WILDCARDS.iter().enumerate() {
        let ws = &mut conns[n];
        let mut got = Vec::new();
        loop {
            let v = ws.recv().await;
            let t = v["t"]
                .as_str()
                .unwrap_or_else(|| panic!("{pattern}: not an event: {v}"))
                .to_string();
            if t == SENTINEL {
                break;
            }
            assert_eq!(v["d"], json!(t), "{pattern}: payload follows its topic");
            got.push(t);
        }
        got.sort();
        let want: Vec<String> = topics
            .iter()
            .filter(|t| mqtt_matches(pattern, t))
            .map(|t| t.to_string())
            .collect();
        assert_eq!(got, want, "deliveries for pattern {pattern:?}");
        // No duplicate (e.g. `#` and the sentinel pattern both match the sentinel).
        ws.send_json(&json!({"k": "s", "t": "zz/check", "i": 999}))
            .await;
        assert_eq!(
            ws.recv().await,
            json!({"k": "a", "i": 999}),
            "{pattern}: extra delivery"
        );
    }
}

#[tokio::test]
async fn publishing_to_a_wildcard_topic_through_the_api_is_refused() {
    let broker = Broker::start("");
    for topic in ["a/+", "a/#", "#"] {
        let r = broker
            .post_json("/api/publish", &json!({"channel": topic, "data": 1}))
            .await;
        assert_eq!(r.status, 400, "publish to {topic}: {}", r.text);
        r.error_reason();
    }
}

//! gows dialect (the go-ws hub envelope) against the real broker: ping/pong, subscribe /
//! unsubscribe without replies, event rendering, error replies that keep the connection
//! open, and dialect negotiation (SPEC §3).
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;
use common::*;
use serde_json::json;

#[tokio::test]
async fn ping_gets_pong_with_rfc3339_timestamp() {
    let broker = Broker::start("");
    let mut ws = broker.ws(Dialect::Subprotocol("gows")).await;
    ws.send_json(&json!({"type": "ping"})).await;
    let v = ws.recv().await;
    assert_eq!(v["type"], "pong");
    assert_timestamp(&v);
}

#[tokio::test]
async fn default_dialect_is_gows_and_no_subprotocol_is_echoed() {
    let broker = Broker::start("");
    let mut ws = broker.ws(Dialect::Default).await;
    assert_eq!(
        ws.protocol, None,
        "no subprotocol was offered, none may be echoed"
    );
    ws.gows_sync().await;
    ws.gows_subscribe("news").await;
    broker.publish("news", json!("hello")).await;
    let v = ws.recv().await;
    assert_eq!(v["type"], "event");
    assert_eq!(v["channel"], "news");
}

#[tokio::test]
async fn gows_subprotocol_is_echoed_and_query_parameter_selects_gows() {
    let broker = Broker::start("[server]\ndefault_dialect = \"vws\"\n");
    let mut ws = broker.ws(Dialect::Subprotocol("gows")).await;
    assert_eq!(ws.protocol.as_deref(), Some("gows"));
    ws.gows_sync().await;
    let mut q = broker.ws(Dialect::Query("gows")).await;
    q.gows_sync().await;
}

#[tokio::test]
async fn subscribe_is_silent_and_publication_arrives_as_event() {
    let broker = Broker::start("");
    let mut ws = broker.ws(Dialect::Subprotocol("gows")).await;
    ws.send_json(&json!({"type": "subscribe", "data": "orders"}))
        .await;
    // go-ws sends nothing on a successful subscribe: the next message must be the pong.
    ws.gows_sync().await;

    broker
        .publish("orders", json!({"id": 7, "items": ["a", "b"]}))
        .await;
    let v = ws.recv().await;
    assert_eq!(v["type"], "event");
    assert_eq!(v["channel"], "orders");
    assert_eq!(v["data"], json!({"id": 7, "items": ["a", "b"]}));
    assert_timestamp(&v);
}

#[tokio::test]
async fn publish_type_is_used_as_the_gows_type() {
    let broker = Broker::start("");
    let mut ws = broker.gows_subscriber("alerts").await;
    let r = broker
        .post_json(
            "/api/publish",
            &json!({"channel": "alerts", "data": 1, "type": "alert"}),
        )
        .await;
    assert!(r.is_success(), "{} {}", r.status, r.text);
    let v = ws.recv().await;
    assert_eq!(v["type"], "alert");
    assert_eq!(v["channel"], "alerts");
    assert_eq!(v["data"], 1);
}

#[tokio::test]
async fn only_subscribers_of_a_channel_receive_it() {
    let broker = Broker::start("");
    let mut a = broker.gows_subscriber("chan-a").await;
    let mut b = broker.gows_subscriber("chan-b").await;
    broker.publish("chan-a", json!("for a")).await;
    broker.publish("chan-b", json!("for b")).await;
    assert_eq!(a.recv().await["data"], "for a");
    assert_eq!(b.recv().await["data"], "for b");
    a.expect_silence(SILENCE).await;
    b.expect_silence(SILENCE).await;
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let broker = Broker::start("");
    let mut ws = broker.gows_subscriber("temp").await;
    ws.gows_subscribe("keep").await;
    broker.publish("temp", json!(1)).await;
    assert_eq!(ws.recv().await["channel"], "temp");

    ws.gows_unsubscribe("temp").await; // silent; synced by ping/pong
    broker.publish("temp", json!(2)).await;
    // A later publication on a still-subscribed channel is the sentinel: the one on the
    // unsubscribed channel must not come before it.
    broker.publish("keep", json!("sentinel")).await;
    let v = ws.recv().await;
    assert_eq!(
        v["channel"], "keep",
        "got {v} after unsubscribing from temp"
    );
    assert_eq!(v["data"], "sentinel");
}

#[tokio::test]
async fn process_channels_render_process_output_and_status() {
    let broker = Broker::start("");
    let mut ws = broker.gows_subscriber("process:build-1").await;
    let r = broker
        .post_json("/api/process/build-1/output", &json!({"line": "compiling"}))
        .await;
    assert!(r.is_success(), "{} {}", r.status, r.text);
    let v = ws.recv().await;
    assert_eq!(v["type"], "process_output");
    assert_eq!(v["channel"], "process:build-1");
    assert_eq!(v["processId"], "build-1");
    assert_eq!(v["data"], "compiling");
    assert_timestamp(&v);

    let r = broker
        .post_json(
            "/api/process/build-1/status",
            &json!({"status": "exited", "exitCode": 3}),
        )
        .await;
    assert!(r.is_success(), "{} {}", r.status, r.text);
    let v = ws.recv().await;
    assert_eq!(v["type"], "process_status");
    assert_eq!(v["channel"], "process:build-1");
    assert_eq!(v["processId"], "build-1");
    assert_eq!(v["data"], json!({"status": "exited", "exitCode": 3}));
}

#[tokio::test]
async fn process_output_goes_only_to_that_process() {
    let broker = Broker::start("");
    let mut one = broker.gows_subscriber("process:one").await;
    let mut two = broker.gows_subscriber("process:two").await;
    let r = broker
        .post_json("/api/process/two/output", &json!({"line": "only two"}))
        .await;
    assert!(r.is_success());
    let v = two.recv().await;
    assert_eq!(v["data"], "only two");
    one.expect_silence(SILENCE).await;
}

#[tokio::test]
async fn broadcast_reaches_every_gows_client_without_subscription() {
    let broker = Broker::start("");
    let mut a = broker.ws(Dialect::Default).await;
    let mut b = broker.gows_subscriber("something").await;
    a.gows_sync().await;
    let r = broker
        .post_json(
            "/api/broadcast",
            &json!({"event": "deploy", "data": {"version": "1.2.3"}}),
        )
        .await;
    assert!(r.is_success(), "{} {}", r.status, r.text);
    for ws in [&mut a, &mut b] {
        let v = ws.recv().await;
        assert_eq!(v["type"], "event");
        assert_eq!(
            v["data"],
            json!({"event": "deploy", "data": {"version": "1.2.3"}})
        );
        assert!(
            v.get("channel").is_none(),
            "broadcast carries no channel: {v}"
        );
        assert_timestamp(&v);
    }
}

#[tokio::test]
async fn bad_requests_get_error_replies_and_the_connection_stays_open() {
    let broker = Broker::start("");
    let mut ws = broker.ws(Dialect::Subprotocol("gows")).await;
    let mut other = broker.gows_subscriber("bystander").await;

    let cases: [(&str, &str); 7] = [
        ("{not json", "malformed JSON"),
        ("[1,2,3]", "message must be a JSON object"),
        ("\"just a string\"", "message must be a JSON object"),
        (r#"{"type":"teleport","data":"x"}"#, "unknown message type"),
        (r#"{"type":"subscribe"}"#, "data"),
        (r#"{"type":"subscribe","data":""}"#, "invalid"),
        ("{\"type\":\"subscribe\",\"data\":\"a\\u0001b\"}", "invalid"),
    ];
    for (input, want) in cases {
        let reason = ws.gows_expect_error(input).await;
        assert!(
            reason.contains(want),
            "error for {input:?} was {reason:?}, want it to contain {want:?}"
        );
        ws.gows_sync().await;
    }
    // Errors go to the sender only.
    other.expect_silence(SILENCE).await;
    broker.publish("bystander", json!("still here")).await;
    assert_eq!(other.recv().await["data"], "still here");
}

#[tokio::test]
async fn message_without_type_is_refused() {
    let broker = Broker::start("");
    let mut ws = broker.ws(Dialect::Subprotocol("gows")).await;
    let reason = ws.gows_expect_error(r#"{"data":"x"}"#).await;
    assert!(
        reason.contains("type"),
        "reason {reason:?} should name the missing field"
    );
    ws.gows_sync().await;
}

#[tokio::test]
async fn many_channels_on_one_connection_each_deliver_once() {
    let broker = Broker::start("");
    let mut ws = broker.ws(Dialect::Subprotocol("gows")).await;
    for i in 0..20 {
        ws.send_json(&json!({"type": "subscribe", "data": format!("multi-{i}")}))
            .await;
    }
    ws.gows_sync().await;
    for i in 0..20 {
        broker.publish(&format!("multi-{i}"), json!(i)).await;
    }
    let mut got: Vec<i64> = Vec::new();
    for _ in 0..20 {
        got.push(ws.recv().await["data"].as_i64().expect("int data"));
    }
    got.sort_unstable();
    assert_eq!(got, (0..20).collect::<Vec<i64>>());
    ws.expect_silence(SILENCE).await;
}

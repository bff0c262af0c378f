//! Who may do what: the publish API's key rule (SPEC §2: with `[api] key_env` naming a
//! variable that holds a key, publishing needs `Authorization: Bearer <key>`; reads stay
//! open) and the WebSocket `Origin` check (`server.allowed_origins`, SPEC §5).
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;
use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 request with an optional Authorization header; returns (status, body).
async fn post_with_auth(broker: &Broker, auth: Option<&str>, body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(broker.addr).await.unwrap();
    let auth_line = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth_line}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    within(HTTP, "API response", s.read_to_end(&mut out))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[tokio::test]
async fn publishing_requires_the_bearer_key_when_one_is_configured() {
    let broker = Broker::start_with(
        "[api]\nkey_env = \"SHARDCAST_TEST_API_KEY\"\n",
        &[],
        &[("SHARDCAST_TEST_API_KEY", "s3cret-key")],
    );
    let mut sub = broker.vws_subscriber("news").await;
    let body = json!({"channel": "news", "data": 1}).to_string();

    let (status, text) = post_with_auth(&broker, None, &body).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("error"), "{text}");
    let (status, _) = post_with_auth(&broker, Some("Bearer wrong-key"), &body).await;
    assert_eq!(status, 401);
    let (status, _) = post_with_auth(&broker, Some("Basic czNjcmV0LWtleQ=="), &body).await;
    assert_eq!(status, 401);
    sub.expect_silence(SILENCE).await;

    let (status, text) = post_with_auth(&broker, Some("Bearer s3cret-key"), &body).await;
    assert_eq!(status, 200, "{text}");
    let v = sub.recv_json(RECV).await;
    assert_eq!(v["t"], "news");
    assert_eq!(v["d"], 1);
    // The scheme is case-insensitive (RFC 7235), as on the WebSocket upgrade.
    for scheme in ["bearer", "BEARER"] {
        let auth = format!("{scheme} s3cret-key");
        let (status, text) = post_with_auth(&broker, Some(&auth), &body).await;
        assert_eq!(status, 200, "{scheme}: {text}");
        assert_eq!(sub.recv_json(RECV).await["d"], 1);
    }

    // Reads do not need the key.
    assert_eq!(broker.get("/healthz").await.status, 200);
    assert_eq!(broker.get("/api/stats").await.status, 200);
}

#[tokio::test]
async fn a_key_env_naming_an_unset_variable_refuses_to_start() {
    let out = run_cli(
        &["serve", "--listen", "127.0.0.1:0"],
        &[("SHARDCAST_API__KEY_ENV", "SHARDCAST_TEST_UNSET_VARIABLE")],
        READY,
    )
    .await;
    assert_eq!(out.code, Some(2), "stderr: {}", out.stderr);
    assert!(out.stderr.contains("api.key_env"), "{}", out.stderr);
}

#[tokio::test]
async fn same_origin_is_the_default() {
    let broker = Broker::start("");
    let host = format!("Host: {}\r\n", broker.addr);
    let same = format!("{host}Origin: http://{}\r\n", broker.addr);
    assert_eq!(
        upgrade_status(broker.addr, &host).await,
        101,
        "no Origin: not a browser"
    );
    assert_eq!(upgrade_status(broker.addr, &same).await, 101);
    let cross = format!("{host}Origin: http://evil.example\r\n");
    assert_eq!(upgrade_status(broker.addr, &cross).await, 403);
    let metrics = broker.get("/metrics").await.text;
    assert!(
        metrics.contains("shardcast_rejections_total{reason=\"origin_not_allowed\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn allowed_origins_list_and_star() {
    let broker = Broker::start("[server]\nallowed_origins = [\"https://app.example.com\"]\n");
    let host = format!("Host: {}\r\n", broker.addr);
    let ok = format!("{host}Origin: https://app.example.com\r\n");
    let same_host = format!("{host}Origin: http://{}\r\n", broker.addr);
    assert_eq!(upgrade_status(broker.addr, &ok).await, 101);
    assert_eq!(
        upgrade_status(broker.addr, &same_host).await,
        101,
        "the broker's own origin stays allowed next to a list (tests/origin.rs)"
    );
    let other = format!("{host}Origin: http://other.example\r\n");
    assert_eq!(upgrade_status(broker.addr, &other).await, 403);

    let any = Broker::start("[server]\nallowed_origins = [\"*\"]\n");
    let host = format!("Host: {}\r\n", any.addr);
    let cross = format!("{host}Origin: http://evil.example\r\n");
    assert_eq!(upgrade_status(any.addr, &cross).await, 101);
}

#[tokio::test]
async fn metrics_can_be_switched_off() {
    let broker = Broker::start("[metrics]\nenabled = false\n");
    assert_eq!(broker.get("/metrics").await.status, 404);
    assert_eq!(broker.get("/healthz").await.status, 200);
}

#[tokio::test]
async fn a_sec_websocket_key_that_is_not_16_bytes_gets_400() {
    let broker = Broker::start("");
    let upgrade = |key: &str| {
        format!(
            "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            broker.addr
        )
    };
    // RFC 6455 §4.1: the key is 16 random bytes, base64-encoded.
    for key in [
        "abc",
        "YWJj",
        "dGhlIHNhbXBsZSBub25jZQ",
        "dGhlIHNhbXBsZSBub25jZSEhIQ==",
        "!!!!!!!!!!!!!!!!!!!!!!==",
    ] {
        let head = raw_http(broker.addr, upgrade(key).as_bytes()).await;
        assert_eq!(status_of(&head), 400, "key {key:?}: {head}");
    }
    let head = raw_http(broker.addr, upgrade("dGhlIHNhbXBsZSBub25jZQ==").as_bytes()).await;
    assert_eq!(status_of(&head), 101, "{head}");
    let m = broker.metrics().await;
    assert_eq!(rejections(&m).get("bad_handshake").copied(), Some(5.0));
}

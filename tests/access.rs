//! Who may do what: the API's key rule (SPEC §2: with `[api] key_env` naming a variable
//! that holds a key, every endpoint but health, readiness and the pages needs
//! `Authorization: Bearer <key>`) and the WebSocket `Origin` check (`server.allowed_origins`, SPEC §5).
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

    // Health and readiness stay open; everything that names channels needs the key
    // (issue 16, finding 7).
    assert_eq!(broker.get("/healthz").await.status, 200);
    assert_eq!(broker.get("/readyz").await.status, 200);
    let get = |path: &str, auth: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n")
    };
    for path in [
        "/api/stats",
        "/api/channels",
        "/api/channels/news",
        "/metrics",
    ] {
        let (status, text) = exchange(&broker, get(path, "")).await;
        assert_eq!(status, 401, "{path}: {text}");
        assert!(
            !text.contains("news"),
            "{path} leaks a channel name: {text}"
        );
        let (status, text) =
            exchange(&broker, get(path, "Authorization: Bearer s3cret-key\r\n")).await;
        assert_eq!(status, 200, "{path}: {text}");
    }
}

#[tokio::test]
async fn sys_stats_names_only_channels_every_reader_may_subscribe() {
    // Issue 16, finding 7: a reader refused `secret/#` read a `secret/...` name in
    // `$sys/stats` `top_channels`.
    let broker = Broker::start_with(
        "[auth]\ntype = \"bearer\"\nbearer_token_env = \"T_TOKEN\"\nanonymous = true\n\n\
         [[policy]]\npattern = \"secret/#\"\nsubscribe = \"authenticated\"\npublish = \"nobody\"\n",
        &[],
        &[("T_TOKEN", "insider")],
    );
    let url = format!("{}?token=insider", broker.ws_url());
    let mut insider = Ws::connect(&url, Dialect::Subprotocol("vws")).await;
    insider.vws_subscribe("secret/merger-acme-2027", 1).await;
    insider.vws_subscribe("public/news", 2).await;
    let mut reader = broker.vws_subscriber("$sys/stats").await;
    // The anonymous reader may not subscribe to the secret channel itself.
    reader
        .send_json(&json!({"k": "s", "t": "secret/merger-acme-2027", "i": 9}))
        .await;
    assert_eq!(reader.recv().await["k"], "n");
    let deadline = tokio::time::Instant::now() + READY;
    let top = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no $sys/stats with public/news"
        );
        let v = reader.recv().await;
        let top = v["d"]["top_channels"].clone();
        if top.to_string().contains("public/news") {
            break top;
        }
    };
    assert!(!top.to_string().contains("secret"), "{top}");
    // The operator (keyless loopback here) sees every channel.
    let stats = broker.stats().await;
    assert!(
        stats["top_channels"]
            .to_string()
            .contains("secret/merger-acme-2027"),
        "{stats}"
    );
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

/// Writes one raw HTTP/1.1 request (it should say `Connection: close`) and returns
/// (status, body).
async fn exchange(broker: &Broker, request: String) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(broker.addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    within(HTTP, "API response", s.read_to_end(&mut out))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status_of(&text), body)
}

/// The request Chromium sends for `fetch(url, {method: "POST", mode: "no-cors", body})`
/// from a page on `origin` (a string body is `text/plain;charset=UTF-8`), with `host`
/// as the URL's authority.
fn browser_post(path: &str, host: &str, origin: &str, content_type: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\
         Content-Length: {}\r\n\
         sec-ch-ua: \"Chromium\";v=\"131\", \"Not_A Brand\";v=\"24\"\r\n\
         sec-ch-ua-platform: \"Linux\"\r\nsec-ch-ua-mobile: ?0\r\n\
         User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36\r\n\
         Content-Type: {content_type}\r\nAccept: */*\r\nOrigin: {origin}\r\n\
         Sec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: no-cors\r\nSec-Fetch-Dest: empty\r\n\
         Referer: {origin}/\r\nAccept-Encoding: gzip, deflate, br, zstd\r\n\
         Accept-Language: en-US,en;q=0.9\r\n\r\n{body}",
        body.len()
    )
}

/// The request `curl -X POST HOST/api/publish -H 'content-type: application/json' -d BODY`
/// sends (README).
fn curl_post(path: &str, host: &str, content_type: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\
         content-type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn a_web_page_cannot_publish_through_the_keyless_loopback_api() {
    // Issue 16 finding 6: a page open in a browser on the broker's host is a loopback
    // peer; a no-cors text/plain POST needs no preflight.
    let broker = Broker::start("");
    let mut sub = broker.vws_subscriber("news").await;
    let host = broker.addr.to_string();
    let publish = json!({"channel": "news", "data": "forged"}).to_string();
    let broadcast = json!({"event": "forged", "data": 1}).to_string();
    for (path, body) in [("/api/publish", &publish), ("/api/broadcast", &broadcast)] {
        for ct in ["text/plain;charset=UTF-8", "application/json"] {
            let req = browser_post(path, &host, "http://evil.example", ct, body);
            let (status, text) = exchange(&broker, req).await;
            assert_eq!(status, 403, "{path} {ct}: {text}");
            assert!(text.contains("browser page"), "{text}");
        }
        // A file:// page (Origin null) is a page too.
        let req = browser_post(path, &host, "null", "text/plain;charset=UTF-8", body);
        assert_eq!(exchange(&broker, req).await.0, 403);
    }
    sub.expect_silence(SILENCE).await;
    let m = broker.metrics().await;
    assert_eq!(rejections(&m).get("api_from_browser").copied(), Some(6.0));

    // A body a browser may send anywhere without Origin-less tricks is not JSON: 415.
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let (status, text) =
            exchange(&broker, curl_post("/api/publish", &host, ct, &publish)).await;
        assert_eq!(status, 415, "{ct}: {text}");
        assert!(text.contains("application/json"), "{text}");
    }
    let no_type = format!(
        "POST /api/publish HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{publish}",
        publish.len()
    );
    assert_eq!(exchange(&broker, no_type).await.0, 415);
    sub.expect_silence(SILENCE).await;
    let m = broker.metrics().await;
    assert_eq!(
        rejections(&m).get("unsupported_media_type").copied(),
        Some(4.0)
    );

    // What the README's curl sends still works, under every loopback name.
    let json_ct = "application/json";
    for host in [host.clone(), format!("localhost:{}", broker.addr.port())] {
        let (status, text) =
            exchange(&broker, curl_post("/api/publish", &host, json_ct, &publish)).await;
        assert_eq!(status, 200, "Host {host}: {text}");
        assert_eq!(sub.recv_json(RECV).await["d"], "forged");
    }
    let charset = "application/json; charset=utf-8";
    let (status, _) = exchange(&broker, curl_post("/api/publish", &host, charset, &publish)).await;
    assert_eq!(status, 200);
    assert_eq!(sub.recv_json(RECV).await["d"], "forged");
    // Process output also takes text/plain (shardcast run sends it).
    let (status, text) = exchange(
        &broker,
        curl_post("/api/process/p1/output", &host, "text/plain", "a line"),
    )
    .await;
    assert_eq!(status, 200, "{text}");
}

#[tokio::test]
async fn dns_rebinding_gets_neither_the_api_nor_the_same_origin_websocket() {
    // After DNS rebinding, `rebind.evil.example` resolves to 127.0.0.1: the attacker's
    // page is same-origin with whatever answers there, and the peer is loopback.
    let broker = Broker::start("");
    let port = broker.addr.port();
    let evil = format!("rebind.evil.example:{port}");
    let origin = format!("http://{evil}");
    let mut sub = broker.vws_subscriber("news").await;

    // A same-origin GET carries no Origin: only the Host gives it away.
    let get = |path: &str, host: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\nConnection: close\r\n\r\n")
    };
    let (status, text) = exchange(&broker, get("/api/history/process:x", &evil)).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("server.allowed_hosts"), "{text}");
    // A POST without Origin (a browser that left it out) under the attacker's name.
    let body = json!({"channel": "news", "data": 1}).to_string();
    let (status, _) = exchange(
        &broker,
        curl_post("/api/publish", &evil, "application/json", &body),
    )
    .await;
    assert_eq!(status, 403);
    sub.expect_silence(SILENCE).await;

    // The WebSocket: Origin and Host agree, but name the attacker.
    let rebound = format!("Host: {evil}\r\nOrigin: {origin}\r\n");
    assert_eq!(upgrade_status(broker.addr, &rebound).await, 403);
    let m = broker.metrics().await;
    assert_eq!(rejections(&m).get("host_not_allowed").copied(), Some(3.0));
    // A page can learn why (and the operator what to add).
    let check = exchange(
        &broker,
        format!("POST /api/ws-check HTTP/1.1\r\nHost: {evil}\r\nOrigin: {origin}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&check.1).unwrap();
    assert_eq!(v["status"], 403, "{v}");
    assert!(
        v["fix"].as_str().unwrap().contains("server.allowed_hosts"),
        "{v}"
    );

    // The broker's own pages under its real names still connect.
    for host in [
        broker.addr.to_string(),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
    ] {
        let own = format!("Host: {host}\r\nOrigin: http://{host}\r\n");
        assert_eq!(upgrade_status(broker.addr, &own).await, 101, "{host}");
    }

    // A name the operator lists is the broker's.
    let named = Broker::start("[server]\nallowed_hosts = [\"rebind.evil.example\"]\n");
    let port = named.addr.port();
    let host = format!("rebind.evil.example:{port}");
    let own = format!("Host: {host}\r\nOrigin: http://{host}\r\n");
    assert_eq!(upgrade_status(named.addr, &own).await, 101);
    let (status, text) = exchange(
        &named,
        curl_post("/api/publish", &host, "application/json", &body),
    )
    .await;
    assert_eq!(status, 200, "{text}");
}

#[tokio::test]
async fn only_the_api_sets_a_publication_type() {
    // Issue 16, finding 9: a vws client's `h.type` made its publication look like a
    // typed API one (`process_status`, a broadcast `error`) to vws subscribers.
    let broker = Broker::start("[client]\nallow_publish = true\n");
    let mut sub = broker.vws_subscriber("process:b1").await;
    let mut publisher = broker.ws(Dialect::Subprotocol("vws")).await;
    publisher
        .send_json(
            &json!({"t": "process:b1", "d": {"status": "exited", "exitCode": 0},
                           "h": {"type": "process_status"}, "i": 1}),
        )
        .await;
    let nack = publisher.recv().await;
    assert_eq!(nack["k"], "n", "{nack}");
    assert!(nack["e"].as_str().unwrap().contains("reserved"), "{nack}");
    sub.expect_silence(SILENCE).await;
    // Other headers pass, untyped.
    publisher
        .send_json(&json!({"t": "process:b1", "d": 1, "h": {"traceparent": "t1"}, "i": 2}))
        .await;
    assert_eq!(publisher.recv().await["k"], "a");
    let v = sub.recv().await;
    assert_eq!(v["h"], json!({"traceparent": "t1"}), "{v}");
    // The API still sets it.
    let r = broker
        .post_json(
            "/api/process/b1/status",
            &json!({"status": "exited", "exitCode": 0}),
        )
        .await;
    assert!(r.is_success(), "{}", r.text);
    assert_eq!(sub.recv().await["h"]["type"], "process_status");
    let m = broker.metrics().await;
    assert_eq!(rejections(&m).get("reserved_header").copied(), Some(1.0));
}

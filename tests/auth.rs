//! Credentials on upgrade (`[auth]`: bearer, basic, JWT; header or `?token=`), the
//! `[[policy]]` rules with JWT claims and grants, and per-IP connection limits (SPEC §4, §5),
//! against the real binary with a real WebSocket client.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;
use common::*;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};

const VWS: Dialect = Dialect::Subprotocol("vws");
const SECRET: &str = "test-jwt-secret-0123456789";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn jwt(claims: Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

async fn metrics(broker: &Broker) -> String {
    broker.get("/metrics").await.text
}

fn rejections(m: &str, reason: &str) -> f64 {
    counter(
        m,
        &format!("shardcast_rejections_total{{reason=\"{reason}\"}}"),
    )
}

/// Expects a 401 with a JSON reason containing `reason`.
async fn refused_401(broker: &Broker, url: &str, headers: &[(&str, &str)], reason: &str) {
    let refusal = match try_ws_with(url, VWS, headers).await {
        Ok(_) => panic!("upgrade accepted with {headers:?} at {url}"),
        Err(r) => r,
    };
    assert_eq!(refusal.status, 401, "{refusal:?}");
    assert!(
        refusal.reason().contains(reason),
        "reason {:?} lacks {reason:?}",
        refusal.reason()
    );
    assert!(
        refusal.header("www-authenticate").is_some(),
        "401 without a challenge"
    );
    let _ = broker;
}

#[tokio::test]
async fn bearer_tokens_from_the_header_or_the_query() {
    let broker = Broker::start_with(
        "[auth]\ntype = \"bearer\"\nbearer_token_env = \"TEST_WS_TOKENS\"\n",
        &[],
        &[("TEST_WS_TOKENS", "old-token, new token/+=")],
    );
    let url = broker.ws_url();
    let before = metrics(&broker).await;
    refused_401(&broker, &url, &[], "credentials required").await;
    refused_401(
        &broker,
        &url,
        &[("Authorization", "Bearer wrong")],
        "invalid credentials",
    )
    .await;
    refused_401(
        &broker,
        &url,
        &[("Authorization", "Bearer old-token-and-more")],
        "invalid",
    )
    .await;
    refused_401(
        &broker,
        &url,
        &[("Authorization", "Basic b2xkLXRva2Vu")],
        "malformed",
    )
    .await;
    refused_401(&broker, &format!("{url}?token=nope"), &[], "invalid").await;
    let after = metrics(&broker).await;
    assert_eq!(
        rejections(&after, "missing_credentials") - rejections(&before, "missing_credentials"),
        1.0
    );
    assert_eq!(
        rejections(&after, "bad_credentials") - rejections(&before, "bad_credentials"),
        4.0
    );
    assert!(
        !broker.stderr().contains("wrong") && !broker.stderr().contains("old-token"),
        "a credential reached the log: {}",
        broker.stderr()
    );

    // Either token works, in the header or (percent-encoded) in the query.
    let mut a = try_ws_with(&url, VWS, &[("Authorization", "Bearer old-token")])
        .await
        .unwrap();
    a.vws_subscribe("news", 1).await;
    let mut b = try_ws_with(&format!("{url}?token=new%20token%2F%2B%3D"), VWS, &[])
        .await
        .unwrap();
    b.vws_subscribe("news", 1).await;
    broker.publish("news", json!(7)).await;
    assert_eq!(a.recv().await["d"], 7);
    assert_eq!(b.recv().await["d"], 7);
}

#[tokio::test]
async fn basic_auth_checks_user_and_password() {
    let broker = Broker::start_with(
        "[auth]\ntype = \"basic\"\nbasic_username_env = \"TEST_U\"\nbasic_password_env = \"TEST_P\"\n",
        &[],
        &[("TEST_U", "alice"), ("TEST_P", "pa:ss")],
    );
    let url = broker.ws_url();
    // base64("alice:wrong"), base64("alice:pa:ss")
    refused_401(
        &broker,
        &url,
        &[("Authorization", "Basic YWxpY2U6d3Jvbmc=")],
        "invalid",
    )
    .await;
    refused_401(
        &broker,
        &url,
        &[("Authorization", "Basic !!!")],
        "malformed",
    )
    .await;
    let mut ws = try_ws_with(&url, VWS, &[("Authorization", "Basic YWxpY2U6cGE6c3M=")])
        .await
        .unwrap();
    ws.vws_subscribe("x", 1).await;
    try_ws_with(&format!("{url}?token=YWxpY2U6cGE6c3M%3D"), VWS, &[])
        .await
        .unwrap();
}

#[tokio::test]
async fn jwt_needs_hs256_a_good_signature_and_exp() {
    let broker = Broker::start_with(
        "[auth]\ntype = \"jwt\"\njwt_secret_env = \"TEST_JWT\"\n",
        &[],
        &[("TEST_JWT", SECRET)],
    );
    let url = broker.ws_url();
    let bearer = |t: &str| format!("Bearer {t}");
    let expired = jwt(json!({"sub": "u", "exp": now() - 3600}));
    refused_401(
        &broker,
        &url,
        &[("Authorization", &bearer(&expired))],
        "expired",
    )
    .await;
    let no_exp = jwt(json!({"sub": "u"}));
    refused_401(&broker, &url, &[("Authorization", &bearer(&no_exp))], "exp").await;
    let forged = encode(
        &Header::default(),
        &json!({"sub": "u", "exp": now() + 600}),
        &EncodingKey::from_secret(b"another secret"),
    )
    .unwrap();
    refused_401(
        &broker,
        &url,
        &[("Authorization", &bearer(&forged))],
        "invalid",
    )
    .await;
    // alg "none": header {"alg":"none","typ":"JWT"}, no signature.
    let unsigned = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ1IiwiZXhwIjo5OTk5OTk5OTk5fQ.";
    refused_401(&broker, &url, &[("Authorization", &bearer(unsigned))], "").await;
    refused_401(&broker, &url, &[("Authorization", "Bearer a.b.c")], "").await;
    // A correctly signed token with a `crit` header: extensions the broker cannot know,
    // so it must refuse it (RFC 7515 §4.1.11).
    let crit_header = Header {
        crit: Some(vec!["http://example.test/policy".into()]),
        ..Header::default()
    };
    let crit = encode(
        &crit_header,
        &json!({"sub": "u", "exp": now() + 600}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    refused_401(
        &broker,
        &url,
        &[("Authorization", &bearer(&crit))],
        "malformed",
    )
    .await;

    let good = jwt(json!({"sub": "u", "exp": now() + 600}));
    let mut ws = try_ws_with(&format!("{url}?token={good}"), VWS, &[])
        .await
        .unwrap();
    ws.vws_subscribe("anything/at/all", 1).await;
}

#[tokio::test]
async fn claim_rules_are_exact_zero_is_false_and_nested_arrays_do_not_match() {
    let broker = Broker::start_with(
        "[auth]\ntype = \"jwt\"\njwt_secret_env = \"TEST_JWT\"\n\
         [[policy]]\npattern = \"vault/#\"\nsubscribe = \"claim:clearance\"\npublish = \"nobody\"\n\
         [[policy]]\npattern = \"ops/#\"\nsubscribe = \"claim:role=admin\"\npublish = \"nobody\"\n",
        &[],
        &[("TEST_JWT", SECRET)],
    );
    let url = broker.ws_url();
    let may = |claims: Value, topic: &'static str| {
        let url = url.clone();
        async move {
            let token = format!("Bearer {}", jwt(claims));
            let mut ws = try_ws_with(&url, VWS, &[("Authorization", &token)])
                .await
                .unwrap();
            ws.send_json(&json!({"k": "s", "t": topic, "i": 1})).await;
            ws.recv().await["k"] == "a"
        }
    };
    let exp = now() + 600;
    for (clearance, allowed) in [
        (json!(0), false),
        (json!(0.0), false),
        (json!(false), false),
        (json!(""), false),
        (json!([]), false),
        (json!({}), false),
        (json!(null), false),
        (json!(2), true),
        (json!(true), true),
        (json!("top"), true),
        (json!(["x"]), true),
    ] {
        let claims = json!({"sub": "u", "exp": exp, "clearance": clearance});
        assert_eq!(
            may(claims, "vault/x").await,
            allowed,
            "clearance {clearance}"
        );
    }
    for (role, allowed) in [
        (json!("admin"), true),
        (json!(["dev", "admin"]), true),
        (json!([["admin"]]), false),
        (json!([{"admin": true}]), false),
        (json!("administrator"), false),
    ] {
        let claims = json!({"sub": "u", "exp": exp, "role": role});
        assert_eq!(may(claims, "ops/x").await, allowed, "role {role}");
    }
}

#[tokio::test]
async fn policies_claims_and_grants_decide_who_subscribes_and_publishes() {
    let broker = Broker::start_with(
        "[auth]\ntype = \"jwt\"\njwt_secret_env = \"TEST_JWT\"\n\
         [[policy]]\npattern = \"ops/#\"\nsubscribe = \"claim:role=admin\"\npublish = \"claim:role=admin\"\n\
         [[policy]]\npattern = \"chat/#\"\nsubscribe = \"anyone\"\npublish = \"authenticated\"\n",
        &[],
        &[("TEST_JWT", SECRET)],
    );
    let url = broker.ws_url();
    let connect = |claims: Value| {
        let url = url.clone();
        async move {
            let token = format!("Bearer {}", jwt(claims));
            try_ws_with(&url, VWS, &[("Authorization", &token)])
                .await
                .unwrap()
        }
    };
    let before = metrics(&broker).await;
    let mut user = connect(json!({"sub": "user", "exp": now() + 600})).await;
    let mut admin =
        connect(json!({"sub": "root", "exp": now() + 600, "role": ["dev", "admin"]})).await;
    let mut limited = connect(json!({
        "sub": "kiosk", "exp": now() + 600,
        "subscribe": ["chat/lobby"], "publish": []
    }))
    .await;

    // ops/# is for admins; `#` would reach into it, so it is refused too.
    let e = user
        .vws_expect_nack(&json!({"k": "s", "t": "ops/db", "i": 1}))
        .await;
    assert!(e.contains("not allowed to subscribe"), "{e}");
    user.vws_expect_nack(&json!({"k": "s", "t": "#", "i": 2}))
        .await;
    user.vws_subscribe("chat/+", 3).await;
    admin.vws_subscribe("#", 1).await;

    // chat/# may be published by any authenticated client; other topics by nobody.
    user.send_json(&json!({"t": "chat/room", "d": "hi", "i": 4}))
        .await;
    // The ack, and the publication itself (the user is subscribed to chat/+), in any order.
    let mut two = [user.recv().await, user.recv().await];
    two.sort_by_key(|v| v.get("k").is_none());
    assert_eq!(two[0], json!({"k": "a", "i": 4}));
    assert_eq!(two[1]["t"], "chat/room");
    let got = admin.recv().await;
    assert_eq!(
        (got["t"].clone(), got["d"].clone()),
        (json!("chat/room"), json!("hi"))
    );
    let e = user
        .vws_expect_nack(&json!({"t": "news", "d": 1, "i": 5}))
        .await;
    assert!(e.contains("not allowed to publish"), "{e}");
    admin
        .send_json(&json!({"t": "ops/deploy", "d": 2, "i": 6}))
        .await;
    assert_eq!(admin.recv().await, json!({"k": "a", "i": 6}));
    assert_eq!(admin.recv().await["t"], "ops/deploy");

    // The JWT's grants narrow what the kiosk may do, whatever the rules allow.
    limited.vws_subscribe("chat/lobby", 1).await;
    limited
        .vws_expect_nack(&json!({"k": "s", "t": "chat/+", "i": 2}))
        .await;
    limited
        .vws_expect_nack(&json!({"t": "chat/lobby", "d": 3, "i": 3}))
        .await;

    let after = metrics(&broker).await;
    let moved = |r| rejections(&after, r) - rejections(&before, r);
    assert_eq!(moved("subscribe_not_allowed"), 3.0);
    assert_eq!(moved("publish_not_allowed"), 2.0);
}

#[tokio::test]
async fn gows_clients_publish_where_a_policy_allows_it() {
    let broker = Broker::start(
        "[[policy]]\npattern = \"chat/#\"\nsubscribe = \"anyone\"\npublish = \"anyone\"\n",
    );
    let mut sub = broker.gows_subscriber("chat/1").await;
    let mut pubr = broker.ws(Dialect::Subprotocol("gows")).await;
    pubr.send_json(&json!({"type": "publish", "channel": "chat/1", "data": "hi"}))
        .await;
    let v = sub.recv().await;
    assert_eq!(
        (v["channel"].clone(), v["data"].clone()),
        (json!("chat/1"), json!("hi"))
    );
    // Elsewhere the default holds: only the HTTP API publishes.
    pubr.send_json(&json!({"type": "publish", "channel": "news", "data": 1}))
        .await;
    pubr.gows_expect_error("not allowed to publish").await;
}

#[tokio::test]
async fn per_ip_connection_limit_and_rate_answer_503_with_retry_after() {
    let broker = Broker::start("[server]\nmax_connections_per_ip = 2\n");
    let url = broker.ws_url();
    let a = broker.ws(VWS).await;
    let _b = broker.ws(VWS).await;
    let refusal = try_ws_with(&url, VWS, &[]).await.err().unwrap();
    assert_eq!(refusal.status, 503);
    assert!(
        refusal.reason().contains("max_connections_per_ip"),
        "{refusal:?}"
    );
    assert!(refusal.header("retry-after").is_some(), "{refusal:?}");
    a.close().await;
    // The closed connection's place is given back (the close is seen asynchronously).
    eventually("a place frees up", RECV, || async {
        try_ws_with(&url, VWS, &[]).await.is_ok()
    })
    .await;

    let broker =
        Broker::start("[server]\nconnection_rate_per_ip = 0.2\nconnection_burst_per_ip = 3\n");
    let url = broker.ws_url();
    // Every TCP connection counts, so the metrics connection is opened first and kept.
    let mut http = Http::connect(broker.addr).await;
    let _c = broker.ws(VWS).await;
    let _d = broker.ws(VWS).await;
    let refusal = try_ws_with(&url, VWS, &[]).await.err().unwrap();
    assert_eq!(refusal.status, 503);
    assert!(
        refusal.reason().contains("connection_rate_per_ip"),
        "{refusal:?}"
    );
    assert_eq!(
        refusal.header("retry-after"),
        Some("5"),
        "one token per 5 s"
    );
    let m = http.request("GET", "/metrics", None, Vec::new()).await.text;
    assert_eq!(rejections(&m, "connect_rate_limited"), 1.0);
}

#[tokio::test]
async fn a_missing_secret_stops_the_broker_at_start() {
    let out = run_cli(
        &["serve", "--listen", "127.0.0.1:0"],
        &[
            ("SHARDCAST_AUTH__TYPE", "jwt"),
            ("SHARDCAST_AUTH__JWT_SECRET_ENV", "TEST_UNSET_SECRET_VAR"),
        ],
        READY,
    )
    .await;
    assert_eq!(out.code, Some(2), "a config error like any other: {out:?}");
    assert!(
        out.stderr
            .contains("auth.jwt_secret_env: environment variable TEST_UNSET_SECRET_VAR is not set"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn anonymous_reads_and_signed_in_writes_with_auth_anonymous() {
    // The README's JWT example: everyone reads chat, signed-in clients write it.
    let broker = Broker::start_with(
        "[auth]\ntype = \"jwt\"\njwt_secret_env = \"TEST_JWT\"\nanonymous = true\n\
         [[policy]]\npattern = \"chat/#\"\nsubscribe = \"anyone\"\npublish = \"authenticated\"\n",
        &[],
        &[("TEST_JWT", SECRET)],
    );
    let url = broker.ws_url();
    // No credentials at all: in, as anonymous, and may read but not write.
    let mut reader = try_ws_with(&url, VWS, &[]).await.unwrap();
    reader.vws_subscribe("chat/lobby", 1).await;
    let e = reader
        .vws_expect_nack(&json!({"t": "chat/lobby", "d": "hi", "i": 2}))
        .await;
    assert!(e.contains("not allowed to publish"), "{e}");
    // Wrong credentials are still refused: anonymous is not a fallback for bad tokens.
    refused_401(&broker, &url, &[("Authorization", "Bearer a.b.c")], "").await;
    let expired = jwt(json!({"sub": "old", "exp": now() - 3600}));
    refused_401(&broker, &format!("{url}?token={expired}"), &[], "expired").await;
    // A signed-in client writes, and the anonymous reader receives it.
    let token = format!(
        "Bearer {}",
        jwt(json!({"sub": "alice", "exp": now() + 600}))
    );
    let mut writer = try_ws_with(&url, VWS, &[("Authorization", &token)])
        .await
        .unwrap();
    writer
        .send_json(&json!({"t": "chat/lobby", "d": "hello", "i": 1}))
        .await;
    assert_eq!(writer.recv().await, json!({"k": "a", "i": 1}));
    let got = reader.recv().await;
    assert_eq!(
        (&got["t"], &got["d"]),
        (&json!("chat/lobby"), &json!("hello"))
    );
}

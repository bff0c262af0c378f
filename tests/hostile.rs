//! Hostile input: SPEC §4 row by row, plus the abuse the table implies (garbage instead
//! of HTTP, handshakes that never finish, 10,000-level JSON, fragments interleaved with
//! pings, a thousand connections dropped without a close).
//!
//! Every case runs through [`Ward::survive`], which then proves that the broker did not
//! notice: the process is alive and printed no panic; a canary subscriber receives a
//! publication made after the bad input (and heard nothing else meanwhile); the refusal
//! was counted under its `shardcast_rejections_total` reason and no other reason moved;
//! WebSocket clients, channels and the broker's open file descriptors are back to what
//! they were with only the canary connected, so a leaked socket, connection slot or
//! subscription fails the case. Cases that share a config share one broker.
//!
//! Correct behaviour that is not abuse (ping/pong, reassembly, pings keeping a quiet
//! client alive) is in `limits.rs`; slow-consumer policies under a firehose in
//! `slow_consumer.rs`.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound for a close the broker owes a client.
const CLOSE: Duration = Duration::from_secs(5);
/// Bound for counters, clients and sockets to settle after a case.
const SETTLE: Duration = Duration::from_secs(10);

/// A broker with a canary subscriber, and what the broker looks like at rest.
struct Ward {
    broker: Rc<Broker>,
    canary: Canary,
    /// Open file descriptors with only the canary connected (`None` without `/proc`).
    fds: Option<usize>,
}

impl Ward {
    async fn start(toml: &str) -> Ward {
        Ward::start_with(toml, &[], None).await
    }

    /// With extra environment (secrets) and, when the broker requires credentials, the
    /// token the canary presents.
    async fn start_with(toml: &str, env: &[(&str, &str)], token: Option<&str>) -> Ward {
        let broker = Broker::start_with(toml, &[], env);
        let canary = match token {
            Some(token) => Canary::with_token(&broker, token).await,
            None => Canary::new(&broker).await,
        };
        // No HTTP request has been made yet: listeners, runtime, and the canary's socket.
        let fds = broker.open_fds();
        Ward {
            broker: Rc::new(broker),
            canary,
            fds,
        }
    }

    /// Runs one bad input, then asserts the broker is unharmed and counted it under
    /// `reasons` (and nothing else). `bad` must drop every client it made.
    async fn survive<F, Fut>(&mut self, case: &str, reasons: &[&str], bad: F)
    where
        F: FnOnce(Rc<Broker>) -> Fut,
        Fut: Future<Output = ()>,
    {
        eprintln!("case: {case}");
        let before = rejections(&self.broker.metrics().await);
        for r in reasons {
            assert!(
                before.contains_key(*r),
                "{case}: no reason {r:?} in metrics"
            );
        }
        self.canary.quiet_while(bad(self.broker.clone())).await;
        self.assert_alive(case);
        self.canary.check(&self.broker).await;
        self.canary
            .quiet_while(settled(&self.broker, self.fds, case))
            .await;
        self.canary
            .quiet_while(counted(&self.broker, case, &before, reasons))
            .await;
        self.assert_alive(case);
    }

    fn assert_alive(&mut self, case: &str) {
        let broker = Rc::get_mut(&mut self.broker).expect("a case kept a handle on the broker");
        if let Some(status) = broker.exited() {
            panic!("{case}: the broker exited ({status}):\n{}", broker.stderr());
        }
        let stderr = broker.stderr();
        assert!(!stderr.contains("panicked"), "{case}: panic:\n{stderr}");
    }

    /// Sends each request on a fresh connection: it must be answered with its status
    /// before any WebSocket exists, and counted.
    async fn refuse_all(&mut self, rows: Vec<Refusal>) {
        for Refusal {
            case,
            request,
            status,
            reason,
        } in rows
        {
            self.survive(case, &[reason], |b| async move {
                let head = raw_http(b.addr, &request).await;
                assert_eq!(status_of(&head), status, "{case}: {head:?}");
            })
            .await;
        }
    }
}

/// An HTTP request the broker must refuse with `status`, counting `reason`.
struct Refusal {
    case: &'static str,
    request: Vec<u8>,
    status: u16,
    reason: &'static str,
}

/// Waits until the broker is back to its resting state: the canary as the only client
/// and subscriber, and no socket (or other descriptor) left open.
async fn settled(broker: &Broker, fds: Option<usize>, case: &str) {
    let what = format!("{case}: back to 1 client, 1 channel, {fds:?} open fds;");
    until_ok(&what, SETTLE, || async move {
        // Descriptors first: the previous poll's HTTP socket has had time to close.
        let open = broker.open_fds();
        let s = broker.stats().await;
        let seen = (s["clients"].as_u64(), s["channels"].as_u64(), open);
        if seen == (Some(1), Some(1), fds) {
            Ok(())
        } else {
            Err(format!("saw {seen:?}"))
        }
    })
    .await;
}

/// Waits until every reason in `reasons` counted more than `before`, then asserts that
/// no other reason moved.
async fn counted(broker: &Broker, case: &str, before: &BTreeMap<String, f64>, reasons: &[&str]) {
    let what = format!("{case}: rejections counted under {reasons:?};");
    until_ok(&what, SETTLE, || async move {
        let now = rejections(&broker.metrics().await);
        let missing: Vec<_> = reasons
            .iter()
            .filter(|r| now.get(**r) <= before.get(**r))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("not counted: {missing:?}"))
        }
    })
    .await;
    let now = rejections(&broker.metrics().await);
    let others: Vec<_> = now
        .iter()
        .filter(|(r, v)| !reasons.contains(&r.as_str()) && before.get(*r) != Some(v))
        .collect();
    assert!(others.is_empty(), "{case}: also counted {others:?}");
}

/// Request-level abuse gets a gows error / vws nack and the connection stays open.
#[tokio::test]
async fn requests_the_broker_cannot_honour_get_an_error_or_a_nack() {
    let mut ward = Ward::start(
        "[client]\nmax_subscriptions = 3\nmax_topic_bytes = 64\nmax_topic_levels = 4\n\
         allow_publish = true\npublish_rate = 5.0\npublish_burst = 5\nrate_limit_strikes = 20\n",
    )
    .await;

    let reasons = [
        "malformed_json",
        "not_an_object",
        "unknown_type",
        "bad_field",
        "missing_field",
    ];
    ward.survive(
        "gows: malformed, not an object, unknown, missing",
        &reasons,
        |b| async move {
            let mut g = b.ws(Dialect::Subprotocol("gows")).await;
            for (text, want) in [
                ("{\"type\":", "malformed JSON"),
                ("[\"ping\"]", "JSON object"),
                ("{\"type\":\"jump\"}", "unknown message type"),
                ("{\"type\":1}", "wrong type"),
                ("{\"type\":\"unsubscribe\"}", "missing field"),
            ] {
                let e = g.gows_expect_error(text).await;
                assert!(e.contains(want), "{text:?}: {e:?}");
            }
            g.gows_sync().await;
        },
    )
    .await;

    let reasons = ["malformed_json", "unknown_kind", "missing_field"];
    ward.survive(
        "vws: malformed, unknown kind, missing",
        &reasons,
        |b| async move {
            let mut v = b.ws(Dialect::Subprotocol("vws")).await;
            v.send_text("{\"k\":").await;
            let e = v.recv().await;
            assert!(
                e["e"].as_str().unwrap_or("").contains("malformed JSON"),
                "{e}"
            );
            let e = v.vws_expect_nack(&json!({"k": "q", "i": 1})).await;
            assert!(e.contains("unknown kind"), "{e:?}");
            let e = v.vws_expect_nack(&json!({"k": "s", "i": 2})).await;
            assert!(e.contains("missing field 't'"), "{e:?}");
            v.vws_subscribe("ok", 3).await;
        },
    )
    .await;

    let reasons = ["invalid_pattern", "invalid_topic"];
    ward.survive("invalid topics and patterns", &reasons, |b| async move {
        let long = "x".repeat(65);
        let bad = [
            "",
            &long,
            "a/b/c/d/e",
            "ctl\u{1}char",
            "new\nline",
            "a/#/b",
            "a/b+",
            "+a",
        ];
        let mut v = b.ws(Dialect::Subprotocol("vws")).await;
        for (i, t) in bad.iter().enumerate() {
            let e = v.vws_expect_nack(&json!({"k": "s", "t": t, "i": i})).await;
            assert!(e.contains("invalid pattern"), "nack for {t:?}: {e:?}");
        }
        v.vws_subscribe(&"y".repeat(64), 100).await; // exactly at the limits is fine
        v.vws_subscribe("a/b/c/d", 101).await;
        let mut g = b.ws(Dialect::Subprotocol("gows")).await;
        for t in &bad[..4] {
            let req = json!({"type": "subscribe", "data": t}).to_string();
            let e = g.gows_expect_error(&req).await;
            assert!(e.contains("invalid"), "gows error for {t:?}: {e:?}");
        }
        g.gows_sync().await;
        for t in ["", &long, "ctl\u{1}char", "a/+/c"] {
            let r = b
                .post_json("/api/publish", &json!({"channel": t, "data": 1}))
                .await;
            assert_eq!(r.status, 400, "API publish to {t:?}: {}", r.text);
            r.error_reason();
        }
    })
    .await;

    ward.survive(
        "over client.max_subscriptions",
        &["too_many_subscriptions"],
        |b| async move {
            let mut v = b.ws(Dialect::Subprotocol("vws")).await;
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
            let mut g = b.ws(Dialect::Subprotocol("gows")).await;
            for i in 0..3 {
                g.gows_subscribe(&format!("glim{i}")).await;
            }
            let e = g
                .gows_expect_error(r#"{"type":"subscribe","data":"glim3"}"#)
                .await;
            assert!(e.contains("client.max_subscriptions"), "{e:?}");
            g.gows_sync().await;
        },
    )
    .await;

    ward.survive("10,000-level nested JSON", &["too_deep"], |b| async move {
        let nest = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let mut g = b.ws(Dialect::Subprotocol("gows")).await;
        let e = g
            .gows_expect_error(&format!("{{\"type\":\"subscribe\",\"data\":{nest}}}"))
            .await;
        assert!(e.contains("JSON nested too deeply"), "{e:?}");
        g.gows_sync().await;
        let mut v = b.ws(Dialect::Subprotocol("vws")).await;
        v.send_text(format!("{{\"t\":\"deep\",\"d\":{nest},\"i\":1}}"))
            .await;
        let r = v.recv().await;
        assert_eq!(r["k"], "n", "{r}");
        assert!(
            r["e"].as_str().unwrap_or("").contains("nested too deeply"),
            "{r}"
        );
        v.vws_subscribe("fine", 2).await;
        let body = format!("{{\"channel\":\"deep\",\"data\":{nest}}}").into_bytes();
        let ct = Some("application/json");
        let r = http(b.addr, "POST", "/api/publish", ct, body).await;
        assert_eq!(r.status, 400, "{}", r.text);
    })
    .await;

    let reasons = ["rate_limited", "rate_limit_abuse"];
    ward.survive(
        "over client.publish_rate, then persistently",
        &reasons,
        |b| async move {
            let mut v = b.ws(Dialect::Subprotocol("vws")).await;
            // A burst of 10: the bucket holds 5, so some are refused; 10 stays under 20 strikes.
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
                        let e = r["e"].as_str().unwrap_or("");
                        assert!(e.contains("rate limited"), "{r}");
                        limited += 1;
                    }
                    _ => panic!("unexpected reply {r}"),
                }
            }
            assert!(acks >= 5, "the burst allowance is honoured ({acks} acks)");
            assert!(limited >= 3, "fast publishes are rate limited ({limited})");
            // Subscribing is not rate limited.
            v.vws_subscribe("still/open", 100).await;
            // Persistent abuse: publish without pause until the broker gives up on us.
            for i in 0..200 {
                let msg = json!({"t": "rl/x", "d": i, "i": 1000 + i}).to_string();
                if !v.send_text_lossy(msg).await {
                    break;
                }
            }
            v.expect_close(1008, CLOSE).await;
        },
    )
    .await;
}

/// A masked client frame (`encode_frame` with the mask every client must use).
fn masked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    encode_frame(fin, opcode, payload, true)
}

/// Frames that break the WebSocket rules close the connection with the SPEC §4 code.
#[tokio::test]
async fn protocol_violations_close_the_connection_with_their_code() {
    let mut ward = Ward::start("[server]\nmax_message_bytes = 1024\n").await;
    let ping = br#"{"type":"ping"}"#;
    let mut reserved_bits = masked(true, OP_TEXT, ping);
    reserved_bits[0] |= 0x40; // RSV1 without a negotiated extension
    let mut huge_length = vec![0x81, 0x80 | 127];
    huge_length.extend_from_slice(&(1u64 << 63).to_be_bytes());
    huge_length.extend_from_slice(&[0; 4]);
    // RFC 6455 §5.2: a length in more bytes than it needs ("{}" announced in 16 and in
    // 64 bits, zero mask so the payload goes as is).
    let mut long16 = vec![0x81, 0x80 | 126, 0, 2, 0, 0, 0, 0];
    long16.extend_from_slice(b"{}");
    let mut long64 = vec![0x81, 0x80 | 127];
    long64.extend_from_slice(&2u64.to_be_bytes());
    long64.extend_from_slice(&[0, 0, 0, 0]);
    long64.extend_from_slice(b"{}");
    let cat = |frames: &[Vec<u8>]| frames.concat();
    let chunk = [b' '; 400];
    let table: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "text frame that is not UTF-8",
            masked(true, OP_TEXT, b"{\xff\xfe}"),
            1007,
            "invalid_utf8",
        ),
        (
            "UTF-8 cut between two fragments",
            cat(&[
                masked(false, OP_TEXT, b"{\"k\":\"\xC3"),
                masked(true, OP_CONT, b"\"}"),
            ]),
            1007,
            "invalid_utf8",
        ),
        (
            "message over server.max_message_bytes",
            masked(true, OP_TEXT, &[b' '; 2000]),
            1009,
            "message_too_large",
        ),
        (
            "small fragments adding up over the limit",
            cat(&[
                masked(false, OP_TEXT, &chunk),
                masked(false, OP_CONT, &chunk),
                masked(false, OP_CONT, &chunk),
                masked(true, OP_CONT, b"{}"),
            ]),
            1009,
            "message_too_large",
        ),
        (
            "64-bit length with the top bit set",
            huge_length,
            1009,
            "message_too_large",
        ),
        (
            "16-bit length for a 2-byte payload",
            long16,
            1002,
            "non_minimal_length",
        ),
        (
            "64-bit length for a 2-byte payload",
            long64,
            1002,
            "non_minimal_length",
        ),
        (
            "binary frame",
            masked(true, OP_BINARY, &[1, 2, 3]),
            1003,
            "binary_frame",
        ),
        (
            "unmasked client frame",
            encode_frame(true, OP_TEXT, ping, false),
            1002,
            "unmasked_frame",
        ),
        (
            "reserved opcode",
            masked(true, 0x3, b"??"),
            1002,
            "bad_opcode",
        ),
        ("reserved bits", reserved_bits, 1002, "bad_opcode"),
        (
            "control frame over 125 bytes",
            masked(true, OP_PING, &[b'x'; 126]),
            1002,
            "bad_control_frame",
        ),
        (
            "fragmented control frame",
            masked(false, OP_PING, b"x"),
            1002,
            "bad_control_frame",
        ),
        (
            "continuation without a start",
            masked(true, OP_CONT, b"{}"),
            1002,
            "bad_fragmentation",
        ),
        (
            "new message inside a fragmented one",
            cat(&[masked(false, OP_TEXT, b"{"), masked(true, OP_TEXT, b"{}")]),
            1002,
            "bad_fragmentation",
        ),
    ];
    for (case, bytes, code, reason) in table {
        ward.survive(case, &[reason], |b| async move {
            let mut raw = RawWs::connect(b.addr, "gows").await;
            raw.send_raw(&bytes).await;
            raw.expect_close(code, CLOSE).await;
        })
        .await;
    }

    ward.survive(
        "1-byte fragments, each followed by a ping",
        &[],
        |b| async move {
            let mut raw = RawWs::connect(b.addr, "gows").await;
            let msg = json!({"type": "subscribe", "data": "frag"}).to_string();
            let last = msg.len() - 1;
            let mut frames = Vec::new();
            for (i, byte) in msg.bytes().enumerate() {
                let opcode = if i == 0 { OP_TEXT } else { OP_CONT };
                frames.extend(masked(i == last, opcode, &[byte]));
                frames.extend(masked(true, OP_PING, i.to_string().as_bytes()));
            }
            raw.send_raw(&frames).await;
            for i in 0..=last {
                match raw.read_frame(RECV).await {
                    Ok(Some((true, OP_PONG, p))) => assert_eq!(p, i.to_string().as_bytes()),
                    other => panic!("pong {i}: got {other:?}"),
                }
            }
            // The reassembled message was a subscribe: the client now receives "frag".
            b.publish("frag", json!("reassembled")).await;
            let v = raw.recv_json(RECV).await;
            assert_eq!(
                (&v["channel"], &v["data"]),
                (&json!("frag"), &json!("reassembled"))
            );
        },
    )
    .await;
}

/// Missing or wrong credentials: HTTP 401 before the upgrade (SPEC §4, §5), for bearer
/// tokens and JWTs, in the header and in `?token=`.
#[tokio::test]
async fn missing_or_wrong_credentials_are_refused_with_401() {
    let mut ward = Ward::start_with(
        "[auth]\ntype = \"bearer\"\nbearer_token_env = \"HOSTILE_TOKEN\"\n",
        &[("HOSTILE_TOKEN", "right-token")],
        Some("right-token"),
    )
    .await;
    let upgrade = |path: &str, extra: &str| {
        upgrade_request(path, &format!("Host: x\r\n{extra}")).into_bytes()
    };
    let row = |case, request, reason| Refusal {
        case,
        request,
        status: 401,
        reason,
    };
    ward.refuse_all(vec![
        row("no credentials", upgrade("/ws", ""), "missing_credentials"),
        row(
            "wrong bearer token",
            upgrade("/ws", "Authorization: Bearer wrong-token\r\n"),
            "bad_credentials",
        ),
        row(
            "a prefix of the token",
            upgrade("/ws", "Authorization: Bearer right\r\n"),
            "bad_credentials",
        ),
        row(
            "an unknown scheme",
            upgrade("/ws", "Authorization: Digest right-token\r\n"),
            "bad_credentials",
        ),
        row(
            "wrong ?token=",
            upgrade("/ws?token=nope", ""),
            "bad_credentials",
        ),
        row(
            "empty ?token=",
            upgrade("/ws?token=", ""),
            "missing_credentials",
        ),
        row(
            "a 10 KiB token",
            upgrade(
                "/ws",
                &format!("Authorization: Bearer {}\r\n", "x".repeat(10_240)),
            ),
            "bad_credentials",
        ),
    ])
    .await;

    let mut ward = Ward::start_with(
        "[auth]\ntype = \"jwt\"\njwt_secret_env = \"HOSTILE_JWT\"\n",
        &[("HOSTILE_JWT", "hostile-secret")],
        // {"alg":"HS256","typ":"JWT"} {"sub":"canary","exp":4102444800}, signed with it.
        Some(CANARY_JWT),
    )
    .await;
    // alg "none" and a garbled token must not pass.
    let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4IiwiZXhwIjo0MTAyNDQ0ODAwfQ.";
    ward.refuse_all(vec![
        row(
            "JWT with alg none",
            upgrade("/ws", &format!("Authorization: Bearer {none}\r\n")),
            "bad_credentials",
        ),
        row(
            "JWT with a broken signature",
            upgrade(
                &format!("/ws?token={}", &CANARY_JWT[..CANARY_JWT.len() - 2]),
                "",
            ),
            "bad_credentials",
        ),
        row(
            "not a JWT",
            upgrade("/ws", "Authorization: Bearer ...\r\n"),
            "bad_credentials",
        ),
    ])
    .await;
}

/// A JWT for the canary: HS256 over `hostile-secret`, `exp` in 2100.
const CANARY_JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJjYW5hcnkiLCJleHAiOjQxMDI0NDQ4MDB9.wtDmJrp5lzA_hPu8fFP4dtsJ48R4MvaX7fm02QuXxmU";

/// Requests refused before any WebSocket exists (SPEC §4: 400, 403).
#[tokio::test]
async fn bad_handshakes_and_garbage_are_refused_over_http() {
    let mut ward = Ward::start("").await;
    let upgrade = |extra: &str| upgrade_request("/ws", &format!("Host: x\r\n{extra}"));
    let rows = [
        (
            "GET /ws without Upgrade",
            "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
            400,
        ),
        ("POST upgrade", upgrade("").replacen("GET", "POST", 1), 400),
        (
            "Sec-WebSocket-Version: 8",
            upgrade("").replace("Version: 13", "Version: 8"),
            400,
        ),
        (
            "no Sec-WebSocket-Key",
            upgrade("").replace("Sec-WebSocket-Key", "X-Key"),
            400,
        ),
        (
            "unknown ?dialect=",
            upgrade_request("/ws?dialect=mqtt", "Host: x\r\n"),
            400,
        ),
        (
            "garbage: a header line without a colon",
            "GET /ws HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n".to_string(),
            400,
        ),
        (
            "garbage: an HTTP response instead of a request",
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_string(),
            400,
        ),
    ];
    let mut refusals: Vec<Refusal> = rows
        .into_iter()
        .map(|(case, request, status)| Refusal {
            case,
            request: request.into_bytes(),
            status,
            reason: "bad_handshake",
        })
        .collect();
    // A TLS ClientHello on the plain-text port: binary from the first byte.
    let mut hello = vec![
        0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03,
    ];
    hello.extend((0u8..=255).cycle().skip(7).step_by(13).take(160));
    refusals.push(Refusal {
        case: "garbage: a TLS ClientHello",
        request: hello,
        status: 400,
        reason: "bad_handshake",
    });
    refusals.push(Refusal {
        case: "Origin not in server.allowed_origins",
        request: upgrade("Origin: http://evil.example\r\n").into_bytes(),
        status: 403,
        reason: "origin_not_allowed",
    });
    ward.refuse_all(refusals).await;
}

/// Over the connection limit and over the outbound buffer: refused or cut, others unharmed.
#[tokio::test]
async fn connection_and_outbound_buffer_limits() {
    let mut ward = Ward::start(
        "[server]\nmax_connections = 4\n[client]\nqueue_frames = 64\nqueue_bytes = 65536\n",
    )
    .await;

    ward.survive(
        "over server.max_connections",
        &["too_many_connections"],
        |b| async move {
            let mut held = Vec::new();
            for _ in 0..3 {
                held.push(b.ws(Dialect::Subprotocol("vws")).await); // with the canary: 4
            }
            match try_ws(&b.ws_url(), Dialect::Subprotocol("gows")).await {
                Err(status) => assert_eq!(status, 503),
                Ok(_) => panic!("a connection over the limit must be refused with 503"),
            }
            assert_eq!(upgrade_status(b.addr, "Host: x\r\n").await, 503);
            assert_eq!(
                stats_clients(&b).await,
                4,
                "the API still answers at the limit"
            );
            // Freed slots are reused.
            held.pop();
            eventually("a freed slot", RECV, || async {
                stats_clients(&b).await == 3
            })
            .await;
            held.push(b.ws(Dialect::Subprotocol("gows")).await);
        },
    )
    .await;

    ward.survive(
        "slow consumer: pings, never reading the pongs",
        &["slow_consumer"],
        |b| async move {
            // Replies are never dropped by on_full, but a client that keeps asking and never
            // reads is cut once twice the outbox bounds are queued. Each pong echoes 120
            // bytes: 100,000 of them (12 MB) cannot hide in socket buffers.
            let mut flood = RawWs::connect_with(b.addr, "/ws", Some("gows"), Some(4096)).await;
            let burst = masked(true, OP_PING, &[b'p'; 120]).repeat(1000);
            let mut cut = false;
            for _ in 0..100 {
                if !flood.send_raw_checked(&burst).await {
                    cut = true;
                    break;
                }
            }
            if !cut {
                if let (RawEnd::Close(code, reason), _, _) = flood.wait_end(RECV).await {
                    assert_eq!(code, Some(1008), "{reason}");
                }
            }
        },
    )
    .await;

    ward.survive(
        "slow consumer: a subscriber that never reads",
        &["slow_consumer"],
        |b| async move {
            let _slow = RawWs::stalled_subscriber(b.addr, "firehose").await;
            let items: Vec<Value> = (0..64)
                .map(|n| json!({"channel": "firehose", "data": {"n": n, "pad": "x".repeat(4000)}}))
                .collect();
            let batch = json!(items);
            let cuts = || async {
                counter(
                    &b.metrics().await,
                    "shardcast_slow_consumer_disconnects_total",
                )
            };
            let before = cuts().await;
            let mut api = Http::connect(b.addr).await;
            // 64 batches of 256 KB: 16 MB cannot hide in socket buffers either.
            for _ in 0..64 {
                let r = api.post_json("/api/publish", &batch).await;
                assert!(r.is_success(), "{} {}", r.status, r.text);
                if cuts().await > before {
                    return;
                }
            }
            panic!("a subscriber that read nothing of 16 MB is still connected");
        },
    )
    .await;
}

/// Clients that say nothing: idle WebSockets and handshakes that never finish are freed.
#[tokio::test]
async fn silent_and_slow_clients_are_timed_out() {
    let mut ward = Ward::start(
        "[server]\nidle_timeout = \"2s\"\nping_interval = \"500ms\"\nhandshake_timeout = \"1s\"\n",
    )
    .await;

    ward.survive(
        "idle: no frame or pong within server.idle_timeout",
        &["idle_timeout"],
        |b| async move {
            let mut raw = RawWs::connect(b.addr, "gows").await;
            // Never write anything, not even a pong: the broker pings, then gives up.
            let (end, _, pings) = raw.wait_end(Duration::from_secs(8)).await;
            assert!(
                pings >= 1,
                "the broker pings before declaring a client idle"
            );
            if let RawEnd::Close(code, reason) = end {
                assert_eq!(code, Some(1001), "{reason}");
            }
        },
    )
    .await;

    ward.survive(
        "slowloris: 20 connections that send nothing",
        &["handshake_timeout"],
        |b| async move {
            let addr = b.addr;
            let quiet = (0..20).map(|_| async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                let started = Instant::now();
                let mut buf = [0u8; 64];
                let r = within(CLOSE, "a silent connection to be dropped", s.read(&mut buf)).await;
                assert!(matches!(r, Ok(0) | Err(_)), "answered nothing with {r:?}");
                started.elapsed()
            });
            for waited in futures_util::future::join_all(quiet).await {
                assert!(
                    waited >= Duration::from_millis(800),
                    "dropped after {waited:?}"
                );
            }
        },
    )
    .await;

    let case = "slowloris: a request head trickled a byte at a time";
    ward.survive(case, &["handshake_timeout"], |b| async move {
        let (answer, waited) = trickle(b.addr, b"GET /ws HTTP/1.1\r\nHost: x\r\nX-Slow: ").await;
        assert_eq!(answer, "", "answered a head that never ended");
        assert!(
            waited >= Duration::from_millis(800),
            "dropped after {waited:?}"
        );
    })
    .await;

    let case = "slowloris: an API request body trickled a byte at a time";
    ward.survive(case, &["handshake_timeout"], |b| async move {
        let head =
            b"POST /api/publish HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
                     Content-Length: 1000\r\n\r\n{\"channel\":\"";
        let (answer, waited) = trickle(b.addr, head).await;
        assert_eq!(status_of(&answer), 408, "{answer:?}");
        assert!(
            waited >= Duration::from_millis(800),
            "answered after {waited:?}"
        );
    })
    .await;
}

/// Writes `start`, then one more byte every 100 ms, until the broker closes the
/// connection. Returns what the broker answered and after how long it closed.
async fn trickle(addr: SocketAddr, start: &[u8]) -> (String, Duration) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.split();
    wr.write_all(start).await.unwrap();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let (mut answer, mut buf, mut writing) = (Vec::new(), [0u8; 1024], true);
    within(CLOSE, "the broker to drop a slowloris", async {
        loop {
            tokio::select! {
                r = rd.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                },
                _ = tick.tick(), if writing => writing = wr.write_all(b"a").await.is_ok(),
            }
        }
    })
    .await;
    (
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    )
}

/// One of five ways to vanish without a close frame, picked by `n`.
async fn vanish(addr: SocketAddr, n: usize) {
    let subscribe = json!({"k": "s", "t": format!("gone/{n}"), "i": 1});
    match n % 5 {
        0 | 1 => {
            // Subscribed (acked), then a reset or a bare FIN: the subscription must go too.
            let mut raw = RawWs::connect(addr, "vws").await;
            raw.send_text(&subscribe.to_string()).await;
            assert_eq!(raw.recv_json(RECV).await, json!({"k": "a", "i": 1}));
            if n.is_multiple_of(5) {
                raw.reset();
            }
        }
        2 => {
            // Half a frame, then a reset.
            let mut raw = RawWs::connect(addr, "gows").await;
            raw.send_raw(&masked(true, OP_TEXT, &[b' '; 100])[..50])
                .await;
            raw.reset();
        }
        3 => {
            // Half a request head, then a reset.
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgr")
                .await
                .unwrap();
            s.set_zero_linger().unwrap();
        }
        _ => {
            // Connected, then reset before sending a byte.
            let s = TcpStream::connect(addr).await.unwrap();
            s.set_zero_linger().unwrap();
        }
    }
}

#[tokio::test]
async fn a_thousand_connections_dropped_without_a_close() {
    let mut ward = Ward::start("").await;
    ward.survive("1,000 connections dropped abruptly", &[], |b| async move {
        // 100 at a time: bounded, and still many at once on the broker.
        for wave in 0..10 {
            let mut set = tokio::task::JoinSet::new();
            for i in 0..100 {
                set.spawn(vanish(b.addr, wave * 100 + i));
            }
            while let Some(done) = set.join_next().await {
                done.expect("a vanishing client");
            }
        }
    })
    .await;
}

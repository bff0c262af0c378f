//! Browser origins against the real binary (`server.allowed_origins`, SPEC §5, issue 17):
//!
//! - the broker's own origin is always allowed, also when the list names other origins
//!   (the dashboard at `/` keeps working);
//! - `"null"` (file:// pages, sandboxed frames) and `"scheme://host:*"` (any port) entries;
//! - every refusal is logged at warn level, rate-limited, naming the origin, the Host and
//!   what to add to `server.allowed_origins`;
//! - `/api/ws-check` tells a page (which cannot read a refused upgrade's body) why its
//!   upgrade would be refused, with the same checks as the upgrade, readable from any
//!   origin, without counting a rejection or revealing a credential.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Status of an upgrade from a page of `origin` (None: no Origin header).
async fn upgrade_from(broker: &Broker, origin: Option<&str>) -> u16 {
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    upgrade_status(broker.addr, &format!("Host: {}\r\n{origin}", broker.addr)).await
}

/// A response read to the end: status, lower-cased header lines, body.
struct Raw {
    status: u16,
    headers: String,
    body: String,
}

impl Raw {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// One request on a fresh connection (`Connection: close`), read to the end.
async fn request(broker: &Broker, method: &str, target: &str, headers: &str) -> Raw {
    let mut s = within(HTTP, "connect", tokio::net::TcpStream::connect(broker.addr))
        .await
        .unwrap();
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {}\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n",
        broker.addr
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    within(HTTP, "response", s.read_to_end(&mut out))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Raw {
        status: status_of(head),
        headers: head.to_ascii_lowercase(),
        body: body.to_string(),
    }
}

/// `POST /api/ws-check{query}` as a page of `origin` would send it; asserts the answer is
/// readable from any origin and returns its JSON.
async fn ws_check(broker: &Broker, query: &str, origin: Option<&str>) -> Value {
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    let r = request(broker, "POST", &format!("/api/ws-check{query}"), &origin).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.headers.contains("\r\naccess-control-allow-origin: *"),
        "any page may read it: {}",
        r.headers
    );
    assert!(
        r.headers.contains("cache-control: no-store"),
        "{}",
        r.headers
    );
    r.json()
}

fn origin_rejections(metrics: &str) -> f64 {
    rejections(metrics)
        .get("origin_not_allowed")
        .copied()
        .unwrap_or(0.0)
}

/// Lines of the broker's stderr that log an origin refusal.
fn refusal_lines(broker: &Broker) -> Vec<String> {
    broker
        .stderr()
        .lines()
        .filter(|l| l.contains("WebSocket upgrade refused"))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn the_brokers_own_origin_is_allowed_whatever_the_list_says() {
    let broker = Broker::start("[server]\nallowed_origins = [\"http://example.test\"]\n");
    let own = format!("http://{}", broker.addr);
    assert_eq!(
        upgrade_from(&broker, Some(&own)).await,
        101,
        "the dashboard's own origin"
    );
    assert_eq!(
        upgrade_from(&broker, Some("http://example.test")).await,
        101
    );
    assert_eq!(upgrade_from(&broker, None).await, 101, "not a browser");
    let other_port = format!("http://127.0.0.1:{}", broker.addr.port() ^ 1);
    assert_eq!(upgrade_from(&broker, Some(&other_port)).await, 403);
    assert_eq!(
        upgrade_from(&broker, Some("http://other.example")).await,
        403
    );
}

#[tokio::test]
async fn null_and_any_port_entries_allow_local_development_pages() {
    let closed = Broker::start("");
    for origin in ["null", "http://localhost:3000"] {
        assert_eq!(upgrade_from(&closed, Some(origin)).await, 403, "{origin}");
    }

    let dev = Broker::start("[server]\nallowed_origins = [\"null\", \"http://localhost:*\"]\n");
    for origin in [
        "null",
        "http://localhost:3000",
        "http://localhost:5173",
        "http://localhost",
    ] {
        assert_eq!(upgrade_from(&dev, Some(origin)).await, 101, "{origin}");
    }
    for origin in [
        "https://localhost:3000",
        "http://localhost.evil.example:3000",
        "http://127.0.0.1:3000",
        "http://evil.example",
    ] {
        assert_eq!(upgrade_from(&dev, Some(origin)).await, 403, "{origin}");
    }
    // The same rule reached through the environment (a comma list).
    let env = Broker::start_with(
        "",
        &[],
        &[(
            "SHARDCAST_SERVER__ALLOWED_ORIGINS",
            "https://app.example.com, http://127.0.0.1:*",
        )],
    );
    assert_eq!(upgrade_from(&env, Some("http://127.0.0.1:4000")).await, 101);
    assert_eq!(upgrade_from(&env, Some("null")).await, 403);
}

#[tokio::test]
async fn an_invalid_origin_entry_stops_the_broker_with_the_rule() {
    let f = config_file("[server]\nallowed_origins = [\"https://*.example.com\"]\n");
    let out = run_cli(
        &[
            "serve",
            "--config",
            f.path().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
        READY,
    )
    .await;
    assert_eq!(out.code, Some(2), "stderr: {}", out.stderr);
    assert!(
        out.stderr.contains("server.allowed_origins") && out.stderr.contains("scheme://host:*"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn every_origin_refusal_is_logged_at_most_once_a_second() {
    let broker = Broker::start("");
    assert_eq!(
        upgrade_from(&broker, Some("http://localhost:3000")).await,
        403
    );
    let host = broker.addr.to_string();
    until_ok("the refusal in the broker's log", RECV, || async {
        let lines = refusal_lines(&broker);
        match lines.first() {
            Some(line) => {
                for needle in [
                    "WARN",
                    "Origin \"http://localhost:3000\"",
                    &format!("Host \"{host}\""),
                    "add \"http://localhost:3000\" to server.allowed_origins",
                    "\"http://localhost:*\"",
                ] {
                    assert!(line.contains(needle), "{needle} missing from: {line}");
                }
                Ok(())
            }
            None => Err(broker.stderr()),
        }
    })
    .await;

    // A flood: a line a second at most, and the next line counts what was left out.
    let start = Instant::now();
    for _ in 0..40 {
        assert_eq!(upgrade_from(&broker, Some("null")).await, 403);
    }
    until_ok(
        "a line counting the refusals left out",
        Duration::from_secs(10),
        || async {
            assert_eq!(upgrade_from(&broker, Some("null")).await, 403);
            let lines = refusal_lines(&broker);
            if lines
                .iter()
                .any(|l| l.contains("more origin refusals since the previous line were not logged"))
            {
                Ok(())
            } else {
                Err(format!("{lines:#?}"))
            }
        },
    )
    .await;
    let lines = refusal_lines(&broker);
    let allowed = 2 + start.elapsed().as_secs() as usize;
    assert!(
        lines.len() <= allowed,
        "{} lines in {:?}: {lines:#?}",
        lines.len(),
        start.elapsed()
    );
    let null_line = lines
        .iter()
        .find(|l| l.contains("Origin \"null\""))
        .unwrap_or_else(|| panic!("no line for Origin null: {lines:#?}"));
    assert!(
        null_line.contains("add \"null\" to server.allowed_origins")
            && null_line.contains("development only"),
        "{null_line}"
    );
    // Every refusal is still counted.
    let m = broker.metrics().await;
    assert!(origin_rejections(&m) >= 42.0, "{m}");
}

#[tokio::test]
async fn ws_check_tells_a_page_why_its_upgrade_is_refused() {
    let broker = Broker::start("");
    let refused = ws_check(&broker, "", Some("http://localhost:3000")).await;
    assert_eq!(
        refused,
        json!({
            "ok": false,
            "status": 403,
            "reason": "origin not allowed (server.allowed_origins)",
            "retry": false,
            "fix": "add \"http://localhost:3000\" to server.allowed_origins (or \"http://localhost:*\" for every port of localhost, for development)",
            "origin": "http://localhost:3000",
        })
    );
    let own = format!("http://{}", broker.addr);
    for origin in [None, Some(own.as_str())] {
        let ok = ws_check(&broker, "", origin).await;
        assert_eq!(ok["ok"], true, "{origin:?}: {ok}");
        assert_eq!(ok["status"], 101, "{ok}");
    }
    // GET answers the same (POST is what client.js sends: browsers send Origin with it).
    let get = request(
        &broker,
        "GET",
        "/api/ws-check",
        "Origin: http://other.example\r\n",
    )
    .await;
    assert_eq!(get.status, 200);
    assert_eq!(get.json()["status"], 403);
    let head = request(&broker, "PUT", "/api/ws-check", "").await;
    assert_eq!(head.status, 405, "{}", head.body);
    // A check is not a refusal: nothing counted, nothing logged.
    assert_eq!(origin_rejections(&broker.metrics().await), 0.0);
    assert!(refusal_lines(&broker).is_empty(), "{}", broker.stderr());
}

#[tokio::test]
async fn ws_check_runs_the_credential_and_dialect_checks_of_the_upgrade() {
    let toml = "[auth]\ntype = \"bearer\"\nbearer_token_env = \"ORIGIN_TEST_TOKENS\"\n\
                [server]\nallowed_origins = [\"http://localhost:*\"]\n";
    let broker = Broker::start_with(toml, &[], &[("ORIGIN_TEST_TOKENS", "right-token")]);
    let page = Some("http://localhost:3000");

    let missing = ws_check(&broker, "", page).await;
    assert_eq!(missing["status"], 401, "{missing}");
    assert_eq!(missing["retry"], false, "{missing}");
    assert_eq!(
        missing["reason"],
        "credentials required (Authorization header or ?token=)"
    );
    assert!(
        missing["fix"].as_str().unwrap().contains("?token="),
        "{missing}"
    );

    let wrong = request(
        &broker,
        "POST",
        "/api/ws-check?token=wrong-token-1234",
        "Origin: http://localhost:3000\r\n",
    )
    .await;
    let v = wrong.json();
    assert_eq!(v["status"], 401, "{v}");
    assert_eq!(v["reason"], "invalid credentials", "{v}");
    assert!(
        !wrong.body.contains("wrong-token-1234") && !wrong.body.contains("right-token"),
        "no credential in the answer: {}",
        wrong.body
    );

    let ok = ws_check(&broker, "?token=right-token", page).await;
    assert_eq!(
        (ok["ok"].clone(), ok["status"].clone()),
        (json!(true), json!(101)),
        "{ok}"
    );
    let bad_dialect = ws_check(&broker, "?token=right-token&dialect=mqtt", page).await;
    assert_eq!(bad_dialect["status"], 400, "{bad_dialect}");
    assert!(
        bad_dialect["reason"]
            .as_str()
            .unwrap()
            .contains("unknown dialect"),
        "{bad_dialect}"
    );
    // The origin comes first, as on the upgrade.
    let cross = ws_check(
        &broker,
        "?token=right-token",
        Some("https://localhost:3000"),
    )
    .await;
    assert_eq!(cross["status"], 403, "{cross}");

    // The upgrade agrees with each answer.
    let upgrade = |query: &'static str| {
        let addr = broker.addr;
        async move {
            let head = format!("Host: {addr}\r\nOrigin: http://localhost:3000\r\n");
            status_of(
                &raw_http(
                    addr,
                    upgrade_request(&format!("/ws{query}"), &head).as_bytes(),
                )
                .await,
            )
        }
    };
    assert_eq!(upgrade("").await, 401);
    assert_eq!(upgrade("?token=wrong-token-1234").await, 401);
    assert_eq!(upgrade("?token=right-token").await, 101);
    assert!(
        !broker.stderr().contains("right-token") && !broker.stderr().contains("wrong-token"),
        "no credential in the log"
    );
}

#[tokio::test]
async fn ws_check_says_retry_when_the_broker_is_full() {
    let broker = Broker::start("[server]\nmax_connections = 1\n");
    let _held = broker.ws(Dialect::Subprotocol("vws")).await;
    eventually("the one connection counted", RECV, || async {
        stats_clients(&broker).await == 1
    })
    .await;
    let full = ws_check(&broker, "", None).await;
    assert_eq!(full["ok"], false, "{full}");
    assert_eq!(full["status"], 503, "{full}");
    assert_eq!(full["retry"], true, "{full}");
    assert!(
        full["reason"]
            .as_str()
            .unwrap()
            .contains("server.max_connections"),
        "{full}"
    );
}

//! permessage-deflate (RFC 7692, SPEC §10) against the real broker binary over real
//! sockets: negotiation on both upgrade paths (lean and hyper), compress once per
//! publication (byte-identical frames, one compression for many subscribers), compressed
//! client publishes inflated and delivered, the compression bomb (1009), RSV1 without
//! negotiation (1002), and real clients: Python `websockets` with its defaults and
//! headless Chromium (skipped with a NOTICE when missing, as in tests/browser.rs).
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

#[allow(dead_code)] // the browser helpers this file does not use
mod chromium;
mod common;

use common::*;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::{json, Value};
use std::io::Write as _;
use std::time::Duration;

const ON: &str =
    "[server]\ncompression = \"on\"\ncompression_min_bytes = 64\n[client]\nallow_publish = true\n";
const WAIT: Duration = Duration::from_secs(10);
const ANSWER: &str =
    "sec-websocket-extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The `Sec-WebSocket-Extensions` answer line (lower-cased), if any, of an upgrade
/// offering `offers` (header values, one line each); `hyper` pads the head with enough
/// headers that the lean path hands it to hyper.
async fn answer(broker: &Broker, offers: &[&str], hyper: bool) -> Option<String> {
    let mut extra = String::from("Host: 127.0.0.1\r\n");
    if hyper {
        for i in 0..40 {
            extra.push_str(&format!("X-Pad-{i}: 1\r\n"));
        }
    }
    for o in offers {
        extra.push_str(&format!("Sec-WebSocket-Extensions: {o}\r\n"));
    }
    let head = raw_http(broker.addr, upgrade_request("/ws", &extra).as_bytes()).await;
    assert_eq!(status_of(&head), 101, "{head}");
    head.to_ascii_lowercase()
        .lines()
        .find(|l| l.starts_with("sec-websocket-extensions:"))
        .map(str::to_owned)
}

#[tokio::test]
async fn negotiation_accepts_refuses_and_picks_among_offers_on_both_paths() {
    let broker = Broker::start(ON);
    let with_window = format!("{ANSWER}; server_max_window_bits=15");
    let cases: Vec<(Vec<&str>, Option<&str>)> = vec![
        (vec!["permessage-deflate"], Some(ANSWER)),
        (vec!["permessage-deflate; client_max_window_bits"], Some(ANSWER)),
        (
            vec!["permessage-deflate; server_max_window_bits=15"],
            Some(&with_window),
        ),
        // Bad parameters decline the offer; the connection is still made.
        (vec!["permessage-deflate; server_max_window_bits=10"], None),
        (vec!["permessage-deflate; client_max_window_bits=16"], None),
        (vec!["permessage-deflate; bogus"], None),
        (
            vec!["permessage-deflate; server_no_context_takeover; server_no_context_takeover"],
            None,
        ),
        // Several offers: the first acceptable one wins, across header lines too.
        (
            vec!["x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=9, permessage-deflate; client_max_window_bits=12"],
            Some(ANSWER),
        ),
        (
            vec!["permessage-deflate; mystery", "permessage-deflate"],
            Some(ANSWER),
        ),
        (vec![], None),
    ];
    for hyper in [false, true] {
        for (offers, want) in &cases {
            let got = answer(&broker, offers, hyper).await;
            assert_eq!(
                got.as_deref(),
                *want,
                "offers {offers:?} (hyper path: {hyper})"
            );
        }
    }
    // Off (the default): never negotiated.
    let off = Broker::start("");
    for hyper in [false, true] {
        assert_eq!(answer(&off, &["permessage-deflate"], hyper).await, None);
    }
}

/// A raw client that negotiated permessage-deflate, subscribed (vws) to `pattern`.
async fn deflate_subscriber(broker: &Broker, pattern: &str) -> RawWs {
    let mut ws = RawWs::connect_headers(
        broker.addr,
        "/ws",
        "Sec-WebSocket-Protocol: vws\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
        None,
    )
    .await;
    assert!(
        ws.head.to_ascii_lowercase().contains(ANSWER),
        "not negotiated: {}",
        ws.head
    );
    ws.send_text(&json!({"k": "s", "t": pattern, "i": 1}).to_string())
        .await;
    assert_eq!(ws.recv_json(WAIT).await, json!({"k": "a", "i": 1}));
    ws
}

/// A masked client frame with RSV1 set (the first frame of a compressed message).
fn compressed_frame(fin: bool, opcode: u8, payload: &[u8], mask: bool) -> Vec<u8> {
    let mut f = encode_frame(fin, opcode, payload, mask);
    f[0] |= 0x40;
    f
}

/// Raw-deflates `text` as a permessage-deflate sender does (sync flush, tail removed).
fn deflate(text: &[u8]) -> Vec<u8> {
    let mut c = Compress::new_with_window_bits(Compression::default(), false, 15);
    let mut out = Vec::with_capacity(text.len() + 64);
    loop {
        let done = c.total_in() as usize;
        if out.capacity() - out.len() < 64 {
            out.reserve(out.len());
        }
        c.compress_vec(&text[done..], &mut out, FlushCompress::Sync)
            .unwrap();
        if c.total_in() as usize == text.len() && out.len() < out.capacity() {
            break;
        }
    }
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

fn inflate(data: &[u8]) -> Vec<u8> {
    let mut d = Decompress::new_with_window_bits(false, 15);
    let mut input = data.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(1 << 20);
    d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .unwrap();
    out
}

/// A realistic ~1 KiB JSON event.
fn event_1k(i: usize) -> Value {
    json!({
        "id": format!("evt-{i:08}"),
        "source": "sensor-gateway-eu-west-1",
        "kind": "telemetry.reading",
        "readings": (0..12).map(|k| json!({
            "sensor": format!("temp-{k:02}"), "centi_celsius": 2050 + k * 25,
            "ok": true
        })).collect::<Vec<_>>(),
    })
}

#[tokio::test]
async fn every_subscriber_gets_the_same_compressed_frame_made_once() {
    let broker = Broker::start_with(ON, &["--shards", "1"], &[]);
    let mut subs = Vec::new();
    for _ in 0..5 {
        subs.push(deflate_subscriber(&broker, "fan/#").await);
    }
    let mut plain = RawWs::connect(broker.addr, "vws").await;
    plain
        .send_text(&json!({"k": "s", "t": "fan/#", "i": 1}).to_string())
        .await;
    assert_eq!(plain.recv_json(WAIT).await, json!({"k": "a", "i": 1}));

    let data = event_1k(1);
    assert!(broker.publish("fan/x", data.clone()).await.is_success());
    let mut frames = Vec::new();
    for ws in &mut subs {
        let (fin, op, payload) = ws.read_frame(WAIT).await.unwrap().unwrap();
        assert!(fin && op == OP_TEXT, "one whole text frame");
        assert_eq!(ws.last_b0 & 0x40, 0x40, "RSV1: compressed");
        frames.push(payload);
    }
    assert!(frames.windows(2).all(|w| w[0] == w[1]), "byte-identical");
    let (_, _, plain_payload) = plain.read_frame(WAIT).await.unwrap().unwrap();
    assert_eq!(
        plain.last_b0 & 0x40,
        0,
        "a client without it gets plain frames"
    );
    assert_eq!(inflate(&frames[0]), plain_payload, "same message");
    assert!(frames[0].len() * 2 < plain_payload.len(), "compressed well");
    let event: Value = serde_json::from_slice(&plain_payload).unwrap();
    assert_eq!(event["d"], data);

    // Small publications go plain to everyone (compression_min_bytes).
    assert!(broker.publish("fan/x", json!("tiny")).await.is_success());
    for ws in &mut subs {
        ws.read_frame(WAIT).await.unwrap().unwrap();
        assert_eq!(ws.last_b0 & 0x40, 0, "under min bytes: plain");
    }
    let m = broker.metrics().await;
    assert_eq!(
        counter(&m, "shardcast_compressed_frames_total"),
        1.0,
        "once for 5"
    );
    assert!(counter(&m, "shardcast_compression_bytes_out_total") > 0.0);
    assert_eq!(counter(&m, "shardcast_compression_skipped_total"), 1.0);
}

#[tokio::test]
async fn a_compressed_client_publish_is_inflated_and_delivered() {
    let broker = Broker::start(ON);
    let mut plain = RawWs::connect(broker.addr, "vws").await;
    plain
        .send_text(&json!({"k": "s", "t": "up/#", "i": 1}).to_string())
        .await;
    assert_eq!(plain.recv_json(WAIT).await, json!({"k": "a", "i": 1}));
    let mut publisher = deflate_subscriber(&broker, "other").await;
    let msg = json!({"t": "up/x", "d": event_1k(7), "i": 9}).to_string();
    // One frame, and the same message fragmented (RSV1 on the first frame only).
    publisher
        .send_raw(&compressed_frame(
            true,
            OP_TEXT,
            &deflate(msg.as_bytes()),
            true,
        ))
        .await;
    let z = deflate(msg.as_bytes());
    let (a, b) = z.split_at(z.len() / 2);
    let mut two = compressed_frame(false, OP_TEXT, a, true);
    two.extend(encode_frame(true, OP_CONT, b, true));
    publisher.send_raw(&two).await;
    for _ in 0..2 {
        let ev = plain.recv_json(WAIT).await;
        assert_eq!(ev["d"], event_1k(7), "{ev}");
    }
    let m = broker.metrics().await;
    assert_eq!(counter(&m, "shardcast_inflated_messages_total"), 2.0);
}

#[tokio::test]
async fn a_compression_bomb_is_closed_with_1009_and_counted() {
    let broker = Broker::start(ON);
    let mut ws = deflate_subscriber(&broker, "b").await;
    // 16 MiB of one byte in a few KiB: far past max_message_bytes (64 KiB) inflated.
    let bomb = deflate(&vec![b'a'; 16 << 20]);
    assert!(bomb.len() < 65_536, "{}", bomb.len());
    ws.send_raw(&compressed_frame(true, OP_TEXT, &bomb, true))
        .await;
    ws.expect_close(1009, WAIT).await;
    let m = broker.metrics().await;
    assert_eq!(rejections(&m).get("inflated_too_large"), Some(&1.0));

    // RSV1 from a client that did not negotiate: protocol error.
    let mut plain = RawWs::connect(broker.addr, "vws").await;
    plain
        .send_raw(&compressed_frame(true, OP_TEXT, &deflate(b"{}"), true))
        .await;
    plain.expect_close(1002, WAIT).await;
    // Garbage behind RSV1: 1007.
    let mut ws = deflate_subscriber(&broker, "b").await;
    ws.send_raw(&compressed_frame(true, OP_TEXT, b"\xff\xff\xff\xff", true))
        .await;
    ws.expect_close(1007, WAIT).await;
}

#[tokio::test]
async fn python_websockets_defaults_negotiate_and_receive_compressed_publications() {
    let has = std::process::Command::new("python3")
        .args(["-c", "import websockets.sync.client"])
        .status()
        .is_ok_and(|s| s.success());
    if !has {
        let required = std::env::var("SHARDCAST_REQUIRE_PYTHON_WEBSOCKETS").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "SHARDCAST_REQUIRE_PYTHON_WEBSOCKETS=1 but python3 cannot import websockets.sync.client"
        );
        let _ = writeln!(
            std::io::stderr(),
            "NOTICE: Python websockets test skipped: python3 with websockets is missing (pip install websockets; SHARDCAST_REQUIRE_PYTHON_WEBSOCKETS=1 makes this a failure)"
        );
        return;
    }
    let broker = Broker::start(ON);
    let mut plain = RawWs::connect(broker.addr, "vws").await;
    plain
        .send_text(&json!({"k": "s", "t": "py/back", "i": 1}).to_string())
        .await;
    assert_eq!(plain.recv_json(WAIT).await, json!({"k": "a", "i": 1}));
    // Subscribes, says READY, prints the next message, publishes it back (compressed by
    // its defaults) and waits for the ack.
    let script = r#"
import json, sys
from websockets.sync.client import connect
with connect(sys.argv[1], subprotocols=["vws"], open_timeout=10) as ws:
    print("EXT", ws.response.headers.get("Sec-WebSocket-Extensions"), flush=True)
    ws.send(json.dumps({"k": "s", "t": "py/t", "i": 1}))
    assert json.loads(ws.recv(timeout=10)) == {"k": "a", "i": 1}
    print("READY", flush=True)
    ev = json.loads(ws.recv(timeout=10))
    print("GOT", json.dumps(ev["d"]), flush=True)
    ws.send(json.dumps({"t": "py/back", "d": ev["d"], "i": 2}))
    assert json.loads(ws.recv(timeout=10)) == {"k": "a", "i": 2}
    print("DONE", flush=True)
"#;
    let mut child = tokio::process::Command::new("python3")
        .args(["-c", script, &broker.ws_url()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt as _;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    macro_rules! next {
        () => {
            within(WAIT, "python output", lines.next_line()).await
        };
    }
    let ext = next!().unwrap().unwrap();
    assert!(ext.contains("permessage-deflate"), "{ext}");
    assert_eq!(next!().unwrap().unwrap(), "READY");
    assert!(broker.publish("py/t", event_1k(3)).await.is_success());
    let got = next!().unwrap().unwrap();
    let got: Value = serde_json::from_str(got.strip_prefix("GOT ").unwrap()).unwrap();
    assert_eq!(got, event_1k(3));
    assert_eq!(next!().unwrap().unwrap(), "DONE");
    assert_eq!(plain.recv_json(WAIT).await["d"], event_1k(3));
    let m = broker.metrics().await;
    assert_eq!(counter(&m, "shardcast_compressed_frames_total"), 1.0);
    assert!(counter(&m, "shardcast_inflated_messages_total") >= 1.0);
    assert!(within(WAIT, "python exit", child.wait())
        .await
        .unwrap()
        .success());
}

#[tokio::test]
async fn headless_chromium_negotiates_and_receives_compressed_publications() {
    let Some(bin) = chromium::find() else {
        let required = std::env::var("SHARDCAST_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "SHARDCAST_REQUIRE_BROWSER=1 but no Chromium was found"
        );
        let _ = writeln!(
            std::io::stderr(),
            "NOTICE: browser compression test skipped: no chromium on PATH (apt-get install chromium, or set CHROMIUM; SHARDCAST_REQUIRE_BROWSER=1 makes this a failure)"
        );
        return;
    };
    let broker = Broker::start(ON);
    let chrome = chromium::Chromium::launch(&bin);
    let mut page = chrome.new_page(800, 600).await;
    page.goto(&format!("{}/healthz", broker.http_url())).await;
    page.eval(
        "new Promise((ok, fail) => { \
           const ws = new WebSocket(location.origin.replace('http', 'ws') + '/ws', 'vws'); \
           window.got = []; ws.onerror = fail; \
           ws.onmessage = (e) => { const m = JSON.parse(e.data); \
             if (m.k === 'a') ok(ws.extensions); else got.push(m); }; \
           ws.onopen = () => ws.send(JSON.stringify({k: 's', t: 'web/t', i: 1})); \
           window.ws = ws; })",
    )
    .await;
    let ext = page.eval("ws.extensions").await;
    assert!(
        ext.as_str().unwrap_or("").contains("permessage-deflate"),
        "extensions: {ext}"
    );
    assert!(broker.publish("web/t", event_1k(5)).await.is_success());
    let d = page
        .wait_for("the publication", "got.length === 1 && got[0].d", WAIT)
        .await;
    assert_eq!(d, event_1k(5));
    // The browser compresses what it sends: a publish comes back through the inflater.
    page.eval(&format!(
        "ws.send(JSON.stringify({{t: 'web/t', d: {}}})), true",
        event_1k(6)
    ))
    .await;
    let d = page
        .wait_for("its own publication", "got.length === 2 && got[1].d", WAIT)
        .await;
    assert_eq!(d, event_1k(6));
    let m = broker.metrics().await;
    assert_eq!(counter(&m, "shardcast_compressed_frames_total"), 2.0);
    assert!(counter(&m, "shardcast_inflated_messages_total") >= 2.0);
}

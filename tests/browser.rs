//! The people-facing side in a real browser: headless Chromium (tests/chromium, over the
//! DevTools protocol) loads the dashboard (`GET /`) and the client (`GET /client.js`) from
//! the real broker binary.
//!
//! - the dashboard shows live `$sys/stats` (connections, publish/delivery counters, shards,
//!   top channels, latency) and a channel typed into its watch box shows its messages;
//! - the client reconnects under a broker restarted on the same port, subscribes again, and
//!   receives what is published after the restart (both dialects);
//! - the client API: acks, nacks with the broker's reason, publish, token, backoff bounds;
//! - history: a client whose connection is cut (by a TCP proxy between the page and the
//!   broker) while publications go on resumes and has every offset exactly once, in order
//!   (both dialects); the dashboard's watch box shows a channel's retained history first.
//!
//! Without Chromium the tests print a notice and pass, unless `SHARDCAST_REQUIRE_BROWSER=1`
//! (CI sets it), which makes a missing browser a failure. Set `CHROMIUM` to use another
//! binary. Every wait polls page state against a deadline.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod chromium;
mod common;

use chromium::{Chromium, Page};
use common::proxy::Proxy;
use common::*;
use serde_json::{json, Value};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Bound for anything the page shows after a live stats tick (published once a second).
const TICK: Duration = Duration::from_secs(10);
/// Bound for the client to come back after the broker does (backoff is capped at 5 s).
const RECONNECT: Duration = Duration::from_secs(20);

/// The Chromium binary, or `None` (with a notice) when there is none and none is required.
fn browser() -> Option<PathBuf> {
    if let Some(bin) = chromium::find() {
        return Some(bin);
    }
    let required = std::env::var("SHARDCAST_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "SHARDCAST_REQUIRE_BROWSER=1 but no Chromium was found (install the chromium package, or set CHROMIUM=/path/to/chrome)"
    );
    // Written past the test harness's capture, so the skip is seen in a normal run.
    let _ = writeln!(
        std::io::stderr(),
        "NOTICE: browser tests skipped: no chromium on PATH (apt-get install chromium, or set CHROMIUM; SHARDCAST_REQUIRE_BROWSER=1 makes this a failure)"
    );
    None
}

/// The cargo target directory (screenshots go there).
fn target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is target/tmp")
        .to_path_buf()
}

/// Opens the dashboard of `broker` (with `query`, e.g. `?token=..`) and waits for its
/// connection indicator to say connected.
async fn open_dashboard(chrome: &Chromium, broker: &Broker, query: &str) -> Page {
    let mut page = chrome.new_page(1280, 900).await;
    page.goto(&format!("{}/{query}", broker.http_url())).await;
    wait_state(&mut page, "connected", Duration::from_secs(10)).await;
    page
}

async fn wait_state(page: &mut Page, state: &str, d: Duration) {
    page.wait_for(
        &format!("the connection indicator saying {state}"),
        &format!(
            "document.getElementById('conn-state').dataset.state === {}",
            json!(state)
        ),
        d,
    )
    .await;
}

/// Waits until the number shown in element `id` is at least `min`; returns it.
async fn wait_number(page: &mut Page, id: &str, min: u64) -> u64 {
    let js = format!(
        "(() => {{ const n = Number(document.getElementById({}).textContent.replace(/,/g, '')); \
         return Number.isFinite(n) && n >= {min} ? n : null; }})()",
        json!(id)
    );
    let v = page.wait_for(&format!("#{id} >= {min}"), &js, TICK).await;
    v.as_f64().unwrap() as u64
}

/// Watches `topic` through the dashboard's text box, as a person would, and waits for the
/// broker's ack (the chip turns "subscribed").
async fn watch_via_text_box(page: &mut Page, topic: &str) {
    page.type_into("#watch-topic", topic).await;
    page.click("#watch-button").await;
    page.wait_for(
        &format!("the watch chip for {topic} subscribed"),
        &format!(
            "[...document.querySelectorAll('#watching .chip')].some(c => c.dataset.topic === {} && c.dataset.status === 'subscribed')",
            json!(topic)
        ),
        TICK,
    )
    .await;
}

/// Waits until the dashboard's message log has a line containing `needle`.
async fn wait_logged(page: &mut Page, needle: &str) -> String {
    let js = format!(
        "[...document.querySelectorAll('#messages li')].map(li => li.textContent).find(t => t.includes({})) ?? null",
        json!(needle)
    );
    let v = page
        .wait_for(&format!("a logged message with {needle:?}"), &js, TICK)
        .await;
    v.as_str().unwrap().to_string()
}

/// No uncaught exception and no console.error. (Chromium's own log of a refused or failed
/// WebSocket connection is expected while a broker is down, so `log.*` lines are allowed.)
fn assert_no_page_errors(page: &Page) {
    let log = page.log();
    assert!(
        !log.contains("uncaught:") && !log.contains("console.error"),
        "the page reported errors:\n{log}"
    );
}

#[tokio::test]
async fn dashboard_shows_live_stats_and_watched_channels() {
    let Some(bin) = browser() else { return };
    let broker = Broker::start_with("", &["--shards", "2"], &[]);
    let chrome = Chromium::launch(&bin);
    let mut page = open_dashboard(&chrome, &broker, "").await;

    // Live stats: the page's own connection is counted, the shard table has both shards.
    page.wait_for(
        "live $sys/stats",
        "document.getElementById('stats-age').textContent === 'live'",
        TICK,
    )
    .await;
    wait_number(&mut page, "clients", 1).await;
    page.wait_for(
        "two shard rows",
        "document.querySelectorAll('#shards tbody tr').length === 2 && document.getElementById('shard-count').textContent === '2'",
        TICK,
    )
    .await;
    let published_before = wait_number(&mut page, "published-total", 0).await;

    // A person types a pattern into the watch box; a backend subscriber joins too.
    watch_via_text_box(&mut page, "sensors/+/temp").await;
    let mut kitchen = broker.vws_subscriber("sensors/kitchen/temp").await;
    wait_number(&mut page, "clients", 2).await;

    // The README's publish, a few times.
    for i in 0..5 {
        broker
            .publish("sensors/kitchen/temp", json!({"c": 21.5, "n": i}))
            .await;
        let got = kitchen.recv().await;
        assert_eq!(got["d"]["n"], i, "backend subscriber: {got}");
    }
    let line = wait_logged(&mut page, r#""n":4"#).await;
    assert!(line.contains("sensors/kitchen/temp"), "log line: {line}");
    let logged = page
        .eval("document.querySelectorAll('#messages li').length")
        .await;
    assert_eq!(logged, json!(5), "one log line per message");

    // The counters moved: 5 publications, 10 deliveries (the page and the backend).
    wait_number(&mut page, "published-total", published_before + 5).await;
    wait_number(&mut page, "delivered-total", 10).await;
    page.wait_for(
        "a delivery latency sample",
        "document.getElementById('lat-count').textContent !== '–' && document.getElementById('lat-count').textContent !== '0' && document.querySelectorAll('#latency-chart polyline').length === 2",
        TICK,
    )
    .await;
    page.wait_for(
        "sensors/kitchen/temp among the top channels",
        "[...document.querySelectorAll('#top-channels td.name')].some(td => td.textContent === 'sensors/kitchen/temp')",
        TICK,
    )
    .await;

    // The channel under watch survives a reload (kept in the URL fragment).
    let hash = page.eval("location.hash").await;
    assert_eq!(hash, json!("#watch=sensors%2F%2B%2Ftemp"));

    page.screenshot(&target_dir().join("dashboard.png")).await;
    assert_no_page_errors(&page);
}

#[tokio::test]
async fn client_reconnects_and_resubscribes_after_a_broker_restart() {
    let Some(bin) = browser() else { return };
    let config = "[client]\nallow_publish = true\n";
    let mut broker = Broker::start(config);
    let addr = broker.addr;
    let chrome = Chromium::launch(&bin);
    let mut page = open_dashboard(&chrome, &broker, "").await;

    // The dashboard's own (vws) client watches one channel; a gows client in the same page
    // watches another.
    watch_via_text_box(&mut page, "news/restart").await;
    page.eval(
        "(async () => { const { Shardcast } = await import('/client.js'); \
         window.gows = new Shardcast({ dialect: 'gows', backoffBaseMs: 100, backoffCapMs: 1000 }); \
         window.gowsGot = []; window.gowsOpens = []; \
         gows.on('message', (t, d) => gowsGot.push([t, d])); \
         gows.on('open', (info) => gowsOpens.push(info.reconnected)); \
         await gows.subscribe('news/gows'); return true; })()",
    )
    .await;
    broker.publish("news/gows", json!("before")).await;
    page.wait_for(
        "the gows client's first message",
        "gowsGot.length === 1",
        TICK,
    )
    .await;

    // Stop the broker under the page; the indicator says so.
    broker.sigterm();
    assert!(
        broker.wait_exit(Duration::from_secs(15)).await.is_some(),
        "broker did not stop on SIGTERM"
    );
    drop(broker);
    wait_state(&mut page, "reconnecting", TICK).await;
    let shown = page.text("conn-state").await;
    assert!(shown.starts_with("reconnecting in"), "indicator: {shown:?}");

    // A new broker on the same port: both clients come back and subscribe again.
    let broker = Broker::start_on(config, addr);
    wait_state(&mut page, "connected", RECONNECT).await;
    page.wait_for(
        "the gows client reconnected",
        "gows.state === 'open' && gowsOpens.join() === 'false,true'",
        RECONNECT,
    )
    .await;
    for channel in ["news/restart", "news/gows"] {
        eventually(
            &format!("a subscriber on {channel} after the restart"),
            RECONNECT,
            || async {
                let r = broker
                    .get(&format!("/api/channels/{}", channel.replace('/', "%2F")))
                    .await;
                r.json()["subscribers"] == 1
            },
        )
        .await;
    }
    page.wait_for(
        "the watch chip still subscribed",
        "document.querySelector('#watching .chip').dataset.status === 'subscribed'",
        TICK,
    )
    .await;

    broker
        .publish("news/restart", json!({"after": "restart"}))
        .await;
    wait_logged(&mut page, r#"{"after":"restart"}"#).await;
    broker.publish("news/gows", json!("after")).await;
    let got = page
        .wait_for(
            "the gows client's message after the restart",
            "gowsGot.length === 2 ? gowsGot : null",
            TICK,
        )
        .await;
    assert_eq!(
        got,
        json!([["news/gows", "before"], ["news/gows", "after"]])
    );
    // $sys/stats is subscribed again too: the new broker's stats reach the page.
    page.wait_for(
        "live stats from the new broker",
        "document.getElementById('stats-age').textContent === 'live'",
        TICK,
    )
    .await;
    assert_no_page_errors(&page);
}

/// Channels under `chat/` keep history; a plain subscribe gets only new publications.
const HISTORY_CONFIG: &str = "[[history]]\npattern = \"chat/#\"\nsize = 10000\nreplay = \"none\"\n";

#[tokio::test]
async fn client_resumes_a_history_channel_after_a_cut_connection() {
    let Some(bin) = browser() else { return };
    let broker = Broker::start(HISTORY_CONFIG);
    // The page, and so its WebSockets, reach the broker only through the proxy.
    let proxy = Proxy::start(broker.addr).await;
    let chrome = Chromium::launch(&bin);
    let mut page = chrome.new_page(1280, 900).await;
    page.goto(&format!("{}/", proxy.http_url())).await;
    wait_state(&mut page, "connected", Duration::from_secs(10)).await;

    // One client per dialect on the same channel; each records (offset, n) per message.
    let acks = page
        .eval(
            "(async () => { const { Shardcast } = await import('/client.js'); window.h = {}; const acks = {}; \
             for (const dialect of ['vws', 'gows']) { \
               const c = new Shardcast({ dialect, backoffBaseMs: 100, backoffCapMs: 1000 }); \
               const s = { c, got: [], replayed: 0, resumes: [], gaps: [], opens: [] }; \
               c.on('message', (t, d, raw, m) => { if (t !== 'chat/room') return; \
                 s.got.push([m.offset, d.n]); if (m.replayed) s.replayed += 1; }); \
               c.on('resume', (t, r) => s.resumes.push(r)); \
               c.on('gap', (t, g) => s.gaps.push(g)); \
               c.on('open', (i) => s.opens.push(i.reconnected)); \
               h[dialect] = s; acks[dialect] = (await c.subscribe('chat/room')) ?? null; } \
             return acks; })()",
        )
        .await;
    assert_eq!(
        acks["vws"]["offset"], 0,
        "vws ack of a fresh channel: {acks}"
    );
    assert!(acks["vws"]["epoch"].is_string(), "vws ack: {acks}");
    assert_eq!(
        acks["gows"],
        Value::Null,
        "a plain gows subscribe is not answered"
    );

    // Publications through the HTTP API, one after another, until told where to stop.
    let published = Arc::new(AtomicU64::new(0));
    let stop_at = Arc::new(AtomicU64::new(u64::MAX));
    let publisher = {
        let (published, stop_at) = (Arc::clone(&published), Arc::clone(&stop_at));
        let mut api = Http::connect(broker.addr).await;
        tokio::spawn(async move {
            let mut n = 1;
            while n <= stop_at.load(Ordering::SeqCst) {
                let body = json!({"channel": "chat/room", "data": {"n": n}});
                let r = api.post_json("/api/publish", &body).await;
                assert!(r.is_success(), "publish {n}: {} {}", r.status, r.text);
                published.store(n, Ordering::SeqCst);
                n += 1;
                // A steady stream, so the outage and the resume happen in the middle of it.
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    page.wait_for(
        "both clients receiving",
        "h.vws.got.length >= 30 && h.gows.got.length >= 30",
        TICK,
    )
    .await;

    // The cut: both sockets of every live connection closed; publications go on.
    let cut = proxy.cut().await;
    assert!(cut >= 2, "only {cut} connections were cut");
    let at_cut = published.load(Ordering::SeqCst);
    page.wait_for(
        "both clients to notice the cut",
        "h.vws.c.state !== 'open' && h.gows.c.state !== 'open'",
        TICK,
    )
    .await;
    eventually("50 publications while cut off", TICK, || {
        let n = published.load(Ordering::SeqCst);
        async move { n >= at_cut + 50 }
    })
    .await;
    proxy.restore();

    // Both reconnect through the proxy and resume; the stream goes on a while after that.
    let resumes = page
        .wait_for(
            "both clients resumed",
            "h.vws.resumes.length && h.gows.resumes.length ? [h.vws.resumes, h.gows.resumes] : null",
            RECONNECT,
        )
        .await;
    let after_resume = published.load(Ordering::SeqCst);
    stop_at.store(after_resume + 100, Ordering::SeqCst);
    within(TICK, "the publisher to finish", publisher)
        .await
        .expect("publisher task");
    let total = published.load(Ordering::SeqCst);
    assert_eq!(total, after_resume + 100);

    for (i, dialect) in ["vws", "gows"].iter().enumerate() {
        let resume = &resumes[i];
        assert_eq!(
            resume.as_array().map(Vec::len),
            Some(1),
            "{dialect}: {resumes}"
        );
        let resume = &resume[0];
        assert_eq!(resume["recovered"], true, "{dialect}: {resume}");
        assert!(resume["epoch"].is_string(), "{dialect}: {resume}");
        let (after, top) = (
            resume["after"].as_u64().unwrap(),
            resume["offset"].as_u64().unwrap(),
        );
        // `at_cut` was read after the cut; the publication in flight then may have got through.
        assert!(
            after <= at_cut + 1 && top >= at_cut + 50,
            "{dialect}: resumed after {after} up to {top}, cut at {at_cut}"
        );
        let got = page
            .wait_for(
                &format!("{dialect}: every publication"),
                &format!("h.{dialect}.got.length >= {total} ? h.{dialect} : null"),
                TICK,
            )
            .await;
        let want: Vec<Value> = (1..=total).map(|n| json!([n, n])).collect();
        let got_list = got["got"].as_array().unwrap();
        if let Some(k) = (0..got_list.len()).find(|&k| got_list.get(k) != want.get(k)) {
            panic!(
                "{dialect}: message {k} is {} where [{n}, {n}] was due (of {total}; {} received)",
                got_list[k],
                got_list.len(),
                n = k + 1
            );
        }
        assert_eq!(got_list.len() as u64, total, "{dialect}: nothing more");
        assert_eq!(got["gaps"], json!([]), "{dialect}: no gap reported");
        assert_eq!(
            got["opens"],
            json!([false, true]),
            "{dialect}: one reconnect"
        );
        assert_eq!(
            got["replayed"].as_u64(),
            Some(top - after),
            "{dialect}: the outage came as a replay"
        );
        let position = page
            .eval(&format!("h.{dialect}.c.position('chat/room')"))
            .await;
        assert_eq!(position["offset"], total, "{dialect}: {position}");
        assert_eq!(position["epoch"], resume["epoch"], "{dialect}: {position}");
    }
    assert!(
        proxy.accepted() > cut,
        "the clients came back through the proxy"
    );
    assert_no_page_errors(&page);
}

#[tokio::test]
async fn dashboard_watch_shows_retained_history_first() {
    let Some(bin) = browser() else { return };
    let broker = Broker::start(HISTORY_CONFIG);
    // Published before the page exists.
    for n in 1..=3 {
        broker.publish("chat/early", json!({"n": n})).await;
    }
    let chrome = Chromium::launch(&bin);
    let mut page = open_dashboard(&chrome, &broker, "").await;
    watch_via_text_box(&mut page, "chat/early").await;
    wait_logged(&mut page, r#"{"n":3}"#).await;
    broker.publish("chat/early", json!({"n": 4})).await;
    wait_logged(&mut page, r#"{"n":4}"#).await;

    // Newest first: the live one on top, the three retained ones under it, each with its
    // offset; nothing twice.
    let lines = page
        .eval(
            "[...document.querySelectorAll('#messages li')].map(li => \
             [li.dataset.offset ?? null, li.classList.contains('replayed'), li.querySelector('.data').textContent])",
        )
        .await;
    assert_eq!(
        lines,
        json!([
            ["4", false, r##"#4{"n":4}"##],
            ["3", true, r##"#3{"n":3}"##],
            ["2", true, r##"#2{"n":2}"##],
            ["1", true, r##"#1{"n":1}"##]
        ])
    );

    // A pattern has no position: it is watched from now on, as before.
    watch_via_text_box(&mut page, "chat/+").await;
    broker.publish("chat/late", json!({"n": 5})).await;
    let line = wait_logged(&mut page, r#"{"n":5}"#).await;
    assert!(line.contains("chat/late") && line.contains("#1"), "{line}");
    let logged = page
        .eval("document.querySelectorAll('#messages li').length")
        .await;
    assert_eq!(
        logged,
        json!(5),
        "one line per message, none replayed twice"
    );
    assert_no_page_errors(&page);
}

/// Runs the client API script in the page for one dialect; returns what it observed.
async fn client_api_round(page: &mut Page, dialect: &str) -> Value {
    let script = r#"(async (dialect) => {
        const deadline = (ms, what) => new Promise((_, reject) =>
            setTimeout(() => reject(new Error(`timed out: ${what}`)), ms));
        const { Shardcast } = await import('/client.js');
        const c = new Shardcast({ dialect });
        const got = [];
        c.on('message', (topic, data, raw) => got.push({ topic, data }));
        const outcome = (p) => p.then(() => 'ok', (e) => `refused: ${e.message}`);
        const out = {};
        out.subscribe = await Promise.race([outcome(c.subscribe(`chat/${dialect}`)), deadline(5000, 'subscribe')]);
        out.badPattern = await outcome(c.subscribe('a/#/b'));
        out.publish = await outcome(c.publish(`chat/${dialect}`, { from: dialect }));
        out.reserved = await outcome(c.publish('$sys/x', 1));
        await Promise.race([new Promise((r) => { const t = setInterval(() => {
            if (got.length) { clearInterval(t); r(); } }, 10); }), deadline(5000, 'own message')]);
        out.got = got;
        out.unsubscribe = await outcome(c.unsubscribe(`chat/${dialect}`));
        c.close();
        out.closed = await outcome(c.publish('chat/x', 1));
        out.state = c.state;
        return out;
    })"#;
    page.eval(&format!("{script}({})", json!(dialect))).await
}

#[tokio::test]
async fn client_api_acks_nacks_and_publishes_in_both_dialects() {
    let Some(bin) = browser() else { return };
    let broker = Broker::start("[client]\nallow_publish = true\n");
    let chrome = Chromium::launch(&bin);
    let mut page = open_dashboard(&chrome, &broker, "").await;

    let mut backend = broker.vws_subscriber("chat/#").await;
    for dialect in ["vws", "gows"] {
        let out = client_api_round(&mut page, dialect).await;
        assert_eq!(out["subscribe"], "ok", "{dialect}: {out}");
        assert_eq!(
            out["badPattern"], "refused: invalid pattern: '#' is only allowed as the last level",
            "{dialect}: {out}"
        );
        assert_eq!(out["publish"], "ok", "{dialect}: {out}");
        assert_eq!(
            out["reserved"],
            "refused: invalid topic: topics starting with '$' are reserved for the broker",
            "{dialect}: {out}"
        );
        assert_eq!(
            out["got"],
            json!([{"topic": format!("chat/{dialect}"), "data": {"from": dialect}}]),
            "{dialect}: the client sees its own publication"
        );
        assert_eq!(out["unsubscribe"], "ok", "{dialect}: {out}");
        assert_eq!(out["closed"], "refused: not connected", "{dialect}: {out}");
        assert_eq!(out["state"], "closed", "{dialect}: {out}");
        // The browser's publication reached a backend subscriber of the other rendering.
        let got = backend.recv().await;
        assert_eq!(got["t"], format!("chat/{dialect}"), "{got}");
        assert_eq!(got["d"], json!({"from": dialect}), "{got}");
    }

    // Full jitter: uniformly in [0, min(cap, base * 2^attempt)).
    let delays = page
        .eval(
            "import('/client.js').then(({ backoffDelay: b }) => [b(0, 500, 30000, () => 0.5), \
             b(3, 500, 30000, () => 0.5), b(20, 500, 30000, () => 0.5), b(5, 500, 30000, () => 0)])",
        )
        .await;
    let delays: Vec<f64> = delays
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_f64().unwrap())
        .collect();
    assert_eq!(delays, [250.0, 2000.0, 15000.0, 0.0]);
    assert_no_page_errors(&page);
}

#[tokio::test]
async fn client_and_dashboard_pass_a_token() {
    let Some(bin) = browser() else { return };
    let toml = "[auth]\ntype = \"bearer\"\nbearer_token_env = \"BROWSER_TEST_TOKENS\"\n";
    let broker = Broker::start_with(toml, &[], &[("BROWSER_TEST_TOKENS", "s3cret/+=")]);
    let chrome = Chromium::launch(&bin);
    // The dashboard passes its own ?token= on to the WebSocket.
    let mut page = open_dashboard(&chrome, &broker, "?token=s3cret%2F%2B%3D").await;
    let refused = page
        .eval(
            "(async () => { const { Shardcast } = await import('/client.js'); \
             const c = new Shardcast({ token: 'wrong', reconnect: false }); \
             return await new Promise((r) => c.on('close', (info) => r(info.retryInMs))); })()",
        )
        .await;
    assert_eq!(refused, Value::Null, "a wrong token is refused, no retry");
    assert_no_page_errors(&page);
}

/// A second web server, on another port of this machine: serves one small page for any
/// GET, as a developer's own app (or its dev server) would. Its origin is
/// `http://localhost:PORT`, another origin than the broker's.
struct AppServer {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl AppServer {
    async fn start() -> AppServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let page =
                        "<!doctype html><meta charset=utf-8><title>my app</title><p>my app</p>";
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                        page.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        AppServer { port, task }
    }

    fn origin(&self) -> String {
        format!("http://localhost:{}", self.port)
    }
}

impl Drop for AppServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// In `page`, the README's snippet against `broker`: client.js imported from the broker,
/// a subscription to `news`; what happens is recorded in `window.app`.
async fn readme_snippet(page: &mut Page, broker: &Broker) {
    let script = format!(
        "(async () => {{ const {{ Shardcast }} = await import('{http}/client.js');          const sc = new Shardcast({{ url: '{ws}', backoffBaseMs: 50, backoffCapMs: 200 }});          window.app = {{ sc, refused: [], closes: [], got: [], subscribed: false }};          sc.on('refused', (reason, info) => app.refused.push({{ reason, info, state: sc.state }}));          sc.on('close', (info) => app.closes.push(info.retryInMs));          sc.on('message', (topic, data) => app.got.push([topic, data]));          sc.subscribe('news').then(() => {{ app.subscribed = true; }});          return true; }})()",
        http = broker.http_url(),
        ws = broker.ws_url(),
    );
    page.eval(&script).await;
}

#[tokio::test]
async fn a_page_from_another_origin_learns_why_it_is_refused_and_works_once_allowed() {
    let Some(bin) = browser() else { return };
    let app = AppServer::start().await;
    let broker = Broker::start("");
    let addr = broker.addr;
    let chrome = Chromium::launch(&bin);
    let mut page = chrome.new_page(1024, 700).await;
    page.goto(&format!("{}/", app.origin())).await;

    // The default config allows only the broker's own origin: refused, and told why.
    readme_snippet(&mut page, &broker).await;
    let refused = page
        .wait_for(
            "the refused event",
            "app.refused.length ? app.refused : null",
            TICK,
        )
        .await;
    assert_eq!(refused.as_array().unwrap().len(), 1, "{refused}");
    let r = &refused[0];
    assert_eq!(
        r["reason"], "origin not allowed (server.allowed_origins)",
        "{r}"
    );
    assert_eq!(r["state"], "refused", "{r}");
    assert_eq!(r["info"]["status"], 403, "{r}");
    assert_eq!(r["info"]["origin"], app.origin(), "{r}");
    let fix = r["info"]["fix"].as_str().unwrap();
    assert!(
        fix.starts_with(&format!(
            "add \"{}\" to server.allowed_origins",
            app.origin()
        )) && fix.contains("\"http://localhost:*\""),
        "{fix}"
    );
    // The broker's log says it too.
    let logged = broker.stderr();
    assert!(
        logged.contains(&format!("Origin \"{}\" is not allowed", app.origin()))
            && logged.contains("server.allowed_origins"),
        "broker stderr: {logged}"
    );
    // No endless retry: a refusal is final (the backoff would have retried many times).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let m = broker.metrics().await;
    assert_eq!(
        rejections(&m).get("origin_not_allowed"),
        Some(&1.0),
        "one attempt only: {m}"
    );
    let (state, closes) = (
        page.eval("app.sc.state").await,
        page.eval("app.closes").await,
    );
    assert_eq!(state, "refused");
    assert_eq!(closes, json!([null]), "one close, without a retry");

    // The one documented config step, then the documented retry: sc.connect().
    drop(broker);
    let broker = Broker::start_on(
        "[server]\nallowed_origins = [\"http://localhost:*\"]\n",
        addr,
    );
    page.eval("app.sc.connect(), true").await;
    page.wait_for(
        "the page connected and subscribed",
        "app.sc.state === 'open' && app.subscribed",
        RECONNECT,
    )
    .await;
    broker.publish("news", json!({"hello": "app"})).await;
    let got = page
        .wait_for("the publication", "app.got.length ? app.got : null", TICK)
        .await;
    assert_eq!(got, json!([["news", {"hello": "app"}]]));
    assert_no_page_errors(&page);
}

#[tokio::test]
async fn a_file_page_is_refused_by_default_and_allowed_by_null() {
    let Some(bin) = browser() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.html");
    std::fs::write(
        &file,
        "<!doctype html><meta charset=utf-8><title>file</title>",
    )
    .unwrap();
    let closed = Broker::start("");
    let dev = Broker::start("[server]\nallowed_origins = [\"null\"]\n");
    let chrome = Chromium::launch(&bin);
    let mut page = chrome.new_page(1024, 700).await;
    page.goto(&format!("file://{}", file.display())).await;

    readme_snippet(&mut page, &closed).await;
    let r = page
        .wait_for(
            "the refused event",
            "app.refused.length ? app.refused[0] : null",
            TICK,
        )
        .await;
    assert_eq!(r["info"]["origin"], "null", "{r}");
    assert!(
        r["info"]["fix"]
            .as_str()
            .unwrap()
            .starts_with("add \"null\" to server.allowed_origins"),
        "{r}"
    );

    readme_snippet(&mut page, &dev).await;
    page.wait_for(
        "the file page connected",
        "app.sc.state === 'open' && app.subscribed",
        TICK,
    )
    .await;
    dev.publish("news", json!(1)).await;
    page.wait_for("the publication", "app.got.length === 1", TICK)
        .await;
    assert_no_page_errors(&page);
}

#[tokio::test]
async fn the_dashboard_connects_when_other_origins_are_allowed() {
    let Some(bin) = browser() else { return };
    let broker = Broker::start("[server]\nallowed_origins = [\"http://example.test\"]\n");
    let chrome = Chromium::launch(&bin);
    let mut page = open_dashboard(&chrome, &broker, "").await;
    page.wait_for(
        "live $sys/stats",
        "document.getElementById('stats-age').textContent === 'live'",
        TICK,
    )
    .await;
    assert_no_page_errors(&page);
}

#[tokio::test]
async fn the_dashboard_says_why_auth_keeps_it_out() {
    let Some(bin) = browser() else { return };
    let toml = "[auth]\ntype = \"bearer\"\nbearer_token_env = \"BROWSER_TEST_TOKENS\"\n";
    let broker = Broker::start_with(toml, &[], &[("BROWSER_TEST_TOKENS", "s3cret")]);
    let chrome = Chromium::launch(&bin);
    let mut page = chrome.new_page(1280, 900).await;

    page.goto(&format!("{}/", broker.http_url())).await;
    wait_state(&mut page, "refused", TICK).await;
    assert_eq!(
        page.text("conn-state").await,
        "credentials required: open /?token=…"
    );
    page.wait_for(
        "the stats line saying why nothing comes",
        "document.getElementById('stats-age').textContent === 'no live stats: not connected'",
        TICK,
    )
    .await;
    page.screenshot(&target_dir().join("dashboard-refused.png"))
        .await;
    // The client API: a wrong token is refused with its reason (the check got the token
    // too), and connect({token}) is the documented way back.
    let out = page
        .eval(
            "(async () => { const { Shardcast } = await import('/client.js'); \
             const c = new Shardcast({ token: 'wrong', backoffBaseMs: 50 }); \
             const [reason, info] = await new Promise((r) => c.on('refused', (...a) => r(a))); \
             const state = c.state; c.connect({ token: 's3cret' }); \
             await new Promise((r) => c.on('open', r)); \
             return { reason, status: info.status, state, after: c.state }; })()",
        )
        .await;
    assert_eq!(
        out,
        json!({"reason": "invalid credentials", "status": 401, "state": "refused", "after": "open"})
    );
    page.goto(&format!("{}/?token=wrong", broker.http_url()))
        .await;
    wait_state(&mut page, "refused", TICK).await;
    assert_eq!(
        page.text("conn-state").await,
        "credentials refused (invalid credentials): open /?token=…"
    );
    page.goto(&format!("{}/?token=s3cret", broker.http_url()))
        .await;
    wait_state(&mut page, "connected", TICK).await;
    assert_no_page_errors(&page);
}

#[tokio::test]
async fn the_dashboard_says_when_its_token_does_not_cover_sys_stats() {
    let Some(bin) = browser() else { return };
    const SECRET: &str = "browser-test-jwt-secret-0123456789";
    let toml = "[auth]\ntype = \"jwt\"\njwt_secret_env = \"BROWSER_TEST_JWT\"\n";
    let broker = Broker::start_with(toml, &[], &[("BROWSER_TEST_JWT", SECRET)]);
    // The README's token: it may read chat/#, nothing else.
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "alice", "exp": exp, "subscribe": ["chat/#"], "publish": ["chat/lobby"]}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let chrome = Chromium::launch(&bin);
    let mut page = open_dashboard(&chrome, &broker, &format!("?token={token}")).await;
    let shown = page
        .wait_for(
            "the stats refusal",
            "(t => t.startsWith('no live stats') ? t : null)(document.getElementById('stats-age').textContent)",
            TICK,
        )
        .await;
    let shown = shown.as_str().unwrap();
    assert!(
        shown.contains("$sys/stats")
            && shown.contains("not allowed to subscribe")
            && shown.contains("claims"),
        "{shown}"
    );
    // It stays (the once-a-second refresh does not turn it back into "waiting").
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(page.text("stats-age").await, shown);
    // The token's own channels work.
    watch_via_text_box(&mut page, "chat/lobby").await;
    assert_no_page_errors(&page);
}

/// The pages themselves, without a browser (runs everywhere).
#[tokio::test]
async fn dashboard_and_client_are_served() {
    let broker = Broker::start("[server]\nws_path = \"/live\"\n");
    let page = broker.get("/").await;
    assert_eq!(page.status, 200);
    assert_eq!(page.content_type, "text/html; charset=utf-8");
    assert!(page
        .text
        .contains(r#"import { Shardcast } from "/client.js";"#));
    assert!(
        page.text
            .contains(r#"<meta name="shardcast-ws-path" content="/live">"#),
        "the page learns server.ws_path"
    );
    let js = broker.get("/client.js").await;
    assert_eq!(js.status, 200);
    assert_eq!(js.content_type, "text/javascript; charset=utf-8");
    assert!(js.text.contains("export class Shardcast"));
    let head = broker.post_json("/client.js", &json!({})).await;
    assert_eq!(head.status, 405, "{}", head.text);
}

/// Not a check: the README's picture. A minute of traffic on a few channels with different
/// numbers of subscribers, the page watching `sensors/#`, then `docs/dashboard.png`.
/// `cargo test --release --test browser -- --ignored docs_screenshot`
#[tokio::test]
#[ignore = "writes docs/dashboard.png; run by hand"]
async fn docs_screenshot() {
    let Some(bin) = browser() else { return };
    let broker = Broker::start_with("", &["--shards", "2"], &[]);
    let channels = [
        "sensors/kitchen/temp",
        "process:build-1",
        "chat/lobby",
        "sensors/hall/temp",
        "news/eu",
        "orders/new",
    ];
    let mut readers = Vec::new();
    for (i, channel) in channels.iter().enumerate() {
        for _ in 0..(14 - 2 * i) {
            let mut ws = broker.vws_subscriber(channel).await;
            readers.push(tokio::spawn(async move {
                while let Some(Event::Json(_)) = ws.next_event(Duration::from_secs(5)).await {}
            }));
        }
    }
    let chrome = Chromium::launch(&bin);
    let mut page = open_dashboard(&chrome, &broker, "#watch=sensors%2F%23").await;
    let mut api = Http::connect(broker.addr).await;
    let start = std::time::Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(65) {
        for (i, channel) in channels.iter().enumerate() {
            if n.is_multiple_of(i as u64 + 1) {
                let data = json!({"c": 20.0 + (n % 40) as f64 / 10.0, "n": n});
                let r = api
                    .post_json("/api/publish", &json!({"channel": channel, "data": data}))
                    .await;
                assert!(r.is_success(), "{}", r.text);
            }
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard.png");
    page.screenshot(&docs).await;
    for r in readers {
        r.abort();
    }
}

//! Upstream links between real broker processes (`[[upstream]]`, SPEC §11,
//! docs/FEDERATION.md): pull with positions through a cut link and an upstream restart,
//! push with the upstream down (on_full), links both ways without echo (vws and
//! SemStreams), a SemStreams push link into another broker and into a stand-in SemStreams
//! Input, bad config, an upstream that refuses or talks nonsense.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::proxy::Proxy;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bound for a link to (re)connect and catch up.
const LINK: Duration = Duration::from_secs(20);

/// Fast reconnects for tests.
const FAST: &str = "initial_interval = \"50ms\"\nmax_interval = \"300ms\"\n";

fn pull_link(name: &str, url: &str, patterns: &str, extra: &str) -> String {
    format!(
        "[[upstream]]\nname = \"{name}\"\nurl = \"{url}\"\nmode = \"pull\"\npatterns = {patterns}\n{FAST}{extra}\n"
    )
}

fn push_link(name: &str, url: &str, patterns: &str, extra: &str) -> String {
    format!(
        "[[upstream]]\nname = \"{name}\"\nurl = \"{url}\"\nmode = \"push\"\npatterns = {patterns}\n{FAST}{extra}\n"
    )
}

/// The `/healthz` details of link `name`.
async fn link(broker: &Broker, name: &str) -> Value {
    let h = broker.get("/healthz").await.json();
    h["details"]["links"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no link {name} in /healthz: {h}"))
}

async fn wait_connected(broker: &Broker, name: &str) {
    until_ok(&format!("link {name} connected"), LINK, || async {
        let l = link(broker, name).await;
        (l["connected"] == true).then_some(()).ok_or(l.to_string())
    })
    .await;
}

/// Publishes probes on `channel` upstream until `sub` (subscribed here to what the pull
/// link brings) gets one: the link's subscription is in place. Returns nothing else read.
async fn wait_pulling(upstream: &Broker, channel: &str, sub: &mut Ws) {
    for _ in 0..200 {
        upstream.publish(channel, json!({"probe": true})).await;
        if let Some(Event::Json(v)) = sub.next_event(Duration::from_millis(100)).await {
            if v["d"]["probe"] == true {
                // Drain the other probes still on their way.
                while let Some(Event::Json(_)) = sub.next_event(Duration::from_millis(200)).await {}
                return;
            }
        }
    }
    panic!("the pull link never delivered a probe on {channel}");
}

/// Reads events on `sub` until `n` numbered ones (`d.n`) arrived; probes are skipped.
async fn read_numbers(sub: &mut Ws, n: usize, d: Duration) -> Vec<u64> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + d;
    while got.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match sub.next_event(left).await {
            Some(Event::Json(v)) => {
                if let Some(x) = v["d"]["n"].as_u64() {
                    got.push(x);
                }
            }
            other => panic!(
                "after {} of {n} numbers (the last {:?}): {other:?}",
                got.len(),
                got.last()
            ),
        }
    }
    got
}

/// Publishes `d.n` for each of `ns` on `channel` in one API batch.
async fn publish_numbers(broker: &Broker, channel: &str, ns: std::ops::RangeInclusive<u64>) {
    let batch: Vec<Value> = ns
        .map(|n| json!({"channel": channel, "data": {"n": n}}))
        .collect();
    let r = broker.post_json("/api/publish", &Value::Array(batch)).await;
    assert!(
        r.is_success(),
        "batch publish refused: {} {}",
        r.status,
        r.text
    );
}

/// Nothing but probes arrives on `sub` for a while.
async fn expect_no_numbers(sub: &mut Ws) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(600);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match sub.next_event(left).await {
            None => return,
            Some(Event::Json(v)) if v["d"]["n"].is_null() => {}
            Some(other) => panic!("expected nothing more, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn pull_republishes_with_prefix_and_reports_the_link() {
    let cloud = Broker::start("");
    let edge = Broker::start(&pull_link(
        "cloud",
        &cloud.ws_url(),
        "[\"news/#\"]",
        "prefix = \"cloud/\"\n",
    ));
    wait_connected(&edge, "cloud").await;
    let mut sub = edge.vws_subscriber("cloud/news/#").await;
    wait_pulling(&cloud, "news/probe", &mut sub).await;
    cloud.publish("news/a", json!({"n": 1})).await;
    let v = sub.recv().await;
    assert_eq!(v["t"], "cloud/news/a", "prefix added on the way in: {v}");
    assert_eq!(v["d"]["n"], 1);
    let cloud_id = cloud.get("/healthz").await.json()["details"]["node_id"].clone();
    assert_eq!(v["h"]["sc-via"], cloud_id, "origin marked in sc-via: {v}");

    let l = link(&edge, "cloud").await;
    assert_eq!(l["mode"], "pull");
    assert_eq!(l["remote_url"], cloud.ws_url());
    assert_eq!(l["remote_node_id"], cloud_id);
    assert_eq!(l["queue_depth"], 0);
    assert!(l["forwarded"].as_u64() >= Some(2), "{l}");
    let m = edge.metrics().await;
    assert_eq!(
        counter(&m, "shardcast_link_connected{link=\"cloud\",mode=\"pull\"}"),
        1.0
    );
    assert!(
        counter(
            &m,
            "shardcast_link_forwarded_total{link=\"cloud\",mode=\"pull\"}"
        ) >= 2.0
    );
    // The dashboard's data ($sys/stats, /api/stats) lists the link too.
    let s = edge.stats().await;
    assert_eq!(s["links"][0]["name"], "cloud", "{s}");
    assert_eq!(s["links"][0]["connected"], true, "{s}");
}

#[tokio::test]
async fn pull_loses_nothing_through_a_cut_link_and_an_upstream_restart() {
    let history = "[[history]]\npattern = \"feed\"\nsize = 10000\nbytes = 10000000\n";
    let cloud = Broker::start(history);
    let cloud_addr = cloud.addr;
    let proxy = Proxy::start(cloud_addr).await;
    let edge = Broker::start(&format!(
        "{}{history}",
        pull_link(
            "cloud",
            &format!("ws://{}/ws", proxy.addr),
            "[\"feed\", \"wild/#\"]",
            ""
        )
    ));
    wait_connected(&edge, "cloud").await;
    let mut sub = edge.vws_subscriber("feed").await;
    wait_pulling(&cloud, "feed", &mut sub).await;

    // Mid-stream: the link is cut right after a batch, more is published while it is
    // down, then it comes back and resumes from its position.
    publish_numbers(&cloud, "feed", 1..=100).await;
    assert!(proxy.cut().await >= 1, "the link went through the proxy");
    publish_numbers(&cloud, "feed", 101..=200).await;
    proxy.restore();
    publish_numbers(&cloud, "feed", 201..=300).await;
    let mut got = read_numbers(&mut sub, 300, LINK).await;

    // The upstream is killed and restarted on the same address; what is published
    // there before the link is back is replayed from the new epoch.
    drop(cloud);
    let cloud = Broker::start_on(history, cloud_addr);
    publish_numbers(&cloud, "feed", 301..=400).await;
    got.extend(read_numbers(&mut sub, 100, LINK).await);
    assert_eq!(
        got,
        (1..=400).collect::<Vec<u64>>(),
        "every publication exactly once, in order"
    );
    // The wildcard beside it had no position to resume from, after the cut and after the
    // restart: each of those resubscriptions is counted, the exact channel's are not.
    let from_now = || async { link(&edge, "cloud").await["resumes_from_now"].as_u64() };
    eventually("wild/# resubscribed twice", LINK, || async {
        from_now().await >= Some(2)
    })
    .await;
    expect_no_numbers(&mut sub).await;
    assert_eq!(from_now().await, Some(2), "only the wildcard counts");
    let metrics = edge.metrics().await;
    assert_eq!(
        counter(
            &metrics,
            "shardcast_link_resumes_from_now_total{link=\"cloud\",mode=\"pull\"}"
        ),
        2.0
    );

    let l = link(&edge, "cloud").await;
    assert!(l["reconnect_attempts"].as_u64() >= Some(2), "{l}");
    assert!(
        l["gaps"].as_u64() >= Some(1),
        "the restart changed the epoch: {l}"
    );
    assert_eq!(l["connected"], true, "{l}");
}

#[tokio::test]
async fn push_with_the_upstream_down_applies_on_full_and_counts() {
    let cloud = Broker::start("[client]\nallow_publish = true\n");
    let mut upstream_sub = cloud.vws_subscriber("up/#").await;
    let proxy = Proxy::start(cloud.addr).await;
    proxy.cut().await;
    let url = format!("ws://{}/ws", proxy.addr);
    let edge = Broker::start(&format!(
        "{}{}",
        push_link(
            "oldest",
            &url,
            "[\"up/#\"]",
            "queue_size = 10\non_full = \"drop_oldest\"\n"
        ),
        push_link(
            "blocking",
            &url,
            "[\"blk/#\"]",
            "queue_size = 5\non_full = \"block\"\n"
        ),
    ));
    // Published here while the upstream cannot be reached.
    for n in 1..=25u64 {
        edge.publish("up/x", json!({"n": n})).await;
    }
    for n in 1..=5u64 {
        edge.publish("blk/x", json!({"n": n})).await;
    }
    let refused = edge
        .post_json(
            "/api/publish",
            &json!({"channel": "blk/x", "data": {"n": 6}}),
        )
        .await;
    assert_eq!(
        refused.status, 503,
        "block refuses the publish: {}",
        refused.text
    );
    assert!(
        refused.error_reason().contains("upstream"),
        "the reason says why: {}",
        refused.text
    );
    let l = link(&edge, "oldest").await;
    assert_eq!(l["connected"], false);
    assert_eq!(l["queue_depth"], 10, "{l}");
    assert_eq!(l["queue_utilization"], 1.0, "{l}");
    assert!(l["reconnect_attempts"].as_u64() >= Some(1), "{l}");
    assert!(!l["last_error"].is_null(), "{l}");
    let m = edge.metrics().await;
    assert_eq!(
        counter(
            &m,
            "shardcast_link_dropped_total{link=\"oldest\",reason=\"drop_oldest\"}"
        ),
        15.0
    );
    assert_eq!(
        counter(
            &m,
            "shardcast_link_dropped_total{link=\"blocking\",reason=\"blocked\"}"
        ),
        1.0
    );
    assert_eq!(
        counter(
            &m,
            "shardcast_link_queue_depth{link=\"blocking\",mode=\"push\"}"
        ),
        5.0
    );
    assert!(
        rejections(&m).get("upstream_queue_full") >= Some(&1.0),
        "{m}"
    );

    // The upstream comes back: the newest 10 arrive, in order, once.
    proxy.restore();
    let got = read_numbers(&mut upstream_sub, 10, LINK).await;
    assert_eq!(got, (16..=25).collect::<Vec<u64>>());
    expect_no_numbers(&mut upstream_sub).await;
    until_ok("both queues drained", LINK, || async {
        let a = link(&edge, "oldest").await;
        let b = link(&edge, "blocking").await;
        (a["queue_depth"] == 0 && b["queue_depth"] == 0 && a["forwarded"] == 10)
            .then_some(())
            .ok_or(format!("{a} {b}"))
    })
    .await;
    // Room again: block lets publishes through.
    edge.publish("blk/x", json!({"n": 7})).await;
}

/// A free port on 127.0.0.1 for a broker started later (its peer's config needs it).
fn free_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// Links both ways between two brokers (`mode` pull or push, speaking `dialect`): each
/// side's publications reach the other once and do not come back.
async fn no_echo(mode: &str, dialect: &str) {
    let a_addr = free_addr();
    let b_addr = free_addr();
    let link_to = |name: &str, addr: std::net::SocketAddr| {
        let url = format!("ws://{addr}/ws");
        let extra = format!("dialect = \"{dialect}\"\n");
        let extra = extra.as_str();
        if mode == "push" {
            push_link(name, &url, "[\"mesh/#\"]", extra)
        } else {
            pull_link(name, &url, "[\"mesh/#\"]", extra)
        }
    };
    let common = "[client]\nallow_publish = true\n";
    let a = Broker::start_on(&format!("{}{common}", link_to("to-b", b_addr)), a_addr);
    let b = Broker::start_on(&format!("{}{common}", link_to("to-a", a_addr)), b_addr);
    wait_connected(&a, "to-b").await;
    wait_connected(&b, "to-a").await;
    let mut sub_a = a.vws_subscriber("mesh/#").await;
    let mut sub_b = b.vws_subscriber("mesh/#").await;
    if mode == "pull" {
        wait_pulling(&a, "mesh/probe", &mut sub_b).await;
        wait_pulling(&b, "mesh/probe", &mut sub_a).await;
        while let Some(Event::Json(_)) = sub_a.next_event(Duration::from_millis(300)).await {}
        while let Some(Event::Json(_)) = sub_b.next_event(Duration::from_millis(300)).await {}
    }
    let (la0, lb0) = (link(&a, "to-b").await, link(&b, "to-a").await);
    publish_numbers(&a, "mesh/a", 1..=20).await;
    publish_numbers(&b, "mesh/b", 101..=120).await;
    for (name, sub) in [("A", &mut sub_a), ("B", &mut sub_b)] {
        let mut got = read_numbers(sub, 40, LINK).await;
        got.sort_unstable();
        let want: Vec<u64> = (1..=20).chain(101..=120).collect();
        assert_eq!(got, want, "{mode}: node {name} gets each publication once");
        expect_no_numbers(sub).await;
    }
    let la = link(&a, "to-b").await;
    let lb = link(&b, "to-a").await;
    let delta = |now: &Value, before: &Value, path: &[&str]| {
        let get = |v: &Value| path.iter().fold(v, |v, k| &v[*k]).as_u64().unwrap_or(0);
        get(now) - get(before)
    };
    // Each link carried the 20 of one side, and turned the other 20 back (push: not
    // sent back to where they came from; pull: its own, delivered back, not republished).
    for (l, l0) in [(&la, &la0), (&lb, &lb0)] {
        assert_eq!(delta(l, l0, &["forwarded"]), 20, "{mode}: {l}");
        assert_eq!(delta(l, l0, &["dropped", "loop"]), 20, "{mode}: {l}");
    }
}

#[tokio::test]
async fn push_links_both_ways_do_not_echo_or_amplify() {
    no_echo("push", "vws").await;
}

#[tokio::test]
async fn pull_links_both_ways_do_not_echo_or_amplify() {
    no_echo("pull", "vws").await;
}

/// The same in the SemStreams dialect: `sc-via` crosses in the envelope's `headers`.
#[tokio::test]
async fn semstreams_push_links_both_ways_do_not_echo_or_amplify() {
    no_echo("push", "semstreams").await;
}

#[tokio::test]
async fn semstreams_pull_links_both_ways_do_not_echo_or_amplify() {
    no_echo("pull", "semstreams").await;
}

#[tokio::test]
async fn a_semstreams_push_link_keeps_topics_headers_and_order_into_another_broker() {
    let cloud = Broker::start("[client]\nallow_publish = true\n");
    let edge = Broker::start(&push_link(
        "hub",
        &cloud.ws_url(),
        "[\"sensors/#\"]",
        "dialect = \"semstreams\"\nprefix = \"edge1/\"\n",
    ));
    wait_connected(&edge, "hub").await;
    let mut sub = cloud.vws_subscriber("edge1/sensors/#").await;
    publish_numbers(&edge, "sensors/t", 1..=50).await;
    let edge_id = edge.get("/healthz").await.json()["details"]["node_id"].clone();
    for n in 1..=50u64 {
        let v = sub.recv().await;
        assert_eq!(v["t"], "edge1/sensors/t", "topic and prefix kept: {v}");
        assert_eq!(v["d"]["n"], n, "in order: {v}");
        assert_eq!(v["h"]["sc-via"], edge_id, "origin in sc-via: {v}");
    }
    // The cloud delivers before its ack reaches the edge: wait for the count.
    until_ok("the link counted 50 acked", LINK, || async {
        let l = link(&edge, "hub").await;
        (l["forwarded"] == 50).then_some(()).ok_or(l.to_string())
    })
    .await;
    let l = link(&edge, "hub").await;
    assert_eq!(l["dialect"], "semstreams");
    let m = cloud.metrics().await;
    assert!(
        counter(
            &m,
            "shardcast_semstreams_messages_received_total{type=\"data\"}"
        ) >= 50.0,
        "the cloud saw SemStreams data messages"
    );
    assert_eq!(
        counter(&m, "shardcast_semstreams_acks_total"),
        counter(
            &m,
            "shardcast_semstreams_messages_received_total{type=\"data\"}"
        ),
        "every data message acked"
    );
}

/// What a stand-in SemStreams WebSocket Input saw.
#[derive(Default)]
struct InputLog {
    /// Each `data` message and when it arrived.
    data: Vec<(Value, std::time::Instant)>,
    replies: Vec<Value>,
}

/// A stand-in for a SemStreams WebSocket Input (server mode): negotiates no subprotocol,
/// acks each `data` (nacks those whose payload has `"refuse": true`), and before the first
/// ack sends a `slow` signal and a `backpressure` request (10 msg/s), as a real hub may.
async fn semstreams_input() -> (
    std::net::SocketAddr,
    std::sync::Arc<parking_lot::Mutex<InputLog>>,
) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let log = std::sync::Arc::new(parking_lot::Mutex::new(InputLog::default()));
    let seen = log.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                let mut first = true;
                while let Some(Ok(msg)) = ws.next().await {
                    let Message::Text(text) = msg else { continue };
                    let Ok(v) = serde_json::from_str::<Value>(&text) else {
                        continue;
                    };
                    if v["type"] == "reply" {
                        seen.lock().replies.push(v);
                        continue;
                    }
                    if v["type"] != "data" {
                        continue;
                    }
                    if first {
                        first = false;
                        let slow = json!({"type": "slow", "id": "bp-1", "timestamp": 1,
                            "payload": {"queue_depth": 850, "queue_capacity": 1000, "utilization": 0.85}});
                        let req = json!({"type": "request", "id": "hub-1", "timestamp": 1,
                            "payload": {"method": "backpressure", "params": {"rate_limit": 10}}});
                        let _ = ws.send(Message::text(slow.to_string())).await;
                        let _ = ws.send(Message::text(req.to_string())).await;
                    }
                    let answer = if v["payload"]["refuse"] == true {
                        json!({"type": "nack", "id": v["id"], "timestamp": 1,
                            "payload": {"reason": "publish_failed", "error": "hub says no"}})
                    } else {
                        json!({"type": "ack", "id": v["id"], "timestamp": 1})
                    };
                    seen.lock().data.push((v, std::time::Instant::now()));
                    let _ = ws.send(Message::text(answer.to_string())).await;
                }
            });
        }
    });
    (addr, log)
}

#[tokio::test]
async fn a_semstreams_push_link_feeds_a_semstreams_input_that_negotiates_no_subprotocol() {
    let (addr, log) = semstreams_input().await;
    let edge = Broker::start(&push_link(
        "hub",
        &format!("ws://{addr}/stream"),
        "[\"sensors/#\"]",
        "dialect = \"semstreams\"\n",
    ));
    wait_connected(&edge, "hub").await;
    let batch = json!([
        {"channel": "sensors/temp", "data": {"sensor_id": "temp-01", "value": 23.5}},
        {"channel": "sensors/temp", "data": {"refuse": true}},
        {"channel": "sensors/hum", "data": {"sensor_id": "hum-01", "value": 40}},
    ]);
    let r = edge.post_json("/api/publish", &batch).await;
    assert!(r.is_success(), "{} {}", r.status, r.text);
    until_ok("the hub acked two and nacked one", LINK, || async {
        let l = link(&edge, "hub").await;
        (l["forwarded"] == 2 && l["dropped"]["nack"] == 1 && l["slow_signals"] == 1)
            .then_some(())
            .ok_or(l.to_string())
    })
    .await;
    let l = link(&edge, "hub").await;
    assert!(
        l["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("hub says no")),
        "the hub's reason is kept: {l}"
    );
    let edge_id = edge.get("/healthz").await.json()["details"]["node_id"].clone();
    // Copies, so no lock is held across the awaits below.
    let seen = log.lock().data.clone();
    let replies = log.lock().replies.clone();
    let payloads: Vec<&Value> = seen.iter().map(|(d, _)| &d["payload"]).collect();
    assert_eq!(
        payloads,
        [
            &json!({"sensor_id": "temp-01", "value": 23.5}),
            &json!({"refuse": true}),
            &json!({"sensor_id": "hum-01", "value": 40}),
        ],
        "the publication's data is the payload, in order"
    );
    for (d, _) in &seen {
        assert!(
            d["id"].is_string() && d["timestamp"].is_u64(),
            "envelope: {d}"
        );
        assert_eq!(d["headers"]["sc-via"], edge_id, "{d}");
    }
    assert_eq!(seen[0].0["topic"], "sensors/temp");
    assert_eq!(seen[2].0["topic"], "sensors/hum");
    // The hub asked for 10 msg/s: the link says so and keeps to it from then on.
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0]["id"], "hub-1");
    assert_eq!(replies[0]["payload"]["status"], "ok");
    assert_eq!(replies[0]["payload"]["result"]["adjusted_to"], 10.0);
    publish_numbers(&edge, "sensors/paced", 1..=4).await;
    until_ok("four more acked", LINK, || async {
        let l = link(&edge, "hub").await;
        (l["forwarded"] == 6).then_some(()).ok_or(l.to_string())
    })
    .await;
    let paced: Vec<std::time::Instant> = log.lock().data[3..].iter().map(|(_, at)| *at).collect();
    assert_eq!(paced.len(), 4);
    // Four sends at 10/s span at least three gaps of 100 ms (a busy machine only adds).
    let span = paced[3] - paced[0];
    assert!(
        span >= Duration::from_millis(280),
        "sent too fast for 10 msg/s: {span:?}"
    );
    let m = edge.metrics().await;
    assert_eq!(
        counter(
            &m,
            "shardcast_link_slow_signals_total{link=\"hub\",mode=\"push\"}"
        ),
        1.0
    );
}

/// Three brokers in a ring of push links (A -> B -> C -> A). A publication made on A
/// reaches B and C once each and stops before it comes back to A (C's link sees A in
/// `sc-via`). With `max_hops = 1` on B's link it stops at B instead: C never sees it.
async fn ring(b_max_hops: u32) {
    let [a_addr, b_addr, c_addr] = [free_addr(), free_addr(), free_addr()];
    let url = |addr: std::net::SocketAddr| format!("ws://{addr}/ws");
    let common = "[client]\nallow_publish = true\n";
    let hops = format!("max_hops = {b_max_hops}\n");
    let a = Broker::start_on(
        &format!(
            "{}{common}",
            push_link("to-b", &url(b_addr), "[\"ring/#\"]", "")
        ),
        a_addr,
    );
    let b = Broker::start_on(
        &format!(
            "{}{common}",
            push_link("to-c", &url(c_addr), "[\"ring/#\"]", &hops)
        ),
        b_addr,
    );
    let c = Broker::start_on(
        &format!(
            "{}{common}",
            push_link("to-a", &url(a_addr), "[\"ring/#\"]", "")
        ),
        c_addr,
    );
    wait_connected(&a, "to-b").await;
    wait_connected(&b, "to-c").await;
    wait_connected(&c, "to-a").await;
    // A push link learns the upstream's node id after it connects; wait for all three.
    for (node, name) in [(&a, "to-b"), (&b, "to-c"), (&c, "to-a")] {
        until_ok(&format!("{name} knows its upstream"), LINK, || async {
            let l = link(node, name).await;
            l["remote_node_id"]
                .as_str()
                .filter(|id| !id.is_empty())
                .map(|_| ())
                .ok_or(l.to_string())
        })
        .await;
    }
    let mut subs = [
        a.vws_subscriber("ring/#").await,
        b.vws_subscriber("ring/#").await,
        c.vws_subscriber("ring/#").await,
    ];
    publish_numbers(&a, "ring/a", 1..=20).await;
    let want: Vec<u64> = (1..=20).collect();
    let reaches_c = b_max_hops > 1;
    for (name, sub) in ["A", "B", "C"].into_iter().zip(subs.iter_mut()) {
        if name == "C" && !reaches_c {
            expect_no_numbers(sub).await;
            continue;
        }
        let got = read_numbers(sub, 20, LINK).await;
        assert_eq!(
            got, want,
            "node {name} gets each publication once, in order"
        );
        expect_no_numbers(sub).await;
    }
    let dropped = |l: &Value, why: &str| l["dropped"][why].as_u64().unwrap_or(0);
    if reaches_c {
        until_ok("C's link to stop the 20 before A", LINK, || async {
            let l = link(&c, "to-a").await;
            (dropped(&l, "loop") == 20)
                .then_some(())
                .ok_or(l.to_string())
        })
        .await;
    } else {
        until_ok("B's link to stop the 20 at the hop limit", LINK, || async {
            let l = link(&b, "to-c").await;
            (dropped(&l, "hops") == 20 && l["forwarded"].as_u64() == Some(0))
                .then_some(())
                .ok_or(l.to_string())
        })
        .await;
    }
}

#[tokio::test]
async fn a_ring_of_three_push_links_delivers_once_and_stops_before_the_origin() {
    ring(8).await;
}

#[tokio::test]
async fn the_hop_limit_stops_a_publication_after_max_hops_links() {
    ring(1).await;
}

#[tokio::test]
async fn bad_upstream_config_is_refused_at_start() {
    let cases: [(&str, &str); 7] = [
        (
            "[[upstream]]\nurl = \"ws://127.0.0.1:1/ws\"\nmode = \"push\"\npatterns = [\"a\"]\ndialect = \"mqtt\"\n",
            "upstream.dialect",
        ),
        (
            "[[upstream]]\nurl = \"http//nope\"\nmode = \"pull\"\npatterns = [\"a\"]\n",
            "upstream.url",
        ),
        (
            "[[upstream]]\nurl = \"ws://127.0.0.1:1/ws\"\nmode = \"both\"\npatterns = [\"a\"]\n",
            "upstream.mode",
        ),
        (
            "[[upstream]]\nurl = \"ws://127.0.0.1:1/ws\"\nmode = \"pull\"\npatterns = [\"a\"]\ntoken_env = \"FEDERATION_TEST_UNSET\"\n",
            "upstream.token_env",
        ),
        (
            "[[upstream]]\nurl = \"ws://127.0.0.1:1/ws\"\nmode = \"push\"\npatterns = [\"a\"]\non_full = \"wait\"\n",
            "upstream.on_full",
        ),
        (
            "[[upstream]]\nurl = \"ws://127.0.0.1:1/ws\"\nmode = \"pull\"\npatterns = []\n",
            "upstream.patterns",
        ),
        (
            "[[upstream]]\nurl = \"ws://127.0.0.1:1/ws\"\nmode = \"pull\"\npatterns = [\"a\"]\nqueue_sise = 3\n",
            "upstream[0].queue_sise",
        ),
    ];
    for (toml, key) in cases {
        let f = config_file(toml);
        let path = f.path().to_string_lossy().to_string();
        let out = run_cli(
            &["serve", "--config", &path, "--listen", "127.0.0.1:0"],
            &[],
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(out.code, Some(2), "{toml}: config error exit: {out:?}");
        assert!(
            out.stderr.contains(key),
            "{toml}: names {key}: {}",
            out.stderr
        );
    }
}

/// An "upstream" that answers every connection with `answer` and closes.
async fn nonsense_upstream(answer: &'static [u8]) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn refused_or_broken_upstreams_are_reported_and_the_node_serves_locally() {
    let cloud = Broker::start_with(
        "[auth]\ntype = \"bearer\"\nbearer_token_env = \"FED_CLOUD_TOKEN\"\n",
        &[],
        &[("FED_CLOUD_TOKEN", "right-token")],
    );
    let garbage = nonsense_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello").await;
    let mid = nonsense_upstream(b"HTTP/1.1 101 Switching").await;
    let mut edge = Broker::start_with(
        &format!(
            "{}{}{}",
            pull_link(
                "auth",
                &cloud.ws_url(),
                "[\"a/#\"]",
                "token_env = \"FED_EDGE_TOKEN\"\n"
            ),
            pull_link("garbage", &format!("ws://{garbage}/ws"), "[\"a/#\"]", ""),
            push_link("midway", &format!("ws://{mid}/ws"), "[\"a/#\"]", ""),
        ),
        &[],
        &[("FED_EDGE_TOKEN", "wrong-token")],
    );
    for (name, says) in [("auth", "401"), ("garbage", ""), ("midway", "")] {
        until_ok(
            &format!("link {name} reports its failures"),
            LINK,
            || async {
                let l = link(&edge, name).await;
                let error = l["last_error"].as_str().unwrap_or_default().to_owned();
                (l["connected"] == false
                    && l["reconnect_attempts"].as_u64() >= Some(2)
                    && !error.is_empty()
                    && error.contains(says))
                .then_some(())
                .ok_or(l.to_string())
            },
        )
        .await;
    }
    // The node still serves its own clients.
    let mut sub = edge.vws_subscriber("local/#").await;
    edge.publish("local/x", json!({"n": 1})).await;
    assert_eq!(sub.recv().await["d"]["n"], 1);
    assert_eq!(edge.get("/healthz").await.status, 200);
    assert!(edge.exited().is_none(), "{}", edge.stderr());
}

/// Resident memory of a broker process, from `/proc/PID/status` (KiB).
fn rss_kib(broker: &Broker) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", broker.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

// Two worker threads: the reader must not share one with the task building the flood.
/// A vws client reading `d.n` numbers 1..=n on history channel `channel` of the broker at
/// `url`, from its first offset. When it is cut (a slow consumer), it reconnects and
/// resumes after the last offset it got, as a real client would. Returns the numbers in
/// the order they came and how many times it was cut.
async fn read_resuming(url: &str, channel: &str, n: usize, d: Duration) -> (Vec<u64>, u32) {
    let deadline = tokio::time::Instant::now() + d;
    let (mut got, mut cuts, mut last, mut epoch) = (Vec::new(), 0, 0u64, Value::Null);
    'connect: loop {
        let mut ws = Ws::connect(url, Dialect::Subprotocol("vws")).await;
        let mut sub = json!({"k": "s", "t": channel, "i": 1, "o": last});
        if !epoch.is_null() {
            sub["e"] = epoch.clone();
        }
        ws.send_json(&sub).await;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match ws.next_event(left).await {
                Some(Event::Json(v)) if v["k"] == "a" => {
                    assert_ne!(v["r"], false, "the resume after {last} is complete: {v}");
                    epoch = v["e"].clone();
                }
                Some(Event::Json(v)) => {
                    let offset = v["o"].as_u64().unwrap_or_else(|| panic!("no offset: {v}"));
                    assert_eq!(offset, last + 1, "offsets follow each other: {v}");
                    last = offset;
                    if let Some(x) = v["d"]["n"].as_u64() {
                        got.push(x);
                        if got.len() == n {
                            return (got, cuts);
                        }
                    }
                }
                Some(Event::Close(Some((1008, _)))) => {
                    cuts += 1;
                    continue 'connect;
                }
                other => panic!("after {} of {n} numbers: {other:?}", got.len()),
            }
        }
    }
}

#[tokio::test]
async fn an_upstream_flooding_a_pull_link_faster_than_local_readers_is_contained() {
    // 20,000 publications of ~1 KiB (20 MB) pulled in as fast as the cloud sends them.
    // On the edge, one subscriber never reads (4 KiB receive buffer), one reads everything,
    // and a third asks for acks meanwhile. Both brokers keep the channel's history, so
    // neither a link the cloud cuts as a slow consumer nor a reader the edge cuts (on a
    // loaded machine the flood can outrun it) loses anything: each resumes.
    const TOTAL: u64 = 20_000;
    const BATCH: u64 = 500;
    let history = "[[history]]\npattern = \"flood/#\"\nsize = 30000\nbytes = 64000000\n";
    let cloud = Broker::start(history);
    // The edge's history holds the whole flood (each publication counts about 4.6 KB
    // against max_bytes: payload, bookkeeping, a frame per dialect).
    const EDGE_HISTORY: u64 = 100 << 20;
    let edge = Broker::start(&format!(
        "[history]\nmax_bytes = {EDGE_HISTORY}\n[[history.rules]]\npattern = \"flood/#\"\nsize = 30000\nbytes = 64000000\n{}[client]\nqueue_frames = 4096\nqueue_bytes = 2097152\non_full = \"disconnect\"\n",
        pull_link("cloud", &cloud.ws_url(), "[\"flood/x\"]", "")
    ));
    wait_connected(&edge, "cloud").await;
    let mut probe = edge.vws_subscriber("flood/x").await;
    wait_pulling(&cloud, "flood/x", &mut probe).await;
    drop(probe);
    let mut stalled = RawWs::stalled_subscriber(edge.addr, "flood/x").await;
    let mut asker = edge.ws(Dialect::Subprotocol("vws")).await;
    let rss_before = rss_kib(&edge);
    let slow_before = counter(
        &edge.metrics().await,
        "shardcast_slow_consumer_disconnects_total",
    );

    let cloud_addr = cloud.addr;
    let flood = tokio::spawn(async move {
        let pad = "x".repeat(1000);
        let mut http = Http::connect(cloud_addr).await;
        let mut n = 1;
        while n <= TOTAL {
            let batch: Vec<Value> = (n..(n + BATCH).min(TOTAL + 1))
                .map(|i| json!({"channel": "flood/x", "data": {"n": i, "pad": pad}}))
                .collect();
            let r = http.post_json("/api/publish", &json!(batch)).await;
            assert!(r.is_success(), "batch at {n}: {} {}", r.status, r.text);
            n += BATCH;
        }
    });
    let edge_url = edge.ws_url();
    let reading = tokio::spawn(async move {
        let (got, cuts) = read_resuming(
            &edge_url,
            "flood/x",
            TOTAL as usize,
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(
            got,
            (1..=TOTAL).collect::<Vec<u64>>(),
            "the reading subscriber gets every publication once, in order ({cuts} cuts)"
        );
    });

    // While the flood crosses the link, another client's requests are answered promptly.
    let mut i = 0;
    let mut slowest = Duration::ZERO;
    while !reading.is_finished() {
        i += 1;
        let t = tokio::time::Instant::now();
        // The same channel each time (an idempotent subscribe, answered like any other):
        // on a slow machine the flood outlasts client.max_subscriptions distinct ones.
        asker
            .send_json(&json!({"k": "s", "t": "other/probe", "i": i}))
            .await;
        let v = asker.recv_json(Duration::from_secs(2)).await;
        assert!(v["k"] == "a" && v["i"] == i, "ack {i}: {v}");
        slowest = slowest.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    flood.await.unwrap();
    reading.await.unwrap();
    assert!(i >= 3, "acks asked during the flood: {i}");
    assert!(
        slowest < Duration::from_secs(1),
        "slowest ack during the flood: {slowest:?}"
    );

    // The stalled subscriber was cut as a slow consumer by the edge's normal rules, not
    // buffered without bound.
    let (end, frames, _) = stalled.wait_end(Duration::from_secs(10)).await;
    if let RawEnd::Close(code, _) = end {
        assert_eq!(code, Some(1008), "slow consumer close code");
    }
    assert!(
        (frames.len() as u64) < TOTAL,
        "the stalled one cannot have it all"
    );
    let m = edge.metrics().await;
    assert!(
        counter(&m, "shardcast_slow_consumer_disconnects_total") >= slow_before + 1.0,
        "slow consumer counted"
    );
    assert!(
        counter(
            &m,
            "shardcast_link_forwarded_total{link=\"cloud\",mode=\"pull\"}"
        ) >= TOTAL as f64,
        "the link counts what it carried"
    );
    // Bounded by configuration: history.max_bytes, plus 32 MiB for the queues (the
    // stalled client's 2 MiB, the link's) and the allocator.
    let rss_after = rss_kib(&edge);
    assert!(
        rss_after < rss_before + EDGE_HISTORY / 1024 + 32 * 1024,
        "edge memory stays bounded: {rss_before} KiB before, {rss_after} KiB after 20 MB"
    );
    let mut edge = edge;
    assert!(edge.exited().is_none(), "{}", edge.stderr());
    assert_eq!(link(&edge, "cloud").await["connected"], true);
    assert_eq!(edge.get("/healthz").await.status, 200);
}

//! Cluster mode: two or three shardcast processes joined by a real `nats-server` (or a
//! cluster of three) started on free ports (never the default one), and `haproxy` running
//! the shipped `config/haproxy.cfg` in front of two nodes. Needs the `nats-server` and
//! `haproxy` binaries: without one the tests that use it print a notice and pass, unless
//! `SHARDCAST_REQUIRE_NATS=1` / `SHARDCAST_REQUIRE_HAPROXY=1` (set by `.ci/run`, which
//! installs both). Every child process is killed when its handle drops.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;
use common::*;
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn node(port: u16, id: &str) -> Broker {
    node_with(&[port], id, "")
}

/// A node whose `nats_url` lists the NATS servers on `ports`, with `extra` config first.
fn node_with(ports: &[u16], id: &str, extra: &str) -> Broker {
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect();
    let urls = urls.join(",");
    Broker::start(&format!(
        "{extra}[cluster]\nnats_url = \"{urls}\"\nnode_id = \"{id}\"\nsubject_prefix = \"sctest\"\n"
    ))
}

async fn ready(b: &Broker) {
    eventually("the node to be ready", READY, || async {
        b.get("/readyz").await.status == 200
    })
    .await;
}

/// Waits until the node holds at least `n` NATS subscriptions (each confirmed by NATS).
async fn subscriptions(b: &Broker, n: f64) {
    eventually("NATS subscriptions for local interest", READY, || async {
        counter(&b.metrics().await, "shardcast_cluster_subscriptions") >= n
    })
    .await;
}

#[tokio::test]
async fn publication_reaches_every_node_once_without_echo() {
    let Some(bin) = require_nats() else { return };
    let port = free_port();
    let _nats = start_nats(&bin, port, &[]).await;
    let a = node(port, "a");
    let b = node(port, "b");
    ready(&a).await;
    ready(&b).await;

    let mut a_local = a.vws_subscriber("room/1").await;
    let mut b_vws = b.vws_subscriber("room/1").await;
    let mut b_gows = b.gows_subscriber("room/1").await;
    let mut b_hash = b.vws_subscriber("room/#").await;
    let mut b_plus = b.vws_subscriber("+/1").await;
    // b: broadcast + room/1 + room/# (two subjects) + +/1; a: broadcast + room/1.
    subscriptions(&b, 5.0).await;
    subscriptions(&a, 2.0).await;

    let r = a.publish("room/1", json!({"n": 1})).await;
    assert!(r.is_success(), "{} {}", r.status, r.text);
    for (name, ws) in [
        ("a local", &mut a_local),
        ("b vws", &mut b_vws),
        ("b room/#", &mut b_hash),
        ("b +/1", &mut b_plus),
    ] {
        let v = ws.recv_json(RECV).await;
        assert_eq!(v["t"], "room/1", "{name}: {v}");
        assert_eq!(v["d"], json!({"n": 1}), "{name}: {v}");
    }
    let v = b_gows.recv().await;
    assert_eq!(v["data"], json!({"n": 1}), "b gows: {v}");

    // And back: published on b, received on a.
    let r = b.publish("room/1", json!({"n": 2})).await;
    assert!(r.is_success(), "{} {}", r.status, r.text);
    let v = a_local.recv_json(RECV).await;
    assert_eq!(v["d"], json!({"n": 2}), "a from b: {v}");
    for ws in [&mut b_vws, &mut b_hash, &mut b_plus] {
        assert_eq!(ws.recv_json(RECV).await["d"], json!({"n": 2}));
    }
    assert_eq!(b_gows.recv().await["data"], json!({"n": 2}));

    // Exactly once: no echo back to the origin, no copy per overlapping NATS subscription.
    for ws in [
        &mut a_local,
        &mut b_vws,
        &mut b_gows,
        &mut b_hash,
        &mut b_plus,
    ] {
        ws.expect_silence(SILENCE).await;
    }
    let ma = a.metrics().await;
    let mb = b.metrics().await;
    assert_eq!(counter(&ma, "shardcast_cluster_sent_total"), 1.0, "{ma}");
    assert_eq!(
        counter(&mb, "shardcast_cluster_received_total"),
        1.0,
        "{mb}"
    );
    eventually("b to count the copies NATS sent", READY, || async {
        counter(&b.metrics().await, "shardcast_cluster_duplicates_total") >= 1.0
    })
    .await;
    let health = b.get("/healthz").await.json();
    assert_eq!(health["details"]["cluster"]["connected"], true, "{health}");
    assert_eq!(health["details"]["cluster"]["node_id"], "b", "{health}");
}

#[tokio::test]
async fn node_without_nats_serves_locally_and_joins_when_nats_appears() {
    let Some(bin) = require_nats() else { return };
    let port = free_port();
    let a = node(port, "a");
    let r = a.get("/readyz").await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.json()["status"], "no backplane");
    let health = a.get("/healthz").await;
    assert_eq!(health.status, 200, "degraded, not dead: {}", health.text);
    assert_eq!(health.json()["details"]["cluster"]["connected"], false);

    let mut local = a.vws_subscriber("news").await;
    assert!(a.publish("news", json!(1)).await.is_success());
    assert_eq!(
        local.recv_json(RECV).await["d"],
        1,
        "local delivery without NATS"
    );
    let m = a.metrics().await;
    assert_eq!(
        counter(&m, "shardcast_cluster_dropped_unavailable_total"),
        1.0,
        "{m}"
    );

    let _nats = start_nats(&bin, port, &[]).await;
    ready(&a).await;
    let b = node(port, "b");
    ready(&b).await;
    subscriptions(&a, 2.0).await; // the interest made before NATS came is in place
    assert!(b.publish("news", json!(2)).await.is_success());
    assert_eq!(
        local.recv_json(RECV).await["d"],
        2,
        "cross-node after NATS appeared"
    );
    local.expect_silence(SILENCE).await;
}

/// Publishes numbered probes on `from` until `to_sub` receives one (cross-node delivery
/// is back), then takes what else arrives until silence: each probe at most once and in
/// order. Probes sent while a link is still finding out about a reconnect may be lost
/// (delivery across nodes is at most once), so none is required but the first received.
async fn resumed(from: &Broker, to_sub: &mut Ws, channel: &str) {
    let deadline = Instant::now() + READY;
    let mut sent = 0;
    let mut last = None;
    while last.is_none() {
        assert!(
            Instant::now() < deadline,
            "cross-node delivery never resumed"
        );
        sent += 1;
        assert!(from.publish(channel, json!(sent)).await.is_success());
        last = match to_sub.next_event(Duration::from_millis(200)).await {
            None => None,
            Some(Event::Json(v)) => Some(v["d"].as_u64().unwrap_or_else(|| panic!("{v}"))),
            Some(other) => panic!("{other:?}"),
        };
    }
    while let Some(event) = to_sub.next_event(SILENCE).await {
        let Event::Json(v) = event else {
            panic!("{event:?}")
        };
        let n = v["d"].as_u64().unwrap_or_else(|| panic!("{v}"));
        assert!(
            last < Some(n) && n <= sent,
            "probe {n} after probe {last:?} ({sent} sent): a duplicate or out of order"
        );
        last = Some(n);
    }
}

#[tokio::test]
async fn nats_outage_mid_stream_keeps_local_delivery_and_heals() {
    let Some(bin) = require_nats() else { return };
    let port = free_port();
    let nats = start_nats(&bin, port, &[]).await;
    let a = node(port, "a");
    let b = node(port, "b");
    ready(&a).await;
    ready(&b).await;
    let mut a_sub = a.vws_subscriber("feed/+").await;
    subscriptions(&a, 2.0).await;
    // Probes: the gauge counts a subscription whose confirmation took over 500 ms too.
    resumed(&b, &mut a_sub, "feed/x").await;

    drop(nats);
    eventually("a to notice NATS is gone", READY, || async {
        a.get("/readyz").await.status == 503
    })
    .await;
    // Local delivery goes on; what a publishes meanwhile is counted as not sent.
    assert!(a.publish("feed/y", json!("local")).await.is_success());
    assert_eq!(a_sub.recv_json(RECV).await["d"], "local");
    let m = a.metrics().await;
    assert!(
        counter(&m, "shardcast_cluster_dropped_unavailable_total") >= 1.0,
        "{m}"
    );

    let _nats = start_nats(&bin, port, &[]).await;
    ready(&a).await;
    ready(&b).await;
    // a re-subscribed its interest by itself: b's publications reach a again, once.
    resumed(&b, &mut a_sub, "feed/z").await;
}

#[tokio::test]
async fn client_publish_with_headers_reaches_two_other_nodes_once() {
    let Some(bin) = require_nats() else { return };
    let port = free_port();
    let _nats = start_nats(&bin, port, &[]).await;
    let publishing = "[client]\nallow_publish = true\n";
    let nodes = [
        node_with(&[port], "a", publishing),
        node_with(&[port], "b", publishing),
        node_with(&[port], "c", publishing),
    ];
    for n in &nodes {
        ready(n).await;
    }
    let channel = "chat/ünï code.room";
    let mut a_sub = nodes[0].vws_subscriber(channel).await;
    let mut b_sub = nodes[1].vws_subscriber("chat/#").await;
    let mut c_sub = nodes[2].vws_subscriber(channel).await;
    subscriptions(&nodes[0], 2.0).await;
    subscriptions(&nodes[1], 3.0).await;
    subscriptions(&nodes[2], 2.0).await;

    let mut publisher = nodes[2].ws(Dialect::Subprotocol("vws")).await;
    publisher
        .send_json(&json!({"t": channel, "d": {"msg": "hi"}, "i": 5, "h": {"trace": "t1"}}))
        .await;
    assert_eq!(publisher.recv().await, json!({"k": "a", "i": 5}));
    for (name, ws) in [("a", &mut a_sub), ("b", &mut b_sub), ("c", &mut c_sub)] {
        let v = ws.recv_json(RECV).await;
        assert_eq!(v["t"], channel, "{name}: {v}");
        assert_eq!(v["d"], json!({"msg": "hi"}), "{name}: {v}");
        assert_eq!(v["h"], json!({"trace": "t1"}), "{name}: {v}");
    }
    for ws in [&mut a_sub, &mut b_sub, &mut c_sub] {
        ws.expect_silence(SILENCE).await;
    }
}

/// `haproxy` running the shipped `config/haproxy.cfg` with its `bind` on a free port and
/// its `server` lines replaced by `nodes`; killed when dropped.
struct Haproxy {
    addr: std::net::SocketAddr,
    server: Server,
    _config: tempfile::NamedTempFile,
}

impl Haproxy {
    async fn start(bin: &Path, nodes: &[&Broker]) -> Haproxy {
        let port = free_port();
        let shipped = include_str!("../config/haproxy.cfg");
        let (mut binds, mut servers) = (0, 0);
        let mut cfg = String::new();
        for line in shipped.lines() {
            let word = line.split_whitespace().next().unwrap_or("");
            if word == "bind" {
                binds += 1;
                cfg.push_str(&format!("    bind 127.0.0.1:{port}\n"));
            } else if word == "server" {
                if servers == 0 {
                    for (i, n) in nodes.iter().enumerate() {
                        cfg.push_str(&format!("    server node{i} {}\n", n.addr));
                    }
                }
                servers += 1;
            } else {
                cfg.push_str(line);
                cfg.push('\n');
            }
        }
        assert!(
            binds == 1 && servers > 0,
            "config/haproxy.cfg: {binds} bind lines, {servers} server lines"
        );
        let config = config_file(&cfg);
        let path = config.path().to_str().unwrap();
        let check = Command::new(bin).args(["-c", "-f", path]).output().unwrap();
        assert!(
            check.status.success(),
            "haproxy -c refused the config: {}{}\n{cfg}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let server = Server::start(bin, &["-db", "-f", path], port).await;
        Haproxy {
            addr: ([127, 0, 0, 1], port).into(),
            server,
            _config: config,
        }
    }

    fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Waits until haproxy has sent a request to each of the `n` nodes: every one is in
    /// rotation (its health check passes) and reachable through haproxy.
    async fn all_up(&self, n: usize) {
        let deadline = Instant::now() + READY;
        let mut seen = std::collections::BTreeSet::new();
        while seen.len() < n {
            let r = http(self.addr, "GET", "/healthz", None, Vec::new()).await;
            assert!(
                Instant::now() < deadline,
                "haproxy reached only {seen:?} of {n} nodes; last answer {} {}",
                r.status,
                r.text
            );
            if r.status == 200 {
                seen.insert(r.json()["details"]["cluster"]["node_id"].to_string());
            } else {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test]
async fn the_shipped_haproxy_config_keeps_tokens_out_of_its_log() {
    let Some(haproxy_bin) = require_haproxy() else {
        return;
    };
    let node = Broker::start("");
    let lb = Haproxy::start(&haproxy_bin, &[&node]).await;
    lb.all_up(1).await;
    // Browsers send their credentials in the query of the upgrade request.
    let ws = Ws::connect(
        &format!("{}?token=very-secret-token", lb.ws_url()),
        Dialect::Subprotocol("vws"),
    )
    .await;
    ws.close().await;
    until_ok("haproxy to log the upgrade", READY, || {
        let log = lb.server.output();
        async move {
            if log.contains("\"GET /ws") {
                Ok(())
            } else {
                Err(log)
            }
        }
    })
    .await;
    let log = lb.server.output();
    assert!(
        !log.contains("very-secret-token"),
        "token in the haproxy log:\n{log}"
    );
}

#[tokio::test]
async fn clients_through_haproxy_receive_publications_made_on_any_node() {
    let Some(nats_bin) = require_nats() else {
        return;
    };
    let Some(haproxy_bin) = require_haproxy() else {
        return;
    };
    let port = free_port();
    let _nats = start_nats(&nats_bin, port, &[]).await;
    let nodes = [node(port, "a"), node(port, "b")];
    for n in &nodes {
        ready(n).await;
    }
    let lb = Haproxy::start(&haproxy_bin, &[&nodes[0], &nodes[1]]).await;
    lb.all_up(2).await;

    // One at a time, each in place before the next: leastconn spreads them over both nodes.
    let mut vws = Vec::new();
    let mut gows = Vec::new();
    for i in 0..2 {
        let mut ws = Ws::connect(&lb.ws_url(), Dialect::Subprotocol("vws")).await;
        ws.vws_subscribe("room/1", 1).await;
        vws.push(ws);
        let mut ws = Ws::connect(&lb.ws_url(), Dialect::Subprotocol("gows")).await;
        ws.gows_subscribe("room/1").await;
        gows.push(ws);
        assert_eq!(vws.len() + gows.len(), 2 * (i + 1));
    }
    for n in &nodes {
        assert!(
            stats_clients(n).await >= 1,
            "haproxy left a node without clients"
        );
        subscriptions(n, 2.0).await;
    }

    for (i, from) in nodes.iter().enumerate() {
        from.publish("room/1", json!({"from": i})).await;
        for ws in &mut vws {
            let v = ws.recv_json(RECV).await;
            assert_eq!(v["t"], "room/1", "{v}");
            assert_eq!(v["d"], json!({"from": i}), "{v}");
        }
        for ws in &mut gows {
            assert_eq!(ws.recv().await["data"], json!({"from": i}));
        }
    }
    for ws in vws.iter_mut().chain(gows.iter_mut()) {
        ws.expect_silence(SILENCE).await;
    }
}

/// Number of client connections a NATS server holds (its monitoring `/connz`).
async fn nats_clients(monitor: u16) -> u64 {
    let r = http(
        ([127, 0, 0, 1], monitor).into(),
        "GET",
        "/connz",
        None,
        Vec::new(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()["num_connections"].as_u64().unwrap()
}

#[tokio::test]
async fn node_fails_over_to_another_server_of_a_nats_cluster() {
    let Some(bin) = require_nats() else { return };
    let client: [u16; 3] = std::array::from_fn(|_| free_port());
    let route: [u16; 3] = std::array::from_fn(|_| free_port());
    let monitor: [u16; 3] = std::array::from_fn(|_| free_port());
    let mut servers = Vec::new();
    for i in 0..3 {
        let own = format!("nats://127.0.0.1:{}", route[i]);
        let routes: Vec<String> = (0..3)
            .filter(|&j| j != i)
            .map(|j| format!("nats://127.0.0.1:{}", route[j]))
            .collect();
        let routes = routes.join(",");
        let monitor = monitor[i].to_string();
        let extra = [
            "--cluster_name",
            "sctest",
            "--cluster",
            &own,
            "--routes",
            &routes,
            "-m",
            &monitor,
        ];
        servers.push(Some(start_nats(&bin, client[i], &extra).await));
    }
    // a lists two of the servers, b the third.
    let a = node_with(&client[..2], "a", "");
    let b = node_with(&client[2..], "b", "");
    ready(&a).await;
    ready(&b).await;
    // Each subscribes what only the other publishes.
    let mut a_sub = a.vws_subscriber("to/a").await;
    let mut b_sub = b.vws_subscriber("to/b").await;
    subscriptions(&a, 2.0).await;
    subscriptions(&b, 2.0).await;
    // Through the routes between the NATS servers, both ways (once interest has spread).
    resumed(&b, &mut a_sub, "to/a").await;
    resumed(&a, &mut b_sub, "to/b").await;

    // Kill the server a is connected to.
    let mut on = Vec::new();
    for m in &monitor[..2] {
        on.push(nats_clients(*m).await);
    }
    let used = on.iter().position(|&n| n == 1);
    let used = used.unwrap_or_else(|| panic!("a is on none of its servers: {on:?}"));
    assert_eq!(on.iter().sum::<u64>(), 1, "{on:?}");
    drop(servers[used].take());

    // a reconnects to a surviving server and re-subscribes; delivery resumes, once.
    let survivors: Vec<u16> = (0..3).filter(|&i| i != used).map(|i| monitor[i]).collect();
    eventually(
        "a to reconnect to a surviving NATS server",
        READY,
        || async {
            let mut n = 0;
            for m in &survivors {
                n += nats_clients(*m).await;
            }
            n == 2
        },
    )
    .await;
    ready(&a).await;
    resumed(&b, &mut a_sub, "to/a").await;
    resumed(&a, &mut b_sub, "to/b").await;
    let ma = a.metrics().await;
    let mb = b.metrics().await;
    assert_eq!(
        counter(&ma, "shardcast_cluster_duplicates_total"),
        0.0,
        "{ma}"
    );
    assert_eq!(
        counter(&mb, "shardcast_cluster_duplicates_total"),
        0.0,
        "{mb}"
    );
}

/// A vws client's nack for `msg`, checked to name `needle`.
async fn nacked(ws: &mut Ws, msg: serde_json::Value, needle: &str) {
    ws.send_json(&msg).await;
    let v = ws.recv().await;
    assert_eq!(v["k"], "n", "{msg} must be refused: {v}");
    assert!(
        v["e"].as_str().unwrap_or("").contains(needle),
        "{msg}: reason should name {needle:?}: {v}"
    );
}

/// Issue 16 finding 1: one subscription whose NATS subject would overflow nats-server's
/// control line (4096 bytes) used to drop the whole link, over and over. It is refused
/// per request now, and the link never sees it.
#[tokio::test]
async fn a_subject_too_long_for_nats_is_refused_per_request_and_the_link_stays() {
    let Some(bin) = require_nats() else { return };
    let port = free_port();
    let _nats = start_nats(&bin, port, &[]).await;
    let big = "[client]\nmax_topic_bytes = 3000\nallow_publish = true\n";
    let a = node_with(&[port], "a", big);
    let b = node_with(&[port], "b", big);
    ready(&a).await;
    ready(&b).await;
    // 1,400 bytes of 'é' escape to 4,200 bytes of `%C3%A9`: over 4096 with the prefix.
    let long = "é".repeat(700);
    let mut attacker = a.ws(Dialect::Subprotocol("vws")).await;
    nacked(
        &mut attacker,
        json!({"k": "s", "t": long, "i": "s1"}),
        "cluster.max_control_line",
    )
    .await;
    nacked(
        &mut attacker,
        json!({"k": "s", "t": format!("x/{long}/#"), "i": "s2"}),
        "cluster.max_control_line",
    )
    .await;
    nacked(
        &mut attacker,
        json!({"t": long, "d": 1, "i": "p1"}),
        "cluster.max_control_line",
    )
    .await;
    let r = a
        .post_json("/api/publish", &json!({"channel": long, "data": 1}))
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("cluster.max_control_line"), "{}", r.text);
    let m = a.metrics().await;
    assert_eq!(
        rejections(&m).get("cluster_subject_too_long").copied(),
        Some(4.0),
        "{m}"
    );

    // A long ASCII channel escapes to itself and still crosses nodes.
    let ascii = "a".repeat(3000);
    let mut b_sub = b.vws_subscriber(&ascii).await;
    subscriptions(&b, 2.0).await;
    resumed(&a, &mut b_sub, &ascii).await;
    assert_eq!(a.get("/readyz").await.status, 200);
    for n in [&a, &b] {
        let m = n.metrics().await;
        assert_eq!(
            counter(&m, "shardcast_cluster_connects_total"),
            1.0,
            "the link was never dropped: {m}"
        );
    }
}

/// Issue 16 finding 9: a publication larger than the NATS server's `max_payload` used to
/// reach local subscribers and silently not the other nodes. It is refused as a whole
/// (nobody gets it), counted, and the publisher is told why.
#[tokio::test]
async fn a_publication_over_nats_max_payload_is_refused() {
    let Some(bin) = require_nats() else { return };
    let port = free_port();
    let conf = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(conf.path(), "max_payload: 4096\n").unwrap();
    let _nats = start_nats(&bin, port, &["-c", conf.path().to_str().unwrap()]).await;
    let publishing = "[client]\nallow_publish = true\n";
    let a = node_with(&[port], "a", publishing);
    let b = node_with(&[port], "b", publishing);
    ready(&a).await;
    ready(&b).await;
    let mut a_sub = a.vws_subscriber("big").await;
    let mut b_sub = b.vws_subscriber("big").await;
    subscriptions(&b, 2.0).await;

    let large = "x".repeat(5000);
    let r = a
        .post_json("/api/publish", &json!({"channel": "big", "data": large}))
        .await;
    assert_eq!(r.status, 413, "{}", r.text);
    assert!(r.text.contains("max_payload"), "{}", r.text);
    let mut publisher = a.ws(Dialect::Subprotocol("vws")).await;
    nacked(
        &mut publisher,
        json!({"t": "big", "d": large, "i": 1}),
        "max_payload",
    )
    .await;
    let m = a.metrics().await;
    assert_eq!(
        rejections(&m).get("cluster_payload_too_large").copied(),
        Some(2.0),
        "{m}"
    );
    a_sub.expect_silence(SILENCE).await;

    // What fits still goes everywhere.
    resumed(&a, &mut b_sub, "big").await;
    assert_eq!(a_sub.recv_json(RECV).await["t"], "big");
}

/// A bare NATS client over TCP speaking the text protocol: what an attacker with access
/// to the NATS server has.
struct RawNats {
    stream: tokio::io::BufReader<tokio::net::TcpStream>,
}

impl RawNats {
    async fn connect(port: u16, connect: &str) -> RawNats {
        use tokio::io::AsyncBufReadExt;
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let mut stream = tokio::io::BufReader::new(tcp);
        let mut info = String::new();
        stream.read_line(&mut info).await.unwrap();
        assert!(info.starts_with("INFO"), "{info}");
        let mut n = RawNats { stream };
        n.send(format!("CONNECT {connect}\r\n").as_bytes()).await;
        n.sync().await;
        n
    }

    async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.get_mut().write_all(bytes).await.unwrap();
    }

    /// Publishes `payload` on `subject` and waits until the server has processed it.
    async fn publish(&mut self, subject: &str, payload: &[u8]) {
        let head = format!("PUB {subject} {}\r\n", payload.len());
        self.send(&[head.as_bytes(), payload, b"\r\n"].concat())
            .await;
        self.sync().await;
    }

    /// PING, then reads lines until PONG (failing on -ERR).
    async fn sync(&mut self) {
        use tokio::io::AsyncBufReadExt;
        self.send(b"PING\r\n").await;
        loop {
            let mut line = String::new();
            within(RECV, "PONG from NATS", self.stream.read_line(&mut line))
                .await
                .unwrap();
            assert!(!line.starts_with("-ERR"), "{line}");
            if line.starts_with("PONG") {
                return;
            }
        }
    }

    /// The next `MSG` payload (after `SUB`), skipping PINGs.
    async fn next_msg(&mut self) -> (String, Vec<u8>) {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt};
        loop {
            let mut line = String::new();
            within(RECV, "a MSG from NATS", self.stream.read_line(&mut line))
                .await
                .unwrap();
            if line.starts_with("PING") {
                self.send(b"PONG\r\n").await;
                continue;
            }
            let parts: Vec<&str> = line.split_whitespace().collect();
            if parts.first() != Some(&"MSG") {
                continue;
            }
            let len: usize = parts.last().unwrap().parse().unwrap();
            let mut buf = vec![0; len + 2];
            self.stream.read_exact(&mut buf).await.unwrap();
            buf.truncate(len);
            return (parts[1].to_owned(), buf);
        }
    }
}

fn forged(o: &str, i: u64, s: u64, k: &str, t: &str, d: serde_json::Value) -> Vec<u8> {
    json!({"o": o, "i": i, "s": s, "k": k, "n": if k == "c" { "" } else { "ev" }, "t": t, "d": d})
        .to_string()
        .into_bytes()
}

fn refused(metrics: &str, reason: &str) -> f64 {
    counter(
        metrics,
        &format!("shardcast_cluster_refused_total{{reason=\"{reason}\"}}"),
    )
}

/// Issue 16 finding 5: anyone who can publish on NATS used to be able to deliver any
/// envelope (routed by its own `t`), forge `$sys/stats`, control characters, wildcards,
/// broadcasts on channel subjects, and silence a node with one sequence number 2^64-1.
#[tokio::test]
async fn forged_envelopes_from_nats_are_refused_and_do_not_silence_a_node() {
    let Some(bin) = require_nats() else { return };
    let port = free_port();
    let _nats = start_nats(&bin, port, &[]).await;
    let a = node(port, "a");
    let b = node(port, "b");
    ready(&a).await;
    ready(&b).await;
    let mut b_all = b.vws_subscriber("#").await;
    subscriptions(&b, 2.0).await;
    let mut spy = RawNats::connect(port, "{\"verbose\":false}").await;
    spy.send(b"SUB sctest.> 1\r\n").await;
    spy.sync().await;
    // A real envelope from a, read off NATS: its origin and start number.
    resumed(&a, &mut b_all, "room/1").await;
    let (_, real) = spy.next_msg().await;
    let real: serde_json::Value = serde_json::from_slice(&real).unwrap();
    let (o, i) = (real["o"].as_str().unwrap(), real["i"].as_u64().unwrap());

    let mut attacker = RawNats::connect(port, "{\"verbose\":false}").await;
    let cases: [(&str, Vec<u8>, &str); 7] = [
        (
            "sctest.t.room.1",
            forged("x", 1, 1, "c", "room/2", json!("moved")),
            "subject_mismatch",
        ),
        (
            "sctest.t.room.1",
            forged("x", 1, 2, "e", "", json!("bcast on channel")),
            "kind_mismatch",
        ),
        (
            "sctest.b",
            forged("x", 1, 3, "c", "room/1", json!("channel on bcast")),
            "kind_mismatch",
        ),
        (
            "sctest.t.%24sys.stats",
            forged("x", 1, 4, "c", "$sys/stats", json!({"clients": 0})),
            "invalid_topic",
        ),
        (
            "sctest.t.a%01",
            forged("x", 1, 5, "c", "a\u{1}", json!("control")),
            "invalid_topic",
        ),
        (
            "sctest.t.a%2B",
            forged("x", 1, 6, "c", "a+", json!("wildcard")),
            "invalid_topic",
        ),
        (
            "sctest.t.room.1",
            forged(o, i, u64::MAX, "c", "room/1", json!("silence")),
            "sequence_jump",
        ),
    ];
    for (subject, payload, _) in &cases {
        attacker.publish(subject, payload).await;
    }
    eventually("b to refuse every forged envelope", READY, || async {
        let m = b.metrics().await;
        cases.iter().all(|(_, _, reason)| {
            let want = cases.iter().filter(|c| c.2 == *reason).count() as f64;
            refused(&m, reason) >= want
        })
    })
    .await;
    // Nothing forged was delivered, and a is not silenced: its next publication arrives.
    assert!(a.publish("room/1", json!("after")).await.is_success());
    let v = b_all.recv_json(RECV).await;
    assert_eq!(v["d"], "after", "{v}");
    b_all.expect_silence(SILENCE).await;
}

/// With `cluster.secret_env`, envelopes carry an HMAC: an unsigned (or wrongly signed)
/// envelope injected on NATS is refused, signed ones cross.
#[tokio::test]
async fn with_a_shared_secret_unsigned_envelopes_are_refused() {
    let Some(bin) = require_nats() else { return };
    let port = free_port();
    let _nats = start_nats(&bin, port, &[]).await;
    let conf = |id: &str| {
        format!(
            "[cluster]\nnats_url = \"nats://127.0.0.1:{port}\"\nnode_id = \"{id}\"\nsubject_prefix = \"sctest\"\nsecret_env = \"SC_CLUSTER_SECRET\"\n"
        )
    };
    let env = [("SC_CLUSTER_SECRET", "a shared secret of some length")];
    let a = Broker::start_with(&conf("a"), &[], &env);
    let b = Broker::start_with(&conf("b"), &[], &env);
    ready(&a).await;
    ready(&b).await;
    let mut b_sub = b.vws_subscriber("room/1").await;
    subscriptions(&b, 2.0).await;
    resumed(&a, &mut b_sub, "room/1").await;

    let mut attacker = RawNats::connect(port, "{\"verbose\":false,\"headers\":true}").await;
    let payload = forged("x", 1, 1, "c", "room/1", json!("forged"));
    attacker.publish("sctest.t.room.1", &payload).await;
    let head = format!(
        "HPUB sctest.t.room.1 {} {}\r\n",
        "NATS/1.0\r\nShardcast-Mac: 00\r\n\r\n".len(),
        "NATS/1.0\r\nShardcast-Mac: 00\r\n\r\n".len() + payload.len()
    );
    attacker
        .send(
            &[
                head.as_bytes(),
                b"NATS/1.0\r\nShardcast-Mac: 00\r\n\r\n",
                &payload,
                b"\r\n",
            ]
            .concat(),
        )
        .await;
    attacker.sync().await;
    eventually("b to refuse both", READY, || async {
        refused(&b.metrics().await, "bad_mac") >= 2.0
    })
    .await;
    b_sub.expect_silence(SILENCE).await;
    assert!(a.publish("room/1", json!("signed")).await.is_success());
    assert_eq!(b_sub.recv_json(RECV).await["d"], "signed");
}

/// Two nodes log in to a NATS server started with `nats_args` using the `[cluster]`
/// lines `login` (which name the variable `SC_NATS_SECRET`) and deliver across; a node
/// whose variable holds `wrong` never becomes ready.
async fn nodes_log_in(nats_args: &[&str], login: &str, good: &str, wrong: &str) {
    let Some(bin) = require_nats() else { return };
    let port = free_port();
    let _nats = start_nats(&bin, port, nats_args).await;
    let conf = |id: &str| {
        format!(
            "[cluster]\nnats_url = \"nats://127.0.0.1:{port}\"\nnode_id = \"{id}\"\nsubject_prefix = \"sctest\"\n{login}\n"
        )
    };
    let a = Broker::start_with(&conf("a"), &[], &[("SC_NATS_SECRET", good)]);
    let b = Broker::start_with(&conf("b"), &[], &[("SC_NATS_SECRET", good)]);
    let w = Broker::start_with(&conf("w"), &[], &[("SC_NATS_SECRET", wrong)]);
    ready(&a).await;
    ready(&b).await;
    let mut b_sub = b.vws_subscriber("room/1").await;
    subscriptions(&b, 2.0).await;
    resumed(&a, &mut b_sub, "room/1").await;
    assert_eq!(
        w.get("/readyz").await.status,
        503,
        "a wrong secret never joins"
    );
}

/// `[cluster] user` + `password_env` log in to a NATS server that requires them.
#[tokio::test]
async fn nodes_log_in_to_nats_with_user_and_password() {
    let login = "user = \"sc\"\npassword_env = \"SC_NATS_SECRET\"";
    nodes_log_in(
        &["--user", "sc", "--pass", "s3cret-pw"],
        login,
        "s3cret-pw",
        "wrong",
    )
    .await;
}

/// `[cluster] token_env` logs in to a NATS server that requires a token.
#[tokio::test]
async fn nodes_log_in_to_nats_with_a_token() {
    let login = "token_env = \"SC_NATS_SECRET\"";
    nodes_log_in(
        &["--auth", "t0ken-for-nats"],
        login,
        "t0ken-for-nats",
        "t0ken-wrong",
    )
    .await;
}

/// `[cluster] nkey_seed_env` logs in to a NATS server that knows the user's public nkey;
/// a node with another (valid, unknown) seed is refused.
#[tokio::test]
async fn nodes_log_in_to_nats_with_an_nkey() {
    let user = nkeys::KeyPair::new_user();
    let stranger = nkeys::KeyPair::new_user();
    let (Ok(seed), Ok(wrong)) = (user.seed(), stranger.seed()) else {
        panic!("nkey seeds")
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = dir.path().join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "authorization {{ users = [ {{ nkey: \"{}\" }} ] }}\n",
            user.public_key()
        ),
    )
    .expect("write nats.conf");
    let conf = conf.to_string_lossy().into_owned();
    let login = "nkey_seed_env = \"SC_NATS_SECRET\"";
    nodes_log_in(&["-c", &conf], login, &seed, &wrong).await;
}

/// Issue 16 finding 4: one client churning subscriptions used to queue an unbounded
/// stream of interest changes to the link, delaying everyone's cross-node
/// subscriptions. Changes are rate-limited per connection now: the storm is refused and
/// counted, the link holds few subscriptions, and a legitimate subscriber's interest
/// crosses promptly.
#[tokio::test]
async fn a_subscribe_storm_is_rate_limited_and_does_not_delay_others() {
    let Some(bin) = require_nats() else { return };
    let port = free_port();
    let _nats = start_nats(&bin, port, &[]).await;
    let limited = "[client]\nsubscribe_rate = 50.0\nsubscribe_burst = 100\n";
    let a = node_with(&[port], "a", limited);
    let b = node_with(&[port], "b", limited);
    ready(&a).await;
    ready(&b).await;
    let mut storm = b.ws(Dialect::Subprotocol("vws")).await;
    let pairs = 2000;
    for n in 0..pairs {
        storm
            .send_json(&json!({"k": "s", "t": format!("storm/{n}")}))
            .await;
        storm
            .send_json(&json!({"k": "u", "t": format!("storm/{n}")}))
            .await;
    }
    // Each refused subscribe gets a nack without an id; the burst (100 tokens: 50
    // pairs) and the refill go through.
    eventually("the storm to be refused", READY, || async {
        rejections(&b.metrics().await)
            .get("subscribe_rate_limited")
            .copied()
            .unwrap_or(0.0)
            >= f64::from(pairs) * 0.8
    })
    .await;
    let v = storm.recv().await;
    assert_eq!(v["k"], "n", "{v}");
    assert!(
        v["e"]
            .as_str()
            .unwrap_or("")
            .contains("client.subscribe_rate"),
        "{v}"
    );

    let started = Instant::now();
    let mut legit = b.vws_subscriber("legit/1").await;
    resumed(&a, &mut legit, "legit/1").await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cross-node interest took {:?}",
        started.elapsed()
    );
    let m = b.metrics().await;
    assert!(
        counter(&m, "shardcast_cluster_subscriptions") <= 10.0,
        "the storm left NATS subscriptions behind: {m}"
    );
}

/// Issue 16 finding 4, without the rate limit: the link takes interest changes as one
/// net count per pattern, so a subscribe and unsubscribe of one pattern cancel out
/// before NATS hears of them, the table of pending changes drains, and what is left is
/// sent as one batch with one flush. A legitimate subscriber made right after the storm
/// gets publications from the other node promptly.
#[tokio::test]
async fn an_unlimited_subscribe_storm_is_coalesced_before_it_reaches_nats() {
    let Some(bin) = require_nats() else { return };
    let port = free_port();
    let _nats = start_nats(&bin, port, &[]).await;
    let unlimited = "[client]\nsubscribe_rate = 0.0\n";
    let a = node_with(&[port], "a", unlimited);
    let b = node_with(&[port], "b", unlimited);
    ready(&a).await;
    ready(&b).await;
    let mut storm = b.ws(Dialect::Subprotocol("vws")).await;
    let pairs = 20_000;
    for n in 0..pairs {
        let t = format!("storm/{n}");
        storm.send_json(&json!({"k": "s", "t": t})).await;
        storm.send_json(&json!({"k": "u", "t": t})).await;
    }
    // The shard handles a connection's messages in order: this ack comes after the storm.
    storm
        .send_json(&json!({"k": "s", "t": "storm/done", "i": "done"}))
        .await;
    loop {
        let v = storm.recv().await;
        if v["i"] == "done" {
            assert_eq!(v["k"], "a", "{v}");
            break;
        }
    }
    let started = Instant::now();
    let mut legit = b.vws_subscriber("legit/1").await;
    resumed(&a, &mut legit, "legit/1").await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cross-node interest took {:?}",
        started.elapsed()
    );
    eventually("pending interest to drain", READY, || async {
        counter(&b.metrics().await, "shardcast_cluster_interest_pending") == 0.0
    })
    .await;
    let m = b.metrics().await;
    assert!(
        counter(&m, "shardcast_cluster_interest_coalesced_total") > 0.0,
        "no change was coalesced: {m}"
    );
    // Far fewer batches than changes: each batch is one flush.
    let batches = counter(&m, "shardcast_cluster_interest_batches_total");
    assert!(
        batches > 0.0 && batches < f64::from(pairs),
        "{batches} batches for {pairs} pairs"
    );
    assert!(
        counter(&m, "shardcast_cluster_subscriptions") <= 10.0,
        "the storm left NATS subscriptions behind: {m}"
    );
}

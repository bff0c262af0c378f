//! Cluster mode: two or three shardcast processes joined by a real `nats-server` started
//! on a free port (never the default one). Needs the `nats-server` binary: without it
//! these tests print a notice and pass, unless `SHARDCAST_REQUIRE_NATS=1` (set by
//! `.ci/run`, which installs it).
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;
use common::*;
use serde_json::json;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian and others put the binary (`/usr/sbin` is often not on a user's PATH).
fn nats_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SHARDCAST_NATS_SERVER") {
        return Some(p.into());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/usr/local/bin", "/usr/bin"].map(PathBuf::from))
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file())
}

/// The binary, or `None` after printing why these tests are skipped.
fn require_nats() -> Option<PathBuf> {
    let found = nats_binary();
    if found.is_none() {
        assert!(
            std::env::var("SHARDCAST_REQUIRE_NATS").as_deref() != Ok("1"),
            "nats-server not found and SHARDCAST_REQUIRE_NATS=1 (install it: apt-get install nats-server)"
        );
        eprintln!("SKIPPED: nats-server not found (apt-get install nats-server); cluster tests did not run");
    }
    found
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A `nats-server` child process; killed when dropped.
struct Nats {
    child: Child,
}

impl Nats {
    async fn start(bin: &PathBuf, port: u16) -> Nats {
        let child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        eventually("nats-server to listen", READY, || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        Nats { child }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node(port: u16, id: &str) -> Broker {
    node_with(port, id, "")
}

fn node_with(port: u16, id: &str, extra: &str) -> Broker {
    Broker::start(&format!(
        "{extra}[cluster]\nnats_url = \"nats://127.0.0.1:{port}\"\nnode_id = \"{id}\"\nsubject_prefix = \"sctest\"\n"
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
    let _nats = Nats::start(&bin, port).await;
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
    assert!(
        counter(&mb, "shardcast_cluster_duplicates_total") >= 1.0,
        "{mb}"
    );
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

    let _nats = Nats::start(&bin, port).await;
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

/// Publishes `probe` messages on `from` until `to_sub` receives one (cross-node delivery
/// is back), then a final marker that must arrive exactly once.
async fn resumed(from: &Broker, to_sub: &mut Ws, channel: &str) {
    let deadline = Instant::now() + READY;
    let mut back = false;
    while !back {
        assert!(
            Instant::now() < deadline,
            "cross-node delivery never resumed"
        );
        assert!(from.publish(channel, json!("probe")).await.is_success());
        back = to_sub
            .next_event(Duration::from_millis(200))
            .await
            .is_some();
    }
    assert!(from.publish(channel, json!("final")).await.is_success());
    loop {
        let v = to_sub.recv_json(RECV).await;
        if v["d"] == "final" {
            break;
        }
        assert_eq!(v["d"], "probe", "{v}");
    }
    to_sub.expect_silence(SILENCE).await;
}

#[tokio::test]
async fn nats_outage_mid_stream_keeps_local_delivery_and_heals() {
    let Some(bin) = require_nats() else { return };
    let port = free_port();
    let nats = Nats::start(&bin, port).await;
    let a = node(port, "a");
    let b = node(port, "b");
    ready(&a).await;
    ready(&b).await;
    let mut a_sub = a.vws_subscriber("feed/+").await;
    subscriptions(&a, 2.0).await;
    assert!(b.publish("feed/x", json!(1)).await.is_success());
    assert_eq!(a_sub.recv_json(RECV).await["d"], 1);

    drop(nats);
    eventually("a to notice NATS is gone", READY, || async {
        a.get("/readyz").await.status == 503
    })
    .await;
    // Local delivery goes on; what a publishes meanwhile is counted as not sent.
    assert!(a.publish("feed/y", json!(2)).await.is_success());
    assert_eq!(a_sub.recv_json(RECV).await["d"], 2);
    let m = a.metrics().await;
    assert!(
        counter(&m, "shardcast_cluster_dropped_unavailable_total") >= 1.0,
        "{m}"
    );

    let _nats = Nats::start(&bin, port).await;
    ready(&a).await;
    ready(&b).await;
    // a re-subscribed its interest by itself: b's publications reach a again, once.
    resumed(&b, &mut a_sub, "feed/z").await;
}

#[tokio::test]
async fn client_publish_with_headers_reaches_two_other_nodes_once() {
    let Some(bin) = require_nats() else { return };
    let port = free_port();
    let _nats = Nats::start(&bin, port).await;
    let publishing = "[client]\nallow_publish = true\n";
    let nodes = [
        node_with(port, "a", publishing),
        node_with(port, "b", publishing),
        node_with(port, "c", publishing),
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

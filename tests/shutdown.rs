//! Graceful shutdown (SPEC §6): SIGTERM flushes what is queued, closes every client with
//! 1001 and the process exits 0 within `server.shutdown_grace`.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test]
async fn sigterm_flushes_closes_clients_with_1001_and_exits_0() {
    let grace = Duration::from_secs(2);
    let mut broker = Broker::start("[server]\nshutdown_grace = \"2s\"\nshards = 2\n");
    let mut gows = Vec::new();
    let mut vws = Vec::new();
    for _ in 0..3 {
        gows.push(broker.gows_subscriber("bye").await);
        vws.push(broker.vws_subscriber("bye").await);
    }
    // Accepted before the signal, so it must be delivered before the close.
    broker.publish("bye", json!("last words")).await;
    let started = Instant::now();
    broker.sigterm();

    for ws in gows.iter_mut() {
        assert_eq!(ws.recv().await["data"], "last words");
        ws.expect_close(1001, grace + Duration::from_secs(2)).await;
    }
    for ws in vws.iter_mut() {
        assert_eq!(ws.recv().await["d"], "last words");
        ws.expect_close(1001, grace + Duration::from_secs(2)).await;
    }
    let status = broker
        .wait_exit(grace + Duration::from_secs(3))
        .await
        .unwrap_or_else(|| {
            panic!(
                "broker still running after SIGTERM; stderr:\n{}",
                broker.stderr()
            )
        });
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status:?}; stderr:\n{}",
        broker.stderr()
    );
    assert!(
        started.elapsed() < grace + Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn sigterm_with_no_clients_exits_0_quickly() {
    let mut broker = Broker::start("[server]\nshutdown_grace = \"5s\"\n");
    broker.sigterm();
    let status = broker
        .wait_exit(Duration::from_secs(8))
        .await
        .unwrap_or_else(|| {
            panic!(
                "broker still running after SIGTERM; stderr:\n{}",
                broker.stderr()
            )
        });
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
}

#[tokio::test]
async fn sigterm_with_a_stalled_client_still_exits_within_grace() {
    // A client that never reads cannot hold the broker past shutdown_grace.
    let grace = Duration::from_secs(1);
    let mut broker = Broker::start("[server]\nshutdown_grace = \"1s\"\n");
    let _raw = RawWs::stalled_with_backlog(&broker, "stall").await;
    let started = Instant::now();
    broker.sigterm();
    let status = broker
        .wait_exit(grace + Duration::from_secs(3))
        .await
        .unwrap_or_else(|| {
            panic!(
                "broker held past grace by a stalled client; stderr:\n{}",
                broker.stderr()
            )
        });
    assert_eq!(status.code(), Some(0));
    assert!(started.elapsed() < grace + Duration::from_secs(3));
}

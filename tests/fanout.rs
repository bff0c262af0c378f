//! Large fan-out on one shard: enough subscribers that the shard coalesces writes
//! (`server.write_coalesce`): every subscriber still gets every publication, in order,
//! and each socket write carries several frames instead of one.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;
use common::*;
use serde_json::json;

const SUBSCRIBERS: usize = 300; // over the 256-writes threshold that arms coalescing
const MESSAGES: u64 = 50;

#[tokio::test]
async fn coalesced_fanout_delivers_everything_in_order_with_fewer_writes() {
    let broker = Broker::start_with(
        "[server]\nwrite_coalesce = \"50ms\"\n",
        &["--shards", "1"],
        &[],
    );
    let mut subs = Vec::with_capacity(SUBSCRIBERS);
    for _ in 0..SUBSCRIBERS {
        subs.push(broker.vws_subscriber("wide").await);
    }
    // One publication per request: without coalescing each would be written to every
    // subscriber on its own.
    for n in 0..MESSAGES {
        let r = broker.publish("wide", json!(n)).await;
        assert!(r.is_success(), "{} {}", r.status, r.text);
    }
    for (i, sub) in subs.iter_mut().enumerate() {
        for n in 0..MESSAGES {
            let v = sub.recv_json(RECV).await;
            assert_eq!(v["t"], "wide", "subscriber {i}");
            assert_eq!(
                v["d"], n,
                "subscriber {i} got messages out of order or lost some"
            );
        }
    }
    let metrics = broker.get("/metrics").await.text;
    let frames = counter(&metrics, "shardcast_frames_written_total");
    let writes = counter(&metrics, "shardcast_socket_writes_total");
    assert!(
        frames >= (SUBSCRIBERS as f64) * (MESSAGES as f64),
        "frames written {frames}"
    );
    assert!(
        frames / writes > 2.0,
        "coalescing should put several frames in each write: {frames} frames in {writes} writes"
    );
}

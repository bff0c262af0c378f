//! Slow-consumer isolation (SPEC §1, §4): a client that never reads fills its bounded
//! outbound buffer and is handled by `client.on_full`, while a reading client on the same
//! channel receives every one of 20,000 messages in order.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const CHANNEL: &str = "firehose";
const TOTAL: u64 = 20_000;
/// Publications per API call. Kept well under `queue_frames` (64) so that a client which
/// does read is never legitimately over its queue between two writer turns.
const BATCH: u64 = 16;
/// Padding per message: 20,000 messages of ~1 KiB (20 MB) cannot all hide in kernel
/// socket buffers (a few MiB at most here), so a client that never reads really backs up.
const PAD: usize = 1000;

fn config(on_full: &str) -> String {
    format!("[client]\nqueue_frames = 64\nqueue_bytes = 65536\non_full = \"{on_full}\"\n")
}

/// Publish 0..TOTAL on CHANNEL while a reading gows client checks every one arrives in
/// order. Returns the reading client.
async fn firehose_with_reader(broker: &Broker) -> Ws {
    let fast = broker.gows_subscriber(CHANNEL).await;
    let reader = tokio::spawn(async move {
        let mut fast = fast;
        for n in 0..TOTAL {
            let v = fast.recv_json(Duration::from_secs(20)).await;
            assert_eq!(v["type"], "event", "message {n}: {v}");
            assert_eq!(
                v["data"]["n"], n,
                "reading client got messages out of order or lost some"
            );
        }
        fast
    });
    let pad = "x".repeat(PAD);
    let mut http = Http::connect(broker.addr).await;
    let mut n = 0;
    while n < TOTAL {
        let batch: Vec<Value> = (n..(n + BATCH).min(TOTAL))
            .map(|i| json!({"channel": CHANNEL, "data": {"n": i, "pad": pad}}))
            .collect();
        let r = http.post_json("/api/publish", &json!(batch)).await;
        assert!(r.is_success(), "batch at {n}: {} {}", r.status, r.text);
        n += BATCH;
    }
    match within(
        Duration::from_secs(60),
        "reading client to get all messages",
        reader,
    )
    .await
    {
        Ok(fast) => fast,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("reader task failed: {e}"),
    }
}

/// Sequence numbers in the frames a raw client read.
fn seqs(frames: &[Vec<u8>]) -> Vec<u64> {
    frames
        .iter()
        .filter_map(|p| serde_json::from_slice::<Value>(p).ok())
        .filter(|v| v["type"] == "event")
        .map(|v| v["data"]["n"].as_u64().expect("numeric data.n"))
        .collect()
}

fn assert_increasing(s: &[u64]) {
    assert!(
        s.windows(2).all(|w| w[0] < w[1]),
        "slow client's messages are not in order"
    );
}

#[tokio::test]
async fn disconnect_policy_cuts_the_stalled_client_and_spares_the_reader() {
    let broker = Broker::start(&config("disconnect"));
    let mut slow = RawWs::stalled_subscriber(broker.addr, CHANNEL).await;
    let mut fast = firehose_with_reader(&broker).await;

    // The stalled client must have been cut: reading what was buffered ends in close/EOF.
    let (end, frames, _) = slow.wait_end(Duration::from_secs(10)).await;
    // The close frame may not fit into a full socket; if it was sent, it says why.
    if let RawEnd::Close(code, reason) = end {
        assert_eq!(code, Some(1008), "slow consumer close code");
        assert!(reason.contains("slow consumer"), "close reason {reason:?}");
    }
    let got = seqs(&frames);
    assert!(
        (got.len() as u64) < TOTAL,
        "stalled client cannot have received everything"
    );
    assert_increasing(&got);

    eventually("stats drop the cut client", RECV, || async {
        stats_clients(&broker).await == 1
    })
    .await;
    fast.gows_sync().await;
}

/// Under the drop policies the stalled client stays connected; once it starts reading it
/// gets an in-order subset and then answers a ping.
async fn drop_policy(on_full: &str) -> Vec<u64> {
    let broker = Broker::start(&config(on_full));
    let mut slow = RawWs::stalled_subscriber(broker.addr, CHANNEL).await;
    let mut fast = firehose_with_reader(&broker).await;
    assert_eq!(
        stats_clients(&broker).await,
        2,
        "{on_full}: the stalled client must stay connected"
    );

    // Drain what was kept. Silence for a short while means the outbox is empty (only an
    // absence is asserted with a fixed wait).
    let mut frames = Vec::new();
    loop {
        match slow.read_frame(Duration::from_millis(500)).await {
            Err(()) => break,
            Ok(None) => panic!("{on_full}: stalled client was disconnected"),
            Ok(Some((_, OP_CLOSE, p))) => {
                panic!("{on_full}: stalled client got a close frame {p:?}")
            }
            Ok(Some((_, OP_TEXT, p))) => frames.push(p),
            Ok(Some(_)) => continue,
        }
    }
    let got = seqs(&frames);
    assert!(!got.is_empty(), "{on_full}: something was kept");
    assert!(
        (got.len() as u64) < TOTAL,
        "{on_full}: a stalled client cannot have kept everything"
    );
    assert_increasing(&got);

    slow.send_text(r#"{"type":"ping"}"#).await;
    assert_eq!(
        slow.recv_json(RECV).await["type"],
        "pong",
        "{on_full}: stalled client still served"
    );
    fast.gows_sync().await;
    got
}

#[tokio::test]
async fn drop_oldest_keeps_the_stalled_client_and_the_newest_messages() {
    let got = drop_policy("drop_oldest").await;
    assert_eq!(
        got.last(),
        Some(&(TOTAL - 1)),
        "drop_oldest keeps the newest message"
    );
}

#[tokio::test]
async fn drop_newest_keeps_the_stalled_client_and_the_oldest_messages() {
    let got = drop_policy("drop_newest").await;
    assert_eq!(
        got.first(),
        Some(&0),
        "drop_newest keeps the oldest message"
    );
    assert_ne!(
        got.last(),
        Some(&(TOTAL - 1)),
        "drop_newest drops the newest messages"
    );
}

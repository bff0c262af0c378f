//! Publishing faster than shards can deliver: the broker stops reading the publisher
//! (TCP pushes back) instead of refusing publishes, so nothing is lost or nacked and the
//! pauses are counted.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;
use common::*;
use std::time::Duration;

const MESSAGES: usize = 20_000;

/// Two shards with inboxes of 512 publications, clients allowed to publish at any rate.
fn small_inbox_broker() -> Broker {
    Broker::start_with(
        "[server]\ninbox_capacity = 512\n[client]\nallow_publish = true\npublish_rate = 0.0\n",
        &["--shards", "2"],
        &[],
    )
}

#[tokio::test]
async fn a_publish_burst_larger_than_the_inbox_is_delivered_whole_without_nacks() {
    // An inbox of 512 publications and one burst of 20,000 in a single write.
    let broker = small_inbox_broker();
    let mut subs = Vec::new();
    for _ in 0..4 {
        subs.push(broker.vws_subscriber("burst").await);
    }
    let mut publisher = RawWs::connect(broker.addr, "vws").await;
    let mut burst = Vec::new();
    for n in 0..MESSAGES {
        let msg = format!(r#"{{"t":"burst","d":{n}}}"#);
        burst.extend(encode_frame(true, 0x1, msg.as_bytes(), true));
    }
    publisher.send_raw(&burst).await;
    for (i, sub) in subs.iter_mut().enumerate() {
        for n in 0..MESSAGES {
            let v = sub.recv_json(RECV).await;
            assert_eq!(v["d"], n, "subscriber {i} lost or reordered a publication");
        }
    }
    // No reply at all: publishes without "i" are only answered when refused.
    match publisher.read_frame(Duration::from_millis(300)).await {
        Ok(None) | Err(()) => {}
        Ok(Some((_, _, payload))) => {
            panic!("publisher got {:?}", String::from_utf8_lossy(&payload))
        }
    }
    let metrics = broker.get("/metrics").await.text;
    assert!(
        counter(&metrics, "shardcast_read_pauses_total") > 0.0,
        "no read was paused"
    );
    assert_eq!(
        counter(
            &metrics,
            "shardcast_rejections_total{reason=\"overloaded\"}"
        ),
        0.0
    );
}

#[tokio::test]
async fn bursts_from_many_publishers_resume_on_every_shard() {
    // Publishers on a shard without subscribers pause on another shard's inbox; their
    // shard must notice when it drains even though its own inbox stays empty.
    const PUBLISHERS: usize = 6;
    const EACH: usize = 5_000;
    let broker = small_inbox_broker();
    let mut sub = broker.vws_subscriber("many").await;
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let mut publisher = RawWs::connect(broker.addr, "vws").await;
        let mut burst = Vec::new();
        for n in 0..EACH {
            let msg = format!(r#"{{"t":"many","d":[{p},{n}]}}"#);
            burst.extend(encode_frame(true, 0x1, msg.as_bytes(), true));
        }
        publisher.send_raw(&burst).await;
        publishers.push(publisher);
    }
    let mut next = [0u64; PUBLISHERS];
    for _ in 0..PUBLISHERS * EACH {
        let v = sub.recv_json(RECV).await;
        let p = v["d"][0].as_u64().unwrap() as usize;
        assert_eq!(
            v["d"][1], next[p],
            "publisher {p}'s messages lost or reordered"
        );
        next[p] += 1;
    }
    let metrics = broker.get("/metrics").await.text;
    assert_eq!(
        counter(
            &metrics,
            "shardcast_rejections_total{reason=\"overloaded\"}"
        ),
        0.0
    );
}

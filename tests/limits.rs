//! WebSocket behaviour at the edges that is not abuse: a fragmented message is
//! reassembled, a ping is answered with its payload, and a client that answers the
//! broker's pings outlives `server.idle_timeout`. Abuse and every row of SPEC §4 (error /
//! nack / close code / HTTP status, each with a canary) are in `hostile.rs`.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;
use common::*;
use std::time::Duration;

#[tokio::test]
async fn fragmented_valid_message_is_reassembled() {
    let broker = Broker::start("");
    let mut raw = RawWs::connect(broker.addr, "gows").await;
    raw.send_raw(&encode_frame(false, OP_TEXT, b"{\"type\":", true))
        .await;
    raw.send_raw(&encode_frame(true, OP_CONT, b"\"ping\"}", true))
        .await;
    let v = raw.recv_json(RECV).await;
    assert_eq!(v["type"], "pong");
}

#[tokio::test]
async fn ping_is_answered_with_pong_echoing_payload() {
    let broker = Broker::start("");
    let mut raw = RawWs::connect(broker.addr, "gows").await;
    raw.send_raw(&encode_frame(true, OP_PING, b"hello", true))
        .await;
    loop {
        match raw.read_frame(RECV).await {
            Ok(Some((_, OP_PONG, p))) => {
                assert_eq!(p, b"hello");
                break;
            }
            Ok(Some((_, OP_PING, _))) => continue,
            other => panic!("expected pong, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn client_answering_pings_survives_idle_timeout() {
    let broker = Broker::start("[server]\nidle_timeout = \"1s\"\nping_interval = \"300ms\"\n");
    // tokio-tungstenite answers pings while we read; 2.5 s of silence from the app side.
    let mut ws = broker.gows_subscriber("alive").await;
    ws.expect_silence(Duration::from_millis(2500)).await;
    ws.gows_sync().await;
}

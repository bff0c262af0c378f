//! RFC 6455 close frames and UTF-8 (SPEC §10): a close frame that may not be sent gets
//! 1002, a reason that is not UTF-8 gets 1007, a valid one is echoed; a fragmented text
//! message fails at the first invalid fragment, not at its end. Raw frames over a real
//! socket, in both dialects, each refusal counted.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;
use common::*;
use std::time::Duration;

const CLOSE: Duration = Duration::from_secs(5);

fn close_frame(payload: &[u8]) -> Vec<u8> {
    encode_frame(true, OP_CLOSE, payload, true)
}

fn code_and_reason(code: u16, reason: &[u8]) -> Vec<u8> {
    [&code.to_be_bytes()[..], reason].concat()
}

#[tokio::test]
async fn bad_close_frames_get_the_code_the_rfc_asks_for() {
    let broker = Broker::start("");
    let never_sent = [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ];
    let mut cases: Vec<(String, Vec<u8>, u16)> = never_sent
        .iter()
        .map(|c| (format!("code {c}"), code_and_reason(*c, b""), 1002))
        .collect();
    cases.push(("1-byte payload".into(), vec![0x03], 1002));
    cases.push((
        "reason not UTF-8".into(),
        code_and_reason(1000, b"bye \xff"),
        1007,
    ));
    cases.push((
        "reason cut inside a character".into(),
        code_and_reason(1000, b"caf\xc3"),
        1007,
    ));
    let mut refused = 0;
    for dialect in ["gows", "vws"] {
        for (case, payload, code) in &cases {
            let mut raw = RawWs::connect(broker.addr, dialect).await;
            raw.send_raw(&close_frame(payload)).await;
            let (end, _, _) = raw.wait_end(CLOSE).await;
            match end {
                RawEnd::Close(got, _) => {
                    assert_eq!(got, Some(*code), "{dialect}: {case}");
                }
                RawEnd::Eof => panic!("{dialect}: {case}: no close frame"),
            }
            if *code == 1002 {
                refused += 1;
            }
        }
    }
    let metrics = broker.metrics().await;
    assert_eq!(
        rejections(&metrics).get("bad_close_frame").copied(),
        Some(f64::from(refused)),
        "every bad close frame counted"
    );
}

#[tokio::test]
async fn valid_close_frames_are_echoed() {
    let broker = Broker::start("");
    for dialect in ["gows", "vws"] {
        for code in [1000u16, 1001, 1003, 1011, 1013, 3000, 4999] {
            let mut raw = RawWs::connect(broker.addr, dialect).await;
            raw.send_raw(&close_frame(&code_and_reason(code, "déjà vu".as_bytes())))
                .await;
            let (end, _, _) = raw.wait_end(CLOSE).await;
            assert!(
                matches!(end, RawEnd::Close(Some(c), _) if c == code),
                "{dialect} {code}: {end:?}"
            );
        }
        // No code at all: answered with 1000 (1005 is never sent).
        let mut raw = RawWs::connect(broker.addr, dialect).await;
        raw.send_raw(&close_frame(b"")).await;
        let (end, _, _) = raw.wait_end(CLOSE).await;
        assert!(
            matches!(end, RawEnd::Close(Some(1000), _)),
            "{dialect}: {end:?}"
        );
    }
}

#[tokio::test]
async fn invalid_utf8_in_a_fragment_closes_before_the_message_ends() {
    let broker = Broker::start("");
    for dialect in ["gows", "vws"] {
        let mut raw = RawWs::connect(broker.addr, dialect).await;
        // The first fragment already holds an impossible byte; the message never ends.
        raw.send_raw(&encode_frame(false, OP_TEXT, b"{\"type\":\"\xff", true))
            .await;
        raw.expect_close(1007, CLOSE).await;

        // A character split between fragments is not an error.
        let mut raw = RawWs::connect(broker.addr, dialect).await;
        let ping = if dialect == "gows" {
            r#"{"type":"ping","data":"é"}"#
        } else {
            r#"{"k":"s","t":"é","i":1}"#
        };
        let bytes = ping.as_bytes();
        let cut = ping.find('é').unwrap() + 1; // inside the two bytes of é
        raw.send_raw(&encode_frame(false, OP_TEXT, &bytes[..cut], true))
            .await;
        raw.send_raw(&encode_frame(true, OP_CONT, &bytes[cut..], true))
            .await;
        let reply = raw.recv_json(CLOSE).await;
        assert!(reply.is_object(), "{dialect}: {reply}");
    }
}

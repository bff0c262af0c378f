//! WebSocket protocol violations, each on a fresh connection: the broker must close it
//! with the code SPEC §4 names, and nothing else may notice.

use super::{close_of, short, within, Ctx};
use crate::wire::{self, OP_PING, OP_TEXT};
use std::rc::Rc;
use std::time::Duration;

/// Continuation, binary and a reserved opcode (the harness never sends them otherwise).
const OP_CONTINUATION: u8 = 0x0;
const OP_BINARY: u8 = 0x2;
const OP_RESERVED: u8 = 0x3;
const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;

/// One violation: its name, its bytes, and the close code it must get.
struct Violation {
    name: &'static str,
    bytes: Vec<u8>,
    close: u16,
}

fn violations() -> Vec<Violation> {
    let frame = |first: u8, payload: &[u8], masked: bool| {
        let mut out = Vec::new();
        wire::push_raw_frame(first, payload, masked, &mut out);
        out
    };
    // A text frame whose header claims 16 MiB; only its first 16 KiB follow.
    let mut claims_16m = vec![FIN | OP_TEXT, 0x80 | 127];
    claims_16m.extend_from_slice(&(16u64 << 20).to_be_bytes());
    claims_16m.extend_from_slice(&[1, 2, 3, 4]);
    claims_16m.extend(std::iter::repeat_n(b'a', 16 * 1024));
    // Two fragments of 40 KB: each under the default 64 KiB limit, together over it.
    let mut fragments = frame(OP_TEXT, &[b'a'; 40_000], true);
    fragments.extend(frame(FIN | OP_CONTINUATION, &[b'a'; 40_000], true));
    let v = |name, bytes, close| Violation { name, bytes, close };
    vec![
        v(
            "invalid UTF-8",
            frame(FIN | OP_TEXT, &[b'{', 0xff, 0xfe], true),
            1007,
        ),
        v(
            "binary frame",
            frame(FIN | OP_BINARY, b"\x00\x01", true),
            1003,
        ),
        v("unmasked frame", frame(FIN | OP_TEXT, b"{}", false), 1002),
        v(
            "ping over 125 bytes",
            frame(FIN | OP_PING, &[b'p'; 200], true),
            1002,
        ),
        v("fragmented ping", frame(OP_PING, b"p", true), 1002),
        v(
            "reserved opcode",
            frame(FIN | OP_RESERVED, b"x", true),
            1002,
        ),
        v(
            "reserved bit",
            frame(FIN | RSV1 | OP_TEXT, b"{}", true),
            1002,
        ),
        v(
            "stray continuation",
            frame(FIN | OP_CONTINUATION, b"x", true),
            1002,
        ),
        v("16 MiB message", claims_16m, 1009),
        v("fragments over the limit", fragments, 1009),
    ]
}

/// Opens a connection, commits one violation, and waits for the close; round-robin over
/// [`violations`], about 25 connections a second.
pub async fn bad_frames(ctx: Rc<Ctx>, kind: &'static str) {
    let cases = violations();
    for case in cases.iter().cycle() {
        if !ctx.running() {
            break;
        }
        ctx.pause(Duration::from_millis(25)).await;
        let Some(mut c) = ctx.open_counted(kind).await else {
            continue;
        };
        if let Err(e) = within(c.send(&case.bytes)).await {
            // The broker may close before it has read everything a long frame sent.
            ctx.count(
                kind,
                format!("{}: write failed: {}", case.name, short(&e)),
                1,
            );
            continue;
        }
        match close_of(&mut c).await {
            Some((code, _)) if code == case.close => {
                ctx.count(kind, format!("{}: closed {code}", case.name), 1);
            }
            Some((code, reason)) => {
                ctx.unexpected(kind, format!("{}: closed {code} {reason}", case.name));
            }
            None => ctx.unexpected(kind, format!("{}: not closed in 3 s", case.name)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_violation_names_a_close_code() {
        let v = violations();
        assert_eq!(v.len(), 10);
        assert!(v.iter().all(|v| (1002..=1009).contains(&v.close)));
        assert!(v.iter().all(|v| !v.bytes.is_empty()));
    }
}

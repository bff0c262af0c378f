//! WebSocket framing (RFC 6455) as pure functions: encoding whole server frames into
//! `Bytes`, and parsing/unmasking client frames.
//!
//! Server frames are never masked, so one encoded frame is the same bytes for every
//! subscriber: a publication is framed once and the `Bytes` are shared. Client frames are
//! only *checked* here (header shape, masking, control-frame rules); message size limits,
//! UTF-8 validation and fragmentation state belong to the connection reader.

use crate::error::Reject;
use bytes::Bytes;

/// Room reserved in front of a rendered payload: the longest server header (no mask,
/// 64-bit length).
pub const MAX_SERVER_HEADER: usize = 10;
/// Longest payload of a control frame (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

const OP_TEXT: u8 = 0x1;
/// RSV1: the message is compressed (permessage-deflate, RFC 7692 §6).
const RSV1: u8 = 0x40;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// A frame opcode a client may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// 0x0: continues a fragmented message.
    Continuation,
    /// 0x1: a UTF-8 text message (or its first fragment).
    Text,
    /// 0x2: a binary message (refused by the broker with close 1003).
    Binary,
    /// 0x8: close.
    Close,
    /// 0x9: ping.
    Ping,
    /// 0xA: pong.
    Pong,
}

impl OpCode {
    /// The opcode for the low nibble of the first header byte, if defined.
    fn from_bits(bits: u8) -> Option<OpCode> {
        match bits {
            0x0 => Some(OpCode::Continuation),
            0x1 => Some(OpCode::Text),
            0x2 => Some(OpCode::Binary),
            0x8 => Some(OpCode::Close),
            0x9 => Some(OpCode::Ping),
            0xA => Some(OpCode::Pong),
            _ => None,
        }
    }

    /// True for close, ping and pong.
    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// The parsed header of one client frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Final fragment of a message.
    pub fin: bool,
    /// RSV1 (permessage-deflate: the message is compressed).
    pub compressed: bool,
    /// Frame opcode.
    pub opcode: OpCode,
    /// Masking key (client frames are always masked).
    pub mask: [u8; 4],
    /// Bytes taken by the header, masking key included; the payload starts here.
    pub header_len: usize,
    /// Payload length as declared (the caller checks it against its limits).
    pub payload_len: u64,
}

/// A server (unmasked, FIN) header for `opcode` and payload `len`, and how many of the
/// returned bytes it uses (2, 4 or 10).
fn server_header(opcode: u8, len: usize) -> ([u8; MAX_SERVER_HEADER], usize) {
    let mut h = [0u8; MAX_SERVER_HEADER];
    h[0] = 0x80 | opcode;
    if len < 126 {
        h[1] = len as u8;
        (h, 2)
    } else if let Ok(len16) = u16::try_from(len) {
        h[1] = 126;
        let [a, b] = len16.to_be_bytes();
        h[2] = a;
        h[3] = b;
        (h, 4)
    } else {
        h[1] = 127;
        for (slot, byte) in h.iter_mut().skip(2).zip((len as u64).to_be_bytes()) {
            *slot = byte;
        }
        (h, 10)
    }
}

/// Builds a complete text frame whose payload `render` appends to the buffer it is given.
///
/// The payload is rendered once, after [`MAX_SERVER_HEADER`] reserved bytes; the real
/// header is then written right in front of it and the returned `Bytes` starts there. One
/// allocation, no copy of the payload, whatever its length.
pub fn build_text_frame(render: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    build_text_frame_sized(256 - MAX_SERVER_HEADER, render)
}

/// [`build_text_frame`] for a payload of about `payload_hint` bytes: the buffer is sized
/// for it up front, so a publication's frame (kept as long as the publication is live
/// or retained in history) holds no doubling slack and is not reallocated while it grows.
pub fn build_text_frame_sized(payload_hint: usize, render: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    let mut buf = Vec::with_capacity(MAX_SERVER_HEADER + payload_hint);
    buf.resize(MAX_SERVER_HEADER, 0);
    render(&mut buf);
    finish_frame(OP_TEXT, buf).0
}

/// A text frame with RSV1 set (permessage-deflate, RFC 7692 §6): `render` appends the
/// compressed payload and returns false on failure. Returns the frame and its payload
/// length. Never fragmented: the whole message is one frame.
pub fn build_deflated_frame(
    payload_hint: usize,
    render: impl FnOnce(&mut Vec<u8>) -> bool,
) -> Option<(Bytes, usize)> {
    let mut buf = Vec::with_capacity(MAX_SERVER_HEADER + payload_hint);
    buf.resize(MAX_SERVER_HEADER, 0);
    if !render(&mut buf) {
        return None;
    }
    Some(finish_frame(RSV1 | OP_TEXT, buf))
}

/// Writes the header for the payload that follows [`MAX_SERVER_HEADER`] reserved bytes
/// of `buf` right in front of it; returns the frame (starting at its header) and the
/// payload length.
fn finish_frame(opcode: u8, buf: Vec<u8>) -> (Bytes, usize) {
    let mut buf = buf;
    let payload_len = buf.len().saturating_sub(MAX_SERVER_HEADER);
    let (header, header_len) = server_header(opcode, payload_len);
    let start = MAX_SERVER_HEADER - header_len;
    if let (Some(dst), Some(src)) = (
        buf.get_mut(start..MAX_SERVER_HEADER),
        header.get(..header_len),
    ) {
        dst.copy_from_slice(src);
    }
    (Bytes::from(buf).slice(start..), payload_len)
}

/// The payload of a server frame made here (unmasked, length in the fewest bytes).
pub fn server_payload(frame: &[u8]) -> &[u8] {
    let header_len = match frame.get(1).map(|b| b & 0x7F) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    frame.get(header_len..).unwrap_or_default()
}

/// Frames `payload` with `opcode` (payload copied once).
fn frame(opcode: u8, payload: &[u8]) -> Bytes {
    let (header, header_len) = server_header(opcode, payload.len());
    let mut buf = Vec::with_capacity(header_len + payload.len());
    buf.extend_from_slice(header.get(..header_len).unwrap_or_default());
    buf.extend_from_slice(payload);
    Bytes::from(buf)
}

/// A complete text frame carrying `payload` (which must be UTF-8 for clients to accept it).
pub fn text_frame(payload: &[u8]) -> Bytes {
    frame(OP_TEXT, payload)
}

/// A close frame with `code` and `reason`, the reason cut at a char boundary so the
/// payload fits the 125-byte control-frame limit (2 code bytes + at most 123).
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut cut = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut payload = Vec::with_capacity(2 + cut);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason.as_bytes().get(..cut).unwrap_or_default());
    frame(OP_CLOSE, &payload)
}

/// A ping frame; `payload` beyond 125 bytes is dropped.
pub fn ping_frame(payload: &[u8]) -> Bytes {
    frame(OP_PING, control_payload(payload))
}

/// A pong frame (answering a client ping with its payload); beyond 125 bytes is dropped.
pub fn pong_frame(payload: &[u8]) -> Bytes {
    frame(OP_PONG, control_payload(payload))
}

fn control_payload(payload: &[u8]) -> &[u8] {
    payload.get(..MAX_CONTROL_PAYLOAD).unwrap_or(payload)
}

/// Parses the header of a client frame at the start of `buf`.
///
/// Returns `Ok(None)` while `buf` does not yet hold the whole header (read more and call
/// again). Errors are reported as soon as the bytes that prove them have arrived.
///
/// # Errors
/// - [`Reject::BadOpcode`]: RSV2 or RSV3 is set or the opcode is undefined (RSV1 is
///   reported in [`FrameHeader::compressed`] for the reader to judge);
/// - [`Reject::UnmaskedFrame`]: the mask bit is clear;
/// - [`Reject::BadControlFrame`]: close/ping/pong longer than 125 bytes or without FIN;
/// - [`Reject::MessageTooLarge`]: a 64-bit length with its most significant bit set;
/// - [`Reject::NonMinimalLength`]: a length in more bytes than it needs.
pub fn parse_client_header(buf: &[u8]) -> Result<Option<FrameHeader>, Reject> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    // RSV1 is permessage-deflate's "compressed" bit: the reader decides whether this
    // connection may set it (and on which frames). RSV2/RSV3 are never defined here.
    if b0 & 0x30 != 0 {
        return Err(Reject::BadOpcode);
    }
    let compressed = b0 & RSV1 != 0;
    let opcode = OpCode::from_bits(b0 & 0x0F).ok_or(Reject::BadOpcode)?;
    let fin = b0 & 0x80 != 0;
    if b1 & 0x80 == 0 {
        return Err(Reject::UnmaskedFrame);
    }
    let len7 = b1 & 0x7F;
    // 126/127 announce an extended length, which already exceeds the control limit.
    if opcode.is_control() && (usize::from(len7) > MAX_CONTROL_PAYLOAD || !fin) {
        return Err(Reject::BadControlFrame);
    }
    let (payload_len, len_end) = match len7 {
        // RFC 6455 §5.2: the length takes the fewest bytes it can, so a 16-bit length
        // under 126 or a 64-bit one under 65,536 is a protocol error.
        126 => match buf.get(2..4) {
            Some(&[a, b]) => match u16::from_be_bytes([a, b]) {
                n if n < 126 => return Err(Reject::NonMinimalLength),
                n => (u64::from(n), 4),
            },
            _ => return Ok(None),
        },
        127 => match buf.get(2..10).and_then(|s| <[u8; 8]>::try_from(s).ok()) {
            Some(bytes) => {
                let len = u64::from_be_bytes(bytes);
                if len >> 63 != 0 {
                    return Err(Reject::MessageTooLarge);
                }
                if len <= u64::from(u16::MAX) {
                    return Err(Reject::NonMinimalLength);
                }
                (len, 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    let Some(mask) = buf
        .get(len_end..len_end + 4)
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
    else {
        return Ok(None);
    };
    Ok(Some(FrameHeader {
        fin,
        compressed,
        opcode,
        mask,
        header_len: len_end + 4,
        payload_len,
    }))
}

/// Unmasks (or masks: XOR is its own inverse) `payload` in place with `mask`, where
/// `payload` starts at offset 0 of the frame payload.
///
/// Eight bytes at a time as one `u64` XOR; the key repeats every 4 bytes, so an 8-byte
/// word of it lines up with every chunk and the tail starts at key offset 0 again.
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let [a, b, c, d] = mask;
    let wide = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        if let Ok(word) = <[u8; 8]>::try_from(&*chunk) {
            chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
        }
    }
    for (byte, key) in chunks.into_remainder().iter_mut().zip(mask.iter().cycle()) {
        *byte ^= key;
    }
}

/// The status code of a client close payload, or `None` when it carries none (fewer than
/// two bytes). The code is returned as sent; [`parse_close`] is the validating form.
pub fn close_code_of(payload: &[u8]) -> Option<u16> {
    match payload {
        [hi, lo, ..] => Some(u16::from_be_bytes([*hi, *lo])),
        _ => None,
    }
}

/// Whether an endpoint may put `code` in a close frame (RFC 6455 §7.4.1, §7.4.2 and the
/// IANA registry): 1000-1003, 1007-1014, and 3000-4999 for libraries and applications.
/// 1004 is reserved, 1005/1006/1015 are only for reporting, everything else unassigned.
pub fn close_code_sendable(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Validates a client close payload (RFC 6455 §5.5.1): empty, or a sendable code followed
/// by a UTF-8 reason. Returns the code, if any.
///
/// # Errors
/// [`Reject::BadCloseFrame`] (1002) for a 1-byte payload or a code that may not be sent,
/// [`Reject::InvalidUtf8`] (1007) for a reason that is not UTF-8.
pub fn parse_close(payload: &[u8]) -> Result<Option<u16>, Reject> {
    match payload {
        [] => Ok(None),
        [_] => Err(Reject::BadCloseFrame),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !close_code_sendable(code) {
                return Err(Reject::BadCloseFrame);
            }
            std::str::from_utf8(reason).map_err(|_| Reject::InvalidUtf8)?;
            Ok(Some(code))
        }
    }
}

/// Test helper: splits a complete server frame into (first header byte, payload), checking
/// that it is unmasked and that the declared length matches exactly.
#[cfg(test)]
pub(crate) fn split_server_frame(frame: &[u8]) -> (u8, &[u8]) {
    assert!(frame.len() >= 2, "frame too short");
    let b0 = frame[0];
    assert_eq!(frame[1] & 0x80, 0, "server frames are unmasked");
    let (len, start) = match frame[1] & 0x7F {
        126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&frame[2..10]);
            (u64::from_be_bytes(b) as usize, 10)
        }
        n => (n as usize, 2),
    };
    assert_eq!(frame.len(), start + len, "declared length matches");
    (b0, &frame[start..])
}

/// Test helper: the payload of a server text frame as a `serde_json::Value`.
#[cfg(test)]
pub(crate) fn text_frame_json(frame: &[u8]) -> serde_json::Value {
    let (b0, payload) = split_server_frame(frame);
    assert_eq!(b0, 0x81, "FIN + text");
    serde_json::from_slice(payload).expect("frame payload is JSON")
}

#[cfg(test)]
mod tests {

    #[test]
    fn close_codes_that_may_be_sent() {
        for ok in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
        ] {
            assert!(close_code_sendable(ok), "{ok}");
        }
        for ok in [3000, 3999, 4000, 4999] {
            assert!(close_code_sendable(ok), "{ok}");
        }
        let never = [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ];
        for bad in never {
            assert!(!close_code_sendable(bad), "{bad}");
            assert_eq!(parse_close(&bad.to_be_bytes()), Err(Reject::BadCloseFrame));
        }
        assert_eq!(parse_close(&[]), Ok(None));
        assert_eq!(parse_close(&[3]), Err(Reject::BadCloseFrame));
        assert_eq!(parse_close(b"\x03\xe8\xc3"), Err(Reject::InvalidUtf8));
        assert_eq!(parse_close(b"\x03\xe8caf\xc3\xa9"), Ok(Some(1000)));
    }
    use super::*;

    /// Masks `payload` and prefixes a client header (using the minimal length encoding).
    fn client_frame(b0: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![b0];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 0xFFFF {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        let mut body = payload.to_vec();
        unmask(&mut body, mask);
        out.extend_from_slice(&body);
        out
    }

    fn naive_unmask(payload: &mut [u8], mask: [u8; 4]) {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }

    #[test]
    fn server_header_lengths_at_boundaries() {
        for (len, header) in [
            (0, 2),
            (125, 2),
            (126, 4),
            (65_535, 4),
            (65_536, 10),
            (70_000, 10),
        ] {
            let payload = vec![b'x'; len];
            for f in [
                text_frame(&payload),
                build_text_frame(|b| b.extend_from_slice(&payload)),
            ] {
                assert_eq!(f.len(), header + len, "len {len}");
                let (b0, body) = split_server_frame(&f);
                assert_eq!(b0, 0x81);
                assert_eq!(body, &payload[..]);
            }
        }
    }

    #[test]
    fn client_header_lengths_round_trip() {
        let mask = [1, 2, 3, 4];
        for (len, header_len) in [(0, 6), (125, 6), (126, 8), (65_535, 8), (65_536, 14)] {
            let payload = vec![b'y'; len];
            let f = client_frame(0x81, &payload, mask);
            let h = parse_client_header(&f).expect("valid").expect("complete");
            assert_eq!(
                h,
                FrameHeader {
                    fin: true,
                    compressed: false,
                    opcode: OpCode::Text,
                    mask,
                    header_len,
                    payload_len: len as u64
                }
            );
            // Every strict prefix of the header is "need more".
            for cut in 0..header_len {
                assert_eq!(parse_client_header(&f[..cut]), Ok(None), "cut {cut}");
            }
            let mut body = f[header_len..].to_vec();
            unmask(&mut body, h.mask);
            assert_eq!(body, payload);
        }
    }

    #[test]
    fn opcodes_and_fin() {
        let cases = [
            (0x00, OpCode::Continuation, false),
            (0x81, OpCode::Text, true),
            (0x01, OpCode::Text, false),
            (0x82, OpCode::Binary, true),
            (0x88, OpCode::Close, true),
            (0x89, OpCode::Ping, true),
            (0x8A, OpCode::Pong, true),
        ];
        for (b0, op, fin) in cases {
            let h = parse_client_header(&client_frame(b0, b"", [0; 4]))
                .expect("ok")
                .expect("some");
            assert_eq!((h.opcode, h.fin), (op, fin));
        }
    }

    #[test]
    fn header_errors() {
        // RSV2/3 (RSV1 is the reader's to judge: permessage-deflate).
        for rsv in [0x20, 0x10] {
            assert_eq!(
                parse_client_header(&[0x81 | rsv, 0x80]),
                Err(Reject::BadOpcode)
            );
        }
        // Undefined data and control opcodes.
        for op in [0x3, 0x7, 0xB, 0xF] {
            assert_eq!(
                parse_client_header(&[0x80 | op, 0x80]),
                Err(Reject::BadOpcode)
            );
        }
        assert_eq!(
            parse_client_header(&[0x81, 0x05]),
            Err(Reject::UnmaskedFrame)
        );
        // Control frames: too long (extended length) or fragmented.
        assert_eq!(
            parse_client_header(&[0x89, 0x80 | 126]),
            Err(Reject::BadControlFrame)
        );
        assert_eq!(
            parse_client_header(&[0x88, 0x80 | 127]),
            Err(Reject::BadControlFrame)
        );
        assert_eq!(
            parse_client_header(&[0x09, 0x80]),
            Err(Reject::BadControlFrame)
        );
        assert_eq!(
            parse_client_header(&[0x0A, 0x80]),
            Err(Reject::BadControlFrame)
        );
        assert!(parse_client_header(&client_frame(0x89, &[0; 125], [0; 4])).is_ok());
        // 64-bit length with the top bit set.
        let mut f = vec![0x82, 0x80 | 127];
        f.extend_from_slice(&(1u64 << 63).to_be_bytes());
        assert_eq!(parse_client_header(&f), Err(Reject::MessageTooLarge));
        let mut f = vec![0x82, 0x80 | 127];
        f.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
        f.extend_from_slice(&[0; 4]);
        let h = parse_client_header(&f).expect("ok").expect("some");
        assert_eq!(h.payload_len, u64::MAX >> 1);
    }

    #[test]
    fn unmask_matches_naive_loop() {
        let mask = [0xA5, 0x3C, 0x01, 0xFF];
        for len in 0..40 {
            let original: Vec<u8> = (0..len as u8).map(|i| i.wrapping_mul(37)).collect();
            let mut fast = original.clone();
            let mut slow = original.clone();
            unmask(&mut fast, mask);
            naive_unmask(&mut slow, mask);
            assert_eq!(fast, slow, "len {len}");
            unmask(&mut fast, mask);
            assert_eq!(fast, original);
        }
    }

    #[test]
    fn control_frames() {
        let f = close_frame(1000, "bye");
        let (b0, p) = split_server_frame(&f);
        assert_eq!(b0, 0x88);
        assert_eq!(close_code_of(p), Some(1000));
        assert_eq!(&p[2..], b"bye");

        // 200 bytes of 2-byte chars: cut to the last boundary at or under 123 bytes.
        let long = "é".repeat(100);
        let f = close_frame(1008, &long);
        let (_, p) = split_server_frame(&f);
        assert_eq!(p.len(), 2 + 122);
        assert!(std::str::from_utf8(&p[2..]).is_ok());
        let f = close_frame(1001, &"a".repeat(300));
        assert_eq!(split_server_frame(&f).1.len(), 125);

        let ping = ping_frame(&[7; 200]);
        let (b0, p) = split_server_frame(&ping);
        assert_eq!((b0, p.len()), (0x89, 125));
        let pong = pong_frame(b"hi");
        let (b0, p) = split_server_frame(&pong);
        assert_eq!((b0, p), (0x8A, &b"hi"[..]));
    }

    #[test]
    fn close_codes() {
        assert_eq!(close_code_of(&[]), None);
        assert_eq!(close_code_of(&[0x03]), None);
        assert_eq!(close_code_of(&[0x03, 0xE9, b'x']), Some(1001));
    }
}

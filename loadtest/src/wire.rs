//! The bytes on the wire: target URLs, the upgrade request, masked client frames, the
//! messages of the three dialects (vws, gows, SemStreams), and a frame reader that
//! borrows from a read buffer.
//!
//! Everything here works on caller-owned buffers so the receive path allocates nothing
//! per message.

use anyhow::{bail, Context, Result};
use memchr::memmem::Finder;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, OnceLock};
use tokio_rustls::rustls::ClientConfig;

/// The wire dialect a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// Vinculum `vws`: `{"k":"s","t":..,"i":..}`, acks, events `{"t":..,"d":..}`.
    Vws,
    /// go-ws envelope: `{"type":"subscribe","data":..}`, events `{"type":"event",..}`.
    Gows,
    /// SemStreams WebSocket Input envelope (docs/PROTOCOL.md §11):
    /// `{"type":"data","id":"N","payload":..}` answered by `ack`/`nack`; subscriptions
    /// are `request`s answered by a `reply`; publications arrive as `data`.
    Semstreams,
}

/// Where the harness connects: a loopback `ws://host:port/path` or `wss://` URL.
#[derive(Clone, Debug)]
pub struct Target {
    pub url: String,
    pub addr: SocketAddr,
    host: String,
    path: String,
    /// `wss://`: the TLS client settings (set by [`Target::trust`]).
    pub tls: Option<Arc<ClientConfig>>,
    wss: bool,
    /// Offer permessage-deflate (`--compression`) on the upgrade.
    pub deflate: bool,
}

impl Target {
    /// Parses `ws://HOST:PORT/PATH` or `wss://HOST:PORT/PATH` (then call
    /// [`Target::trust`]). Anything that does not resolve to a loopback address is
    /// refused: load tests never leave the machine.
    pub fn parse(url: &str) -> Result<Target> {
        let (rest, wss) = match (url.strip_prefix("ws://"), url.strip_prefix("wss://")) {
            (Some(rest), _) => (rest, false),
            (None, Some(rest)) => (rest, true),
            (None, None) => bail!("{url}: only ws:// and wss:// URLs are supported"),
        };
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if host.is_empty() {
            bail!("{url}: no host");
        }
        let addr = host
            .to_socket_addrs()
            .with_context(|| format!("{url}: cannot resolve {host} (give host:port)"))?
            .find(|a| a.ip().is_loopback())
            .with_context(|| {
                format!("{url}: not a loopback address; load tests target 127.0.0.0/8 or ::1 only")
            })?;
        Ok(Target {
            url: url.to_string(),
            addr,
            host: host.to_string(),
            path: path.to_string(),
            tls: None,
            wss,
            deflate: false,
        })
    }

    /// Whether the URL is `wss://`.
    pub fn is_wss(&self) -> bool {
        self.wss
    }

    /// For a `wss://` target: trust the PEM certificates in `ca_file` (a CA, or a
    /// self-signed server certificate itself). The server's certificate must name the
    /// target's IP address (the harness connects by address).
    pub fn trust(&mut self, ca_file: &std::path::Path) -> Result<()> {
        use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer};
        let mut roots = tokio_rustls::rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca_file)
            .with_context(|| format!("cannot read {}", ca_file.display()))?
        {
            let cert = cert.with_context(|| format!("{}: not PEM", ca_file.display()))?;
            roots
                .add(cert)
                .with_context(|| format!("{}: unusable certificate", ca_file.display()))?;
        }
        if roots.is_empty() {
            bail!("{}: no certificate in it", ca_file.display());
        }
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS setup")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        self.tls = Some(Arc::new(config));
        Ok(())
    }

    /// The HTTP/1.1 upgrade request for this target and dialect.
    pub fn upgrade_request(&self, dialect: Dialect) -> Vec<u8> {
        let protocol = match dialect {
            Dialect::Vws => "Sec-WebSocket-Protocol: vws\r\n",
            Dialect::Gows => "",
            Dialect::Semstreams => "Sec-WebSocket-Protocol: semstreams\r\n",
        };
        // What browsers offer: compressed frames, when the broker agrees.
        let extensions = match self.deflate {
            true => "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
            false => "",
        };
        format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{}{}\r\n",
            self.path, self.host, protocol, extensions
        )
        .into_bytes()
    }

    /// Whether the target is on IPv4 loopback, where source addresses can be spread
    /// over 127.0.0.x to get past the ephemeral-port limit of one address pair.
    pub fn is_v4(&self) -> bool {
        matches!(self.addr.ip(), IpAddr::V4(_))
    }
}

/// Client frames must be masked; the key is fixed because the harness is not a browser
/// and brokers do not care which key is used.
const MASK: [u8; 4] = [0x5a, 0x3c, 0x96, 0x0f];

pub const OP_TEXT: u8 = 0x1;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Appends one masked, final frame to `out`.
pub fn push_frame(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    push_raw_frame(0x80 | opcode, payload, true, out);
}

/// Appends one frame with the first byte (FIN, reserved bits, opcode) as given, masked
/// or not: the abuse scenario sends frames a client must not.
pub fn push_raw_frame(first: u8, payload: &[u8], masked: bool, out: &mut Vec<u8>) {
    out.push(first);
    let bit = if masked { 0x80 } else { 0 };
    let n = payload.len();
    if n < 126 {
        out.push(bit | n as u8);
    } else if n <= u16::MAX as usize {
        out.push(bit | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(bit | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    if masked {
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i & 3]));
    } else {
        out.extend_from_slice(payload);
    }
}

/// A subscribe request. vws carries `i` so the broker acks it; SemStreams is a
/// `subscribe` request with id `"rN"` answered by a `reply`; gows has no ack, so the
/// caller follows it with [`gows_ping`] and waits for the pong (replies keep order).
pub fn subscribe(dialect: Dialect, topic: &str, id: usize, out: &mut Vec<u8>) {
    let msg = match dialect {
        Dialect::Vws => format!(r#"{{"k":"s","t":"{topic}","i":{id}}}"#),
        Dialect::Gows => format!(r#"{{"type":"subscribe","data":"{topic}"}}"#),
        Dialect::Semstreams => format!(
            r#"{{"type":"request","id":"r{id}","payload":{{"method":"subscribe","params":{{"patterns":["{topic}"]}}}}}}"#
        ),
    };
    push_frame(OP_TEXT, msg.as_bytes(), out);
}

/// A subscribe that resumes after `offset` (SPEC §9; no epoch: the channel's current
/// one, so `0` asks for everything retained): vws `{"k":"s","t":..,"i":..,"o":N}`, gows
/// `{"type":"subscribe","data":..,"since":{"offset":N}}`, SemStreams a `history`
/// request. All are answered with the channel's position (see [`position_ack`]), then
/// the replay, then live events.
pub fn subscribe_from(dialect: Dialect, topic: &str, id: usize, offset: u64, out: &mut Vec<u8>) {
    let msg = match dialect {
        Dialect::Vws => format!(r#"{{"k":"s","t":"{topic}","i":{id},"o":{offset}}}"#),
        Dialect::Gows => {
            format!(r#"{{"type":"subscribe","data":"{topic}","since":{{"offset":{offset}}}}}"#)
        }
        Dialect::Semstreams => format!(
            r#"{{"type":"request","id":"h{id}","payload":{{"method":"history","params":{{"channel":"{topic}","since":{offset}}}}}}}"#
        ),
    };
    push_frame(OP_TEXT, msg.as_bytes(), out);
}

/// What the broker answered to a [`subscribe_from`]: the channel's last offset when the
/// subscriber attached, and whether everything after the asked position was still there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PositionAck {
    pub top: u64,
    pub recovered: bool,
}

/// Reads the answer to a [`subscribe_from`]: vws `{"k":"a","i":..,"o":TOP,"e":..,"r":R}`,
/// gows `{"type":"subscribed",..,"data":{"offset":TOP,"epoch":..,"recovered":R},..}`,
/// SemStreams `{"type":"reply",..,"payload":{"status":"ok","result":{"top":TOP,"epoch":..,"recovered":R}}}`.
/// `Some(Err(message))` for a refusal (vws nack, gows error) and for an ack that holds no
/// position (no offset, or the empty epoch: the channel keeps no history); `None` for
/// anything else.
pub fn position_ack(dialect: Dialect, msg: &[u8]) -> Option<Result<PositionAck, String>> {
    let shown = || {
        String::from_utf8_lossy(msg)
            .chars()
            .take(120)
            .collect::<String>()
    };
    let v: serde_json::Value = match reply(dialect, msg) {
        Reply::Refused(_) => return Some(Err(shown())),
        Reply::Done if dialect != Dialect::Gows => serde_json::from_slice(msg).ok()?,
        Reply::Other if dialect == Dialect::Gows && msg.starts_with(br#"{"type":"subscribed""#) => {
            serde_json::from_slice(msg).ok()?
        }
        _ => return None,
    };
    let (top, epoch, recovered) = match dialect {
        Dialect::Vws => (v.get("o"), v.get("e"), v.get("r")),
        Dialect::Gows => {
            let d = v.get("data")?;
            (d.get("offset"), d.get("epoch"), d.get("recovered"))
        }
        Dialect::Semstreams => {
            let r = v.pointer("/payload/result")?;
            (r.get("top"), r.get("epoch"), r.get("recovered"))
        }
    };
    if epoch.and_then(serde_json::Value::as_str) == Some("") {
        // shardcast's answer to a resume on a channel without history.
        return Some(Err(format!(
            "the channel keeps no history (empty epoch): {}",
            shown()
        )));
    }
    match (top.and_then(serde_json::Value::as_u64), recovered) {
        (Some(top), r) => Some(Ok(PositionAck {
            top,
            recovered: r.and_then(serde_json::Value::as_bool).unwrap_or(false),
        })),
        (None, _) => Some(Err(format!("no position in the answer: {}", shown()))),
    }
}

/// The history offset an event carries (SPEC §9): vws `"o":N`, gows and SemStreams
/// `"offset":N`, after
/// the data object; `None` on channels without history and for anything else. Searched
/// from the end, so a payload holding the same key does not confuse it.
pub fn find_offset(dialect: Dialect, msg: &[u8]) -> Option<u64> {
    let key: &[u8] = match dialect {
        Dialect::Vws => br#","o":"#,
        Dialect::Gows | Dialect::Semstreams => br#","offset":"#,
    };
    let at = memchr::memmem::rfind(msg, key)? + key.len();
    number(msg.get(at..)?).map(|(n, _)| n)
}

/// The gows application ping, used as a barrier after a subscribe.
pub fn gows_ping(out: &mut Vec<u8>) {
    push_frame(OP_TEXT, br#"{"type":"ping"}"#, out);
}

/// Appends a publish of `data` (a JSON value) to `topic` as one masked frame, reusing
/// `scratch` for the unmasked message.
///
/// `id` asks for an answer (see [`answer`]): vws adds `"i":N` (acked or nacked); gows
/// has no acks and ignores it; SemStreams `data` always carries an id (the broker nacks
/// one without), so give one for every SemStreams publish, unique on the connection.
/// SemStreams has no topic outside the payload: an empty `topic` publishes on the
/// broker's `semstreams.data_channel` (the payload as given), any other is written as
/// the first member of an object payload (`{"topic":T,...}`), which the broker then
/// publishes on.
pub fn publish(
    dialect: Dialect,
    topic: &str,
    data: &[u8],
    id: Option<u64>,
    scratch: &mut Vec<u8>,
    out: &mut Vec<u8>,
) {
    use std::io::Write;
    scratch.clear();
    let mut data = data;
    match dialect {
        Dialect::Vws => {
            scratch.extend_from_slice(br#"{"t":""#);
            scratch.extend_from_slice(topic.as_bytes());
            scratch.extend_from_slice(br#"","d":"#);
        }
        Dialect::Gows => {
            scratch.extend_from_slice(br#"{"type":"publish","channel":""#);
            scratch.extend_from_slice(topic.as_bytes());
            scratch.extend_from_slice(br#"","data":"#);
        }
        Dialect::Semstreams => {
            scratch.extend_from_slice(br#"{"type":"data","id":""#);
            // Writing into a Vec cannot fail.
            let _ = write!(scratch, "{}", id.unwrap_or(0));
            scratch.extend_from_slice(br#"","payload":"#);
            match data.strip_prefix(b"{") {
                Some(rest) if !topic.is_empty() => {
                    scratch.extend_from_slice(br#"{"topic":""#);
                    scratch.extend_from_slice(topic.as_bytes());
                    let close: &[u8] = if rest.starts_with(b"}") {
                        b"\""
                    } else {
                        b"\","
                    };
                    scratch.extend_from_slice(close);
                    data = rest;
                }
                _ => {}
            }
        }
    }
    scratch.extend_from_slice(data);
    if let (Dialect::Vws, Some(id)) = (dialect, id) {
        let _ = write!(scratch, r#","i":{id}"#);
    }
    scratch.push(b'}');
    push_frame(OP_TEXT, scratch, out);
}

/// Whether a publish in `dialect` must carry an id (SemStreams `data` does).
pub fn publish_needs_id(dialect: Dialect) -> bool {
    dialect == Dialect::Semstreams
}

/// The broker's answer to a publish made with an id (see [`publish`]).
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Answer {
    /// vws `{"k":"a","i":N}`, SemStreams `{"type":"ack","id":"N",..}`.
    Ack(u64),
    /// vws `{"k":"n","i":N,"e":..}`, SemStreams `{"type":"nack","id":"N",..}`; the id is
    /// `None` when the broker could not read one (or it was not a harness id).
    Nack(Option<u64>),
}

/// Reads a publish answer; `None` for anything else (events, replies, `slow`, pongs).
pub fn answer(dialect: Dialect, msg: &[u8]) -> Option<Answer> {
    let (ack, nack, key): (&[u8], &[u8], &[u8]) = match dialect {
        Dialect::Vws => (br#"{"k":"a""#, br#"{"k":"n""#, br#","i":"#),
        Dialect::Semstreams => (br#"{"type":"ack""#, br#"{"type":"nack""#, br#","id":""#),
        Dialect::Gows => return None,
    };
    let id = || {
        let at = memchr::memmem::find(msg, key)? + key.len();
        number(msg.get(at..)?).map(|(n, _)| n)
    };
    if msg.starts_with(ack) {
        id().map(Answer::Ack)
    } else if msg.starts_with(nack) {
        Some(Answer::Nack(id()))
    } else {
        None
    }
}

/// Whether a SemStreams message is the broker's `slow` signal (queue past 80%).
pub fn is_slow_signal(msg: &[u8]) -> bool {
    msg.starts_with(br#"{"type":"slow""#)
}

/// The stamp every published message carries, so receivers can measure latency and
/// detect loss per publisher and topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub publisher: u32,
    pub seq: u64,
    pub sent_ns: u64,
}

/// Writes the data object `{"_p":P,"_s":S,"_ts":T,"x":"xxx…"}`, padded so the whole
/// object is `size` bytes (or as small as the stamp allows).
pub fn stamped_data(stamp: Stamp, size: usize, out: &mut Vec<u8>) {
    use std::io::Write;
    out.clear();
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        r#"{{"_p":{},"_s":{},"_ts":{},"x":""#,
        stamp.publisher, stamp.seq, stamp.sent_ns
    );
    let pad = size.saturating_sub(out.len() + 2);
    out.resize(out.len() + pad, b'x');
    out.extend_from_slice(b"\"}");
}

fn stamp_finder() -> &'static Finder<'static> {
    static FINDER: OnceLock<Finder<'static>> = OnceLock::new();
    FINDER.get_or_init(|| Finder::new(br#""_p":"#))
}

/// Finds the stamp in a received event, in any dialect (it sits at the start of the
/// data object, or right after the `topic` member a SemStreams publish puts first).
/// `None` for anything else: acks, pongs, other traffic.
pub fn find_stamp(msg: &[u8]) -> Option<Stamp> {
    let at = stamp_finder().find(msg)? + 5;
    let (publisher, rest) = number(msg.get(at..)?)?;
    let (seq, rest) = number(rest.strip_prefix(br#","_s":"#)?)?;
    let (sent_ns, _) = number(rest.strip_prefix(br#","_ts":"#)?)?;
    Some(Stamp {
        publisher: u32::try_from(publisher).ok()?,
        seq,
        sent_ns,
    })
}

fn number(b: &[u8]) -> Option<(u64, &[u8])> {
    let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    let value = b[..digits]
        .iter()
        .fold(0u64, |v, &c| v * 10 + u64::from(c - b'0'));
    Some((value, &b[digits..]))
}

/// What a reply to a request says.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    /// vws `{"k":"a",..}`, a SemStreams `reply` with status ok, or a gows pong: the
    /// requests before it are done.
    Done,
    /// vws nack, gows error, SemStreams nack or error reply, with the whole message.
    Refused(&'a [u8]),
    /// Anything else.
    Other,
}

/// Classifies a message received while waiting for a subscribe to complete.
pub fn reply(dialect: Dialect, msg: &[u8]) -> Reply<'_> {
    let starts = |p: &[u8]| msg.starts_with(p);
    // A SemStreams reply's payload is `{"status":"ok"|"error",..}`.
    let error_status = || memchr::memmem::find(msg, br#""payload":{"status":"error""#).is_some();
    match dialect {
        Dialect::Semstreams if starts(br#"{"type":"reply""#) && error_status() => {
            Reply::Refused(msg)
        }
        Dialect::Semstreams if starts(br#"{"type":"reply""#) => Reply::Done,
        Dialect::Semstreams if starts(br#"{"type":"nack""#) => Reply::Refused(msg),
        Dialect::Vws if starts(br#"{"k":"a""#) => Reply::Done,
        Dialect::Vws if starts(br#"{"k":"n""#) => Reply::Refused(msg),
        Dialect::Gows if starts(br#"{"type":"pong""#) => Reply::Done,
        Dialect::Gows if starts(br#"{"type":"error""#) => Reply::Refused(msg),
        _ => Reply::Other,
    }
}

/// One server frame, borrowed from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Text(&'a [u8]),
    /// A text message compressed with permessage-deflate (RSV1), still compressed.
    Deflated(&'a [u8]),
    Ping(&'a [u8]),
    Close(u16, &'a [u8]),
    /// Binary, pong or continuation frames: counted, otherwise ignored.
    Other,
}

/// Server frames are unmasked; a masked one or a length past this is a protocol error.
const MAX_FRAME: u64 = 64 << 20;

/// Reads one frame from the front of `buf`: `Ok(None)` when it is not complete yet,
/// otherwise the frame and how many bytes it used.
pub fn next_frame(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    if b1 & 0x80 != 0 {
        bail!("server sent a masked frame");
    }
    let (len, head) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                (u64::from_be_bytes(a), 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if len > MAX_FRAME {
        bail!("server frame of {len} bytes");
    }
    let end = head + len as usize;
    let Some(payload) = buf.get(head..end) else {
        return Ok(None);
    };
    let frame = match b0 & 0x0f {
        OP_TEXT if b0 & 0x40 != 0 => Frame::Deflated(payload),
        OP_TEXT => Frame::Text(payload),
        OP_PING => Frame::Ping(payload),
        OP_CLOSE => match payload {
            [a, b, reason @ ..] => Frame::Close(u16::from_be_bytes([*a, *b]), reason),
            _ => Frame::Close(1005, &[]),
        },
        _ => Frame::Other,
    };
    Ok(Some((frame, end)))
}

/// Finds the end of the HTTP response head; returns the status code and head length.
pub fn response_head(buf: &[u8]) -> Option<(u16, usize)> {
    let end = memchr::memmem::find(buf, b"\r\n\r\n")? + 4;
    let status = buf
        .get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Some((status, end))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn unmask(frame: &[u8]) -> Vec<u8> {
        let len = (frame[1] & 0x7f) as usize;
        assert!(len < 126);
        let key = &frame[2..6];
        frame[6..6 + len]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i & 3])
            .collect()
    }

    #[test]
    fn stamp_round_trips_through_both_dialect_envelopes() {
        let stamp = Stamp {
            publisher: 7,
            seq: 123_456,
            sent_ns: 9_876_543_210,
        };
        let mut data = Vec::new();
        stamped_data(stamp, 256, &mut data);
        assert_eq!(data.len(), 256);
        assert!(serde_json::from_slice::<serde_json::Value>(&data).is_ok());
        let vws = [br#"{"t":"bench/0","d":"#.as_slice(), &data, b"}"].concat();
        let gows = [
            br#"{"type":"event","channel":"bench/0","data":"#.as_slice(),
            &data,
            br#","timestamp":"x"}"#,
        ]
        .concat();
        assert_eq!(find_stamp(&vws), Some(stamp));
        assert_eq!(find_stamp(&gows), Some(stamp));
        assert_eq!(find_stamp(br#"{"k":"a","i":1}"#), None);
    }

    #[test]
    fn events_with_history_offsets_still_parse() {
        let stamp = Stamp {
            publisher: 0,
            seq: 41,
            sent_ns: 123,
        };
        let mut data = Vec::new();
        stamped_data(stamp, 64, &mut data);
        // shardcast puts the offset after the data (and after `h` when there are headers).
        let vws = [br#"{"t":"bench/0","d":"#.as_slice(), &data, br#","o":42}"#].concat();
        let vws_h = [
            br#"{"t":"bench/0","d":"#.as_slice(),
            &data,
            br#","h":{"o":"x"},"o":7}"#,
        ]
        .concat();
        let gows = [
            br#"{"type":"event","channel":"bench/0","data":"#.as_slice(),
            &data,
            br#","offset":42,"timestamp":"2026-01-01T00:00:00Z"}"#,
        ]
        .concat();
        for msg in [&vws, &vws_h, &gows] {
            assert_eq!(find_stamp(msg), Some(stamp));
        }
        assert_eq!(find_offset(Dialect::Vws, &vws), Some(42));
        assert_eq!(find_offset(Dialect::Vws, &vws_h), Some(7));
        assert_eq!(find_offset(Dialect::Gows, &gows), Some(42));
        // No history: no offset.
        let plain = [br#"{"t":"bench/0","d":"#.as_slice(), &data, b"}"].concat();
        assert_eq!(find_offset(Dialect::Vws, &plain), None);
        // A position ack is still an ack for the plain subscribe's wait.
        assert_eq!(
            reply(Dialect::Vws, br#"{"k":"a","i":1,"o":0,"e":"5f3a"}"#),
            Reply::Done
        );
    }

    #[test]
    fn resume_requests_and_their_answers() {
        let mut out = Vec::new();
        subscribe_from(Dialect::Vws, "r/0", 1, 0, &mut out);
        assert_eq!(unmask(&out), br#"{"k":"s","t":"r/0","i":1,"o":0}"#);
        out.clear();
        subscribe_from(Dialect::Gows, "r/0", 1, 5, &mut out);
        assert_eq!(
            unmask(&out),
            br#"{"type":"subscribe","data":"r/0","since":{"offset":5}}"#
        );
        let ok = PositionAck {
            top: 10_000,
            recovered: true,
        };
        assert_eq!(
            position_ack(
                Dialect::Vws,
                br#"{"k":"a","i":1,"o":10000,"e":"ab12","r":true}"#
            ),
            Some(Ok(ok))
        );
        assert_eq!(
            position_ack(
                Dialect::Gows,
                br#"{"type":"subscribed","channel":"r/0","data":{"offset":10000,"epoch":"ab12","recovered":true},"timestamp":"t"}"#
            ),
            Some(Ok(ok))
        );
        assert!(matches!(
            position_ack(Dialect::Vws, br#"{"k":"a","i":1}"#),
            Some(Err(_))
        ));
        assert!(matches!(
            position_ack(Dialect::Vws, br#"{"k":"a","i":1,"o":0,"e":"","r":false}"#),
            Some(Err(m)) if m.contains("no history")
        ));
        assert!(matches!(
            position_ack(Dialect::Vws, br#"{"k":"n","i":1,"e":"no"}"#),
            Some(Err(_))
        ));
        assert_eq!(
            position_ack(Dialect::Gows, br#"{"type":"event","data":1}"#),
            None
        );
    }

    #[test]
    fn small_sizes_still_carry_the_whole_stamp() {
        let mut data = Vec::new();
        stamped_data(
            Stamp {
                publisher: 1,
                seq: 2,
                sent_ns: 3,
            },
            8,
            &mut data,
        );
        assert_eq!(data, br#"{"_p":1,"_s":2,"_ts":3,"x":""}"#);
    }

    #[test]
    fn publish_frames_are_masked_and_well_formed() {
        let (mut scratch, mut out) = (Vec::new(), Vec::new());
        publish(Dialect::Vws, "a/b", b"1", None, &mut scratch, &mut out);
        assert_eq!(out[0], 0x81);
        assert_eq!(unmask(&out), br#"{"t":"a/b","d":1}"#);
        out.clear();
        publish(Dialect::Gows, "a/b", b"1", None, &mut scratch, &mut out);
        assert_eq!(
            unmask(&out),
            br#"{"type":"publish","channel":"a/b","data":1}"#
        );
    }

    #[test]
    fn semstreams_messages_and_answers() {
        let (mut scratch, mut out) = (Vec::new(), Vec::new());
        // No topic: the broker's data channel, payload as given.
        publish(
            Dialect::Semstreams,
            "",
            b"{\"v\":1}",
            Some(7),
            &mut scratch,
            &mut out,
        );
        assert_eq!(
            unmask(&out),
            br#"{"type":"data","id":"7","payload":{"v":1}}"#
        );
        out.clear();
        publish(
            Dialect::Semstreams,
            "a/b",
            b"{\"v\":1}",
            Some(8),
            &mut scratch,
            &mut out,
        );
        assert_eq!(
            unmask(&out),
            br#"{"type":"data","id":"8","payload":{"topic":"a/b","v":1}}"#
        );
        out.clear();
        publish(
            Dialect::Semstreams,
            "a/b",
            b"{}",
            Some(9),
            &mut scratch,
            &mut out,
        );
        assert_eq!(
            unmask(&out),
            br#"{"type":"data","id":"9","payload":{"topic":"a/b"}}"#
        );
        out.clear();
        publish(Dialect::Vws, "a/b", b"1", Some(3), &mut scratch, &mut out);
        assert_eq!(unmask(&out), br#"{"t":"a/b","d":1,"i":3}"#);
        out.clear();
        subscribe(Dialect::Semstreams, "federated/data", 1, &mut out);
        assert_eq!(
            unmask(&out),
            br#"{"type":"request","id":"r1","payload":{"method":"subscribe","params":{"patterns":["federated/data"]}}}"#
        );
        assert!(publish_needs_id(Dialect::Semstreams) && !publish_needs_id(Dialect::Vws));

        let s = Dialect::Semstreams;
        assert_eq!(
            answer(s, br#"{"type":"ack","id":"42","timestamp":1}"#),
            Some(Answer::Ack(42))
        );
        assert_eq!(
            answer(s, br#"{"type":"nack","id":"5","timestamp":1,"payload":{"reason":"invalid","error":"x"}}"#),
            Some(Answer::Nack(Some(5)))
        );
        assert_eq!(
            answer(
                s,
                br#"{"type":"nack","timestamp":1,"payload":{"reason":"invalid","error":"x"}}"#
            ),
            Some(Answer::Nack(None))
        );
        assert_eq!(
            answer(s, br#"{"type":"data","id":"p-1","payload":1}"#),
            None
        );
        assert_eq!(
            answer(Dialect::Vws, br#"{"k":"a","i":3}"#),
            Some(Answer::Ack(3))
        );
        assert_eq!(
            answer(Dialect::Vws, br#"{"k":"n","i":4,"e":"no"}"#),
            Some(Answer::Nack(Some(4)))
        );
        assert_eq!(answer(Dialect::Gows, br#"{"type":"error"}"#), None);
        assert!(is_slow_signal(
            br#"{"type":"slow","id":"bp-1","payload":{}}"#
        ));

        assert_eq!(
            reply(s, br#"{"type":"reply","id":"r1","timestamp":1,"payload":{"status":"ok","result":{}}}"#),
            Reply::Done
        );
        assert!(matches!(
            reply(s, br#"{"type":"reply","id":"r1","timestamp":1,"payload":{"status":"error","reason":"invalid","error":"x"}}"#),
            Reply::Refused(_)
        ));
        assert!(matches!(
            reply(s, br#"{"type":"nack","payload":{}}"#),
            Reply::Refused(_)
        ));
        assert_eq!(reply(s, br#"{"type":"slow","id":"bp-1"}"#), Reply::Other);

        // A publication as the broker renders it for a SemStreams peer, with the stamp
        // after the topic member a SemStreams publisher put first.
        let stamp = Stamp {
            publisher: 3,
            seq: 9,
            sent_ns: 77,
        };
        let mut data = Vec::new();
        stamped_data(stamp, 64, &mut data);
        let event = [
            br#"{"type":"data","id":"p-1","timestamp":1,"topic":"federated/data","payload":"#
                .as_slice(),
            &data,
            br#","offset":12}"#,
        ]
        .concat();
        assert_eq!(find_stamp(&event), Some(stamp));
        assert_eq!(find_offset(s, &event), Some(12));
        let with_topic = [br#"{"topic":"a/b","#.as_slice(), &data[1..]].concat();
        assert_eq!(find_stamp(&with_topic), Some(stamp));
        let t = Target::parse("ws://127.0.0.1:9/ws").unwrap();
        let req = String::from_utf8(t.upgrade_request(s)).unwrap();
        assert!(req.contains("Sec-WebSocket-Protocol: semstreams\r\n"));
        assert_eq!(
            position_ack(
                s,
                br#"{"type":"reply","id":"h1","timestamp":1,"payload":{"status":"ok","result":{"channel":"r/0","top":10,"epoch":"ab","recovered":true}}}"#
            ),
            Some(Ok(PositionAck {
                top: 10,
                recovered: true
            }))
        );
    }

    #[test]
    fn frame_reader_handles_partial_and_extended_lengths() {
        assert_eq!(next_frame(&[0x81]).unwrap(), None);
        let mut long = vec![0x81, 126, 0x01, 0x00];
        long.extend(std::iter::repeat_n(b'a', 256));
        assert_eq!(next_frame(&long[..100]).unwrap(), None);
        let (frame, used) = next_frame(&long).unwrap().unwrap();
        assert_eq!(used, 260);
        assert!(matches!(frame, Frame::Text(p) if p.len() == 256));
        let close = [0x88, 4, 0x03, 0xF0, b'o', b'k'];
        assert_eq!(
            next_frame(&close).unwrap().unwrap().0,
            Frame::Close(1008, b"ok")
        );
        assert!(next_frame(&[0x81, 0x81, 0, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn only_loopback_targets_are_accepted() {
        assert!(Target::parse("ws://127.0.0.1:9/ws").is_ok());
        let wss = Target::parse("wss://127.0.0.1:9/ws").unwrap();
        assert!(wss.is_wss() && wss.tls.is_none());
        assert!(!Target::parse("ws://127.0.0.1:9/ws").unwrap().is_wss());
        assert!(Target::parse("https://127.0.0.1:9/ws").is_err());
        assert!(Target::parse("ws://127.0.0.2:9").is_ok());
        assert!(Target::parse("ws://10.0.0.1:9/ws").is_err());
        assert!(Target::parse("http://127.0.0.1:9/ws").is_err());
        let t = Target::parse("ws://127.0.0.1:9/x?dialect=vws").unwrap();
        let req = String::from_utf8(t.upgrade_request(Dialect::Vws)).unwrap();
        assert!(req.starts_with("GET /x?dialect=vws HTTP/1.1\r\nHost: 127.0.0.1:9\r\n"));
    }

    #[test]
    fn replies_are_classified_per_dialect() {
        assert_eq!(reply(Dialect::Vws, br#"{"k":"a","i":1}"#), Reply::Done);
        assert!(matches!(
            reply(Dialect::Vws, br#"{"k":"n","e":"x"}"#),
            Reply::Refused(_)
        ));
        assert_eq!(
            reply(Dialect::Gows, br#"{"type":"pong","timestamp":"t"}"#),
            Reply::Done
        );
        assert_eq!(reply(Dialect::Gows, br#"{"type":"event"}"#), Reply::Other);
        assert_eq!(
            response_head(b"HTTP/1.1 101 Switching\r\nA: b\r\n\r\nrest"),
            Some((101, 32))
        );
    }
}

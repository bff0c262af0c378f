//! The lean WebSocket handshake: every accepted socket starts here.
//!
//! Almost every connection is a plain, valid upgrade whose request head arrives in one
//! read. For those the shard parses the head in its scratch buffer (httparse), answers
//! 101 straight on the socket and adopts the connection: no hyper connection state, no
//! per-connection read or write buffer, no extra task, no timer beyond the first read.
//! That is most of the cost of setting up a connection, and the buffers it leaves behind
//! in the allocator are most of what an idle connection costs beyond its own state.
//!
//! Anything else (an API request, an incomplete or unusual head, any refusal, a broker
//! over its limits) goes to hyper (`http`) with the bytes already read replayed in front
//! of the socket, so every error answer and every HTTP behaviour stays hyper's. This path
//! only accepts; it never refuses.

use super::http;
use super::pending::Ticket;
use super::prefixed::Prefixed;
use crate::auth::{Authenticator, Identity, IpSlot, Offered};
use crate::conn::Admission;
use crate::error::Reject;
use crate::protocol::Dialect;
use crate::server::upgrade::choose_dialect;
use crate::shard::{Shard, Upgraded};
use crate::tls::Stream;
use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;

/// Headers a request may carry and still take the lean path (more: hyper decides).
const MAX_HEADERS: usize = 32;
/// Most bytes read for the first request head (a longer head goes to hyper).
const HEAD_READ: usize = 8 * 1024;

/// A valid upgrade the lean path can answer.
#[derive(Debug, PartialEq)]
pub struct Upgrade {
    /// Length of the request head; bytes after it are the client's first frames.
    pub head_len: usize,
    /// `Sec-WebSocket-Accept` value.
    pub accept: [u8; 28],
    /// Chosen dialect.
    pub dialect: Dialect,
    /// Echo the dialect as `Sec-WebSocket-Protocol`.
    pub echo: bool,
    /// Detect the dialect from the first message (`server.default_dialect = "auto"`).
    pub detect: bool,
    /// Who the client authenticated as (`None`: anonymous, `auth.type = "none"`).
    pub identity: Option<Identity>,
    /// The `Sec-WebSocket-Extensions` answer when permessage-deflate was negotiated.
    pub extensions: Option<&'static str>,
}

/// What the handshake settings need from config.
pub struct Rules<'a> {
    /// `server.ws_path`.
    pub ws_path: &'a str,
    /// `server.allowed_origins`.
    pub allowed_origins: &'a [String],
    /// `server.allowed_hosts`.
    pub allowed_hosts: &'a [String],
    /// `server.default_dialect` (`None` = auto).
    pub default_dialect: Option<Dialect>,
    /// `[auth]`.
    pub auth: &'a Authenticator,
    /// `server.compression = "on"`: permessage-deflate offers are negotiated.
    pub compression: bool,
}

/// Serves one accepted socket on this shard: the lean upgrade when it applies, hyper
/// otherwise. Until its first request head is complete the socket holds only `ticket`
/// (a place among the pending sockets, see `pending`); the head must then be complete
/// `server.handshake_timeout` after `accepted_at`, its first byte there within
/// `server.first_byte_timeout`. With TLS on, the TLS handshake comes first, within the
/// same `handshake_timeout` (its first byte within `first_byte_timeout`), and the first
/// byte of the request must then follow within `first_byte_timeout` again.
pub async fn accept(
    shard: Rc<Shard>,
    tcp: TcpStream,
    peer: SocketAddr,
    ip_slot: Option<IpSlot>,
    ticket: Ticket,
    accepted_at: Instant,
) {
    let server = &shard.broker.config.server;
    let deadline = accepted_at + server.handshake_timeout;
    let mut first_byte = accepted_at + server.first_byte_timeout.min(server.handshake_timeout);
    let mut stream = match &shard.broker.tls {
        None => Stream::Plain(tcp),
        Some(tls) => {
            let Some(stream) =
                crate::tls::handshake::accept(&shard.broker, tls, tcp, peer, first_byte, deadline)
                    .await
            else {
                return;
            };
            first_byte = (Instant::now() + server.first_byte_timeout).min(deadline);
            stream
        }
    };
    let first = tokio::time::timeout_at(first_byte.into(), read_head(&shard, &mut stream)).await;
    let (upgrade, leftover) = match first {
        Err(_) => {
            // Slowloris: not a byte within the timeout. Nothing to answer.
            shard.broker.global.reject(Reject::HandshakeTimeout);
            return;
        }
        Ok(Read::Closed) => return,
        Ok(Read::Fallback(prefix)) => {
            let stream = Prefixed::new(stream, prefix);
            http::serve(shard, stream, peer, ticket, deadline, ip_slot).await;
            return;
        }
        Ok(Read::Upgrade { upgrade, leftover }) => (upgrade, leftover),
    };
    drop(ticket);
    // The WebSocket slot is the limit here (reserved in `classify`); the socket counts
    // as open from now on either way.
    let _ = shard.broker.socket_opened();
    let mut response = [0u8; 384];
    let len = render_101(&mut response, &upgrade);
    let written = match response.get(..len) {
        // A fresh socket takes this in one write; write_all covers the rare rest.
        Some(bytes) => stream.write_all(bytes).await,
        None => Err(std::io::ErrorKind::InvalidData.into()),
    };
    // TLS: the 101 must leave rustls' buffer before the connection is adopted (plain
    // sockets have nothing to flush).
    let written = match written {
        Ok(()) if stream.is_tls() => stream.flush().await,
        other => other,
    };
    if written.is_err() {
        shard.broker.socket_closed();
        shard.broker.ws_closed();
        return;
    }
    let admission = Admission::boxed(upgrade.identity, ip_slot);
    shard.place_conn(Upgraded {
        stream,
        dialect: upgrade.dialect,
        deflate: upgrade.extensions.is_some(),
        detect: upgrade.detect,
        leftover,
        admission,
        peer,
    });
}

/// The outcome of the first read.
enum Read {
    /// The peer closed or failed before sending a head.
    Closed,
    /// Not for the lean path: hand these bytes and the socket to hyper.
    Fallback(Vec<u8>),
    /// A valid upgrade with its WebSocket slot reserved; `leftover` are the bytes the
    /// client sent behind its head.
    Upgrade { upgrade: Upgrade, leftover: Vec<u8> },
}

/// Waits for the first bytes and parses them in the shard's scratch buffer.
async fn read_head(shard: &Shard, stream: &mut Stream) -> Read {
    std::future::poll_fn(|cx| {
        shard.with_scratch(HEAD_READ, |buf| {
            // poll_read forgets readiness after a short read, so the connection's first
            // poll does not pay an empty read.
            let mut read = ReadBuf::new(buf);
            match Pin::new(&mut *stream).poll_read(cx, &mut read) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(_)) => Poll::Ready(Read::Closed),
                Poll::Ready(Ok(())) if read.filled().is_empty() => Poll::Ready(Read::Closed),
                Poll::Ready(Ok(())) => Poll::Ready(classify(shard, read.filled())),
            }
        })
    })
    .await
}

/// Decides what to do with the first bytes a client sent.
fn classify(shard: &Shard, got: &[u8]) -> Read {
    let server = &shard.broker.config.server;
    let rules = Rules {
        ws_path: &server.ws_path,
        allowed_origins: &server.allowed_origins,
        allowed_hosts: &server.allowed_hosts,
        default_dialect: server.default_dialect.fixed(),
        auth: &shard.broker.auth,
        compression: server.compression == crate::config::Compression::On,
    };
    // Over the head limit: hyper gives the 431. Over the WebSocket limit or shutting
    // down: hyper gives the 503.
    let upgrade = parse_upgrade(got, &rules)
        .filter(|u| u.head_len <= server.max_request_head_bytes)
        .filter(|_| !shard.is_draining() && shard.broker.reserve_ws());
    match upgrade {
        Some(upgrade) => Read::Upgrade {
            leftover: got.get(upgrade.head_len..).unwrap_or_default().to_vec(),
            upgrade,
        },
        None => Read::Fallback(got.to_vec()),
    }
}

/// Checks `buf` for a complete, valid WebSocket upgrade on `rules.ws_path` that needs no
/// refusal. `None` means "let hyper handle it" (not an upgrade, incomplete, unusual, or
/// something to refuse), never "refuse".
pub fn parse_upgrade(buf: &[u8], rules: &Rules<'_>) -> Option<Upgrade> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    if req.method != Some("GET") || req.version != Some(1) {
        return None;
    }
    let (path, query) = match req.path?.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (req.path?, None),
    };
    if path != rules.ws_path {
        return None;
    }
    // Visible ASCII only, as hyper's `to_str` requires; the first occurrence wins.
    let header = |name: &str| -> Option<&str> {
        let h = req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))?;
        std::str::from_utf8(h.value)
            .ok()
            .filter(|v| v.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)))
    };
    let has_token = |name: &str, token: &str| {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .any(|h| {
                h.value
                    .split(|&c| c == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
            })
    };
    // A body (or a header hyper would reject) is hyper's business.
    let has_body = req.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("content-length") && h.value != b"0"
            || h.name.eq_ignore_ascii_case("transfer-encoding")
    });
    if has_body || !has_token("connection", "upgrade") || !has_token("upgrade", "websocket") {
        return None;
    }
    if header("sec-websocket-version") != Some("13") {
        return None;
    }
    let key = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-key"))?
        .value;
    if !valid_key(key) {
        return None; // hyper's path answers it with the reason
    }
    let origin_ok = crate::auth::host::check_origin(
        rules.allowed_origins,
        rules.allowed_hosts,
        header("origin"),
        header("host"),
    );
    if origin_ok.is_err() {
        return None; // hyper's path answers it with the reason
    }
    let choice = choose_dialect(
        header("sec-websocket-protocol"),
        query,
        rules.default_dialect,
    )
    .ok()?;
    let identity = rules
        .auth
        .authenticate(Offered {
            authorization: header("authorization"),
            query,
        })
        .ok()?;
    let extensions = crate::deflate::negotiate(
        rules.compression,
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-extensions"))
            .map(|h| h.value),
    );
    Some(Upgrade {
        head_len,
        accept: accept_key(key),
        dialect: choice.dialect,
        echo: choice.echo,
        detect: choice.detect,
        identity,
        extensions,
    })
}

/// Whether `key` is a `Sec-WebSocket-Key` as RFC 6455 §4.1 asks: 16 bytes in base64
/// (24 characters). A shorter or longer key is refused with 400.
pub fn valid_key(key: &[u8]) -> bool {
    use base64::Engine as _;
    let key = key.trim_ascii();
    key.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode(key)
            .is_ok_and(|bytes| bytes.len() == 16)
}

/// `Sec-WebSocket-Accept` for a client key (RFC 6455 §4.2.2), shared with the client
/// crate, which checks the same value on its side of the handshake.
pub use shardcast_client::accept_key;

/// Writes the 101 response into `buf`; returns its length.
fn render_101(buf: &mut [u8], upgrade: &Upgrade) -> usize {
    let total = buf.len();
    let mut w = &mut buf[..];
    let _ = w.write_all(
        b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-accept: ",
    );
    let _ = w.write_all(&upgrade.accept);
    if upgrade.echo {
        let _ = w.write_all(b"\r\nsec-websocket-protocol: ");
        let _ = w.write_all(upgrade.dialect.name().as_bytes());
    }
    if let Some(answer) = upgrade.extensions {
        let _ = w.write_all(b"\r\nsec-websocket-extensions: ");
        let _ = w.write_all(answer.as_bytes());
    }
    let _ = w.write_all(b"\r\n\r\n");
    total - w.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> &'static Authenticator {
        static OPEN: std::sync::OnceLock<Authenticator> = std::sync::OnceLock::new();
        OPEN.get_or_init(|| {
            Authenticator::from_config(&crate::config::Config::default().auth, &|_| None)
                .expect("auth none needs no secret")
        })
    }

    fn rules() -> Rules<'static> {
        Rules {
            ws_path: "/ws",
            allowed_origins: &[],
            allowed_hosts: &[],
            default_dialect: Some(Dialect::Gows),
            auth: open(),
            compression: false,
        }
    }

    const GOOD: &str = "GET /ws HTTP/1.1\r\nHost: a:1\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: vws\r\n\r\n";

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            &accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn valid_upgrade_with_trailing_frame() {
        let mut buf = GOOD.as_bytes().to_vec();
        buf.extend_from_slice(b"\x81\x80abcd");
        let u = parse_upgrade(&buf, &rules()).expect("upgrade");
        assert_eq!(u.head_len, GOOD.len());
        assert_eq!(u.dialect, Dialect::Vws);
        assert!(u.echo);
        let mut out = [0u8; 384];
        let n = render_101(&mut out, &u);
        let text = std::str::from_utf8(&out[..n]).expect("ascii");
        assert!(text.starts_with("HTTP/1.1 101 "));
        assert!(text.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(text.ends_with("sec-websocket-protocol: vws\r\n\r\n"));
    }

    #[test]
    fn anything_unusual_goes_to_hyper() {
        let r = rules();
        let cases = [
            GOOD.replace("GET", "POST"),
            GOOD.replace("/ws", "/api/stats"),
            GOOD.replace("HTTP/1.1", "HTTP/1.0"),
            GOOD.replace("Version: 13", "Version: 8"),
            GOOD.replace("Upgrade: websocket", "Upgrade: h2c"),
            GOOD.replace("keep-alive, Upgrade", "keep-alive"),
            GOOD.replace("Sec-WebSocket-Key", "X-Key"),
            GOOD.replace("Host: a:1", "Host: a:1\r\nOrigin: http://evil"),
            GOOD.replace("/ws", "/ws?dialect=mqtt")
                .replace("Sec-WebSocket-Protocol: vws\r\n", ""),
            GOOD.replace("Host: a:1", "Host: a:1\r\nContent-Length: 5"),
            GOOD.trim_end().to_owned(), // incomplete head
        ];
        for case in cases {
            assert!(parse_upgrade(case.as_bytes(), &r).is_none(), "{case}");
        }
        // Same origin under a name the broker trusts (an IP, localhost, allowed_hosts).
        let same_origin = GOOD.replace(
            "Host: a:1",
            "Host: localhost:1\r\nOrigin: http://localhost:1",
        );
        assert!(parse_upgrade(same_origin.as_bytes(), &r).is_some());
        let query = GOOD
            .replace("/ws", "/ws?dialect=vws")
            .replace("Sec-WebSocket-Protocol: vws\r\n", "");
        let u = parse_upgrade(query.as_bytes(), &r).expect("query dialect");
        assert_eq!((u.dialect, u.echo), (Dialect::Vws, false));
    }
}

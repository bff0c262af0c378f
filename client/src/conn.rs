//! One WebSocket connection: the HTTP/1.1 upgrade offering the dialect's subprotocol, then a reader task that
//! turns frames into [`Read`] messages, so the client's driver only ever awaits channels
//! (cancel-safe) and writes through its own half.

use crate::url::WsUrl;
use crate::wire::Dialect;
use crate::Error;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use fastwebsockets::{FragmentCollectorRead, Frame, OpCode, Role, WebSocket, WebSocketWrite};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{
    AUTHORIZATION, CONNECTION, HOST, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, UPGRADE, USER_AGENT,
};
use hyper::upgrade::Upgraded;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use sha1::{Digest, Sha1};
use std::time::Duration;
use tokio::io::WriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Most bytes of a refused upgrade's body kept for the error.
const MAX_ERROR_BODY: usize = 4096;
/// Messages the reader may hold for a busy driver (then TCP pushes back).
const READ_QUEUE: usize = 256;

/// The write half the driver sends on.
pub type Writer = WebSocketWrite<WriteHalf<TokioIo<Upgraded>>>;

/// What the reader task hands the driver.
#[derive(Debug)]
pub enum Read {
    /// A complete text message.
    Text(Vec<u8>),
    /// A frame the protocol obliges us to send (a pong, the close echo).
    Obligated(OpCode, Vec<u8>),
    /// Any frame arrived (liveness for the ping deadline).
    Alive,
    /// The broker closed the connection: its code and reason, if it gave them.
    Closed(Option<u16>, String),
    /// The connection was lost without a close frame: why.
    Lost(String),
}

/// `Sec-WebSocket-Accept` for `key` (RFC 6455 §4.2.2); the broker uses the same function.
pub fn accept_key(key: &[u8]) -> [u8; 28] {
    const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(WS_GUID);
    let digest = sha1.finalize();
    let mut out = [0u8; 28];
    // 20 bytes always encode to exactly 28 base64 characters.
    let _ = STANDARD.encode_slice(digest, &mut out);
    out
}

/// Opens the WebSocket in `dialect` within `timeout`; returns the write half and the
/// reader's channel.
///
/// # Errors
/// [`Error::Connect`] (unreachable, timed out, not a WebSocket server of the dialect) or
/// [`Error::Refused`] with the HTTP status and the broker's reason.
pub async fn open(
    url: &WsUrl,
    dialect: Dialect,
    authorization: Option<&str>,
    timeout: Duration,
) -> Result<(Writer, mpsc::Receiver<Read>), Error> {
    match tokio::time::timeout(timeout, handshake(url, dialect, authorization)).await {
        Ok(r) => r,
        Err(_) => Err(Error::Connect(format!(
            "no WebSocket handshake with {} within {timeout:?}",
            url.display()
        ))),
    }
}

async fn handshake(
    url: &WsUrl,
    dialect: Dialect,
    authorization: Option<&str>,
) -> Result<(Writer, mpsc::Receiver<Read>), Error> {
    let at = url.display();
    let stream = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| Error::Connect(format!("cannot connect to {}: {e}", url.authority)))?;
    let _ = stream.set_nodelay(true);
    let key = fastwebsockets::handshake::generate_key();
    let mut request = Request::get(url.target.as_str())
        .header(HOST, url.authority.as_str())
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "Upgrade")
        .header(SEC_WEBSOCKET_KEY, key.as_str())
        .header(SEC_WEBSOCKET_VERSION, "13")
        .header(SEC_WEBSOCKET_PROTOCOL, dialect.subprotocol())
        .header(
            USER_AGENT,
            concat!("shardcast-client/", env!("CARGO_PKG_VERSION")),
        );
    if let Some(auth) = authorization {
        request = request.header(AUTHORIZATION, auth);
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| Error::Connect(format!("invalid request for {at}: {e}")))?;
    let failed = |e: hyper::Error| Error::Connect(format!("handshake with {at} failed: {e}"));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(failed)?;
    tokio::spawn(async move {
        // Ends when the upgraded connection is dropped.
        let _ = conn.with_upgrades().await;
    });
    let mut response = sender.send_request(request).await.map_err(failed)?;
    let status = response.status();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        let body = Limited::new(response.into_body(), MAX_ERROR_BODY)
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        return Err(Error::Refused {
            status: status.as_u16(),
            reason: reason_of(&body),
        });
    }
    let header = |name| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    if header(SEC_WEBSOCKET_ACCEPT).as_bytes() != accept_key(key.as_bytes()).as_slice() {
        return Err(Error::Connect(format!(
            "{at} answered with a wrong Sec-WebSocket-Accept"
        )));
    }
    let chosen = header(SEC_WEBSOCKET_PROTOCOL);
    let none_is_fine = chosen.is_empty() && dialect.subprotocol_optional();
    if chosen != dialect.subprotocol() && !none_is_fine {
        return Err(Error::Connect(format!(
            "{at} did not accept the {} subprotocol",
            dialect.subprotocol()
        )));
    }
    let upgraded = hyper::upgrade::on(&mut response).await.map_err(failed)?;
    let ws = WebSocket::after_handshake(TokioIo::new(upgraded), Role::Client);
    let (read, write) = ws.split(tokio::io::split);
    let (tx, rx) = mpsc::channel(READ_QUEUE);
    tokio::spawn(read_loop(FragmentCollectorRead::new(read), tx));
    Ok((write, rx))
}

/// The broker's JSON error (`{"error": ".."}`) or the body as text.
fn reason_of(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| body.trim().to_owned())
}

async fn read_loop(
    mut read: FragmentCollectorRead<tokio::io::ReadHalf<TokioIo<Upgraded>>>,
    tx: mpsc::Sender<Read>,
) {
    loop {
        let obliged = tx.clone();
        let mut send = move |f: Frame<'_>| {
            let msg = Read::Obligated(f.opcode, f.payload.to_vec());
            let obliged = obliged.clone();
            async move { obliged.send(msg).await.map_err(|_| "client dropped") }
        };
        let msg = match read.read_frame(&mut send).await {
            Ok(frame) => match frame.opcode {
                OpCode::Text => Read::Text(frame.payload.to_vec()),
                OpCode::Close => match &frame.payload[..] {
                    [hi, lo, reason @ ..] => Read::Closed(
                        Some(u16::from_be_bytes([*hi, *lo])),
                        String::from_utf8_lossy(reason).into_owned(),
                    ),
                    _ => Read::Closed(None, String::new()),
                },
                _ => Read::Alive,
            },
            Err(
                fastwebsockets::WebSocketError::UnexpectedEOF
                | fastwebsockets::WebSocketError::ConnectionClosed,
            ) => Read::Lost("closed without a close frame".to_owned()),
            Err(e) => Read::Lost(e.to_string()),
        };
        let end = matches!(msg, Read::Closed(..) | Read::Lost(_));
        if tx.send(msg).await.is_err() || end {
            return;
        }
    }
}

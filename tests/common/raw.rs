//! A raw WebSocket client doing its own handshake and framing, for frames a
//! well-behaved client cannot send (unmasked, bad opcodes, bad UTF-8) and for a client
//! that never reads.

use super::*;

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// A frame read by [`RawWs`]: `(fin, opcode, payload)`.
pub type RawFrame = (bool, u8, Vec<u8>);

/// A WebSocket client that does its own handshake and framing.
pub struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The first header byte of the last frame read (FIN, RSV1..3, opcode).
    pub last_b0: u8,
    /// The whole 101 response head.
    pub head: String,
}

/// What the raw client saw when waiting for the end of a connection.
#[derive(Debug, PartialEq)]
pub enum RawEnd {
    /// A close frame: code (if any) and reason.
    Close(Option<u16>, String),
    Eof,
}

/// Encode one frame; `mask` adds a (fixed) masking key as clients must.
pub fn encode_frame(fin: bool, opcode: u8, payload: &[u8], mask: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(if fin { 0x80 } else { 0 } | (opcode & 0x0f));
    let mbit = if mask { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mbit | n as u8),
        n if n <= 0xffff => {
            out.push(mbit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mbit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if mask {
        let key = [0x37u8, 0xfa, 0x21, 0x3d];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

impl RawWs {
    /// Handshake on `path_and_query` (e.g. `/ws?dialect=vws`), optionally offering a
    /// subprotocol; `recv_buffer` shrinks SO_RCVBUF before connecting (slow-consumer tests).
    pub async fn connect_with(
        addr: SocketAddr,
        path_and_query: &str,
        protocol: Option<&str>,
        recv_buffer: Option<u32>,
    ) -> RawWs {
        let mut headers = String::new();
        if let Some(p) = protocol {
            headers.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
        }
        RawWs::connect_headers(addr, path_and_query, &headers, recv_buffer).await
    }

    /// Handshake on `path_and_query` with `extra` header lines (each ending in `\r\n`).
    pub async fn connect_headers(
        addr: SocketAddr,
        path_and_query: &str,
        extra: &str,
        recv_buffer: Option<u32>,
    ) -> RawWs {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
        }
        let mut stream = within(RECV, "raw TCP connect", socket.connect(addr))
            .await
            .expect("connect");
        let headers = format!("Host: {addr}\r\n{extra}");
        let req = upgrade_request(path_and_query, &headers);
        within(
            RECV,
            "raw handshake write",
            stream.write_all(req.as_bytes()),
        )
        .await
        .expect("write");
        let mut buf = Vec::new();
        let head_end = within(RECV, "raw handshake response", async {
            loop {
                if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    return p + 4;
                }
                let mut chunk = [0u8; 1024];
                let n = stream.read(&mut chunk).await.expect("read handshake");
                assert!(
                    n > 0,
                    "EOF during handshake; got {:?}",
                    String::from_utf8_lossy(&buf)
                );
                buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await;
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "handshake not accepted: {head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "wrong or missing Sec-WebSocket-Accept: {head}"
        );
        buf.drain(..head_end);
        RawWs {
            stream,
            buf,
            last_b0: 0,
            head,
        }
    }

    /// A gows client with a tiny receive buffer, subscribed to `channel` (ping-synced),
    /// for a test to leave unread: a subscriber that stops reading.
    pub async fn stalled_subscriber(addr: SocketAddr, channel: &str) -> RawWs {
        let mut raw = RawWs::connect_with(addr, "/ws", Some("gows"), Some(4096)).await;
        raw.send_text(&json!({"type": "subscribe", "data": channel}).to_string())
            .await;
        raw.send_text(r#"{"type":"ping"}"#).await;
        let v = raw.recv_json(RECV).await;
        assert_eq!(v["type"], "pong", "{v}");
        raw
    }

    /// A [`RawWs::stalled_subscriber`] with about 100 KiB published to it that it will
    /// never read: its outbox stays full, so a graceful shutdown has to wait for it.
    pub async fn stalled_with_backlog(broker: &Broker, channel: &str) -> RawWs {
        let raw = RawWs::stalled_subscriber(broker.addr, channel).await;
        let batch: Vec<_> = (0..500)
            .map(|i| json!({"channel": channel, "data": "x".repeat(200) + &i.to_string()}))
            .collect();
        let r = broker.post_json("/api/publish", &json!(batch)).await;
        assert!(r.is_success(), "{}", r.text);
        raw
    }

    pub async fn connect(addr: SocketAddr, protocol: &str) -> RawWs {
        RawWs::connect_with(addr, "/ws", Some(protocol), None).await
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        within(RECV, "raw write", self.stream.write_all(bytes))
            .await
            .expect("raw write");
    }

    /// Writes `bytes`; false when the write failed or did not finish within `RECV`
    /// (the server closed or stopped reading).
    pub async fn send_raw_checked(&mut self, bytes: &[u8]) -> bool {
        matches!(
            tokio::time::timeout(RECV, self.stream.write_all(bytes)).await,
            Ok(Ok(()))
        )
    }

    /// Drops the connection with a TCP reset (`SO_LINGER` 0): no close frame, no FIN.
    pub fn reset(self) {
        self.stream.set_zero_linger().expect("SO_LINGER 0");
    }

    /// A masked, final text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.send_raw(&encode_frame(true, OP_TEXT, text.as_bytes(), true))
            .await;
    }

    /// Next frame `(fin, opcode, payload)` within `d`; `Ok(None)` on EOF, `Err(())` on timeout.
    pub async fn read_frame(&mut self, d: Duration) -> Result<Option<RawFrame>, ()> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buf) {
                self.last_b0 = self.buf[0];
                self.buf.drain(..used);
                return Ok(Some(frame));
            }
            let mut chunk = vec![0u8; 64 * 1024];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Err(()),
                Ok(Err(_)) | Ok(Ok(0)) => return Ok(None), // reset counts as gone
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Next text message as JSON within `d` (skipping pings); panics otherwise.
    pub async fn recv_json(&mut self, d: Duration) -> Value {
        loop {
            match self.read_frame(d).await {
                Ok(Some((_, OP_TEXT, p))) => {
                    return serde_json::from_slice(&p).expect("server text frame is JSON");
                }
                Ok(Some((_, OP_PING, _))) | Ok(Some((_, OP_PONG, _))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Read (discarding data frames and pings) until a close frame or EOF within `d`.
    /// Also reports how many text frames and pings were skipped.
    pub async fn wait_end(&mut self, d: Duration) -> (RawEnd, Vec<Vec<u8>>, usize) {
        let deadline = Instant::now() + d;
        let mut texts = Vec::new();
        let mut pings = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_frame(left).await {
                Err(()) => panic!(
                    "connection still open after {d:?} ({} text frames, {pings} pings read)",
                    texts.len()
                ),
                Ok(None) => return (RawEnd::Eof, texts, pings),
                Ok(Some((_, OP_CLOSE, p))) => {
                    let code = (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]));
                    let reason = String::from_utf8_lossy(p.get(2..).unwrap_or(&[])).to_string();
                    return (RawEnd::Close(code, reason), texts, pings);
                }
                Ok(Some((_, OP_PING, _))) => pings += 1,
                Ok(Some((_, _, p))) => texts.push(p),
            }
        }
    }

    /// Expect a close frame with `code` (within `d`).
    pub async fn expect_close(&mut self, code: u16, d: Duration) {
        let (end, _, _) = self.wait_end(d).await;
        match end {
            RawEnd::Close(c, reason) => assert_eq!(c, Some(code), "close code (reason {reason:?})"),
            RawEnd::Eof => panic!("connection ended without a close frame, expected {code}"),
        }
    }
}

/// Parse one unmasked server frame from the front of `buf`.
fn parse_server_frame(buf: &[u8]) -> Option<(RawFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0f;
    assert!(buf[1] & 0x80 == 0, "server frames must not be masked");
    let (len, mut at) = match buf[1] & 0x7f {
        126 => {
            if buf.len() < 4 {
                return None;
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
        }
        127 => {
            if buf.len() < 10 {
                return None;
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b) as usize, 10)
        }
        n => (n as usize, 2),
    };
    if buf.len() < at + len {
        return None;
    }
    let payload = buf[at..at + len].to_vec();
    at += len;
    Some(((fin, opcode, payload), at))
}

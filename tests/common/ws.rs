//! The well-behaved WebSocket client (tokio-tungstenite) with gows/vws helpers.

use super::*;

/// How a client picks its dialect.
#[derive(Clone, Copy, Debug)]
pub enum Dialect {
    /// Nothing offered: the server default applies.
    Default,
    /// `Sec-WebSocket-Protocol: <name>`
    Subprotocol(&'static str),
    /// `?dialect=<name>`
    Query(&'static str),
}

/// What a read produced.
#[derive(Debug)]
pub enum Event {
    Json(Value),
    Close(Option<(u16, String)>),
    /// The stream ended or errored without a close frame.
    Gone(String),
}

/// A WebSocket client.
pub struct Ws {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The `Sec-WebSocket-Protocol` the server answered with, if any.
    pub protocol: Option<String>,
}

/// Build the handshake request for `url` with a dialect choice.
fn ws_request(
    url: &str,
    how: Dialect,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let url = match how {
        Dialect::Query(d) => format!("{url}?dialect={d}"),
        _ => url.to_string(),
    };
    let mut req = url.into_client_request().expect("ws request");
    if let Dialect::Subprotocol(p) = how {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(p));
    }
    req
}

/// An HTTP answer instead of an upgrade.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub headers: tokio_tungstenite::tungstenite::http::HeaderMap,
    pub body: String,
}

impl Refusal {
    /// The `{"error": ...}` reason of the body.
    pub fn reason(&self) -> String {
        serde_json::from_str::<Value>(&self.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| panic!("refusal body is not {{\"error\": ..}}: {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Try a WebSocket handshake; on an HTTP refusal return its status code.
pub async fn try_ws(url: &str, how: Dialect) -> Result<Ws, u16> {
    try_ws_with(url, how, &[]).await.map_err(|r| r.status)
}

/// Try a WebSocket handshake with extra request headers (e.g. `Authorization`).
pub async fn try_ws_with(url: &str, how: Dialect, headers: &[(&str, &str)]) -> Result<Ws, Refusal> {
    let mut req = ws_request(url, how);
    for (name, value) in headers {
        req.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())
                .expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        );
    }
    match within(
        RECV,
        "WebSocket handshake",
        tokio_tungstenite::connect_async(req),
    )
    .await
    {
        Ok((stream, resp)) => {
            let protocol = resp
                .headers()
                .get("Sec-WebSocket-Protocol")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            Ok(Ws { stream, protocol })
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(Refusal {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into(),
        }),
        Err(e) => panic!("WebSocket handshake failed: {e}"),
    }
}

impl Ws {
    pub async fn connect(url: &str, how: Dialect) -> Ws {
        match try_ws(url, how).await {
            Ok(ws) => ws,
            Err(status) => panic!("WebSocket handshake refused with HTTP {status}"),
        }
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        within(
            RECV,
            "WebSocket send",
            self.stream.send(Message::Text(text.into())),
        )
        .await
        .expect("WebSocket send");
    }

    /// Send, ignoring failure (for tests where the server may already have closed).
    pub async fn send_text_lossy(&mut self, text: impl Into<String>) -> bool {
        matches!(
            tokio::time::timeout(RECV, self.stream.send(Message::Text(text.into()))).await,
            Ok(Ok(()))
        )
    }

    pub async fn send_json(&mut self, v: &Value) {
        self.send_text(v.to_string()).await
    }

    pub async fn send_message(&mut self, m: Message) {
        within(RECV, "WebSocket send", self.stream.send(m))
            .await
            .expect("WebSocket send");
    }

    /// Next text message / close / end within `d`; `None` on timeout. Ping/pong are skipped.
    pub async fn next_event(&mut self, d: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let item = match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return None,
                Ok(item) => item,
            };
            return Some(match item {
                None => Event::Gone("stream ended".into()),
                Some(Err(e)) => Event::Gone(e.to_string()),
                Some(Ok(Message::Text(t))) => match serde_json::from_str(&t) {
                    Ok(v) => Event::Json(v),
                    Err(e) => panic!("server sent a text frame that is not JSON ({e}): {t:?}"),
                },
                Some(Ok(Message::Close(f))) => {
                    Event::Close(f.map(|f| (u16::from(f.code), f.reason.to_string())))
                }
                Some(Ok(Message::Binary(b))) => panic!("server sent a binary frame: {b:?}"),
                Some(Ok(_)) => continue,
            });
        }
    }

    /// Next JSON message within `d`; panics on timeout or close.
    pub async fn recv_json(&mut self, d: Duration) -> Value {
        match self.next_event(d).await {
            Some(Event::Json(v)) => v,
            None => panic!("no message within {d:?}"),
            Some(other) => panic!("expected a JSON message, got {other:?}"),
        }
    }

    /// Next JSON message within [`RECV`].
    pub async fn recv(&mut self) -> Value {
        self.recv_json(RECV).await
    }

    /// Read until a close frame arrives (skipping other messages) and assert its code.
    /// Returns the close reason.
    pub async fn expect_close(&mut self, code: u16, d: Duration) -> String {
        let deadline = Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left).await {
                None => panic!("no close frame (expected {code}) within {d:?}"),
                Some(Event::Json(_)) => continue,
                Some(Event::Close(Some((c, reason)))) => {
                    assert_eq!(c, code, "close code (reason {reason:?})");
                    return reason;
                }
                Some(Event::Close(None)) => panic!("close frame without a code, expected {code}"),
                Some(Event::Gone(e)) => {
                    panic!("connection ended without a close frame ({e}), expected {code}")
                }
            }
        }
    }

    /// Assert that no message (and no close) arrives within `d`.
    pub async fn expect_silence(&mut self, d: Duration) {
        if let Some(ev) = self.next_event(d).await {
            panic!("expected silence for {d:?}, got {ev:?}");
        }
    }

    /// Assert the connection is still open and responsive: a gows ping is answered.
    pub async fn gows_sync(&mut self) {
        self.send_json(&json!({"type": "ping"})).await;
        let v = self.recv().await;
        assert_eq!(v["type"], "pong", "expected pong, got {v}");
        assert_timestamp(&v);
    }

    /// gows subscribe, then ping/pong so the subscription is known to be in place.
    pub async fn gows_subscribe(&mut self, channel: &str) {
        self.send_json(&json!({"type": "subscribe", "data": channel}))
            .await;
        self.gows_sync().await;
    }

    pub async fn gows_unsubscribe(&mut self, channel: &str) {
        self.send_json(&json!({"type": "unsubscribe", "data": channel}))
            .await;
        self.gows_sync().await;
    }

    /// Send a gows message expected to be refused; return the error reason.
    pub async fn gows_expect_error(&mut self, text: &str) -> String {
        self.send_text(text.to_string()).await;
        let v = self.recv().await;
        assert_eq!(
            v["type"], "error",
            "expected an error reply to {text:?}, got {v}"
        );
        assert_timestamp(&v);
        v["data"]
            .as_str()
            .unwrap_or_else(|| panic!("error data is not a string: {v}"))
            .to_string()
    }

    /// vws subscribe with id `i`, asserting the ack.
    pub async fn vws_subscribe(&mut self, pattern: &str, i: u64) {
        self.send_json(&json!({"k": "s", "t": pattern, "i": i}))
            .await;
        let v = self.recv().await;
        // History channels' acks also carry the channel's position (`o`, `e`).
        assert!(
            v["k"] == "a" && v["i"] == i && v.get("r").is_none(),
            "ack for subscribe {pattern:?}: {v}"
        );
    }

    /// Send a vws request carrying `i`, expect a nack with that `i`; return `e`.
    pub async fn vws_expect_nack(&mut self, req: &Value) -> String {
        self.send_json(req).await;
        let v = self.recv().await;
        assert_eq!(v["k"], "n", "expected a nack to {req}, got {v}");
        assert_eq!(v.get("i"), req.get("i"), "nack id for {req}");
        v["e"]
            .as_str()
            .unwrap_or_else(|| panic!("nack without string e: {v}"))
            .to_string()
    }

    /// Clean close from our side, waiting (bounded) for the server to finish the handshake.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(RECV, self.stream.close(None)).await;
        let _ = tokio::time::timeout(RECV, async {
            while let Some(Ok(_)) = self.stream.next().await {}
        })
        .await;
    }
}

/// Assert a gows message carries an RFC 3339 UTC timestamp.
pub fn assert_timestamp(v: &Value) {
    let ts = v["timestamp"]
        .as_str()
        .unwrap_or_else(|| panic!("no string timestamp in {v}"));
    let b = ts.as_bytes();
    let shape = b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && (b[10] == b'T' || b[10] == b't')
        && b[13] == b':'
        && b[16] == b':'
        && (ts.ends_with('Z') || ts.ends_with('z') || ts.ends_with("+00:00"));
    assert!(shape, "timestamp {ts:?} is not RFC 3339 UTC");
}

/// A gows subscriber on a private channel, used after a bad input to prove that other
/// clients did not notice.
pub struct Canary {
    ws: Ws,
    seq: u64,
}

impl Canary {
    pub async fn new(broker: &Broker) -> Canary {
        Canary {
            ws: broker.gows_subscriber("canary").await,
            seq: 0,
        }
    }

    /// A canary on a broker that requires credentials: it presents `token` as `?token=`.
    pub async fn with_token(broker: &Broker, token: &str) -> Canary {
        let url = format!("{}?token={token}", broker.ws_url());
        let mut ws = Ws::connect(&url, Dialect::Subprotocol("gows")).await;
        ws.gows_subscribe("canary").await;
        Canary { ws, seq: 0 }
    }

    /// Runs `fut` while reading the canary's socket: the canary answers the broker's
    /// pings meanwhile (a short `server.idle_timeout` does not take it) and must receive
    /// nothing else, since nothing is published on its channel.
    pub async fn quiet_while<T>(&mut self, fut: impl Future<Output = T>) -> T {
        tokio::pin!(fut);
        tokio::select! {
            out = &mut fut => out,
            ev = self.ws.next_event(Duration::from_secs(3600)) => {
                panic!("the canary received {ev:?} while it should hear nothing")
            }
        }
    }

    /// Publish a fresh value on the canary channel and assert it arrives next.
    pub async fn check(&mut self, broker: &Broker) {
        self.seq += 1;
        let n = self.seq;
        broker.publish("canary", json!({"canary": n})).await;
        let v = self.ws.recv().await;
        assert_eq!(v["type"], "event", "canary got {v}");
        assert_eq!(v["data"], json!({"canary": n}), "canary got {v}");
    }
}

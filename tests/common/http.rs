//! A small hyper HTTP/1.1 client: one-shot requests and a kept-alive connection.

use super::*;

/// A buffered HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub content_type: String,
    pub text: String,
}

impl HttpResponse {
    /// Body parsed as JSON (panics with the body if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| {
            panic!(
                "HTTP {} body is not JSON ({e}): {:?}",
                self.status, self.text
            )
        })
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// Assert a JSON `{"error": "<non-empty string>"}` body and return the reason.
    pub fn error_reason(&self) -> String {
        let v = self.json();
        let e = v.get("error").and_then(Value::as_str).unwrap_or_else(|| {
            panic!(
                "HTTP {} body has no string \"error\": {}",
                self.status, self.text
            )
        });
        assert!(!e.is_empty(), "empty error reason");
        e.to_string()
    }
}

/// A kept-alive HTTP/1.1 connection (hyper client).
pub struct Http {
    addr: SocketAddr,
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Http {
    pub async fn connect(addr: SocketAddr) -> Http {
        let stream = within(HTTP, "HTTP connect", TcpStream::connect(addr))
            .await
            .expect("HTTP connect");
        let (sender, conn) = within(
            HTTP,
            "HTTP handshake",
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)),
        )
        .await
        .expect("HTTP handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Http { addr, sender }
    }

    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> HttpResponse {
        let what = format!("HTTP {method} {path}");
        within(HTTP, &what, async {
            self.sender.ready().await.expect("HTTP connection ready");
            let mut req = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header(hyper::header::HOST, self.addr.to_string());
            if let Some(ct) = content_type {
                req = req.header(hyper::header::CONTENT_TYPE, ct);
            }
            let req = req
                .body(Full::new(Bytes::from(body)))
                .expect("build request");
            let resp = self
                .sender
                .send_request(req)
                .await
                .expect("send HTTP request");
            let status = resp.status().as_u16();
            let content_type = resp
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = resp
                .into_body()
                .collect()
                .await
                .expect("read HTTP body")
                .to_bytes();
            HttpResponse {
                status,
                content_type,
                text: String::from_utf8_lossy(&body).to_string(),
            }
        })
        .await
    }

    pub async fn post_json(&mut self, path: &str, body: &Value) -> HttpResponse {
        self.request(
            "POST",
            path,
            Some("application/json"),
            body.to_string().into_bytes(),
        )
        .await
    }
}

/// One HTTP request on a fresh connection.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> HttpResponse {
    Http::connect(addr)
        .await
        .request(method, path, content_type, body)
        .await
}

/// A WebSocket upgrade request head for `path` (version 13, the RFC 6455 sample key),
/// with `extra` header lines (each ending in `\r\n`) after the request line.
pub fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\n{extra}Upgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Writes `request` (any bytes, well-formed or not) on a fresh connection and returns
/// what the broker answered up to the end of the response head, or up to EOF.
pub async fn raw_http(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = within(HTTP, "raw HTTP connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    within(HTTP, "raw HTTP write", s.write_all(request))
        .await
        .expect("raw HTTP write");
    let mut got = Vec::new();
    within(HTTP, "raw HTTP response", async {
        let mut chunk = [0u8; 1024];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&got).to_string()
}

/// The status code of a response head (0 when there is none).
pub fn status_of(head: &str) -> u16 {
    head.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Status of an upgrade on `/ws` carrying these extra header lines.
pub async fn upgrade_status(addr: SocketAddr, extra_headers: &str) -> u16 {
    status_of(&raw_http(addr, upgrade_request("/ws", extra_headers).as_bytes()).await)
}

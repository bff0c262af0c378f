//! A minimal HTTP/1.1 client for the broker's own API, used by `shardcast publish` and
//! `shardcast run`: `http://` only, one kept-alive connection per [`ApiClient`], re-opened
//! when the broker closed it.
//!
//! Not a general HTTP client: no TLS, no redirects, no proxies (put a TLS-terminating
//! proxy in front of the broker and talk plain HTTP to it from inside).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tokio::net::TcpStream;

/// Time allowed to open the TCP connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for one whole request (connect, send, read the response).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a request could not be made. `Display` is the user-facing reason.
#[derive(Debug, thiserror::Error)]
pub enum ApiClientError {
    /// The base URL is not `http://host[:port][/prefix]`.
    #[error("invalid broker URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// TCP connect failed.
    #[error("cannot connect to {authority}: {cause}")]
    Connect {
        /// `host:port`.
        authority: String,
        /// The I/O error (shown in the message, so not a `source()`).
        cause: std::io::Error,
    },
    /// The HTTP exchange failed (connection reset, malformed response, ...).
    #[error("request to {authority} failed: {cause}")]
    Http {
        /// `host:port`.
        authority: String,
        /// hyper's error (shown in the message, so not a `source()`).
        cause: hyper::Error,
    },
    /// The request could not be built (e.g. an API key with a newline in it).
    #[error("invalid request: {0}")]
    Request(hyper::http::Error),
    /// No answer within [`REQUEST_TIMEOUT`].
    #[error("no answer from {authority} within {}s", REQUEST_TIMEOUT.as_secs())]
    Timeout {
        /// `host:port`.
        authority: String,
    },
}

/// A parsed `http://host[:port][/prefix]` base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    /// Host to connect to (IPv6 without brackets).
    pub host: String,
    /// Port, 80 when absent.
    pub port: u16,
    /// `host[:port]` as written, for the `Host` header and messages.
    pub authority: String,
    /// Path prefix without a trailing `/` (usually empty).
    pub prefix: String,
}

impl BaseUrl {
    /// Parses `http://host[:port][/prefix]`; `https://` is refused.
    ///
    /// # Errors
    /// [`ApiClientError::InvalidUrl`] saying what is wrong.
    pub fn parse(url: &str) -> Result<BaseUrl, ApiClientError> {
        let bad = |reason| ApiClientError::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        let trimmed = url.trim();
        if trimmed.starts_with("https://") {
            return Err(bad(
                "https is not supported; use http:// (e.g. http://127.0.0.1:8080)",
            ));
        }
        let rest = trimmed
            .strip_prefix("http://")
            .ok_or_else(|| bad("must start with http:// (e.g. http://127.0.0.1:8080)"))?;
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if path.contains(['?', '#']) {
            return Err(bad("must not have a query or fragment"));
        }
        if authority.is_empty() || authority.contains('@') {
            return Err(bad("needs a host (and no user:password@)"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed '[' in IPv6 host"))?;
            match after {
                "" => (host, None),
                p => (
                    host,
                    Some(p.strip_prefix(':').ok_or_else(|| bad("bad port"))?),
                ),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(bad("needs a host"));
        }
        let port = match port {
            None => 80,
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| bad("port must be a number from 1 to 65535"))?,
        };
        if port == 0 {
            return Err(bad("port must be a number from 1 to 65535"));
        }
        Ok(BaseUrl {
            host: host.to_owned(),
            port,
            authority: authority.to_owned(),
            prefix: path.trim_end_matches('/').to_owned(),
        })
    }
}

/// Percent-encodes one path segment (e.g. a process id) so that `/`, `?`, spaces and
/// non-ASCII reach the broker as part of the segment.
pub fn encode_path_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'@') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A client for one broker, keeping one HTTP/1.1 connection open between requests.
pub struct ApiClient {
    base: BaseUrl,
    api_key: Option<String>,
    conn: Option<SendRequest<Full<Bytes>>>,
}

impl ApiClient {
    /// A client for `url_base` (`http://host:port`); sends `Authorization: Bearer <key>`
    /// when `api_key` is given. Does not connect yet.
    ///
    /// # Errors
    /// [`ApiClientError::InvalidUrl`].
    pub fn new(url_base: &str, api_key: Option<&str>) -> Result<ApiClient, ApiClientError> {
        Ok(ApiClient {
            base: BaseUrl::parse(url_base)?,
            api_key: api_key.filter(|k| !k.is_empty()).map(str::to_owned),
            conn: None,
        })
    }

    /// The broker this client talks to.
    pub fn base(&self) -> &BaseUrl {
        &self.base
    }

    /// POSTs `body` to `path` (e.g. `/api/publish`) and returns the status code and the
    /// response body as text. Any status is `Ok`; the caller decides what is an error.
    /// A request on a reused connection that fails is retried once on a fresh one (the
    /// broker may have closed an idle keep-alive connection).
    ///
    /// # Errors
    /// Connect failure, HTTP failure, timeout, or a request that cannot be built.
    pub async fn post(
        &mut self,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<(u16, String), ApiClientError> {
        let authority = self.base.authority.clone();
        let attempt = async {
            let reused = self.conn.as_ref().is_some_and(|c| !c.is_closed());
            let first = self.post_once(path, content_type, body.clone()).await;
            match first {
                Err(ApiClientError::Http { .. }) if reused => {
                    self.conn = None;
                    self.post_once(path, content_type, body).await
                }
                other => other,
            }
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, attempt).await {
            Ok(result) => result,
            Err(_) => {
                self.conn = None;
                Err(ApiClientError::Timeout { authority })
            }
        }
    }

    async fn post_once(
        &mut self,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<(u16, String), ApiClientError> {
        let mut sender = match self.conn.take() {
            Some(c) if !c.is_closed() => c,
            _ => self.connect().await?,
        };
        let http_err = |cause| ApiClientError::Http {
            authority: self.base.authority.clone(),
            cause,
        };
        let mut request = Request::post(format!("{}{path}", self.base.prefix))
            .header(HOST, &self.base.authority)
            .header(USER_AGENT, concat!("shardcast/", env!("CARGO_PKG_VERSION")))
            .header(CONTENT_TYPE, content_type);
        if let Some(key) = &self.api_key {
            request = request.header(AUTHORIZATION, format!("Bearer {key}"));
        }
        let request = request
            .body(Full::new(body))
            .map_err(ApiClientError::Request)?;
        sender.ready().await.map_err(http_err)?;
        let response = sender.send_request(request).await.map_err(http_err)?;
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(http_err)?
            .to_bytes();
        // Keep the connection for the next request unless the broker is closing it.
        if !sender.is_closed() {
            self.conn = Some(sender);
        }
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, ApiClientError> {
        let authority = &self.base.authority;
        let connect = TcpStream::connect((self.base.host.as_str(), self.base.port));
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(cause)) => {
                return Err(ApiClientError::Connect {
                    authority: authority.clone(),
                    cause,
                })
            }
            Err(_) => {
                return Err(ApiClientError::Connect {
                    authority: authority.clone(),
                    cause: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
                })
            }
        };
        // Small requests, sent one at a time: do not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let (sender, connection) =
            http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|cause| ApiClientError::Http {
                    authority: authority.clone(),
                    cause,
                })?;
        let peer = authority.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(broker = %peer, error = %e, "API connection ended");
            }
        });
        Ok(sender)
    }
}

/// One-shot POST: [`ApiClient::new`] + [`ApiClient::post`].
///
/// # Errors
/// As [`ApiClient::post`], plus [`ApiClientError::InvalidUrl`].
pub async fn post(
    url_base: &str,
    path: &str,
    content_type: &str,
    body: Bytes,
    api_key: Option<&str>,
) -> Result<(u16, String), ApiClientError> {
    ApiClient::new(url_base, api_key)?
        .post(path, content_type, body)
        .await
}

/// The `error` text of a `{"error": "..."}` API response, else the body itself.
pub fn error_text(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| body.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> BaseUrl {
        BaseUrl::parse(url).expect("valid URL")
    }

    #[test]
    fn parses_base_urls() {
        let u = parse("http://127.0.0.1:8080");
        assert_eq!(
            (u.host.as_str(), u.port, u.prefix.as_str()),
            ("127.0.0.1", 8080, "")
        );
        assert_eq!(u.authority, "127.0.0.1:8080");
        let u = parse("http://broker/");
        assert_eq!(
            (u.host.as_str(), u.port, u.prefix.as_str()),
            ("broker", 80, "")
        );
        let u = parse("http://[::1]:9000/shardcast/");
        assert_eq!(
            (u.host.as_str(), u.port, u.prefix.as_str()),
            ("::1", 9000, "/shardcast")
        );
        assert_eq!(u.authority, "[::1]:9000");
        let u = parse("http://[::1]");
        assert_eq!((u.host.as_str(), u.port), ("::1", 80));
    }

    #[test]
    fn refuses_bad_urls() {
        for bad in [
            "https://x",
            "127.0.0.1:8080",
            "http://",
            "http://:80",
            "http://h:0",
            "http://h:99999",
            "http://h:x",
            "http://[::1",
            "http://u:p@h",
            "http://h/?q=1",
        ] {
            assert!(BaseUrl::parse(bad).is_err(), "{bad} should be refused");
        }
        let text = BaseUrl::parse("https://x")
            .expect_err("refused")
            .to_string();
        assert!(text.contains("https is not supported"), "{text}");
    }

    #[test]
    fn encodes_path_segments() {
        assert_eq!(encode_path_segment("build-1"), "build-1");
        assert_eq!(encode_path_segment("a/b c?"), "a%2Fb%20c%3F");
        assert_eq!(encode_path_segment("é"), "%C3%A9");
    }

    #[test]
    fn extracts_error_text() {
        assert_eq!(
            error_text(r#"{"error":"channel is empty"}"#),
            "channel is empty"
        );
        assert_eq!(error_text("plain text\n"), "plain text");
    }

    #[tokio::test]
    async fn connect_failure_is_reported() {
        // Port 1 on loopback: nothing listens there in a test environment.
        let err = post(
            "http://127.0.0.1:1",
            "/api/publish",
            "application/json",
            Bytes::new(),
            None,
        )
        .await
        .expect_err("nothing listens");
        assert!(
            err.to_string().contains("cannot connect to 127.0.0.1:1"),
            "{err}"
        );
    }
}

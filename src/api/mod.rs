//! The HTTP API on the WebSocket port (SPEC §2): routing, the API-key / loopback rule for
//! every endpoint but health, readiness, ws-check and the pages (`access`), body limits,
//! and JSON errors `{"error": "<reason>"}`.

mod access;
mod dashboard;
pub mod health;
mod history;
mod publish;
pub mod stats;

use crate::error::Reject;
use crate::server::http::HttpResponse;
use crate::shard::Shard;
use access::authorize;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;

/// A JSON error response.
pub fn error_response(status: u16, reason: &str) -> HttpResponse {
    json_response(status, &serde_json::json!({ "error": reason }))
}

/// 503 with `Retry-After` (seconds) and a JSON reason: the broker is at a limit now,
/// the client may try again later.
pub fn unavailable(reason: &str, retry_after_secs: u32) -> HttpResponse {
    let mut resp = error_response(503, reason);
    resp.headers_mut().insert(
        hyper::header::RETRY_AFTER,
        hyper::header::HeaderValue::from(retry_after_secs),
    );
    resp
}

/// A JSON response.
pub fn json_response(status: u16, body: &serde_json::Value) -> HttpResponse {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    response(status, "application/json", Bytes::from(bytes))
}

/// A response with a body and content type.
pub fn response(status: u16, content_type: &'static str, body: Bytes) -> HttpResponse {
    let mut resp = HttpResponse::new(Full::new(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// An API failure: status and reason.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Reason for `{"error": ..}`.
    pub reason: String,
}

impl ApiError {
    /// 400 with a reason.
    pub fn bad_request(reason: impl Into<String>) -> Self {
        ApiError {
            status: 400,
            reason: reason.into(),
        }
    }
}

/// Routes one API request.
pub async fn handle(shard: &Rc<Shard>, peer: SocketAddr, req: Request<Incoming>) -> HttpResponse {
    let broker = &shard.broker;
    broker.global.api_requests.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path().to_owned();
    // HEAD is GET without the body (uptime checkers use it); hyper leaves the body out.
    let method = match req.method() {
        &Method::HEAD => Method::GET,
        m => m.clone(),
    };
    let result = match (method.clone(), path.as_str()) {
        (Method::GET, "/healthz") => Ok(health::healthz(broker)),
        (Method::GET, "/readyz") => Ok(health::readyz(broker)),
        (Method::GET, "/metrics") if !broker.config.metrics.enabled => Err(ApiError {
            status: 404,
            reason: "metrics are disabled (metrics.enabled = false)".into(),
        }),
        // These name channels (issue 16, finding 7): the key / loopback rule applies.
        (Method::GET, "/metrics") => {
            authorize(shard, peer, &req).map(|()| crate::metrics::render(broker))
        }
        (Method::GET, "/api/stats") => match authorize(shard, peer, &req) {
            Ok(()) => stats::stats(broker).await,
            Err(e) => Err(e),
        },
        (Method::GET, "/api/channels") => match authorize(shard, peer, &req) {
            Ok(()) => stats::channels(broker, None).await,
            Err(e) => Err(e),
        },
        (Method::GET, p) if p.starts_with("/api/channels/") => {
            let name = percent_decode(p.trim_start_matches("/api/channels/"));
            match authorize(shard, peer, &req) {
                Ok(()) => stats::channels(broker, Some(&name)).await,
                Err(e) => Err(e),
            }
        }
        (Method::GET, p) if p.starts_with("/api/history/") => {
            let name = percent_decode(p.trim_start_matches("/api/history/"));
            authorize(shard, peer, &req)
                .and_then(|()| history::get(shard, &name, req.uri().query()))
        }
        // Why would a WebSocket upgrade from here be refused? (A browser cannot read the
        // 403/401 body of a refused upgrade.) POST too: browsers send `Origin` with every
        // POST, also to their own origin, and with a GET only across origins.
        (Method::GET | Method::POST, "/api/ws-check") => {
            Ok(crate::server::upgrade::check(shard, &req))
        }
        (Method::GET, "/") => Ok(dashboard::index(&broker.config.server.ws_path)),
        (Method::GET, "/client.js") => Ok(dashboard::client_js()),
        (Method::POST, p)
            if p.starts_with("/api/")
                && is_known(p)
                && !p.starts_with("/api/channels")
                && !p.starts_with("/api/history") =>
        {
            match authorize(shard, peer, &req) {
                Err(e) => Err(e),
                Ok(()) => {
                    let content_type = req
                        .headers()
                        .get(CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    match read_body(shard, req).await {
                        Err(e) => Err(e),
                        Ok(body) => publish::post(shard, &path, &content_type, body).await,
                    }
                }
            }
        }
        (_, p) if is_known(p) => Err(ApiError {
            status: 405,
            reason: format!("method {method} not allowed on {p}"),
        }),
        (_, p) => Err(ApiError {
            status: 404,
            reason: format!("no such endpoint: {p}"),
        }),
    };
    match result {
        Ok(resp) => resp,
        Err(e) => {
            broker.global.api_errors.fetch_add(1, Ordering::Relaxed);
            error_response(e.status, &e.reason)
        }
    }
}

fn is_known(path: &str) -> bool {
    matches!(
        path,
        "/healthz"
            | "/readyz"
            | "/metrics"
            | "/api/stats"
            | "/api/channels"
            | "/api/publish"
            | "/api/broadcast"
            | "/api/ws-check"
            | "/"
            | "/client.js"
    ) || path.starts_with("/api/channels/")
        || path.starts_with("/api/history/")
        || (path.starts_with("/api/process/")
            && (path.ends_with("/output") || path.ends_with("/status")))
}

async fn read_body(shard: &Shard, req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let limit = shard.broker.config.api.max_body_bytes;
    // hyper's header timeout does not cover the body: a body trickled byte by byte must
    // not hold the connection forever either.
    let deadline = shard.broker.config.server.handshake_timeout;
    let collected = tokio::time::timeout(deadline, Limited::new(req.into_body(), limit).collect())
        .await
        .map_err(|_| {
            shard.broker.global.reject(Reject::HandshakeTimeout);
            ApiError {
                status: 408,
                reason: format!(
                    "request body not received within {deadline:?} (server.handshake_timeout)"
                ),
            }
        })?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError {
                status: 413,
                reason: format!("request body over {limit} bytes (api.max_body_bytes)"),
            })
        }
        Err(e) => Err(ApiError::bad_request(format!(
            "cannot read request body: {e}"
        ))),
    }
}

/// Decodes `%XX` escapes in a path segment or query value (channel names may hold `/`,
/// `:`, spaces; tokens in `?token=` may hold `+`, `/`, `=`). A broken escape stays as it is.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(v) = hex {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("process%3Abuild-1"), "process:build-1");
        assert_eq!(percent_decode("a%2Fb%20c"), "a/b c");
        assert_eq!(percent_decode("bad%zz"), "bad%zz");
    }
}

//! The WebSocket handshake: validate the upgrade, pick the dialect, answer 101, and
//! hand the raw socket to the shard.
//!
//! fastwebsockets checks the key/version and computes `Sec-WebSocket-Accept`; the
//! dialect (`Sec-WebSocket-Protocol`, then `?dialect=`, then `server.default_dialect`)
//! is ours. After the upgrade, hyper's `Upgraded::downcast` gives back the plain
//! `TcpStream` and any bytes the client sent behind its request, so the connection can
//! live on the shard's lean read/write path with no per-connection buffers.

use super::http::{HttpResponse, Socket};
use super::prefixed::Prefixed;
use crate::api;
use crate::auth::{AuthError, Offered};
use crate::conn::Admission;
use crate::error::Reject;
use crate::protocol::Dialect;
use crate::shard::{Shard, Upgraded};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, SEC_WEBSOCKET_PROTOCOL};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use std::rc::Rc;

/// How the dialect was chosen.
#[derive(Debug, PartialEq, Eq)]
pub struct DialectChoice {
    /// The dialect.
    pub dialect: Dialect,
    /// Echo it as the subprotocol (it was offered in `Sec-WebSocket-Protocol`).
    pub echo: bool,
}

/// Picks the dialect from the offered subprotocols, the query, or the default.
///
/// # Errors
/// `?dialect=` names something unknown.
pub fn choose_dialect(
    offered: Option<&str>,
    query: Option<&str>,
    default: Dialect,
) -> Result<DialectChoice, String> {
    if let Some(dialect) = offered
        .into_iter()
        .flat_map(|v| v.split(','))
        .find_map(Dialect::from_name)
    {
        return Ok(DialectChoice {
            dialect,
            echo: true,
        });
    }
    let asked = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("dialect="));
    match asked {
        Some(name) => Dialect::from_name(name)
            .map(|dialect| DialectChoice {
                dialect,
                echo: false,
            })
            .ok_or_else(|| format!("unknown dialect '{name}' (expected gows or vws)")),
        None => Ok(DialectChoice {
            dialect: default,
            echo: false,
        }),
    }
}

/// Answers an upgrade request on the WebSocket path.
pub fn upgrade(
    shard: &Rc<Shard>,
    mut req: Request<Incoming>,
    socket: &Socket,
    peer: std::net::SocketAddr,
) -> HttpResponse {
    let broker = &shard.broker;
    if req.method() != Method::GET || !fastwebsockets::upgrade::is_upgrade_request(&req) {
        broker.global.reject(Reject::BadHandshake);
        return api::error_response(
            400,
            "expected a WebSocket upgrade (GET with Upgrade: websocket)",
        );
    }
    let header =
        |name: hyper::header::HeaderName| req.headers().get(name).and_then(|v| v.to_str().ok());
    if !crate::auth::origin::allowed(
        &broker.config.server.allowed_origins,
        header(hyper::header::ORIGIN),
        header(hyper::header::HOST),
    ) {
        broker.global.reject(Reject::OriginNotAllowed);
        return api::error_response(403, &Reject::OriginNotAllowed.to_string());
    }
    let identity = match broker.auth.authenticate(Offered {
        authorization: header(hyper::header::AUTHORIZATION),
        query: req.uri().query(),
    }) {
        Ok(identity) => identity,
        Err(e) => {
            let reject = match e {
                AuthError::Missing => Reject::MissingCredentials,
                _ => Reject::BadCredentials,
            };
            broker.global.reject(reject);
            let mut response = api::error_response(401, &e.to_string());
            if let Some(challenge) = broker.auth.challenge() {
                response.headers_mut().insert(
                    hyper::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(challenge),
                );
            }
            return response;
        }
    };
    let offered = req
        .headers()
        .get(SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok());
    let choice = match choose_dialect(
        offered,
        req.uri().query(),
        broker.config.server.default_dialect,
    ) {
        Ok(c) => c,
        Err(reason) => {
            broker.global.reject(Reject::BadHandshake);
            return api::error_response(400, &reason);
        }
    };
    let (response, pending) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(r) => r,
        Err(e) => {
            broker.global.reject(Reject::BadHandshake);
            return api::error_response(400, &format!("bad WebSocket handshake: {e}"));
        }
    };
    if !broker.reserve_ws() {
        broker.global.reject(Reject::TooManyConnections);
        return api::unavailable(&Reject::TooManyConnections.to_string(), 1);
    }
    socket.upgraded.set(true);
    let admission = Admission::boxed(identity, socket.ip_slot.take());
    let shard = shard.clone();
    let dialect = choice.dialect;
    tokio::task::spawn_local(async move {
        let socket = match pending.await {
            Ok(ws) => ws.into_inner().into_inner().downcast::<TokioIo<Prefixed>>(),
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                shard.broker.socket_closed();
                shard.broker.ws_closed();
                return;
            }
        };
        match socket {
            Ok(parts) => {
                // hyper read `read_buf` from the replay bytes or the socket before any
                // replay bytes it never asked for, so those go last.
                let (stream, unread) = parts.io.into_inner().into_parts();
                let mut leftover = parts.read_buf.to_vec();
                leftover.extend_from_slice(&unread);
                shard.place_conn(Upgraded {
                    stream,
                    dialect,
                    leftover,
                    admission,
                    peer,
                });
            }
            Err(_) => {
                shard.broker.socket_closed();
                shard.broker.ws_closed();
            }
        }
    });
    let (mut parts, _) = response.into_parts();
    if choice.echo {
        parts.headers.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(dialect.name()),
        );
    }
    HttpResponse::from_parts(parts, Full::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subprotocol_beats_query_beats_default() {
        let c = choose_dialect(Some("chat, vws"), Some("dialect=gows"), Dialect::Gows).expect("ok");
        assert_eq!(
            c,
            DialectChoice {
                dialect: Dialect::Vws,
                echo: true
            }
        );
        let c = choose_dialect(Some("chat"), Some("x=1&dialect=vws"), Dialect::Gows).expect("ok");
        assert_eq!(
            c,
            DialectChoice {
                dialect: Dialect::Vws,
                echo: false
            }
        );
        let c = choose_dialect(None, None, Dialect::Vws).expect("ok");
        assert_eq!(
            c,
            DialectChoice {
                dialect: Dialect::Vws,
                echo: false
            }
        );
        assert!(choose_dialect(None, Some("dialect=mqtt"), Dialect::Gows).is_err());
    }
}

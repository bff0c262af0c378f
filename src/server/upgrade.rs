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
use crate::auth::{AuthError, Identity, Offered};
use crate::broker::Broker;
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
use std::sync::atomic::Ordering;

/// How the dialect was chosen.
#[derive(Debug, PartialEq, Eq)]
pub struct DialectChoice {
    /// The dialect.
    pub dialect: Dialect,
    /// Echo it as the subprotocol (it was offered in `Sec-WebSocket-Protocol`).
    pub echo: bool,
    /// Nothing chose it and `server.default_dialect = "auto"`: the client's first
    /// message decides (`dialect` is gows until then).
    pub detect: bool,
}

/// Picks the dialect from the offered subprotocols, the query, or the default.
///
/// # Errors
/// `?dialect=` names something unknown.
pub fn choose_dialect(
    offered: Option<&str>,
    query: Option<&str>,
    default: Option<Dialect>,
) -> Result<DialectChoice, String> {
    if let Some(dialect) = offered
        .into_iter()
        .flat_map(|v| v.split(','))
        .find_map(Dialect::from_name)
    {
        return Ok(DialectChoice {
            dialect,
            echo: true,
            detect: false,
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
                detect: false,
            })
            .ok_or_else(|| format!("unknown dialect '{name}' (expected gows, vws or semstreams)")),
        None => Ok(DialectChoice {
            dialect: default.unwrap_or(Dialect::Gows),
            echo: false,
            detect: default.is_none(),
        }),
    }
}

/// Why an upgrade is refused before the WebSocket opens.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// What the metrics count it as.
    pub reject: Reject,
    /// The HTTP status of the refusal.
    pub status: u16,
    /// The reason the client is told (never a credential).
    pub reason: String,
}

impl Refusal {
    fn new(reject: Reject, reason: impl Into<String>) -> Self {
        Refusal {
            status: reject.http_status(),
            reject,
            reason: reason.into(),
        }
    }

    /// A refusal the client may overcome by trying again later (503); the others need
    /// a change of config, credentials or request.
    pub fn is_transient(&self) -> bool {
        self.status == 503
    }
}

/// What an upgrade request offers that decides whether it is admitted.
#[derive(Debug, Clone, Copy, Default)]
pub struct Offer<'a> {
    /// `Origin`.
    pub origin: Option<&'a str>,
    /// `Host`.
    pub host: Option<&'a str>,
    /// `Authorization`.
    pub authorization: Option<&'a str>,
    /// The query string (`?token=`, `?dialect=`).
    pub query: Option<&'a str>,
    /// `Sec-WebSocket-Protocol`.
    pub protocol: Option<&'a str>,
}

impl<'a> Offer<'a> {
    /// The offer of a request's headers and query.
    pub fn of<B>(req: &'a Request<B>) -> Self {
        let header =
            |name: hyper::header::HeaderName| req.headers().get(name).and_then(|v| v.to_str().ok());
        Offer {
            origin: header(hyper::header::ORIGIN),
            host: header(hyper::header::HOST),
            authorization: header(hyper::header::AUTHORIZATION),
            query: req.uri().query(),
            protocol: header(SEC_WEBSOCKET_PROTOCOL),
        }
    }
}

/// The checks an upgrade passes before its handshake, in this order: `Origin`
/// (`server.allowed_origins`), credentials (`[auth]`), dialect. `GET /api/ws-check`
/// runs the same ones, so a browser can learn why its upgrade was refused.
///
/// # Errors
/// The first check that fails.
pub fn admit(
    broker: &Broker,
    offer: Offer<'_>,
) -> Result<(Option<Identity>, DialectChoice), Refusal> {
    let server = &broker.config.server;
    if let Err(reject) = crate::auth::host::check_origin(
        &server.allowed_origins,
        &server.allowed_hosts,
        offer.origin,
        offer.host,
    ) {
        return Err(Refusal::new(reject, reject.to_string()));
    }
    let identity = broker
        .auth
        .authenticate(Offered {
            authorization: offer.authorization,
            query: offer.query,
        })
        .map_err(|e| {
            let reject = match e {
                AuthError::Missing => Reject::MissingCredentials,
                _ => Reject::BadCredentials,
            };
            Refusal::new(reject, e.to_string())
        })?;
    let choice = choose_dialect(
        offer.protocol,
        offer.query,
        broker.config.server.default_dialect.fixed(),
    )
    .map_err(|reason| Refusal::new(Reject::BadHandshake, reason))?;
    Ok((identity, choice))
}

/// `GET`/`POST /api/ws-check`: what an upgrade with this request's `Origin`, `Host`,
/// credentials and query would get, as JSON any page may read
/// (`Access-Control-Allow-Origin: *`): a browser cannot read the body of a refused
/// upgrade, and learns nothing from its close code 1006. Nothing is counted as a
/// rejection and nothing secret is told: the reasons are those of the 401/403 bodies.
///
/// `{"ok": true, "status": 101, ...}` when an upgrade would pass now, else `ok: false`
/// with the refusal's `status`, `reason`, `retry` (true for a 503: try again later) and
/// `fix` (what to change, or null); `origin` echoes the `Origin` received.
pub fn check(shard: &Shard, req: &Request<Incoming>) -> HttpResponse {
    let broker = &shard.broker;
    let offer = Offer::of(req);
    let verdict = admit(broker, offer).and_then(|_| {
        if shard.is_draining() || broker.is_draining() {
            return Err(Refusal {
                reject: Reject::TooManyConnections,
                status: 503,
                reason: "the broker is shutting down".into(),
            });
        }
        let open = broker.ws_connections.load(Ordering::Acquire);
        if open >= broker.config.server.max_connections {
            let reject = Reject::TooManyConnections;
            return Err(Refusal::new(
                reject,
                format!("{reject} (server.max_connections)"),
            ));
        }
        Ok(())
    });
    let body = match verdict {
        Ok(()) => serde_json::json!({
            "ok": true,
            "status": 101,
            "reason": null,
            "retry": false,
            "fix": null,
            "origin": offer.origin,
        }),
        Err(refusal) => {
            let fix = match refusal.reject {
                Reject::OriginNotAllowed => offer.origin.map(crate::auth::origin::how_to_allow),
                Reject::HostNotAllowed => offer.host.map(crate::auth::host::how_to_allow),
                Reject::MissingCredentials => Some(
                    "send credentials: ?token=<token> on the WebSocket URL (client.js: the token option) or an Authorization header".to_owned(),
                ),
                Reject::BadCredentials => Some("use valid credentials".to_owned()),
                _ => None,
            };
            serde_json::json!({
                "ok": false,
                "status": refusal.status,
                "reason": refusal.reason,
                "retry": refusal.is_transient(),
                "fix": fix,
                "origin": offer.origin,
            })
        }
    };
    let mut resp = api::json_response(200, &body);
    let headers = resp.headers_mut();
    headers.insert(
        hyper::header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    resp
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
    let key_ok = req
        .headers()
        .get(hyper::header::SEC_WEBSOCKET_KEY)
        .is_some_and(|k| super::handshake::valid_key(k.as_bytes()));
    if !key_ok {
        broker.global.reject(Reject::BadHandshake);
        return api::error_response(
            400,
            "Sec-WebSocket-Key must be 16 random bytes in base64, 24 characters (RFC 6455 §4.1)",
        );
    }
    let offer = Offer::of(&req);
    let (identity, choice) = match admit(broker, offer) {
        Ok(admitted) => admitted,
        Err(refusal) => {
            broker.global.reject(refusal.reject);
            let mut response = api::error_response(refusal.status, &refusal.reason);
            match refusal.reject {
                Reject::OriginNotAllowed => {
                    crate::auth::origin::log_refusal(offer.origin.unwrap_or_default(), offer.host);
                }
                Reject::HostNotAllowed => {
                    crate::auth::host::log_refusal(
                        "WebSocket upgrade",
                        offer.host.unwrap_or_default(),
                    );
                }
                Reject::MissingCredentials | Reject::BadCredentials => {
                    if let Some(challenge) = broker.auth.challenge() {
                        response.headers_mut().insert(
                            hyper::header::WWW_AUTHENTICATE,
                            HeaderValue::from_static(challenge),
                        );
                    }
                }
                _ => {}
            }
            return response;
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
    let extensions = crate::deflate::negotiate(
        shard.broker.config.server.compression == crate::config::Compression::On,
        req.headers()
            .get_all(hyper::header::SEC_WEBSOCKET_EXTENSIONS)
            .iter()
            .map(HeaderValue::as_bytes),
    );
    let shard = shard.clone();
    let dialect = choice.dialect;
    let detect = choice.detect;
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
                    deflate: extensions.is_some(),
                    detect,
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
    if let Some(answer) = extensions {
        parts.headers.insert(
            hyper::header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static(answer),
        );
    }
    HttpResponse::from_parts(parts, Full::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subprotocol_beats_query_beats_default() {
        let c = choose_dialect(Some("chat, vws"), Some("dialect=gows"), Some(Dialect::Gows))
            .expect("ok");
        assert_eq!(
            c,
            DialectChoice {
                dialect: Dialect::Vws,
                echo: true,
                detect: false,
            }
        );
        let c =
            choose_dialect(Some("chat"), Some("x=1&dialect=vws"), Some(Dialect::Gows)).expect("ok");
        assert_eq!(
            c,
            DialectChoice {
                dialect: Dialect::Vws,
                echo: false,
                detect: false,
            }
        );
        let c = choose_dialect(None, None, Some(Dialect::Vws)).expect("ok");
        assert_eq!(
            c,
            DialectChoice {
                dialect: Dialect::Vws,
                echo: false,
                detect: false,
            }
        );
        assert!(choose_dialect(None, Some("dialect=mqtt"), Some(Dialect::Gows)).is_err());
        let c = choose_dialect(None, None, None).expect("ok");
        assert_eq!(
            c,
            DialectChoice {
                dialect: Dialect::Gows,
                echo: false,
                detect: true,
            },
            "auto: answered as gows until the first message decides"
        );
        let c = choose_dialect(Some("semstreams"), None, None).expect("ok");
        assert_eq!((c.dialect, c.detect), (Dialect::Semstreams, false));
    }
}

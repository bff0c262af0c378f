//! Who may call the protected API endpoints (SPEC §2), and what bodies they may send.
//!
//! Protected: every `POST /api/...` (publishing), `GET /api/history/...`,
//! `GET /api/stats`, `GET /api/channels[/...]` and `GET /metrics` (they name channels).
//! Open: `/healthz`, `/readyz`, `/api/ws-check`, `/` and `/client.js`.
//!
//! * With an API key (`api.key_env`): `Authorization: Bearer <key>` from any peer.
//! * Without one: loopback peers only, and then only requests that cannot be a web page
//!   on this machine abusing that trust: no `Origin` header (browsers send one with every
//!   POST and every cross-origin request; curl and the CLI send none) and a `Host` that is
//!   a name of this broker (`auth::host`: after DNS rebinding a page's requests carry
//!   the attacker's name).
//!
//! Bodies: endpoints that read JSON need `Content-Type: application/json` (415
//! otherwise), so a form or `text/plain` POST, the kinds a page may send anywhere
//! without asking, is never taken for a publication.

use super::ApiError;
use crate::auth::host;
use crate::error::Reject;
use crate::shard::Shard;
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, HOST, ORIGIN};
use hyper::Request;
use std::net::SocketAddr;

/// May this request use a protected endpoint?
///
/// # Errors
/// 401 without the right key, 403 for a peer or request the keyless rule refuses.
pub fn authorize(shard: &Shard, peer: SocketAddr, req: &Request<Incoming>) -> Result<(), ApiError> {
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    let broker = &shard.broker;
    let Some(key) = &broker.api_key else {
        if !peer.ip().is_loopback() {
            return Err(ApiError {
                status: 403,
                reason: "this endpoint answers only loopback peers when no API key is configured (set api.key_env)".into(),
            });
        }
        if let Some(origin) = req.headers().get(ORIGIN) {
            broker.global.reject(Reject::ApiFromBrowser);
            let origin: String = String::from_utf8_lossy(origin.as_bytes())
                .chars()
                .take(200)
                .collect();
            return Err(ApiError {
                status: 403,
                reason: format!(
                    "a request from a browser page (Origin {origin:?}) may not use the keyless API: without api.key_env it trusts loopback peers, and any page open in a browser on this host is one; configure an API key and send Authorization: Bearer <key>"
                ),
            });
        }
        if let Some(h) = header(HOST) {
            if !host::known(&broker.config.server.allowed_hosts, h) {
                broker.global.reject(Reject::HostNotAllowed);
                host::log_refusal("keyless API request", h);
                return Err(ApiError {
                    status: 403,
                    reason: format!(
                        "Host {h:?} is not a name of this broker; {}",
                        host::how_to_allow(h)
                    ),
                });
            }
        }
        return Ok(());
    };
    let given = header(AUTHORIZATION).and_then(bearer_token).unwrap_or("");
    if key.matches(given.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError {
            status: 401,
            reason: "missing or wrong API key (Authorization: Bearer <key>)".into(),
        })
    }
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is
/// case-insensitive (RFC 7235 §2.1), the token is taken as sent.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start())
}

/// The media type of a `Content-Type` value, without parameters, lower case.
pub fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Refuses (415, counted) a body whose media type is not one of `accepted`.
///
/// # Errors
/// 415 naming what the endpoint takes.
pub fn require_media_type(
    shard: &Shard,
    content_type: &str,
    accepted: &[&str],
) -> Result<(), ApiError> {
    let given = media_type(content_type);
    if accepted.contains(&given.as_str()) {
        return Ok(());
    }
    shard.broker.global.reject(Reject::UnsupportedMediaType);
    let given = if given.is_empty() {
        "none".to_owned()
    } else {
        format!("{:?}", given.chars().take(100).collect::<String>())
    };
    Err(ApiError {
        status: 415,
        reason: format!(
            "Content-Type {given} is not accepted here; send Content-Type: {}",
            accepted.join(" or ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer k"), Some("k"));
        assert_eq!(bearer_token("bearer  k"), Some("k"));
        assert_eq!(bearer_token("Basic k"), None);
        assert_eq!(bearer_token("Bearer"), None);
    }

    #[test]
    fn media_types_drop_parameters_and_case() {
        assert_eq!(
            media_type("Application/JSON; charset=utf-8"),
            "application/json"
        );
        assert_eq!(media_type("text/plain"), "text/plain");
        assert_eq!(media_type(""), "");
    }
}

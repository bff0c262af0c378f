//! `[auth]` (SPEC §5): who a WebSocket client is, decided on the upgrade request before
//! anything is answered.
//!
//! Secrets come from environment variables the config names, read once at start
//! ([`Authenticator::from_config`]); a configured variable that is unset or empty stops
//! the broker from starting. Static secrets (bearer tokens, basic-auth pairs) are kept
//! only as SHA-256 digests and compared digest to digest in constant time, so neither the
//! length nor a matching prefix of a secret leaks through timing. Nothing here logs a
//! credential: errors name what was wrong, never what was sent.

use super::Identity;
use crate::config::{AuthConfig, AuthType};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::fmt;
use subtle::ConstantTimeEq;

/// Seconds of clock skew allowed on `exp` and `nbf`.
const JWT_LEEWAY_SECS: u64 = 30;

/// Why credentials were refused (HTTP 401). `Display` is the reason sent to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization` header and no `?token=`.
    Missing,
    /// Credentials of the wrong scheme or shape.
    Malformed,
    /// Wrong token, user name or password, or a JWT with a bad signature.
    Invalid,
    /// A JWT whose `exp` has passed (or that has none).
    Expired,
    /// A JWT that is not valid yet (`nbf`).
    NotYetValid,
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthError::Missing => "credentials required (Authorization header or ?token=)",
            AuthError::Malformed => "malformed credentials",
            AuthError::Invalid => "invalid credentials",
            AuthError::Expired => "token expired or without exp",
            AuthError::NotYetValid => "token not valid yet",
        })
    }
}

/// Credentials offered with an upgrade request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Offered<'a> {
    /// The `Authorization` header.
    pub authorization: Option<&'a str>,
    /// The request's query string (for `?token=`).
    pub query: Option<&'a str>,
}

/// Checks credentials the way `[auth]` says.
pub struct Authenticator {
    method: Method,
    /// For `WWW-Authenticate` on 401.
    kind: AuthType,
}

enum Method {
    None,
    /// Digests of the accepted tokens.
    Bearer(Vec<[u8; 32]>),
    /// Digest of `user:password`.
    Basic([u8; 32]),
    Jwt {
        key: Box<DecodingKey>,
        validation: Box<Validation>,
        subscribe_claim: String,
        publish_claim: String,
    },
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Reads the variable `key` names; unset or empty is an error naming the key.
fn secret(key: &str, name: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    if name.is_empty() {
        return Err(format!(
            "{key}: must name the environment variable holding the secret"
        ));
    }
    match env(name) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(format!(
            "{key}: environment variable {name} is not set or empty"
        )),
    }
}

impl Authenticator {
    /// Builds the checker, reading secrets through `env` (the process environment in the
    /// broker, a map in tests).
    ///
    /// # Errors
    /// A variable the config names is unset or empty: `"<key>: <reason>"`.
    pub fn from_config(
        auth: &AuthConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let method = match auth.kind {
            AuthType::None => Method::None,
            AuthType::Bearer => {
                let tokens = secret("auth.bearer_token_env", &auth.bearer_token_env, env)?;
                // Several tokens may be listed, comma-separated (rotation).
                let digests: Vec<_> = tokens
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(|t| digest(t.as_bytes()))
                    .collect();
                if digests.is_empty() {
                    return Err(format!(
                        "auth.bearer_token_env: environment variable {} holds no token",
                        auth.bearer_token_env
                    ));
                }
                Method::Bearer(digests)
            }
            AuthType::Basic => {
                let user = secret("auth.basic_username_env", &auth.basic_username_env, env)?;
                let pass = secret("auth.basic_password_env", &auth.basic_password_env, env)?;
                if user.contains(':') {
                    return Err(format!(
                        "auth.basic_username_env: the user name in {} may not contain ':'",
                        auth.basic_username_env
                    ));
                }
                Method::Basic(digest(format!("{user}:{pass}").as_bytes()))
            }
            AuthType::Jwt => {
                let key = secret("auth.jwt_secret_env", &auth.jwt_secret_env, env)?;
                let mut validation = Validation::new(Algorithm::HS256);
                validation.leeway = JWT_LEEWAY_SECS;
                validation.validate_exp = true;
                validation.validate_nbf = true;
                validation.validate_aud = false;
                validation.set_required_spec_claims(&["exp"]);
                Method::Jwt {
                    key: Box::new(DecodingKey::from_secret(key.as_bytes())),
                    validation: Box::new(validation),
                    subscribe_claim: auth.jwt_subscribe_claim.clone(),
                    publish_claim: auth.jwt_publish_claim.clone(),
                }
            }
        };
        Ok(Authenticator {
            method,
            kind: auth.kind,
        })
    }

    /// True when every client may connect without credentials.
    pub fn is_open(&self) -> bool {
        matches!(self.method, Method::None)
    }

    /// The `WWW-Authenticate` challenge for a 401, when there is one.
    pub fn challenge(&self) -> Option<&'static str> {
        match self.kind {
            AuthType::None => None,
            AuthType::Bearer | AuthType::Jwt => Some("Bearer realm=\"shardcast\""),
            AuthType::Basic => Some("Basic realm=\"shardcast\""),
        }
    }

    /// Who the request is. `Ok(None)` is an anonymous client under `auth.type = "none"`.
    ///
    /// # Errors
    /// Missing or refused credentials (answer 401).
    pub fn authenticate(&self, offered: Offered<'_>) -> Result<Option<Identity>, AuthError> {
        if matches!(self.method, Method::None) {
            return Ok(None);
        }
        let (scheme, credential) = credential(offered)?;
        match &self.method {
            Method::None => Ok(None),
            Method::Bearer(digests) => {
                if scheme == Scheme::Basic {
                    return Err(AuthError::Malformed);
                }
                let given = digest(credential.as_bytes());
                // Every token is compared, so timing does not tell which one matched.
                let matched = digests
                    .iter()
                    .fold(subtle::Choice::from(0), |acc, d| acc | d.ct_eq(&given));
                if bool::from(matched) {
                    Ok(Some(Identity::authenticated("bearer")))
                } else {
                    Err(AuthError::Invalid)
                }
            }
            Method::Basic(expected) => {
                if scheme == Scheme::Bearer {
                    return Err(AuthError::Malformed);
                }
                let decoded = STANDARD
                    .decode(credential.trim())
                    .map_err(|_| AuthError::Malformed)?;
                if !bool::from(digest(&decoded).ct_eq(expected)) {
                    return Err(AuthError::Invalid);
                }
                let user = decoded
                    .split(|&b| b == b':')
                    .next()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                Ok(Some(Identity::authenticated(&user)))
            }
            Method::Jwt {
                key,
                validation,
                subscribe_claim,
                publish_claim,
            } => {
                if scheme == Scheme::Basic {
                    return Err(AuthError::Malformed);
                }
                let data = jsonwebtoken::decode::<Map<String, Value>>(credential, key, validation)
                    .map_err(|e| jwt_error(&e))?;
                Ok(Some(Identity::from_claims(
                    data.claims,
                    subscribe_claim,
                    publish_claim,
                )))
            }
        }
    }
}

fn jwt_error(e: &jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::MissingRequiredClaim(_) => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => AuthError::Invalid,
        _ => AuthError::Malformed,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Bearer,
    Basic,
    /// `?token=`: whatever the configured method expects.
    Query,
}

/// The scheme and credential from `Authorization`, else from `?token=` (browsers cannot
/// set headers on a WebSocket). A `?token=` is a bearer token or JWT, or for basic auth
/// the same base64 `user:password` the header would carry.
fn credential(offered: Offered<'_>) -> Result<(Scheme, String), AuthError> {
    if let Some(header) = offered.authorization {
        let (scheme, rest) = header.trim().split_once(' ').ok_or(AuthError::Malformed)?;
        let scheme = if scheme.eq_ignore_ascii_case("bearer") {
            Scheme::Bearer
        } else if scheme.eq_ignore_ascii_case("basic") {
            Scheme::Basic
        } else {
            return Err(AuthError::Malformed);
        };
        return Ok((scheme, rest.trim().to_owned()));
    }
    let token = offered
        .query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("token="))
        .ok_or(AuthError::Missing)?;
    let token = percent_decode(token).ok_or(AuthError::Malformed)?;
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    Ok((Scheme::Query, token))
}

/// Decodes `%XX` escapes and `+` (as space); `None` when the result is not UTF-8 or an
/// escape is broken.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

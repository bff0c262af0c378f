//! `[auth]` (SPEC §5): who a WebSocket client is, decided on the upgrade request before
//! anything is answered.
//!
//! Secrets come from environment variables the config names, read once at start
//! ([`Authenticator::from_config`]); a configured variable that is unset or empty stops
//! the broker from starting. Static secrets (bearer tokens, basic-auth pairs) are kept
//! only as [`Secret`]s: SHA-256 digests compared in constant time. Nothing here logs a
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
    /// `auth.anonymous`: no credentials at all = an anonymous client, not a 401.
    anonymous: bool,
    /// For `WWW-Authenticate` on 401.
    kind: AuthType,
}

enum Method {
    None,
    /// The accepted tokens.
    Bearer(Vec<Secret>),
    /// `user:password`.
    Basic(Secret),
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

/// A static secret (a token, a `user:password` pair, the API key), kept only as its
/// SHA-256 digest. Comparing digests in constant time leaks neither the secret's length
/// nor how much of a guess matched.
#[derive(Clone)]
pub struct Secret([u8; 32]);

impl Secret {
    /// Keeps the digest of `secret`.
    pub fn new(secret: &[u8]) -> Self {
        Secret(digest(secret))
    }

    /// Whether `given` is the secret.
    pub fn matches(&self, given: &[u8]) -> bool {
        bool::from(self.0.ct_eq(&digest(given)))
    }

    /// Whether `given` is any of `secrets`; every one is compared, so timing does not
    /// tell which matched.
    pub fn any_matches(secrets: &[Secret], given: &[u8]) -> bool {
        let given = digest(given);
        let matched = secrets
            .iter()
            .fold(subtle::Choice::from(0), |acc, s| acc | s.0.ct_eq(&given));
        bool::from(matched)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// RFC 7518 §3.2: an HS256 secret shorter than this is warned about at start.
pub const MIN_HS256_SECRET: usize = 32;

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
                    .map(|t| Secret::new(t.as_bytes()))
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
                Method::Basic(Secret::new(format!("{user}:{pass}").as_bytes()))
            }
            AuthType::Jwt => {
                let key = secret("auth.jwt_secret_env", &auth.jwt_secret_env, env)?;
                if key.len() < MIN_HS256_SECRET {
                    // RFC 7518 §3.2: an HS256 key at least as long as the hash output.
                    tracing::warn!(
                        variable = %auth.jwt_secret_env,
                        bytes = key.len(),
                        "the HS256 secret is shorter than {MIN_HS256_SECRET} bytes: tokens signed with it can be brute-forced offline; use 32 random bytes or more"
                    );
                }
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
            anonymous: auth.anonymous,
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

    /// Who the request is. `Ok(None)` is an anonymous client: under `auth.type = "none"`,
    /// or one that offered no credentials at all under `auth.anonymous = true`.
    ///
    /// # Errors
    /// Missing or refused credentials (answer 401).
    pub fn authenticate(&self, offered: Offered<'_>) -> Result<Option<Identity>, AuthError> {
        if matches!(self.method, Method::None) {
            return Ok(None);
        }
        let (scheme, credential) = match credential(offered) {
            Err(AuthError::Missing) if self.anonymous => return Ok(None),
            other => other?,
        };
        match &self.method {
            Method::None => Ok(None),
            Method::Bearer(tokens) => {
                if scheme == Scheme::Basic {
                    return Err(AuthError::Malformed);
                }
                if Secret::any_matches(tokens, credential.as_bytes()) {
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
                if !expected.matches(&decoded) {
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
                // RFC 7515 §4.1.11: a `crit` header names extensions the recipient must
                // understand; this broker understands none, so such a token is refused.
                let header =
                    jsonwebtoken::decode_header(&credential).map_err(|_| AuthError::Malformed)?;
                if header.crit.is_some() {
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
    let token = crate::api::percent_decode(token);
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    Ok((Scheme::Query, token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn bearer_config(tokens: &str) -> Result<Authenticator, String> {
        let mut auth = Config::default().auth;
        auth.kind = AuthType::Bearer;
        auth.bearer_token_env = "T".into();
        let value = tokens.to_owned();
        Authenticator::from_config(&auth, &move |_| Some(value.clone()))
    }

    fn bearer(tokens: &str) -> Authenticator {
        bearer_config(tokens).expect("configured")
    }

    #[test]
    fn secrets_match_only_themselves() {
        let s = Secret::new(b"secret");
        assert!(s.matches(b"secret"));
        for wrong in [&b"secreT"[..], b"", b"secretsecret", b"secre"] {
            assert!(!s.matches(wrong));
        }
        assert!(Secret::any_matches(&[Secret::new(b"a"), s], b"secret"));
        assert!(!Secret::any_matches(&[], b"secret"));
        assert_eq!(format!("{:?}", Secret::new(b"x")), "Secret(..)");
    }

    #[test]
    fn bearer_tokens_by_header_or_query() {
        let auth = bearer("one, two%");
        let header = |h| Offered {
            authorization: Some(h),
            query: None,
        };
        assert!(auth.authenticate(header("Bearer two%")).is_ok());
        assert!(auth.authenticate(header("bearer one")).is_ok());
        assert_eq!(
            auth.authenticate(header("Bearer three")),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            auth.authenticate(header("Basic b25l")),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            auth.authenticate(header("Bearer")),
            Err(AuthError::Malformed)
        );
        let query = |q| Offered {
            authorization: None,
            query: Some(q),
        };
        assert!(auth.authenticate(query("dialect=vws&token=two%25")).is_ok());
        assert_eq!(
            auth.authenticate(query("dialect=vws")),
            Err(AuthError::Missing)
        );
        assert_eq!(
            auth.authenticate(Offered::default()),
            Err(AuthError::Missing)
        );
    }

    #[test]
    fn unset_secrets_are_refused_with_the_key() {
        let mut auth = Config::default().auth;
        auth.kind = AuthType::Jwt;
        auth.jwt_secret_env = "NOPE".into();
        let err = Authenticator::from_config(&auth, &|_| None)
            .err()
            .expect("refused");
        assert_eq!(
            err,
            "auth.jwt_secret_env: environment variable NOPE is not set or empty"
        );
        assert!(
            bearer_config(" , ").is_err(),
            "a variable of only commas holds no token"
        );
    }
}

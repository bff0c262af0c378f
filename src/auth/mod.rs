//! Who may connect and what they may do: the `Origin` check (`server.allowed_origins`),
//! credentials on upgrade (`[auth]`), per-IP connection limits, and the `[[policy]]`
//! rules that decide per topic who may subscribe and publish.

pub mod credentials;
pub mod host;
pub mod ip_limits;
pub mod origin;
pub mod policy;

pub use credentials::{AuthError, Authenticator, Offered, Secret};
pub use ip_limits::{IpLimits, IpRefusal, IpSlot};
pub use policy::Policies;

use serde_json::{Map, Value};

/// An authenticated client, established at upgrade. A connection without one is
/// anonymous (`auth.type = "none"`).
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// JWT `sub`, the basic-auth user name, or `"bearer"`.
    pub subject: Box<str>,
    /// The JWT's claims (empty for bearer and basic), for `claim:` policy rules.
    pub claims: Map<String, Value>,
    /// Topic patterns the JWT lets the holder subscribe to; `None` = no such claim.
    pub may_subscribe: Option<Vec<Box<str>>>,
    /// Topic patterns the JWT lets the holder publish to; `None` = no such claim.
    pub may_publish: Option<Vec<Box<str>>>,
}

impl Identity {
    /// A client authenticated by a static secret.
    pub fn authenticated(subject: &str) -> Self {
        Identity {
            subject: subject.into(),
            claims: Map::new(),
            may_subscribe: None,
            may_publish: None,
        }
    }

    /// A client authenticated by a JWT with these claims. The grant claims are lists of
    /// patterns (a single string is a list of one); a grant claim of any other shape
    /// grants nothing rather than everything.
    pub fn from_claims(claims: Map<String, Value>, subscribe: &str, publish: &str) -> Self {
        let grants = |name: &str| -> Option<Vec<Box<str>>> {
            match claims.get(name)? {
                Value::String(s) => Some(vec![s.as_str().into()]),
                Value::Array(items) => Some(
                    items
                        .iter()
                        .filter_map(Value::as_str)
                        .map(Into::into)
                        .collect(),
                ),
                _ => Some(Vec::new()),
            }
        };
        Identity {
            subject: claims
                .get("sub")
                .and_then(Value::as_str)
                .unwrap_or("jwt")
                .into(),
            may_subscribe: grants(subscribe),
            may_publish: grants(publish),
            claims,
        }
    }
}

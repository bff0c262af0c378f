//! Credentials for the upgrade, from a provider asked at every connect, so a short-lived
//! JWT is fetched fresh, and asked again (with [`Ask::Refused`]) when the broker answered
//! 401 to the last one instead of retrying it forever.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// What goes on the upgrade request.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// None (an open broker, or `auth.anonymous`).
    None,
    /// `Authorization: Bearer <token>` (static tokens and JWTs alike).
    Bearer(String),
    /// `Authorization: Basic base64(user:password)`.
    Basic {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credentials::None => "Credentials::None",
            Credentials::Bearer(_) => "Credentials::Bearer(..)",
            Credentials::Basic { .. } => "Credentials::Basic(..)",
        })
    }
}

impl Credentials {
    /// The `Authorization` header value, if any.
    pub fn header(&self) -> Option<String> {
        match self {
            Credentials::None => None,
            Credentials::Bearer(t) => Some(format!("Bearer {t}")),
            Credentials::Basic { user, password } => Some(format!(
                "Basic {}",
                STANDARD.encode(format!("{user}:{password}"))
            )),
        }
    }
}

/// Why the provider is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// A connect (the first, or after a lost link).
    Connect,
    /// The broker answered 401 to the credentials given last: fetch new ones.
    Refused,
}

/// The future a provider returns.
pub type CredentialsFuture = Pin<Box<dyn Future<Output = Credentials> + Send>>;

/// Called at each connect; see [`crate::ClientBuilder::credentials_provider`].
pub type Provider = Arc<dyn Fn(Ask) -> CredentialsFuture + Send + Sync>;

/// A provider that always gives `c`.
pub fn fixed(c: Credentials) -> Provider {
    Arc::new(move |_| {
        let c = c.clone();
        Box::pin(async move { c })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_and_debug_hide_nothing_they_should_not() {
        let basic = Credentials::Basic {
            user: "u".into(),
            password: "p".into(),
        };
        assert_eq!(basic.header().as_deref(), Some("Basic dTpw"));
        assert_eq!(
            Credentials::Bearer("t".into()).header().as_deref(),
            Some("Bearer t")
        );
        assert!(!format!("{basic:?}").contains('p'));
    }
}

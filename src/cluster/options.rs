//! How the link logs in to NATS (`[cluster]` credentials file, nkey seed, user and
//! password, token, TLS) and the envelope MAC key, built and checked once at start.
//!
//! Secrets (password, token, nkey seed, MAC secret) come from environment variables the
//! config names, like every other secret of the broker; files are read at start so a
//! wrong path stops the start with a clear error instead of a link that never connects.

use crate::config::ClusterConfig;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use std::path::PathBuf;

/// The NATS header that carries an envelope's MAC (hex HMAC-SHA256).
pub const MAC_HEADER: &str = "Shardcast-Mac";

/// The envelope MAC key (`cluster.secret_env`): HMAC-SHA256 over subject, a newline
/// and the envelope, so an envelope cannot be moved to another subject either.
#[derive(Clone)]
pub struct MacKey(Hmac<Sha256>);

impl MacKey {
    /// A key from the shared secret.
    ///
    /// # Errors
    /// Never for HMAC (any length is a key); kept for the type's sake.
    pub fn new(secret: &[u8]) -> Result<Self, String> {
        Hmac::<Sha256>::new_from_slice(secret)
            .map(MacKey)
            .map_err(|e| e.to_string())
    }

    fn digest(&self, subject: &str, payload: &[u8]) -> Hmac<Sha256> {
        let mut m = self.0.clone();
        m.update(subject.as_bytes());
        m.update(b"\n");
        m.update(payload);
        m
    }

    /// The MAC of `payload` sent on `subject`, as lower-case hex.
    pub fn sign(&self, subject: &str, payload: &[u8]) -> String {
        let bytes = self.digest(subject, payload).finalize().into_bytes();
        bytes.iter().fold(String::with_capacity(64), |mut s, b| {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 15)]));
            s
        })
    }

    /// Whether `mac` (hex) is the MAC of `payload` on `subject`; compared in constant time.
    pub fn verify(&self, subject: &str, payload: &[u8], mac: &str) -> bool {
        let Some(raw) = unhex(mac) else { return false };
        self.digest(subject, payload).verify_slice(&raw).is_ok()
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn unhex(s: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    b.chunks(2)
        .map(|pair| match pair {
            [hi, lo] => Some(digit(*hi)? << 4 | digit(*lo)?),
            _ => None,
        })
        .collect()
}

/// What the link needs to log in, and the MAC key if envelopes are signed.
pub struct Login {
    /// Ready-made connect options (name, reconnect policy are added by the link).
    pub options: async_nats::ConnectOptions,
    /// The envelope MAC key, when `cluster.secret_env` names one.
    pub mac: Option<MacKey>,
}

fn secret(
    key: &str,
    name: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, String> {
    if name.is_empty() {
        return Ok(None);
    }
    match env(name).filter(|v| !v.is_empty()) {
        Some(v) => Ok(Some(v)),
        None => Err(format!(
            "cluster.{key}: environment variable {name} is not set (or empty)"
        )),
    }
}

fn readable(key: &str, path: &str) -> Result<Option<PathBuf>, String> {
    if path.is_empty() {
        return Ok(None);
    }
    std::fs::File::open(path)
        .map(|_| Some(PathBuf::from(path)))
        .map_err(|e| format!("cluster.{key}: cannot read {path:?}: {e}"))
}

/// Builds the NATS login and MAC key of `c`, reading the secrets it names from `env`.
///
/// # Errors
/// A named variable unset or empty, a file that cannot be read or parsed, two login
/// methods at once, a password without a user, a TLS key without its certificate.
pub fn login(c: &ClusterConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Login, String> {
    let mut options = async_nats::ConnectOptions::new();
    let mut methods = Vec::new();
    if let Some(path) = readable("credentials_file", &c.credentials_file)? {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cluster.credentials_file: cannot read {path:?}: {e}"))?;
        options = options.credentials(&text).map_err(|e| {
            format!("cluster.credentials_file: {path:?} is not a NATS credentials file: {e}")
        })?;
        methods.push("credentials_file");
    }
    if let Some(seed) = secret("nkey_seed_env", &c.nkey_seed_env, env)? {
        if !seed.starts_with("SU") {
            return Err(format!(
                "cluster.nkey_seed_env: {} does not hold a NATS user nkey seed (SU...)",
                c.nkey_seed_env
            ));
        }
        options = options.nkey(seed);
        methods.push("nkey_seed_env");
    }
    let password = secret("password_env", &c.password_env, env)?;
    match (c.user.is_empty(), password) {
        (false, Some(p)) => {
            options = options.user_and_password(c.user.clone(), p);
            methods.push("user");
        }
        (true, None) => {}
        _ => return Err("cluster.user and cluster.password_env go together".into()),
    }
    if let Some(token) = secret("token_env", &c.token_env, env)? {
        options = options.token(token);
        methods.push("token_env");
    }
    if methods.len() > 1 {
        return Err(format!(
            "cluster: choose one NATS login, not {}",
            methods.join(" and ")
        ));
    }
    if let Some(ca) = readable("tls_ca_file", &c.tls_ca_file)? {
        options = options.add_root_certificates(ca);
    }
    match (
        readable("tls_cert_file", &c.tls_cert_file)?,
        readable("tls_key_file", &c.tls_key_file)?,
    ) {
        (Some(cert), Some(key)) => options = options.add_client_certificate(cert, key),
        (None, None) => {}
        _ => return Err("cluster.tls_cert_file and cluster.tls_key_file go together".into()),
    }
    if c.require_tls {
        options = options.require_tls(true);
    }
    let mac = match secret("secret_env", &c.secret_env, env)? {
        Some(s) if s.len() < 16 => {
            return Err(format!(
                "cluster.secret_env: the secret in {} must be at least 16 bytes",
                c.secret_env
            ))
        }
        Some(s) => Some(MacKey::new(s.as_bytes())?),
        None => None,
    };
    Ok(Login { options, mac })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_verifies_only_the_same_subject_and_payload() {
        let k = MacKey::new(b"0123456789abcdef").expect("key");
        let m = k.sign("p.t.a", b"{}");
        assert_eq!(m.len(), 64);
        assert!(k.verify("p.t.a", b"{}", &m));
        assert!(!k.verify("p.t.b", b"{}", &m));
        assert!(!k.verify("p.t.a", b"{} ", &m));
        assert!(!k.verify("p.t.a", b"{}", &m[..62]));
        assert!(!k.verify("p.t.a", b"{}", "zz"));
        let other = MacKey::new(b"another secret, 16+").expect("key");
        assert!(!other.verify("p.t.a", b"{}", &m));
    }

    #[test]
    fn login_errors_name_the_key() {
        let env = |n: &str| (n == "PW").then(|| "pw".to_owned());
        let mut c = crate::config::Config::default().cluster;
        c.credentials_file = "/nonexistent/x.creds".into();
        let e = login(&c, &env).err().unwrap_or_default();
        assert!(e.contains("cluster.credentials_file"), "{e}");
        c.credentials_file.clear();
        c.password_env = "PW".into();
        let e = login(&c, &env).err().unwrap_or_default();
        assert!(e.contains("go together"), "{e}");
        c.user = "u".into();
        assert!(login(&c, &env).is_ok());
        c.token_env = "PW".into();
        let e = login(&c, &env).err().unwrap_or_default();
        assert!(e.contains("choose one"), "{e}");
        c.token_env.clear();
        c.secret_env = "NOPE".into();
        let e = login(&c, &env).err().unwrap_or_default();
        assert!(e.contains("NOPE is not set"), "{e}");
        c.secret_env = "PW".into();
        let e = login(&c, &env).err().unwrap_or_default();
        assert!(e.contains("at least 16 bytes"), "{e}");
    }
}

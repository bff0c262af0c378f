//! Native TLS (SPEC §10): `server.tls_cert` / `server.tls_key` turn the one listener into
//! `https://` and `wss://` with rustls (the `ring` provider already in the tree through
//! async-nats).
//!
//! - `certs`: reading and checking the PEM pair (start-up errors name the key).
//! - `stream`: [`Stream`], a connection's socket, plain or TLS, as the shard uses it.
//! - `handshake`: the server side of a new socket on a TLS port, bounded by the
//!   handshake timeouts; failures are counted and logged at most once per period.
//! - `reload`: a new certificate without a restart (SIGHUP, or the files changing).
//!
//! The certificate is picked per handshake by a resolver holding the current pair, so
//! a reload swaps one pointer and every later handshake sees the new certificate; open
//! connections keep the session they have.
//!
//! A TLS connection stays on the shard that accepted it: the rustls session is not
//! moved between shards (placement only balances plain sockets).

pub mod certs;
pub mod handshake;
pub mod reload;
pub mod stream;

pub use certs::{load_pair, PairError};
pub use stream::Stream;

use parking_lot::RwLock;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// The TLS side of a broker: the acceptor, the current certificate, the files it came
/// from, and its counters.
pub struct Tls {
    acceptor: TlsAcceptor,
    current: Arc<Current>,
    provider: Arc<CryptoProvider>,
    cert_path: PathBuf,
    key_path: PathBuf,
    /// `server.tls_reload_interval`.
    pub reload_interval: Duration,
    /// Counters for `/metrics`.
    pub stats: TlsStats,
    /// Handshake failures not logged yet, and when the last line was (rate limit).
    log: handshake::LogLimit,
}

/// TLS counters (refusals are also in `shardcast_rejections_total`).
#[derive(Debug, Default)]
pub struct TlsStats {
    /// TLS handshakes completed.
    pub handshakes: AtomicU64,
    /// Certificate pairs loaded after start (SIGHUP or a file change).
    pub reloads: AtomicU64,
    /// Reload attempts whose new pair was refused (the old one stays).
    pub reload_failures: AtomicU64,
}

/// The pair new handshakes get.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().clone())
    }
}

impl Tls {
    /// TLS from `server.tls_cert` / `server.tls_key`; `Ok(None)` when they are unset.
    ///
    /// # Errors
    /// The files cannot be used ([`PairError`] names the key).
    pub fn from_config(s: &crate::config::ServerConfig) -> Result<Option<Arc<Tls>>, PairError> {
        if s.tls_cert.is_empty() && s.tls_key.is_empty() {
            return Ok(None);
        }
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let cert_path = PathBuf::from(&s.tls_cert);
        let key_path = PathBuf::from(&s.tls_key);
        let pair = load_pair(&cert_path, &key_path, &provider)?;
        let current = Arc::new(Current(RwLock::new(pair)));
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| PairError {
                key: certs::CERT_KEY,
                reason: format!("TLS setup failed: {e}"),
            })?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        // One protocol on this port; a client offering h2 as well gets HTTP/1.1.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(Arc::new(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            current,
            provider,
            cert_path,
            key_path,
            reload_interval: s.tls_reload_interval,
            stats: TlsStats::default(),
            log: handshake::LogLimit::default(),
        })))
    }

    /// Loads the pair from the files again and, when it is good, hands it to every later
    /// handshake. A bad pair is logged and counted; the current one stays.
    ///
    /// # Errors
    /// The new pair cannot be used (the old one is still served).
    pub fn reload(&self, why: &str) -> Result<(), PairError> {
        match load_pair(&self.cert_path, &self.key_path, &self.provider) {
            Ok(pair) => {
                *self.current.0.write() = pair;
                self.stats.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(trigger = why, cert = %self.cert_path.display(), "TLS certificate reloaded");
                Ok(())
            }
            Err(e) => {
                self.stats.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(trigger = why, error = %e, "TLS certificate not reloaded; keeping the current one");
                Err(e)
            }
        }
    }

    /// The certificate and key files.
    pub fn paths(&self) -> [&std::path::Path; 2] {
        [&self.cert_path, &self.key_path]
    }
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.cert_path)
            .field("key", &self.key_path)
            .finish_non_exhaustive()
    }
}

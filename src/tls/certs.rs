//! Reading `server.tls_cert` / `server.tls_key`: PEM files in, a checked
//! certificate-and-key pair out, with an error that names the key at fault.

use std::path::Path;
use std::sync::Arc;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{Error, InconsistentKeys};

/// Why a pair cannot be used: the config key to blame and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairError {
    /// `server.tls_cert` or `server.tls_key`.
    pub key: &'static str,
    /// What is wrong, naming the file.
    pub reason: String,
}

impl std::fmt::Display for PairError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

/// Key of the certificate chain file.
pub const CERT_KEY: &str = "server.tls_cert";
/// Key of the private key file.
pub const KEY_KEY: &str = "server.tls_key";

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, PairError> {
    std::fs::read(path).map_err(|e| PairError {
        key,
        reason: format!("cannot read {}: {e}", path.display()),
    })
}

/// Loads and checks a certificate chain and its private key: both files readable, PEM,
/// at least one certificate, a private key the `ring` provider can sign with, and that
/// key belonging to the first (leaf) certificate.
///
/// # Errors
/// [`PairError`] naming `server.tls_cert` or `server.tls_key`.
pub fn load_pair(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, PairError> {
    let cert_pem = read(CERT_KEY, cert)?;
    let key_pem = read(KEY_KEY, key)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PairError {
            key: CERT_KEY,
            reason: format!("{} is not valid PEM: {e}", cert.display()),
        })?;
    if chain.is_empty() {
        return Err(PairError {
            key: CERT_KEY,
            reason: format!(
                "{} holds no certificate (PEM \"BEGIN CERTIFICATE\" blocks expected)",
                cert.display()
            ),
        });
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| PairError {
        key: KEY_KEY,
        reason: match e {
            tokio_rustls::rustls::pki_types::pem::Error::NoItemsFound => format!(
                "{} holds no private key (PEM \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\" expected)",
                key.display()
            ),
            e => format!("{} is not valid PEM: {e}", key.display()),
        },
    })?;
    let signer = provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| PairError {
            key: KEY_KEY,
            reason: format!("{}: unusable private key: {e}", key.display()),
        })?;
    let pair = CertifiedKey::new(chain, signer);
    match pair.keys_match() {
        // A key type whose public half rustls cannot derive: nothing to compare.
        Ok(()) | Err(Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(e) => {
            return Err(PairError {
                key: KEY_KEY,
                reason: format!(
                    "{} does not belong to the certificate in {} ({e})",
                    key.display(),
                    cert.display()
                ),
            })
        }
    }
    Ok(Arc::new(pair))
}

//! The server side of a new socket on a TLS port, before any HTTP: a plain-text client
//! gets a readable refusal, a TLS client its handshake, both within the handshake
//! timeouts, and every failure is counted.

use super::stream::{Stream, TlsConn};
use super::Tls;
use crate::broker::Broker;
use crate::error::Reject;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// First byte of a TLS record carrying a handshake message (the ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// At most one `TLS handshake failed` warning per this period (per broker); the others
/// are debug lines, and all are in `shardcast_rejections_total{reason="tls_handshake_failed"}`.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Rate limit of the handshake failure log.
#[derive(Debug)]
pub struct LogLimit {
    epoch: Instant,
    /// Milliseconds after `epoch` of the last warning, plus one (0: none yet).
    last: AtomicU64,
    /// Failures since the last warning.
    unlogged: AtomicU64,
}

impl Default for LogLimit {
    fn default() -> Self {
        LogLimit {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            unlogged: AtomicU64::new(0),
        }
    }
}

impl LogLimit {
    /// Counts a failure; `Some(failures)` when a warning is due now, with how many
    /// failures it stands for.
    fn due(&self) -> Option<u64> {
        self.unlogged.fetch_add(1, Ordering::Relaxed);
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX) + 1;
        let last = self.last.load(Ordering::Relaxed);
        let period = u64::try_from(LOG_EVERY.as_millis()).unwrap_or(u64::MAX);
        if last != 0 && now.saturating_sub(last) < period {
            return None;
        }
        // One thread wins the slot; the others stay quiet.
        self.last
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .ok()?;
        Some(self.unlogged.swap(0, Ordering::Relaxed).max(1))
    }
}

/// Runs the server side of TLS on a freshly accepted socket. The ClientHello's first
/// byte must come by `first_byte` and the handshake be complete by `deadline`.
/// `None`: the socket is done (refused, failed, timed out or closed; counted).
pub async fn accept(
    broker: &Broker,
    tls: &Tls,
    tcp: TcpStream,
    peer: SocketAddr,
    first_byte: Instant,
    deadline: Instant,
) -> Option<Stream> {
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(first_byte.into(), tcp.peek(&mut first)).await {
        Err(_) => {
            broker.global.reject(Reject::HandshakeTimeout);
            return None;
        }
        Ok(Ok(0) | Err(_)) => return None,
        Ok(Ok(_)) => {}
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        // `http://` or `ws://` to a TLS port: say so in plain text, the client can read it.
        broker.global.reject(Reject::PlainTextOnTlsPort);
        let body = serde_json::json!({ "error": Reject::PlainTextOnTlsPort.to_string() });
        crate::server::accept::answer_and_close(tcp, 400, "Bad Request", "", &body.to_string())
            .await;
        return None;
    }
    match tokio::time::timeout_at(deadline.into(), tls.acceptor.accept(tcp)).await {
        Err(_) => {
            broker.global.reject(Reject::HandshakeTimeout);
            None
        }
        Ok(Err(e)) => {
            broker.global.reject(Reject::TlsHandshakeFailed);
            match tls.log.due() {
                Some(failures) => tracing::warn!(
                    %peer, error = %e, failures,
                    "TLS handshake failed (at most one line per 10s; all are counted in shardcast_rejections_total{{reason=\"tls_handshake_failed\"}})"
                ),
                None => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
            }
            None
        }
        Ok(Ok(stream)) => {
            tls.stats.handshakes.fetch_add(1, Ordering::Relaxed);
            let (io, session) = stream.into_inner();
            Some(Stream::Tls(Box::new(TlsConn::new(io, session))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_failure_logs_then_quiet_within_the_period() {
        let limit = LogLimit::default();
        assert_eq!(limit.due(), Some(1));
        assert_eq!(limit.due(), None);
        assert_eq!(limit.due(), None);
    }
}

//! A new certificate without a restart: on SIGHUP, and when `server.tls_cert` or
//! `server.tls_key` changes on disk (checked every `server.tls_reload_interval`), the
//! pair is loaded again. A pair that does not load (half-written, mismatched) is logged
//! and counted, and the current one stays until the files change again.
//!
//! One small thread with its own current-thread runtime, away from the shards. It
//! holds the TLS state weakly and ends once the broker is gone.

use super::Tls;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::signal::unix::{signal, SignalKind};

/// How often the thread checks that the broker still exists when file polling is off.
const ALIVE_CHECK: Duration = Duration::from_secs(1);

/// What identifies a file's content cheaply: modification time, size and inode (a
/// file replaced by rename has a new inode even within the same mtime tick).
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

fn stamps(tls: &Tls) -> [Stamp; 2] {
    tls.paths().map(stamp)
}

/// Starts watching for SIGHUP and file changes. SIGHUP is handled from the moment this
/// returns (it no longer ends the process).
///
/// # Errors
/// The runtime, the signal handler or the thread could not be set up.
pub fn spawn(tls: &Arc<Tls>) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut hup = {
        let _guard = rt.enter();
        signal(SignalKind::hangup())?
    };
    let weak = Arc::downgrade(tls);
    let interval = tls.reload_interval;
    let mut seen = stamps(tls);
    std::thread::Builder::new()
        .name("tls-reload".to_owned())
        .spawn(move || {
            rt.block_on(async move {
                let tick = if interval.is_zero() {
                    ALIVE_CHECK
                } else {
                    interval
                };
                let mut hup_open = true;
                loop {
                    let signalled = tokio::select! {
                        got = hup.recv(), if hup_open => {
                            hup_open = got.is_some();
                            hup_open
                        }
                        () = tokio::time::sleep(tick) => false,
                    };
                    let Some(tls) = weak.upgrade() else { return };
                    let now = stamps(&tls);
                    if signalled {
                        seen = now;
                        let _ = tls.reload("SIGHUP");
                    } else if !interval.is_zero() && now != seen {
                        seen = now;
                        let _ = tls.reload("file change");
                    }
                }
            });
        })?;
    Ok(())
}

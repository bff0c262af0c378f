//! Accepting on the shard: each shard has its own listening socket on the shared port
//! (`SO_REUSEPORT`; the kernel spreads new connections over them by a hash of the
//! addresses) and accepts on its own thread.
//!
//! There is no acceptor thread handing sockets over: an accepted socket joins the
//! shard's reactor once, in the thread that serves it for its whole life. The hop cost
//! an epoll registration and removal in the acceptor, a queue push, a wake-up of the
//! shard and a second registration there, which was about a quarter of the broker's
//! CPU time for setting up a connection.
//!
//! Before binding with `SO_REUSEPORT`, a plain bind checks that no other process listens
//! on the port, so a second broker started on the same port fails with "address in use"
//! instead of quietly taking a share of the connections.

use super::pending::Pending;
use crate::auth::IpRefusal;
use crate::error::Reject;
use crate::shard::Shard;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// How long a refused socket is drained after its 503 before it is closed.
const REFUSE_LINGER: Duration = Duration::from_millis(250);

/// Listen backlog per shard (the std default of 128 is too small for connection bursts).
const BACKLOG: u32 = 4096;

/// Binds `count` sockets to `addr` with `SO_REUSEPORT`, one per shard. With port 0 the
/// first socket picks the port and the others join it. Returns the sockets (not yet
/// listening: each shard does that on its own runtime, see [`listen`]) and the bound
/// address.
///
/// # Errors
/// Creating or binding a socket failed.
pub fn bind(addr: SocketAddr, count: usize) -> io::Result<(Vec<TcpSocket>, SocketAddr)> {
    if addr.port() != 0 {
        ensure_free(addr)?;
    }
    let first = reuseport_socket(addr)?;
    let bound = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..count.max(1) {
        sockets.push(reuseport_socket(bound)?);
    }
    Ok((sockets, bound))
}

/// `SO_REUSEPORT` would let this broker join another process's listener on the same
/// port (of the same user) and silently split its connections. A plain bind first gets
/// the usual "address in use" instead.
fn ensure_free(addr: SocketAddr) -> io::Result<()> {
    let probe = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // SO_REUSEADDR only so that old TIME_WAIT connections do not count as "in use".
    probe.set_reuseaddr(true)?;
    probe.bind(addr)
}

fn reuseport_socket(addr: SocketAddr) -> io::Result<TcpSocket> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    // Accepted sockets inherit TCP_NODELAY from the listener on Linux: one setsockopt
    // per connection saved.
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// Starts listening on a socket from [`bind`]; call inside the shard's runtime.
///
/// # Errors
/// `listen` failed.
pub fn listen(socket: TcpSocket) -> io::Result<TcpListener> {
    socket.listen(BACKLOG)
}

/// Serves every connection accepted on `listener` on `shard` until the shard begins
/// shutting down (dropping the listener closes it).
pub async fn run(shard: Rc<Shard>, listener: TcpListener) {
    let broker = shard.broker.clone();
    let budget = Pending::share(
        broker.config.server.max_pending_handshakes,
        broker.shard_stats.len(),
    );
    let pending = Pending::new(budget);
    let mut errors = AcceptErrors::default();
    loop {
        let accepted = tokio::select! {
            () = shard.accept_stopped() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(s) => {
                errors.recovered();
                s
            }
            Err(e) => {
                broker.global.accept_errors.fetch_add(1, Ordering::Relaxed);
                if let Some(pause) = errors.failed(shard.id, &e) {
                    tokio::time::sleep(pause).await;
                }
                continue;
            }
        };
        let accepted_at = Instant::now();
        // A dual-stack listener sees IPv4 clients as `::ffff:a.b.c.d`: from here on they
        // are plain IPv4 (loopback checks, per-IP limits, logs).
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let ip_slot = match broker.ip_limits.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                let (reject, retry_after) = match refusal {
                    IpRefusal::TooManyConnections => (Reject::IpConnectionLimit, 1),
                    IpRefusal::RateLimited { retry_after_secs } => {
                        (Reject::ConnectRateLimited, retry_after_secs)
                    }
                };
                broker.global.reject(reject);
                tokio::task::spawn_local(refuse(stream, reject, retry_after));
                continue;
            }
        };
        if pending.make_room() {
            broker.global.reject(Reject::PendingEvicted);
        }
        let shard = shard.clone();
        pending.spawn(move |ticket| {
            super::handshake::accept(shard, stream, peer, ip_slot, ticket, accepted_at)
        });
    }
}

/// First pause after a failed `accept` that is about resources (doubling up to
/// [`MAX_PAUSE`] while it keeps failing).
const FIRST_PAUSE: Duration = Duration::from_millis(10);
/// Longest pause between `accept` attempts while descriptors or memory are exhausted.
const MAX_PAUSE: Duration = Duration::from_millis(500);
/// At most one `accept failed` line per shard per this period.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Failed `accept` calls on one shard: how long to pause, and when to log.
#[derive(Debug, Default)]
struct AcceptErrors {
    pause: Option<Duration>,
    logged: Option<Instant>,
    unlogged: u64,
}

impl AcceptErrors {
    /// Records a failure; returns how long to pause before accepting again (`None`:
    /// the failure was one connection's, such as a reset before accept).
    fn failed(&mut self, shard: u16, e: &io::Error) -> Option<Duration> {
        let exhausted = matches!(
            e.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        );
        self.unlogged += 1;
        let due = self.logged.is_none_or(|at| at.elapsed() >= LOG_EVERY);
        if exhausted && due {
            // Out of descriptors the error repeats on every attempt: one line per
            // period, with how many it stands for (all are in accept_errors_total).
            tracing::warn!(shard, error = %e, failures = self.unlogged, "accept failed; pausing accepts");
            self.logged = Some(Instant::now());
            self.unlogged = 0;
        } else if !exhausted {
            tracing::debug!(shard, error = %e, "accept failed");
        }
        if !exhausted {
            return None;
        }
        let pause = self.pause.map_or(FIRST_PAUSE, |p| (p * 2).min(MAX_PAUSE));
        self.pause = Some(pause);
        Some(pause)
    }

    /// An accept succeeded: the next failure starts with the shortest pause again.
    fn recovered(&mut self) {
        self.pause = None;
    }
}

/// Answers a socket refused at accept (per-IP limits) with 503 and `Retry-After` without
/// waiting for its request, and closes it. It does not count against the broker's
/// socket limit, and lives at most [`REFUSE_LINGER`]: reading what the client already
/// sent before closing lets the close be a FIN, so the client reads the answer instead
/// of a reset.
async fn refuse(stream: TcpStream, reject: Reject, retry_after_secs: u32) {
    let body = serde_json::json!({ "error": reject.to_string() }).to_string();
    let retry = format!("retry-after: {retry_after_secs}\r\n");
    answer_and_close(stream, 503, "Service Unavailable", &retry, &body).await;
}

/// Writes a whole HTTP/1.1 response with a JSON `body` (and `headers`, each ending in
/// CRLF) on a socket hyper never saw, and closes it, lingering at most
/// [`REFUSE_LINGER`] (see [`refuse`]).
pub async fn answer_and_close(
    mut stream: TcpStream,
    status: u16,
    reason: &str,
    headers: &str,
    body: &str,
) {
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n\
         {headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let linger = async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    };
    let _ = tokio::time::timeout(REFUSE_LINGER, linger).await;
}

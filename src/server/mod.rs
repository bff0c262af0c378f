//! The running server: binds the port, starts the shard threads and the acceptor,
//! and hands back a [`ServerHandle`] to learn the address and shut down gracefully.
//!
//! The acceptor hashes each accepted connection onto a shard (round robin over the
//! accept sequence) and sends the socket through that shard's inbox; from then on the
//! shard owns it: HTTP parsing, the upgrade, and the WebSocket connection.

pub mod handshake;
pub mod http;
pub mod os;
mod prefixed;
pub mod upgrade;

use crate::broker::{Broker, GlobalStats, HTTP_HEADROOM};
use crate::config::Config;
use crate::error::Reject;
use crate::router::Router;
use crate::shard::inbox::{self, ShardMsg};
use crate::shard::runtime;
use crate::shard::stats::ShardStats;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Entry point.
pub struct Server;

/// A running broker.
pub struct ServerHandle {
    addr: SocketAddr,
    broker: Arc<Broker>,
    stop_accepting: Arc<Notify>,
    acceptor: Option<JoinHandle<()>>,
    shards: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds `server.listen`, starts shards and the acceptor.
    ///
    /// # Errors
    /// Binding the port or spawning threads failed.
    pub fn start(config: Config) -> io::Result<ServerHandle> {
        os::raise_fd_limit(config.server.max_connections);
        let shard_count = config.shard_count();
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..shard_count)
            .map(|_| inbox::channel(config.server.inbox_capacity))
            .unzip();
        let api_key = match config.api.key_env.as_str() {
            "" => None,
            name => std::env::var(name).ok().filter(|k| !k.is_empty()),
        };
        let listener = std::net::TcpListener::bind(config.server.listen)?;
        os::set_backlog(&listener, 4096);
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let broker = Arc::new(Broker {
            config,
            router: Router::new(senders),
            shard_stats: (0..shard_count)
                .map(|_| Arc::new(ShardStats::default()))
                .collect(),
            global: GlobalStats::default(),
            open_sockets: AtomicUsize::new(0),
            ws_connections: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            api_key,
            started: Instant::now(),
        });
        let shards = runtime::spawn(&broker, receivers)?;
        let stop_accepting = Arc::new(Notify::new());
        let acceptor = {
            let broker = broker.clone();
            let stop = stop_accepting.clone();
            std::thread::Builder::new()
                .name("acceptor".into())
                .spawn(move || accept_loop(listener, broker, stop))?
        };
        Ok(ServerHandle {
            addr,
            broker,
            stop_accepting,
            acceptor: Some(acceptor),
            shards,
        })
    }
}

impl ServerHandle {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Shared broker state (stats, config).
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Begins graceful shutdown: stop accepting, flush, close every client with 1001.
    /// Idempotent.
    pub fn shutdown(&self) {
        if !self.broker.draining.swap(true, Ordering::AcqRel) {
            self.stop_accepting.notify_one();
            self.broker.router.shutdown_all();
        }
    }

    /// Blocks until the acceptor and every shard have stopped.
    pub fn wait(mut self) {
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        for s in self.shards.drain(..) {
            let _ = s.join();
        }
    }
}

fn accept_loop(listener: std::net::TcpListener, broker: Arc<Broker>, stop: Arc<Notify>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot build acceptor runtime");
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot register listener");
                return;
            }
        };
        let shard_count = broker.router.shard_count().max(1);
        let max = broker.config.server.max_connections + HTTP_HEADROOM;
        let mut next = 0usize;
        loop {
            let accepted = tokio::select! {
                _ = stop.notified() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning on the error.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let over_limit = broker.open_sockets.fetch_add(1, Ordering::AcqRel) >= max;
            let Ok(stream) = stream.into_std() else {
                broker.socket_closed();
                continue;
            };
            let shard = next % shard_count;
            next = next.wrapping_add(1);
            let msg = ShardMsg::Accept {
                stream,
                peer,
                over_limit,
            };
            let sent = broker
                .router
                .inbox(shard)
                .map(|inbox| inbox.try_send(msg).is_ok())
                .unwrap_or(false);
            if !sent {
                broker.global.reject(Reject::Overloaded);
                broker.socket_closed();
            }
        }
    });
}

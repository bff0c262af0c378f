//! The running server: binds the port, starts the shard threads (each accepting on its
//! own socket), and hands back a [`ServerHandle`] to learn the address and shut down
//! gracefully.
//!
//! Every shard listens on the port itself (`accept`: one `SO_REUSEPORT` socket per
//! shard) and owns each connection it accepts: HTTP parsing, the upgrade, and the
//! WebSocket connection.

pub mod accept;
pub mod handshake;
pub mod http;
pub mod os;
pub mod pending;
mod prefixed;
pub mod upgrade;

use crate::auth::{Authenticator, IpLimits, Policies, Secret};
use crate::broker::{Broker, GlobalStats};
use crate::config::Config;
use crate::router::Router;
use crate::shard::inbox;
use crate::shard::runtime;
use crate::shard::stats::ShardStats;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

/// Entry point.
pub struct Server;

/// A running broker.
pub struct ServerHandle {
    addr: SocketAddr,
    broker: Arc<Broker>,
    shards: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds `server.listen` (one socket per shard) and starts the shards.
    ///
    /// # Errors
    /// Binding the port or spawning threads failed.
    pub fn start(config: Config) -> io::Result<ServerHandle> {
        os::raise_fd_limit(
            config.server.max_connections
                + crate::broker::HTTP_HEADROOM
                + config.server.max_pending_handshakes,
        );
        let shard_count = config.shard_count();
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..shard_count)
            .map(|_| inbox::channel(config.server.inbox_capacity))
            .unzip();
        let api_key = match config.api.key_env.as_str() {
            "" => None,
            name => std::env::var(name)
                .ok()
                .filter(|k| !k.is_empty())
                .map(|k| Secret::new(k.as_bytes())),
        };
        let env = |name: &str| std::env::var(name).ok();
        let auth = Authenticator::from_config(&config.auth, &env).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("config error: {e}"))
        })?;
        let policies =
            Policies::new(&config.policy, config.client.allow_publish).map_err(|(i, e)| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("config error: policy rule {}: {e}", i + 1),
                )
            })?;
        let s = &config.server;
        let ip_limits = Arc::new(IpLimits::new(
            s.max_connections_per_ip,
            s.connection_rate_per_ip,
            s.connection_burst_per_ip,
            s.ipv6_prefix_per_ip,
        ));
        let tls = crate::tls::Tls::from_config(&config.server).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("config error: {e}"))
        })?;
        let (listeners, addr) = accept::bind(config.server.listen, shard_count)?;
        let history = Arc::new(crate::history::History::new(&config.history));
        let mut router = Router::new(senders).with_history(history.clone());
        let mut cluster = None;
        let mut link = None;
        if !config.cluster.nats_url.is_empty() {
            let topics = crate::topic::Limits {
                max_bytes: config.client.max_topic_bytes,
                max_levels: config.client.max_topic_levels,
            };
            let (outbound, c, pending) =
                crate::cluster::queues(&config.cluster, topics, &history, &env).map_err(|e| {
                    io::Error::new(io::ErrorKind::InvalidInput, format!("config error: {e}"))
                })?;
            router = router.with_cluster(outbound);
            cluster = Some(c);
            link = Some(pending);
        }
        let node_id = crate::links::node_id(
            cluster
                .as_ref()
                .map(|c: &crate::cluster::Cluster| c.node_id.as_str())
                .or(Some(config.cluster.node_id.as_str())),
        );
        let (push, links, links_pending) = crate::links::prepare(&config, node_id, &env);
        router = router.with_links(push);
        let broker = Arc::new(Broker {
            config,
            router,
            shard_stats: (0..shard_count)
                .map(|_| Arc::new(ShardStats::default()))
                .collect(),
            global: GlobalStats::default(),
            open_sockets: AtomicUsize::new(0),
            ws_connections: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            api_key,
            auth,
            policies,
            ip_limits,
            rates: parking_lot::Mutex::default(),
            started: Instant::now(),
            cluster,
            history,
            tls,
            links,
        });
        if let Some(tls) = &broker.tls {
            crate::tls::reload::spawn(tls)?;
        }
        if let Some(link) = link {
            link.start(Arc::downgrade(&broker))?;
        }
        links_pending.start(Arc::downgrade(&broker))?;
        let shards = runtime::spawn(&broker, receivers, listeners)?;
        // `spawn` returns once every shard listens.
        broker.ready.store(true, Ordering::Release);
        Ok(ServerHandle {
            addr,
            broker,
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
            // Each shard closes its listener when it gets this.
            self.broker.router.shutdown_all();
        }
    }

    /// Blocks until every shard has stopped.
    pub fn wait(mut self) {
        for s in self.shards.drain(..) {
            let _ = s.join();
        }
    }
}

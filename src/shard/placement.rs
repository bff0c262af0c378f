//! Where a new connection lives: the shard that accepted it, unless another shard holds
//! clearly fewer connections.
//!
//! Each shard accepts on its own `SO_REUSEPORT` socket, and the kernel picks the socket
//! by a hash of the addresses. Over thousands of connections that spreads evenly, but a
//! handful of busy ones (a few backend publishers) can all hash to one shard and leave
//! the other cores idle. So once a connection is upgraded, the accepting shard compares
//! connection counts and hands it to the least loaded shard when it is ahead by more
//! than a small slack. The slack grows with the count, so large populations (where the
//! hash already balances) almost never pay the hop: moving a socket costs an epoll
//! removal here, an inbox message, and a registration there.

use super::inbox::ShardMsg;
use super::stats::ShardStats;
use super::Shard;
use crate::conn::Admission;
use crate::protocol::Dialect;
use crate::tls::Stream;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use tokio::net::TcpStream;

/// A shard keeps a new connection unless it holds more than the least loaded shard plus
/// its own count divided by this: strict balance for a few connections, about 1.5% of
/// slack for thousands.
const SLACK_DIVISOR: u64 = 64;

/// An upgraded WebSocket socket and what its handshake settled, on its way to becoming a
/// connection of some shard.
pub struct Upgraded<S = Stream> {
    /// The socket (a `std` one while it travels to another shard).
    pub stream: S,
    /// The dialect the handshake chose.
    pub dialect: Dialect,
    /// It negotiated permessage-deflate.
    pub deflate: bool,
    /// The first message decides the dialect (`server.default_dialect = "auto"`).
    pub detect: bool,
    /// Bytes the client sent right behind its handshake.
    pub leftover: Vec<u8>,
    /// Who the client is and its per-IP slot, when there is any.
    pub admission: Option<Box<Admission>>,
    /// The client's address.
    pub peer: SocketAddr,
}

/// An upgraded connection handed to another shard.
pub type Moving = Upgraded<std::net::TcpStream>;

impl<S> Upgraded<S> {
    /// The same connection with its socket converted (to travel, or to arrive).
    fn convert<T>(self, convert: impl FnOnce(S) -> io::Result<T>) -> io::Result<Upgraded<T>> {
        Ok(Upgraded {
            stream: convert(self.stream)?,
            dialect: self.dialect,
            deflate: self.deflate,
            detect: self.detect,
            leftover: self.leftover,
            admission: self.admission,
            peer: self.peer,
        })
    }
}

/// Connections a shard holds or is about to adopt.
fn load(stats: &ShardStats) -> u64 {
    stats.connections_active.load(Ordering::Relaxed) + stats.adopting.load(Ordering::Relaxed)
}

impl Shard {
    /// The shard a new connection should go to instead of this one, if any.
    fn less_loaded_shard(&self) -> Option<usize> {
        let all = &self.broker.shard_stats;
        let mine = load(all.get(usize::from(self.id))?);
        let (id, least) = all
            .iter()
            .map(|s| load(s))
            .enumerate()
            .min_by_key(|&(_, l)| l)?;
        (id != usize::from(self.id) && mine > least + mine / SLACK_DIVISOR).then_some(id)
    }

    /// Adopts an upgraded socket as a WebSocket connection here or, when this shard
    /// holds clearly more connections than another, there (see the module comment). A
    /// TLS connection always stays here: its rustls session is not moved.
    pub fn place_conn(self: &Rc<Self>, up: Upgraded) {
        if up.stream.is_tls() {
            return self.add_conn(up);
        }
        let Some(target) = self.less_loaded_shard() else {
            return self.add_conn(up);
        };
        let (Some(inbox), Some(target_stats)) = (
            self.broker.router.inbox(target),
            self.broker.shard_stats.get(target),
        ) else {
            return self.add_conn(up);
        };
        let peer = up.peer;
        let moving = match up.convert(Stream::into_std) {
            Ok(m) => Box::new(m),
            Err(e) => {
                // The socket could not leave this shard's reactor: it is lost.
                tracing::debug!(shard = self.id, %peer, error = %e, "cannot move connection");
                self.broker.socket_closed();
                self.broker.ws_closed();
                return;
            }
        };
        ShardStats::add(&target_stats.adopting, 1);
        match inbox.try_send(ShardMsg::Adopt(moving)) {
            Ok(()) => ShardStats::add(&self.stats.connections_moved, 1),
            Err(msg) => {
                // Its inbox is full: that shard is busy enough, keep the connection.
                ShardStats::sub(&target_stats.adopting, 1);
                if let ShardMsg::Adopt(m) = msg {
                    self.adopt(*m, false);
                }
            }
        }
    }

    /// Takes in a connection handed over by another shard (`handed` true) or one that
    /// could not be handed over (`handed` false).
    pub(super) fn adopt(self: &Rc<Self>, m: Moving, handed: bool) {
        let peer = m.peer;
        match m.convert(|s| TcpStream::from_std(s).map(Stream::Plain)) {
            Ok(up) => self.add_conn(up),
            Err(e) => {
                tracing::debug!(shard = self.id, %peer, error = %e, "cannot adopt connection");
                self.broker.socket_closed();
                self.broker.ws_closed();
            }
        }
        // Only now: until it counts as active here, it must count as arriving.
        if handed {
            ShardStats::sub(&self.stats.adopting, 1);
        }
    }
}

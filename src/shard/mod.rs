//! `Shard`: one single-threaded runtime's worth of connections.
//!
//! A shard owns its sockets (a slab of [`Conn`]), its local channel index (which of its
//! connections subscribe to what), a scratch read buffer and its stats. Its state is
//! `!Send` and lock-free (`Rc`/`RefCell`); other threads reach it only through its inbox.
//!
//! Delivery: the shard drains its inbox in batches, queues each publication's shared
//! frame to every matching local connection, then writes each touched connection once
//! with a vectored write. The more publications arrive between two drains (overload),
//! the more frames each `writev` carries: batching grows with load instead of collapsing
//! into one write per message per subscriber.

pub mod inbox;
pub mod runtime;
pub mod stats;

mod commands;
mod delivery;
mod placement;
mod recent_ids;
pub mod semstreams;

pub use placement::Upgraded;

use crate::broker::Broker;
use crate::conn::outbox;
use crate::conn::reader;
use crate::conn::{CloseCause, Conn, ConnTask, Phase};
use crate::error::Reject;
use crate::protocol::frame;
use crate::publication::{Accepted, Publication};
use crate::router::MatchCache;
use crate::topic::{self, Index};
use slab::Slab;
use stats::ShardStats;
use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::rc::Rc;

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// Smallest free space offered to one read.
const READ_CHUNK: usize = 64 * 1024;
/// Reads (or write-readiness rounds) one connection may do per poll before yielding, so
/// one busy client cannot starve the shard.
const POLL_BUDGET: u32 = 16;
/// Inbox messages handled per drain before flushing and yielding.
const DRAIN_BATCH: usize = 8192;
/// How long a closing connection may take to flush its close frame and see the peer close.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// One shard's state (lives on its own thread).
pub struct Shard {
    /// Shard id (index in the router).
    pub id: u16,
    /// Shared broker state.
    pub broker: Arc<Broker>,
    /// This shard's counters.
    pub stats: Arc<ShardStats>,
    conns: RefCell<Slab<Conn>>,
    index: RefCell<Index<u32>>,
    scratch: RefCell<Vec<u8>>,
    json_buffers: RefCell<crate::protocol::Buffers>,
    dirty: RefCell<Vec<usize>>,
    /// Connections whose reading waits for the inboxes to drain (see `poll_conn`).
    paused: RefCell<Vec<usize>>,
    /// Rung when the first connection pauses, so an idle run loop starts rechecking.
    pause_bell: Notify,
    cache: RefCell<MatchCache>,
    /// When the input being handled was read (one clock reading per read, not per
    /// message), and the wall-clock time of that read once a publication needed it.
    read_at: Cell<Instant>,
    read_wall: Cell<Option<std::time::SystemTime>>,
    delivery_seq: Cell<u64>,
    epoch: Instant,
    draining: Cell<bool>,
    drained: Notify,
    stop_accepting: Notify,
    outbox_limits: outbox::Limits,
    topic_limits: topic::Limits,
    /// permessage-deflate settings, and the inflater every connection of this shard
    /// that negotiated it shares (made on first use; reset per message).
    deflate: crate::deflate::Settings,
    inflater: RefCell<Option<Box<crate::deflate::Inflater>>>,
    /// SemStreams peers' state, by connection key (empty when there are none).
    peers: RefCell<semstreams::Peers>,
    /// A SemStreams peer's outbox bounds (`semstreams.queue_size`, `on_full`).
    peer_limits: outbox::Limits,
}

impl Shard {
    /// A shard with no connections.
    pub fn new(id: u16, broker: Arc<Broker>, stats: Arc<ShardStats>) -> Self {
        let c = &broker.config.client;
        let outbox_limits = outbox::Limits {
            frames: c.queue_frames,
            bytes: c.queue_bytes,
            on_full: c.on_full,
        };
        let topic_limits = topic::Limits {
            max_bytes: c.max_topic_bytes,
            max_levels: c.max_topic_levels,
        };
        let deflate = crate::deflate::Settings::of(&broker.config.server);
        let peer_limits = semstreams::peer_limits(&broker.config);
        Shard {
            id,
            broker,
            stats,
            conns: RefCell::new(Slab::new()),
            index: RefCell::new(Index::new()),
            scratch: RefCell::new(Vec::new()),
            json_buffers: RefCell::new(crate::protocol::Buffers::default()),
            dirty: RefCell::new(Vec::new()),
            paused: RefCell::new(Vec::new()),
            pause_bell: Notify::new(),
            cache: RefCell::new(MatchCache::default()),
            read_at: Cell::new(Instant::now()),
            read_wall: Cell::new(None),
            delivery_seq: Cell::new(0),
            epoch: Instant::now(),
            draining: Cell::new(false),
            drained: Notify::new(),
            stop_accepting: Notify::new(),
            outbox_limits,
            topic_limits,
            deflate,
            inflater: RefCell::new(None),
            peers: RefCell::default(),
            peer_limits,
        }
    }

    /// Milliseconds since the shard started (the shard clock for timeouts).
    pub fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    /// When the input being handled was read: every publication of one read is stamped
    /// with it. The wall clock is read for the first publication of the read only.
    pub fn read_accepted(&self) -> Accepted {
        let wall = self.read_wall.get().unwrap_or_else(|| {
            let now = std::time::SystemTime::now();
            self.read_wall.set(Some(now));
            now
        });
        Accepted {
            at: self.read_at.get(),
            wall,
        }
    }

    /// A read just returned bytes: the shard's read clock moves to now; returns now on the
    /// shard clock, for the connection's `last_seen_ms`.
    fn note_read(&self) -> u64 {
        let read_at = Instant::now();
        self.read_at.set(read_at);
        self.read_wall.set(None);
        self.ms_at(read_at)
    }

    /// `at` on the shard clock.
    pub fn ms_at(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// Topic limits from config.
    pub fn topic_limits(&self) -> &topic::Limits {
        &self.topic_limits
    }

    /// Completes once this shard began shutting down (its listener should close).
    pub async fn accept_stopped(&self) {
        self.stop_accepting.notified().await;
    }

    /// True once this shard began shutting down.
    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    /// Routes a publication accepted on this shard (API or client) using this shard's
    /// match cache. Returns the shards whose inbox was full.
    pub fn route(&self, publication: &Arc<Publication>) -> crate::router::Routed {
        ShardStats::add(&self.stats.published, 1);
        self.broker
            .router
            .publish(publication, &mut self.cache.borrow_mut())
    }

    /// Whether some connections wait for the inboxes to drain.
    pub fn has_paused(&self) -> bool {
        !self.paused.borrow().is_empty()
    }

    /// Completes when a connection has paused (see `poll_conn`).
    pub async fn first_pause(&self) {
        self.pause_bell.notified().await;
    }

    /// Wakes the connections paused by inbox congestion once it has cleared.
    pub fn resume_paused(&self) {
        if !self.has_paused() || self.broker.router.congested() {
            return;
        }
        let keys = std::mem::take(&mut *self.paused.borrow_mut());
        let conns = self.conns.borrow();
        for key in keys {
            if let Some(waker) = conns.get(key).and_then(|c| c.waker.as_ref()) {
                waker.wake_by_ref();
            }
        }
    }

    /// Adopts an upgraded socket as a WebSocket connection of this shard and starts its
    /// task (`place_conn` decides which shard).
    pub fn add_conn(self: &Rc<Self>, up: Upgraded) {
        let Upgraded {
            stream,
            dialect,
            deflate,
            detect,
            leftover,
            admission,
            peer,
        } = up;
        if self.draining.get() {
            self.broker.socket_closed();
            self.broker.ws_closed();
            return;
        }
        let now = self.now_ms();
        let mut conn = Conn::new(
            stream,
            dialect,
            now,
            self.broker.config.client.publish_burst,
            self.broker.config.client.subscribe_burst,
            admission,
        );
        conn.deflate = deflate;
        conn.detect = detect;
        if !leftover.is_empty() {
            conn.partial = leftover;
            conn.partial.shrink_to_fit(); // kept while the connection lives
            conn.unparsed = true;
        }
        let user = conn.identity().map(|id| id.subject.clone());
        let key = self.conns.borrow_mut().insert(conn);
        if dialect == crate::protocol::Dialect::Semstreams {
            self.peer_opened(key);
        }
        ShardStats::add(&self.stats.connections_active, 1);
        ShardStats::add(&self.stats.connections_total, 1);
        tracing::debug!(
            shard = self.id,
            conn = key,
            %peer,
            dialect = dialect.name(),
            user = ?user,
            "connection open"
        );
        tokio::task::spawn_local(ConnTask {
            shard: self.clone(),
            key,
            finished: false,
        });
    }

    /// Runs `f` on the first `len` bytes of the shard's scratch buffer (shared by every
    /// connection of the shard, so reads and handshakes need no buffer of their own).
    pub fn with_scratch<R>(&self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
        let mut scratch = self.scratch.borrow_mut();
        if scratch.len() < len.max(READ_CHUNK) {
            scratch.resize(len.max(READ_CHUNK), 0);
        }
        f(scratch.get_mut(..len).unwrap_or_default())
    }

    /// Frees a connection: its subscriptions (and the shard's interest where it was the
    /// last subscriber), its slot, its socket.
    pub fn remove_conn(&self, key: usize) {
        let Some(conn) = self.conns.borrow_mut().try_remove(key) else {
            return;
        };
        let mut index = self.index.borrow_mut();
        for pattern in &conn.subs {
            self.unindex(&mut index, pattern, key);
        }
        ShardStats::sub(&self.stats.subscriptions, conn.subs.len() as u64);
        ShardStats::sub(&self.stats.connections_active, 1);
        if conn.dialect == crate::protocol::Dialect::Semstreams {
            self.peer_closed(key);
        }
        self.broker.socket_closed();
        self.broker.ws_closed();
        let reason = match conn.close_cause {
            CloseCause::Lost => "connection lost",
            CloseCause::Client => "client closed",
            CloseCause::Shutdown => "server shutting down",
            CloseCause::Refused(i) => Reject::LABELS
                .get(usize::from(i))
                .copied()
                .unwrap_or("refused"),
        };
        tracing::debug!(
            shard = self.id,
            conn = key,
            code = conn.close_code,
            reason,
            "connection closed"
        );
        if self.draining.get() && self.conns.borrow().is_empty() {
            self.drained.notify_one();
        }
    }

    /// Queues what `conn` is missing from history, paced by its outbox.
    fn pump_history(&self, conn: &mut Conn) {
        if let Some(cursors) = conn.cursors.as_deref_mut() {
            // Counted by the store (`history.stats.replayed`).
            crate::history::cursor::pump(
                &self.broker.history,
                cursors,
                conn.dialect,
                &mut conn.outbox,
                &self.outbox_limits,
            );
        }
    }

    fn unindex(&self, index: &mut Index<u32>, pattern: &str, key: usize) {
        if index.remove(pattern, key as u32) {
            self.broker.router.remove_interest(self.id, pattern);
        }
    }

    /// Starts closing `conn` with a close frame for `code`/`reason`: nothing more is
    /// read or delivered; the frame is flushed, then the socket shut down.
    fn close_conn(&self, conn: &mut Conn, code: u16, reason: &str) {
        if conn.is_closing() {
            return;
        }
        conn.outbox.push_unbounded(frame::close_frame(code, reason));
        conn.close_code = code;
        conn.phase = Phase::Closing {
            deadline_ms: self.now_ms() + CLOSE_LINGER.as_millis() as u64,
        };
        conn.wake();
    }

    /// Closes `conn` for a connection-fatal rejection (counted).
    fn close_for(&self, conn: &mut Conn, reject: Reject) {
        self.stats.reject(reject);
        let code = reject.close_code().unwrap_or(1008);
        self.close_conn(conn, code, reject.close_reason());
        conn.close_cause = CloseCause::Refused(u8::try_from(reject.index()).unwrap_or(u8::MAX));
    }

    /// Drives one connection: writes what is queued, reads and handles what arrived.
    /// Returns `Ready` once the connection is finished and removed.
    pub fn poll_conn(&self, key: usize, cx: &mut Context<'_>) -> Poll<()> {
        let mut budget = POLL_BUDGET;
        let mut pumped = false;
        loop {
            let mut conns = self.conns.borrow_mut();
            let Some(conn) = conns.get_mut(key) else {
                return Poll::Ready(());
            };
            if !conn.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                conn.waker = Some(cx.waker().clone());
            }
            if conn.phase == Phase::Done {
                drop(conns);
                self.remove_conn(key);
                return Poll::Ready(());
            }
            if budget == 0 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            budget -= 1;

            // History this connection is behind on goes into its outbox as it has room:
            // one round per poll, so connections replaying at the same time take turns.
            if !pumped && conn.cursors.as_ref().is_some_and(|c| c.behind()) && !conn.is_closing() {
                self.pump_history(conn);
                pumped = true;
            }
            // Write side: flush, and register for writability when the socket is full
            // (TLS: also while rustls holds ciphertext the socket has not taken).
            if !conn.outbox.is_empty() || conn.stream.pending_output() {
                if self.flush(conn).is_err() {
                    conn.phase = Phase::Done;
                    continue;
                }
                if !conn.outbox.is_empty() || conn.stream.pending_output() {
                    match conn.stream.poll_write_ready(cx) {
                        Poll::Ready(Ok(())) => continue,
                        Poll::Ready(Err(_)) => {
                            conn.phase = Phase::Done;
                            continue;
                        }
                        Poll::Pending => {}
                    }
                }
            }
            if let Phase::Closing { deadline_ms } = conn.phase {
                if conn.outbox.is_empty() && !conn.stream.pending_output() {
                    // Close frame is out: half-close and wait for the peer's EOF, so the
                    // peer reads our close frame instead of a reset.
                    let _ = Pin::new(&mut conn.stream).poll_shutdown(cx);
                    conn.phase = Phase::Lingering { deadline_ms };
                }
            }

            // Read side. Bytes the client sent right behind its handshake are parsed
            // before waiting for more.
            if self.broker.router.congested() {
                // Publications arrive faster than shards deliver them: leave this
                // client's input unread (in its socket, so TCP slows the sender down, or
                // unparsed in `partial`) until the run loop sees room again
                // (`resume_paused`). Otherwise the shard would spend its time refusing
                // publishes it cannot queue.
                let mut paused = self.paused.borrow_mut();
                if paused.is_empty() {
                    // The congested inbox may be another shard's, and this shard's run
                    // loop may be asleep on its own empty inbox: wake it to recheck.
                    self.pause_bell.notify_one();
                }
                paused.push(key);
                ShardStats::add(&self.stats.read_pauses, 1);
                return Poll::Pending;
            }
            if conn.dialect == crate::protocol::Dialect::Semstreams && self.peer_blocked(conn) {
                // `semstreams.on_full = block`: the peer's queue is full, so its socket is
                // left unread (TCP slows it down) until writes make room; the write side
                // above has registered for writability, which wakes this task.
                semstreams::bump(&self.stats.semstreams.blocked, 1);
                return Poll::Pending;
            }
            if !conn.unparsed && reader::gathers(&conn.partial, conn.need as usize) {
                // A big frame is incomplete: read straight onto its end (see `reader`).
                let start = reader::make_room(&mut conn.partial, READ_CHUNK);
                let mut free = ReadBuf::new(conn.partial.get_mut(start..).unwrap_or_default());
                let got = match Pin::new(&mut conn.stream).poll_read(cx, &mut free) {
                    Poll::Pending => {
                        conn.partial.truncate(start);
                        if conn.outbox.is_empty()
                            && conn.cursors.as_ref().is_some_and(|c| c.behind())
                        {
                            cx.waker().wake_by_ref(); // as below: more history to send
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Ok(())) => free.filled().len(),
                    Poll::Ready(Err(_)) => 0,
                };
                conn.partial.truncate(start + got);
                if got == 0 {
                    conn.phase = Phase::Done;
                    continue;
                }
                conn.last_seen_ms = self.note_read();
                if conn.partial.len() < conn.need as usize {
                    continue;
                }
                // Complete: parse it (once) without reading more.
                conn.unparsed = true;
            }
            let carried = conn.partial.len();
            let unparsed = std::mem::take(&mut conn.unparsed);
            let mut scratch = self.scratch.borrow_mut();
            if scratch.len() < carried + READ_CHUNK {
                scratch.resize(carried + READ_CHUNK, 0);
            }
            let Some(head) = scratch.get_mut(..carried) else {
                conn.phase = Phase::Done;
                continue;
            };
            head.copy_from_slice(&conn.partial);
            let filled = if unparsed {
                carried
            } else {
                // poll_read (not try_read) forgets readiness after a short read, so a
                // connection woken for one request does not pay a second, empty read.
                let mut free = ReadBuf::new(scratch.get_mut(carried..).unwrap_or_default());
                match Pin::new(&mut conn.stream).poll_read(cx, &mut free) {
                    Poll::Pending => {
                        if conn.outbox.is_empty()
                            && conn.cursors.as_ref().is_some_and(|c| c.behind())
                        {
                            // More history to send and nothing to wait for: come back after
                            // the other tasks have had their turn.
                            cx.waker().wake_by_ref();
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Ok(())) if free.filled().is_empty() => {
                        conn.phase = Phase::Done;
                        continue;
                    }
                    Poll::Ready(Ok(())) => carried + free.filled().len(),
                    Poll::Ready(Err(_)) => {
                        conn.phase = Phase::Done;
                        continue;
                    }
                }
            };
            conn.last_seen_ms = self.note_read();
            if conn.is_closing() {
                conn.partial = Vec::new(); // discarding input while closing
                continue;
            }
            let buf = scratch.get_mut(..filled).unwrap_or_default();
            let mut fragments = conn.fragments.take();
            let max = self.broker.config.server.max_message_bytes;
            let mut inflater = self.inflater.borrow_mut();
            let parsed = match conn.deflate {
                true => Some(&mut **inflater.get_or_insert_with(Box::default)),
                false => None,
            };
            let parsed = reader::parse_with(buf, &mut fragments, max, parsed, |msg| {
                self.on_message(conns.get_mut(key), key, msg)
            });
            if let Some(inflater) = inflater.as_deref_mut() {
                ShardStats::add(&self.stats.deflate.inflated, inflater.take_count());
            }
            drop(inflater);
            let Some(conn) = conns.get_mut(key) else {
                return Poll::Ready(());
            };
            conn.fragments = fragments;
            match parsed {
                Err(reject) => {
                    conn.partial = Vec::new();
                    conn.fragments = None;
                    self.close_for(conn, reject);
                }
                Ok(p) => {
                    conn.partial = scratch
                        .get(p.consumed..filled)
                        .map(<[u8]>::to_vec)
                        .unwrap_or_default();
                    conn.need = p.need.and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
                    // Paused with whole messages left: parse them before reading more.
                    conn.unparsed = p.paused && !conn.partial.is_empty();
                    if let Some(need) = p.need {
                        if scratch.len() < need + READ_CHUNK {
                            scratch.resize(need + READ_CHUNK, 0);
                        }
                    }
                }
            }
        }
    }
}

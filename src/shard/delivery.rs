//! The shard's main loop: drain the inbox in batches, queue shared frames to matching
//! connections, write each touched connection once (vectored), keep connections alive
//! (pings, idle timeout), and shut down gracefully.

use super::{Shard, DRAIN_BATCH};

/// A flush round that writes to at least this many connections makes the next round
/// eligible for write coalescing (`server.write_coalesce`).
const COALESCE_MIN_WRITES: usize = 256;

/// A heavy flush round that took D is followed by the next one no sooner than this
/// many D after it began (capped by `server.write_coalesce`).
const HOLD_PER_COST: u32 = 4;

/// How often a shard with paused readers checks whether the inboxes have room again.
const PAUSED_RECHECK: Duration = Duration::from_millis(1);

/// How often shard 0 drops history channels whose `ttl` has passed.
const HISTORY_EXPIRY_INTERVAL: Duration = Duration::from_secs(1);

/// How often a shard lets the allocator give back what it freed (`crate::alloc`): a
/// shard that went quiet after a burst of connections would otherwise keep it resident.
const RELEASE_INTERVAL: Duration = Duration::from_millis(100);
use crate::conn::outbox::{Pushed, MAX_IOVECS};
use crate::conn::{Conn, Phase};
use crate::error::Reject;
use crate::history::cursor::Live;
use crate::protocol::{frame, Dialect};
use crate::publication::Publication;
use crate::shard::inbox::{InboxReceiver, ShardMsg};
use crate::shard::stats::ShardStats;
use bytes::Bytes;
use std::io::{self, IoSlice};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which of a publication's frames `conn` takes, as an index into the per-delivery frame
/// array: its dialect's plain frame, or (after them) its permessage-deflate frame.
fn frame_slot(conn: &Conn) -> usize {
    conn.dialect.index() + usize::from(conn.deflate) * Dialect::COUNT
}

impl Shard {
    /// Runs the shard until it has shut down: inbox drain loop plus the keepalive sweep.
    pub async fn run(self: Rc<Self>, inbox: InboxReceiver) {
        tokio::task::spawn_local(self.clone().sweep_loop());
        tokio::task::spawn_local(release_loop());
        let coalesce = self.broker.config.server.write_coalesce;
        let mut batch: Vec<(Arc<Publication>, u64)> = Vec::new();
        let mut shutdown_deadline: Option<tokio::time::Instant> = None;
        // Set while a flush is being held back to let more frames gather (see below).
        let mut hold_until: Option<tokio::time::Instant> = None;
        // The last flush round wrote to many connections: writes are the cost to cut.
        let mut heavy = false;
        // When the last flush round began, and how long it took: frames gathered while
        // it ran count toward the hold, and the hold scales with its cost.
        let mut last_flush = tokio::time::Instant::now();
        let mut last_cost = Duration::ZERO;
        loop {
            if let Some(deadline) = shutdown_deadline {
                if self.conns.borrow().is_empty() {
                    return;
                }
                tokio::select! {
                    _ = inbox.wait() => {}
                    _ = self.drained.notified() => {}
                    _ = tokio::time::sleep_until(deadline) => return,
                }
                if self.conns.borrow().is_empty() {
                    return;
                }
            } else if let Some(until) = hold_until {
                tokio::select! {
                    _ = inbox.wait() => {}
                    _ = tokio::time::sleep_until(until) => {}
                }
            } else if self.has_paused() {
                // Paused readers may be waiting on another shard's inbox: look again soon.
                tokio::select! {
                    _ = inbox.wait() => {}
                    _ = tokio::time::sleep(PAUSED_RECHECK) => {}
                }
            } else {
                tokio::select! {
                    _ = inbox.wait() => {}
                    _ = self.first_pause() => {}
                }
            }
            let handled = self.drain(&inbox, &mut batch, &mut shutdown_deadline);
            // Write coalescing: when the last round cost many writes (a big fan-out), start
            // the next one no sooner than HOLD_PER_COST times that round's duration after
            // it began (at most `server.write_coalesce`), so flushing takes at most about
            // a fifth of the shard's time and each writev carries the frames that gathered
            // meanwhile. Cheap rounds are barely held; light load (a round every now and
            // then) is not held at all, since the hold has passed by the next publication.
            // Shutdown is never held; a full outbox is still flushed at once (deliver).
            let now = tokio::time::Instant::now();
            if hold_until.is_none() && heavy && !coalesce.is_zero() && shutdown_deadline.is_none() {
                hold_until = Some(last_flush + coalesce.min(last_cost * HOLD_PER_COST));
            }
            if hold_until.is_some_and(|until| now < until) && shutdown_deadline.is_none() {
                continue;
            }
            hold_until = None;
            last_flush = now;
            heavy = self.flush_dirty() >= COALESCE_MIN_WRITES;
            last_cost = last_flush.elapsed();
            self.record_latency(&mut batch);
            self.resume_paused();
            if handled == DRAIN_BATCH {
                // More may be waiting: let connection tasks (acks, reads) run first.
                tokio::task::yield_now().await;
            }
        }
    }

    /// Handles up to `DRAIN_BATCH` inbox messages; returns how many.
    fn drain(
        self: &Rc<Self>,
        inbox: &InboxReceiver,
        batch: &mut Vec<(Arc<Publication>, u64)>,
        shutdown_deadline: &mut Option<tokio::time::Instant>,
    ) -> usize {
        let mut handled = 0;
        while handled < DRAIN_BATCH {
            let Some(msg) = inbox.try_recv() else {
                break;
            };
            handled += 1;
            match msg {
                ShardMsg::Deliver(p) => {
                    let n = self.deliver(&p);
                    if n > 0 {
                        batch.push((p, n));
                    }
                }
                ShardMsg::Channels(reply) => {
                    let list = self
                        .index
                        .borrow()
                        .patterns()
                        .map(|(p, n)| (p.to_owned(), n))
                        .collect();
                    let _ = reply.send(list);
                }
                ShardMsg::Subscribers(topic, reply) => {
                    let mut reached = std::collections::HashSet::new();
                    self.index.borrow().for_each_match(&topic, |key| {
                        reached.insert(key);
                    });
                    let _ = reply.send(reached.len());
                }
                ShardMsg::Adopt(moving) => self.adopt(*moving, true),
                ShardMsg::Shutdown => {
                    if shutdown_deadline.is_none() {
                        let grace = self.broker.config.server.shutdown_grace;
                        *shutdown_deadline = Some(tokio::time::Instant::now() + grace);
                        self.begin_shutdown(grace);
                    }
                }
            }
        }
        handled
    }

    /// Queues `p`'s frame to every matching local connection; returns how many.
    fn deliver(&self, p: &Arc<Publication>) -> u64 {
        let seq = self.delivery_seq.get() + 1;
        self.delivery_seq.set(seq);
        let mut conns = self.conns.borrow_mut();
        let mut dirty = self.dirty.borrow_mut();
        // Per dialect, plain then permessage-deflate (a connection's slot: `frame_slot`).
        let mut frames: [Option<Bytes>; 2 * Dialect::COUNT] = Default::default();
        // History channels only: a connection with a cursor on this channel takes the
        // publication only when it is the next offset it needs (`history::cursor`).
        let offset = p.offset();
        let mut delivered = 0u64;
        let mut dropped = 0u64;
        let mut dropped_slow = 0u64;
        let mut visit = |key: usize, conn: &mut Conn| {
            if conn.last_delivery == seq || conn.is_closing() {
                return;
            }
            conn.last_delivery = seq;
            if offset != 0 {
                let cursor = conn
                    .cursors
                    .as_deref_mut()
                    .and_then(|c| c.get_mut(&p.topic));
                match cursor.map(|c| c.on_live(offset)) {
                    None | Some(Live::Deliver) => {}
                    Some(Live::Skip) => return,
                    Some(Live::CatchUp) => {
                        // The pump (in `poll_conn`) sends the missing ones, then this.
                        if !conn.dirty {
                            conn.dirty = true;
                            dirty.push(key);
                        }
                        return;
                    }
                }
            }
            let slot = frames.get_mut(frame_slot(conn));
            let frame = match slot {
                Some(Some(f)) => f.clone(),
                Some(slot) if conn.deflate => slot
                    .insert(p.deflated_frame(conn.dialect, &self.deflate, &self.stats.deflate))
                    .clone(),
                Some(slot) => slot.insert(p.frame(conn.dialect)).clone(),
                None => return,
            };
            if conn.dialect == Dialect::Semstreams {
                // A peer's own queue bound, send rate and `slow` signals.
                if self.deliver_to_peer(key, conn, frame, p.origin) {
                    delivered += 1;
                    if !conn.dirty {
                        conn.dirty = true;
                        dirty.push(key);
                    }
                }
                return;
            }
            if !conn.outbox.has_room(frame.len(), &self.outbox_limits) {
                // Queued frames of this batch are not written yet: give the socket a
                // chance before calling anyone slow. Only a full socket is a slow consumer.
                if self.flush(conn).is_err() {
                    conn.phase = Phase::Done;
                    conn.wake();
                    return;
                }
            }
            match conn.outbox.push(frame, &self.outbox_limits) {
                Pushed::Queued => delivered += 1,
                Pushed::DroppedOldest(n) => {
                    delivered += 1;
                    dropped += n as u64;
                }
                Pushed::DroppedNewest => {
                    dropped += 1;
                    return;
                }
                Pushed::Full => {
                    // SPEC §4: the slow consumer is cut; nobody else waits for it.
                    dropped_slow += conn.outbox.clear_unstarted() as u64 + 1;
                    ShardStats::add(&self.stats.slow_disconnects, 1);
                    self.close_for(conn, Reject::SlowConsumer);
                }
            }
            if !conn.dirty {
                conn.dirty = true;
                dirty.push(key);
            }
        };
        if p.is_broadcast() {
            for (key, conn) in conns.iter_mut() {
                visit(key, conn);
            }
        } else {
            self.index.borrow().for_each_match(&p.topic, |key| {
                if let Some(conn) = conns.get_mut(key as usize) {
                    visit(key as usize, conn);
                }
            });
        }
        ShardStats::add(&self.stats.delivered, delivered);
        if dropped > 0 {
            ShardStats::add(&self.stats.dropped_queue_full, dropped);
        }
        if dropped_slow > 0 {
            ShardStats::add(&self.stats.dropped_slow_consumer, dropped_slow);
        }
        delivered
    }

    /// Writes every connection touched since the last flush, once each; connections
    /// whose socket is full get their task woken to wait for writability. Returns how
    /// many connections were written.
    pub(super) fn flush_dirty(&self) -> usize {
        let mut conns = self.conns.borrow_mut();
        let mut dirty = self.dirty.borrow_mut();
        let mut queued = 0u64;
        let touched = dirty.len();
        for key in dirty.drain(..) {
            let Some(conn) = conns.get_mut(key) else {
                continue;
            };
            conn.dirty = false;
            let flushed = self.flush(conn);
            if conn.dialect == Dialect::Semstreams {
                self.note_peer_depth(key, conn.outbox.len());
            }
            if flushed.is_err() {
                conn.phase = Phase::Done;
                conn.wake();
            } else if !conn.outbox.is_empty() || conn.is_closing() || conn.stream.pending_output() {
                queued += conn.outbox.len() as u64;
                conn.wake();
            } else if conn.cursors.as_ref().is_some_and(|c| c.behind()) {
                conn.wake(); // its task pumps the history it is missing
            }
        }
        self.stats
            .queue_frames
            .store(queued, std::sync::atomic::Ordering::Relaxed);
        touched
    }

    /// Writes as much of `conn`'s outbox as the socket takes, many frames per `writev`.
    ///
    /// # Errors
    /// The socket failed (the connection is finished).
    pub(super) fn flush(&self, conn: &mut Conn) -> io::Result<()> {
        let (mut writes, mut frames, mut bytes) = (0u64, 0u64, 0u64);
        let result = loop {
            if conn.outbox.is_empty() {
                // TLS: ciphertext of frames already taken may still wait in rustls.
                break conn.stream.flush_pending();
            }
            let written = {
                let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
                let n = conn.outbox.slices(&mut slices);
                conn.stream
                    .try_write_vectored(slices.get(..n).unwrap_or_default())
            };
            match written {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(w) => {
                    writes += 1;
                    bytes += w as u64;
                    frames += conn.outbox.advance(w) as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        if writes > 0 {
            ShardStats::add(&self.stats.writes, writes);
            ShardStats::add(&self.stats.frames_written, frames);
            ShardStats::add(&self.stats.bytes_out, bytes);
        }
        result
    }

    /// Delivery latency (accepted -> handed to the socket), one histogram entry per
    /// subscriber, recorded once per publication per batch.
    fn record_latency(&self, batch: &mut Vec<(Arc<Publication>, u64)>) {
        if batch.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut hist = self.stats.latency_us.lock();
        for (p, n) in batch.drain(..) {
            let us = now.saturating_duration_since(p.accepted_at).as_micros();
            let _ = hist.record_n(u64::try_from(us).unwrap_or(u64::MAX).max(1), n);
        }
    }

    /// Every `tick`: ping quiet connections, close idle ones, give up on closes that
    /// take too long. One pass over the slab: no timer per connection.
    async fn sweep_loop(self: Rc<Self>) {
        let server = &self.broker.config.server;
        let tick = (server.ping_interval.min(server.idle_timeout) / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_expiry = Instant::now();
        loop {
            interval.tick().await;
            self.sweep();
            // One shard expires history channels for the node, about once a second.
            if self.id == 0 && last_expiry.elapsed() >= HISTORY_EXPIRY_INTERVAL {
                last_expiry = Instant::now();
                let router = &self.broker.router;
                self.broker
                    .history
                    .expire(last_expiry, |channel| router.has_subscribers(channel));
            }
        }
    }

    fn sweep(&self) {
        let now = self.now_ms();
        let server = &self.broker.config.server;
        let idle_ms = server.idle_timeout.as_millis() as u64;
        let ping_ms = server.ping_interval.as_millis() as u64;
        let mut conns = self.conns.borrow_mut();
        let mut dirty = self.dirty.borrow_mut();
        for (key, conn) in conns.iter_mut() {
            match conn.phase {
                Phase::Open => {
                    let quiet = now.saturating_sub(conn.last_seen_ms);
                    if quiet >= idle_ms {
                        self.close_for(conn, Reject::IdleTimeout);
                    } else if quiet >= ping_ms && now.saturating_sub(conn.last_ping_ms) >= ping_ms {
                        conn.last_ping_ms = now;
                        conn.outbox.push_unbounded(frame::ping_frame(b""));
                    } else {
                        continue;
                    }
                    if !conn.dirty {
                        conn.dirty = true;
                        dirty.push(key);
                    }
                }
                Phase::Closing { deadline_ms } | Phase::Lingering { deadline_ms } => {
                    if now >= deadline_ms {
                        conn.phase = Phase::Done;
                        conn.wake();
                    }
                }
                Phase::Done => conn.wake(),
            }
        }
        drop((conns, dirty));
        let _ = self.flush_dirty();
    }

    /// Graceful shutdown: every open connection gets close 1001 after what is already
    /// queued for it (queued frames are flushed first, SPEC §6).
    fn begin_shutdown(&self, grace: Duration) {
        self.draining.set(true);
        self.stop_accepting.notify_one();
        let deadline_ms = self.now_ms() + grace.as_millis() as u64;
        let mut conns = self.conns.borrow_mut();
        let mut dirty = self.dirty.borrow_mut();
        for (key, conn) in conns.iter_mut() {
            if conn.is_closing() {
                continue;
            }
            conn.outbox
                .push_unbounded(frame::close_frame(1001, "server shutting down"));
            conn.close_code = 1001;
            conn.close_cause = crate::conn::CloseCause::Shutdown;
            conn.phase = Phase::Closing { deadline_ms };
            if !conn.dirty {
                conn.dirty = true;
                dirty.push(key);
            }
        }
    }
}

/// Runs on each shard thread: mimalloc frees and purges per thread, so the call must
/// come from the thread that freed the memory.
async fn release_loop() {
    let mut interval = tokio::time::interval(RELEASE_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        crate::alloc::release_freed();
    }
}

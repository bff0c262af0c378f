//! A WebSocket connection as a shard holds it: socket, dialect, outbox, subscriptions,
//! and the small amount of state the lean read path needs.
//!
//! A connection is one entry in its shard's slab plus one tiny task ([`ConnTask`]: a
//! shard handle and a slab key) that the runtime wakes on socket readiness. All logic
//! runs in the shard (`shard::Shard::poll_conn`), which owns the slab; the task only
//! forwards polls. What an idle subscribed connection costs is this struct, the
//! subscription strings, tokio's I/O registration and the task: no buffers.

pub mod outbox;
pub mod reader;

use crate::auth::{Identity, IpSlot};
use crate::protocol::Dialect;
use crate::shard::Shard;
use crate::tls::Stream;
use outbox::Outbox;
use reader::Fragments;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading and receiving.
    Open,
    /// A close frame is queued: flush it, then shut down and drain until the peer
    /// closes or `deadline_ms` (shard clock) passes.
    Closing {
        /// When to give up on a clean close.
        deadline_ms: u64,
    },
    /// Write side shut down; discarding input until EOF or the deadline.
    Lingering {
        /// When to give up.
        deadline_ms: u64,
    },
    /// Finished: the task removes the connection on its next poll.
    Done,
}

/// Why a connection ended, for its close log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CloseCause {
    /// No close handshake: the peer went away or the socket failed.
    #[default]
    Lost,
    /// The client sent a close frame.
    Client,
    /// The broker is shutting down.
    Shutdown,
    /// The broker closed it for a rejection (`Reject::index`).
    Refused(u8),
}

/// Token bucket for client publishing (`client.publish_rate` / `publish_burst`).
#[derive(Debug, Clone, Copy, Default)]
pub struct RateLimiter {
    tokens: f32,
    last_ms: u64,
    /// Rate-limited messages in a row (closes at `client.rate_limit_strikes`).
    pub strikes: u32,
}

impl RateLimiter {
    /// A full bucket.
    pub fn new(burst: u32, now_ms: u64) -> Self {
        RateLimiter {
            tokens: burst as f32,
            last_ms: now_ms,
            strikes: 0,
        }
    }

    /// Takes one token; false when the client is over its rate. `rate` 0 = unlimited.
    pub fn allow(&mut self, rate: f64, burst: u32, now_ms: u64) -> bool {
        if rate <= 0.0 {
            return true;
        }
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.last_ms = now_ms;
        self.tokens = (f64::from(self.tokens) + elapsed * rate).min(f64::from(burst)) as f32;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.strikes = 0;
            true
        } else {
            self.strikes = self.strikes.saturating_add(1);
            false
        }
    }
}

/// A token bucket in 8 bytes (the connection struct is kept small): the clock is kept as
/// the low 32 bits of the shard's milliseconds, compared with wrapping arithmetic, so a
/// connection idle for over 49 days merely refills from an older-looking time.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChangeLimiter {
    tokens: f32,
    last_ms: u32,
}

impl ChangeLimiter {
    /// A full bucket.
    pub fn new(burst: u32, now_ms: u64) -> Self {
        ChangeLimiter {
            tokens: burst as f32,
            last_ms: now_ms as u32,
        }
    }

    /// Takes one token; false when over `rate`. `rate` 0 = unlimited.
    pub fn allow(&mut self, rate: f64, burst: u32, now_ms: u64) -> bool {
        if rate <= 0.0 {
            return true;
        }
        let now = now_ms as u32;
        let elapsed = f64::from(now.wrapping_sub(self.last_ms)) / 1000.0;
        self.last_ms = now;
        self.tokens = (f64::from(self.tokens) + elapsed * rate).min(f64::from(burst)) as f32;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What let a connection in, kept for its life: who it is (policies ask) and its place
/// in its IP address's count (given back when the connection is dropped). Boxed on the
/// connection only when auth or per-IP limits are on, so an anonymous connection pays
/// one pointer for it.
#[derive(Debug, Default)]
pub struct Admission {
    /// The authenticated client; `None` = anonymous.
    pub identity: Option<Identity>,
    /// Released on drop.
    pub ip_slot: Option<IpSlot>,
}

impl Admission {
    /// `None` when there is nothing to keep.
    pub fn boxed(identity: Option<Identity>, ip_slot: Option<IpSlot>) -> Option<Box<Admission>> {
        if identity.is_none() && ip_slot.is_none() {
            return None;
        }
        Some(Box::new(Admission { identity, ip_slot }))
    }
}

/// One connection's state, owned by its shard.
pub struct Conn {
    /// The socket (registered with this shard's reactor), plain or TLS.
    pub stream: Stream,
    /// Dialect chosen at upgrade.
    pub dialect: Dialect,
    /// Frames waiting to be written.
    pub outbox: Outbox,
    /// Patterns this connection is subscribed to (validated, distinct).
    pub subs: Vec<Box<str>>,
    /// Bytes of an incomplete frame carried to the next read (empty: no allocation).
    pub partial: Vec<u8>,
    /// Size of the incomplete frame in `partial` when its header is known (else 0); u32
    /// as frames are at most `server.max_message_bytes` (64 MiB) plus a header, and so the
    /// struct stays within its size budget.
    pub need: u32,
    /// A fragmented text message being reassembled.
    pub fragments: Option<Box<Fragments>>,
    /// Shard clock (ms) of the last frame received.
    pub last_seen_ms: u64,
    /// Shard clock (ms) of the last ping sent.
    pub last_ping_ms: u64,
    /// Sequence of the last publication queued here (one copy even when several of
    /// this connection's patterns match).
    pub last_delivery: u64,
    /// Lifecycle phase.
    pub phase: Phase,
    /// The task to wake when the shard queued frames it could not write at once.
    pub waker: Option<Waker>,
    /// Publish rate limiter.
    pub rate: RateLimiter,
    /// Subscription-change rate limiter (`client.subscribe_rate` / `subscribe_burst`).
    pub sub_rate: ChangeLimiter,
    /// In the shard's dirty list (has frames queued since the last flush).
    pub dirty: bool,
    /// `partial` holds bytes sent right behind the handshake, not yet parsed.
    pub unparsed: bool,
    /// It negotiated permessage-deflate: publications go compressed, RSV1 frames are
    /// inflated (the only compression state a connection has, see `crate::deflate`).
    pub deflate: bool,
    /// The dialect is still to be detected from the next message (`server.default_dialect
    /// = "auto"`); `dialect` is gows until then.
    pub detect: bool,
    /// Identity and per-IP slot, when auth or per-IP limits are on.
    pub admission: Option<Box<Admission>>,
    /// Close code sent (0 = none yet).
    pub close_code: u16,
    /// Who ended the connection, and why.
    pub close_cause: CloseCause,
    /// Positions in the history channels it subscribes to exactly (`None` until it
    /// subscribes to one, so other connections pay one pointer).
    pub cursors: Option<Box<crate::history::cursor::Cursors>>,
}

impl Conn {
    /// A newly upgraded connection.
    pub fn new(
        stream: Stream,
        dialect: Dialect,
        now_ms: u64,
        burst: u32,
        sub_burst: u32,
        admission: Option<Box<Admission>>,
    ) -> Self {
        Conn {
            stream,
            dialect,
            outbox: Outbox::default(),
            subs: Vec::new(),
            partial: Vec::new(),
            need: 0,
            fragments: None,
            last_seen_ms: now_ms,
            last_ping_ms: now_ms,
            last_delivery: 0,
            phase: Phase::Open,
            waker: None,
            rate: RateLimiter::new(burst, now_ms),
            sub_rate: ChangeLimiter::new(sub_burst, now_ms),
            dirty: false,
            unparsed: false,
            deflate: false,
            detect: false,
            admission,
            close_code: 0,
            close_cause: CloseCause::Lost,
            cursors: None,
        }
    }

    /// The authenticated client, if any.
    pub fn identity(&self) -> Option<&Identity> {
        self.admission.as_ref()?.identity.as_ref()
    }

    /// True once a close is under way (no more deliveries or requests).
    pub fn is_closing(&self) -> bool {
        self.phase != Phase::Open
    }

    /// Wakes the connection's task so it polls its socket again.
    pub fn wake(&self) {
        if let Some(w) = &self.waker {
            w.wake_by_ref();
        }
    }
}

/// The task that drives one connection; all it holds is where the connection lives.
pub struct ConnTask {
    /// Owning shard.
    pub shard: Rc<Shard>,
    /// Slab key.
    pub key: usize,
    /// The shard already removed the connection (the task finished normally).
    pub finished: bool,
}

impl Future for ConnTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let polled = this.shard.poll_conn(this.key, cx);
        if polled.is_ready() {
            this.finished = true;
        }
        polled
    }
}

impl Drop for ConnTask {
    fn drop(&mut self) {
        // Runtime teardown drops unfinished tasks: release the slot and its interest.
        if !self.finished {
            self.shard.remove_conn(self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_allows_burst_then_refills() {
        let mut r = RateLimiter::new(3, 0);
        assert!(r.allow(10.0, 3, 0));
        assert!(r.allow(10.0, 3, 0));
        assert!(r.allow(10.0, 3, 0));
        assert!(!r.allow(10.0, 3, 0));
        assert_eq!(r.strikes, 1);
        assert!(r.allow(10.0, 3, 100), "100 ms at 10/s refills one token");
        assert_eq!(r.strikes, 0);
        assert!(
            RateLimiter::new(0, 0).allow(0.0, 0, 0),
            "rate 0 = unlimited"
        );
        let mut c = ChangeLimiter::new(2, u64::from(u32::MAX) - 50);
        assert!(c.allow(10.0, 2, u64::from(u32::MAX) - 50));
        assert!(c.allow(10.0, 2, u64::from(u32::MAX) - 50));
        assert!(!c.allow(10.0, 2, u64::from(u32::MAX) - 50));
        assert!(
            c.allow(10.0, 2, u64::from(u32::MAX) + 60),
            "refills across the 32-bit wrap"
        );
    }
}

#[cfg(test)]
mod size_tests {
    #[test]
    fn connection_state_stays_small() {
        // An idle subscribed connection should cost about 1 KiB of broker memory in all
        // (this struct, tokio's I/O registration and task, subscription strings).
        // Growing this struct is a design decision, not an accident: 224 bytes, + 8 for
        // the subscription-change bucket (issue 16 finding 4, subscribe storms), + 8 for
        // `need` (linear gathering of a partial frame; issue 16 finding 9).
        // The limit is 240 for the broker built alone; `cargo test --workspace` unifies
        // tokio features from the other members' dev-dependencies (shardcast-client's
        // tests), where the same struct measures 8 bytes more.
        let size = std::mem::size_of::<super::Conn>();
        assert!(size <= 248, "Conn is {size} bytes");
    }
}

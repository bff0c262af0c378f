//! `Publication`: one message on its way to subscribers, whatever its source (HTTP API,
//! a client, later the cluster), plus its lazily rendered frames, one per dialect.
//!
//! A publication is wrapped in an `Arc` and shared by every shard that delivers it; each
//! dialect's frame is rendered at most once (the first shard that needs it) and then the
//! same `Bytes` are queued to every subscriber.

use crate::protocol::{gows, vws, Dialect};
use bytes::Bytes;
use std::borrow::Cow;
use std::sync::OnceLock;
use std::time::{Instant, SystemTime};

/// What kind of publication this is; decides who receives it and how gows renders it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A message on a channel (gows `type` defaults to `event`; may be any name given at
    /// publish, e.g. `process_output`). Reaches that channel's subscribers.
    Channel {
        /// gows `type` (e.g. `event`, `process_output`, `process_status`).
        gows_type: Cow<'static, str>,
    },
    /// go-ws `SendEvent`: `{"event":NAME,"data":D}` to every connected client.
    BroadcastEvent {
        /// Event name.
        event: Box<str>,
    },
    /// go-ws `SendError`: a plain string to every connected client.
    BroadcastError,
}

/// One publication. `data` and `headers` are compact JSON text.
#[derive(Debug)]
pub struct Publication {
    /// Channel/topic (empty for broadcasts).
    pub topic: Box<str>,
    /// Delivery kind.
    pub kind: Kind,
    /// Payload as compact JSON.
    pub data: Bytes,
    /// Optional JSON object of string headers (vws `h`), passed through unchanged.
    pub headers: Option<Bytes>,
    /// When the broker accepted it (for delivery latency).
    pub accepted_at: Instant,
    /// Wall-clock time of acceptance (gows `timestamp`).
    pub accepted_wall: SystemTime,
    frames: [OnceLock<Bytes>; 2],
}

/// The default gows type of a channel message.
pub const EVENT: &str = "event";

/// A gows type for [`Kind::Channel`]: the usual `"event"` needs no allocation.
pub fn gows_type(name: &str) -> Cow<'static, str> {
    if name == EVENT {
        Cow::Borrowed(EVENT)
    } else {
        Cow::Owned(name.to_owned())
    }
}

/// When something was accepted, on both clocks: monotonic (latency) and wall (gows
/// `timestamp`). A shard reads it once per socket read and stamps every publication of
/// that read with it: reading the clocks per message was 6% of a busy shard's CPU.
#[derive(Debug, Clone, Copy)]
pub struct Accepted {
    /// Monotonic time.
    pub at: Instant,
    /// Wall-clock time.
    pub wall: SystemTime,
}

impl Accepted {
    /// Both clocks, now.
    pub fn now() -> Self {
        Accepted {
            at: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

impl Publication {
    /// A new publication accepted now.
    pub fn new(topic: Box<str>, kind: Kind, data: Bytes, headers: Option<Bytes>) -> Self {
        Self::accepted(topic, kind, data, headers, Accepted::now())
    }

    /// A new publication accepted at `when`.
    pub fn accepted(
        topic: Box<str>,
        kind: Kind,
        data: Bytes,
        headers: Option<Bytes>,
        when: Accepted,
    ) -> Self {
        Publication {
            topic,
            kind,
            data,
            headers,
            accepted_at: when.at,
            accepted_wall: when.wall,
            frames: [OnceLock::new(), OnceLock::new()],
        }
    }

    /// True for broadcasts that go to every client rather than a channel's subscribers.
    pub fn is_broadcast(&self) -> bool {
        !matches!(self.kind, Kind::Channel { .. })
    }

    /// The complete WebSocket frame for `dialect`, rendered on first use and shared after.
    pub fn frame(&self, dialect: Dialect) -> Bytes {
        let cell = match dialect {
            Dialect::Gows => &self.frames[0],
            Dialect::Vws => &self.frames[1],
        };
        cell.get_or_init(|| match dialect {
            Dialect::Gows => gows::render_publication(self),
            Dialect::Vws => vws::render_publication(self),
        })
        .clone()
    }
}

//! `Publication`: one message on its way to subscribers, whatever its source (HTTP API,
//! a client, later the cluster), plus its lazily rendered frames, one per dialect.
//!
//! A publication is wrapped in an `Arc` and shared by every shard that delivers it; each
//! dialect's frame is rendered at most once (the first shard that needs it) and then the
//! same `Bytes` are queued to every subscriber.

use crate::deflate;
use crate::protocol::{gows, semstreams, vws, Dialect};
use bytes::Bytes;
use once_cell::race::OnceBox;
use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// The connection that published it, when that connection needs to recognise its
    /// own publications coming back (a SemStreams peer under `on_full = "block"`,
    /// `Shard::origin_tag`); 0 = not tracked.
    pub origin: u64,
    /// Position in its channel's history (SPEC §9), 0 = the channel keeps no history.
    /// Set once, by the history store, before any shard sees the publication.
    offset: AtomicU64,
    frames: [OnceBox<Bytes>; Dialect::COUNT],
    /// permessage-deflate frames, one per dialect, made on first use (`deflated_frame`).
    deflated: [OnceBox<Bytes>; Dialect::COUNT],
}

/// The default gows type of a channel message.
pub const EVENT: &str = "event";

/// A gows type for [`Kind::Channel`]: the usual `"event"` needs no allocation, and an
/// owned name is kept rather than copied.
pub fn gows_type(name: impl AsRef<str> + Into<String>) -> Cow<'static, str> {
    if name.as_ref() == EVENT {
        Cow::Borrowed(EVENT)
    } else {
        Cow::Owned(name.into())
    }
}

/// When something was accepted, on both clocks: monotonic (latency) and wall (gows
/// `timestamp`). A shard stamps every publication of one socket read with the time of
/// that read (`Shard::read_accepted`): reading the clocks per message was 6% of a busy
/// shard's CPU.
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
            origin: 0,
            offset: AtomicU64::new(0),
            frames: std::array::from_fn(|_| OnceBox::new()),
            deflated: std::array::from_fn(|_| OnceBox::new()),
        }
    }

    /// About how long a rendered frame's payload is: data, headers, the topic twice (gows
    /// repeats a process id) and room for the envelope (keys, type, offset, timestamp).
    /// Escaped characters may need more; the buffer then grows once.
    pub fn frame_size_hint(&self) -> usize {
        let headers = self.headers.as_ref().map_or(0, Bytes::len);
        let gows_type = match &self.kind {
            Kind::Channel { gows_type } => gows_type.len(),
            Kind::BroadcastEvent { event } => event.len(),
            Kind::BroadcastError => 0,
        };
        self.data.len() + headers + 2 * self.topic.len() + gows_type + 160
    }

    /// Its offset in the channel's history; 0 when the channel keeps none.
    pub fn offset(&self) -> u64 {
        self.offset.load(Ordering::Relaxed)
    }

    /// Assigns the history offset. Only the history store calls this, under its lock and
    /// before the publication is handed to any shard (the hand-off publishes the write),
    /// so every rendering sees it.
    pub(crate) fn set_offset(&self, offset: u64) {
        self.offset.store(offset, Ordering::Relaxed);
    }

    /// True for broadcasts that go to every client rather than a channel's subscribers.
    pub fn is_broadcast(&self) -> bool {
        !matches!(self.kind, Kind::Channel { .. })
    }

    /// The complete WebSocket frame for `dialect`, rendered on first use and shared after.
    ///
    /// Never waits: two shards delivering the same publication at the same moment may
    /// both render it, and the copy that loses the race is dropped. (With `OnceLock`,
    /// the second shard slept on a futex until the first had rendered, thousands of
    /// times a second under cross-shard fan-in.)
    pub fn frame(&self, dialect: Dialect) -> Bytes {
        let render = || {
            Box::new(match dialect {
                Dialect::Gows => gows::render_publication(self),
                Dialect::Vws => vws::render_publication(self),
                Dialect::Semstreams => semstreams::render_publication(self),
            })
        };
        match self.frames.get(dialect.index()) {
            Some(cell) => cell.get_or_init(render).clone(),
            None => *render(),
        }
    }

    /// The frame for `dialect` to a client that negotiated permessage-deflate: compressed
    /// once, on first use, and then the same `Bytes` for every such subscriber (like
    /// [`frame`](Self::frame), a race between shards costs at most a dropped copy). The
    /// plain frame when its payload is under `compression_min_bytes` or does not shrink.
    pub fn deflated_frame(
        &self,
        dialect: Dialect,
        settings: &deflate::Settings,
        stats: &deflate::Stats,
    ) -> Bytes {
        let Some(cell) = self.deflated.get(dialect.index()) else {
            return self.frame(dialect);
        };
        cell.get_or_init(|| {
            let plain = self.frame(dialect);
            Box::new(deflate::deflate_frame(&plain, settings, stats).unwrap_or(plain))
        })
        .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn frames_render_once_per_dialect_even_when_shards_race() {
        let p = Arc::new(Publication::new(
            "race/t".into(),
            Kind::Channel {
                gows_type: Cow::Borrowed(EVENT),
            },
            Bytes::from_static(b"{\"n\":1}"),
            None,
        ));
        // Several "shards" ask for the frame at once; none waits for another, and all
        // end up queueing the one stored copy.
        let barrier = Arc::new(std::sync::Barrier::new(4));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (p, barrier) = (p.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    p.frame(Dialect::Vws)
                })
            })
            .collect();
        let frames: Vec<Bytes> = threads
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .collect();
        let stored = p.frame(Dialect::Vws);
        for f in &frames {
            assert_eq!(f, &stored, "same bytes");
        }
        assert_eq!(
            stored.as_ptr(),
            p.frame(Dialect::Vws).as_ptr(),
            "shared, not re-rendered"
        );
        assert_ne!(
            p.frame(Dialect::Gows),
            stored,
            "each dialect has its own frame"
        );
    }
}

//! What the client sends and reads, in the dialect it speaks: vws (the broker's own, the
//! default) or the SemStreams envelope (so a node can push into a SemStreams WebSocket
//! Input, or into a shardcast broker as a SemStreams peer). The driver deals only in the
//! neutral requests and [`Incoming`] messages below.

pub mod semstreams;
pub mod vws;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::BTreeMap;

/// The dialect a client speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Dialect {
    /// Vinculum `vws` (docs/PROTOCOL.md §5): every feature of the client.
    #[default]
    Vws,
    /// The SemStreams WebSocket Input envelope (docs/PROTOCOL.md §11): publishes are `data`
    /// messages answered by `ack`/`nack`; subscribing is a `subscribe` request (or a
    /// `history` request from a position). There is no unsubscribe.
    SemStreams,
}

impl Dialect {
    /// The `Sec-WebSocket-Protocol` offered on the upgrade.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Dialect::Vws => "vws",
            Dialect::SemStreams => "semstreams",
        }
    }

    /// Whether the server may answer the upgrade without choosing a subprotocol: a
    /// SemStreams WebSocket Input negotiates none.
    pub fn subprotocol_optional(self) -> bool {
        self == Dialect::SemStreams
    }

    /// A subscribe to `topic`, resuming after `from` when given.
    pub fn subscribe(self, topic: &str, id: u64, from: Option<&Position>) -> String {
        match self {
            Dialect::Vws => vws::subscribe(topic, id, from),
            Dialect::SemStreams => semstreams::subscribe(topic, id, from),
        }
    }

    /// An unsubscribe, where the dialect has one.
    pub fn unsubscribe(self, topic: &str, id: u64) -> Option<String> {
        match self {
            Dialect::Vws => Some(vws::unsubscribe(topic, id)),
            Dialect::SemStreams => None,
        }
    }

    /// A publish of `data` on `topic` with `headers`, answered by an ack of `id`.
    pub fn publish(
        self,
        topic: &str,
        data: &RawValue,
        headers: &BTreeMap<String, String>,
        id: u64,
    ) -> String {
        match self {
            Dialect::Vws => vws::publish(topic, data, headers, id),
            Dialect::SemStreams => semstreams::publish(topic, data, headers, id),
        }
    }

    /// Decodes one text message from the server; `None` for what the client does not know.
    pub fn decode(self, text: &[u8]) -> Option<Incoming> {
        match self {
            Dialect::Vws => vws::decode(text),
            Dialect::SemStreams => semstreams::decode(text),
        }
    }
}

/// A channel's position: the last offset seen and the epoch it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Last offset received (0 = nothing yet: replay all that is retained).
    pub offset: u64,
    /// The channel's epoch; `None` with offset 0.
    pub epoch: Option<String>,
}

/// What the server sends, as far as the client cares.
#[derive(Debug)]
pub enum Incoming {
    /// An ack of request `i`, with the channel's position on history channels.
    Ack {
        /// The request.
        id: u64,
        /// The channel's last offset at the moment of the subscribe.
        top: Option<u64>,
        /// The channel's epoch.
        epoch: Option<String>,
        /// Whether a resume from a position was complete.
        recovered: Option<bool>,
    },
    /// A nack: request `id` (if readable) refused for `reason`.
    Nack {
        /// The request, when the server could read it.
        id: Option<u64>,
        /// The server's reason.
        reason: String,
    },
    /// A publication.
    Event(Event),
    /// SemStreams `slow`: the server's queue for this client is past 80%.
    Slow {
        /// Frames queued.
        queue_depth: u64,
        /// The queue's capacity.
        queue_capacity: u64,
    },
    /// SemStreams `request` from the server, answered with a `reply` of its id.
    Request {
        /// The request's id, as sent.
        id: serde_json::Value,
        /// `backpressure`: the send rate the server asks for (msg/s, 0 = unlimited);
        /// `None` for any other method (answered with an error).
        rate_limit: Option<f64>,
    },
}

/// A publication received on a subscription.
#[derive(Debug, Clone)]
pub struct Event {
    /// The topic it was published on.
    pub topic: String,
    /// Its data, as the JSON text the broker sent.
    pub data: Box<RawValue>,
    /// Its headers (a non-`event` type comes as header `type`).
    pub headers: BTreeMap<String, String>,
    /// Its offset, on history channels.
    pub offset: Option<u64>,
}

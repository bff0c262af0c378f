//! Wire dialects: decoding client messages into a neutral [`Command`] and encoding replies
//! and publications into complete WebSocket frames.
//!
//! Pure code: knows nothing of sockets, shards or runtimes. `gows` is the go-ws envelope,
//! `vws` the Vinculum protocol; `frame` is WebSocket framing (server frames out, client
//! frame headers in); `timestamp` renders RFC 3339 UTC times for gows.

pub mod frame;
pub mod gows;
pub mod json;
pub mod timestamp;
pub mod vws;

use crate::error::Reject;
use bytes::Bytes;
use serde::Deserialize;

/// The wire dialect a connection speaks, chosen once at upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// go-ws hub envelope `{"type","channel","processId","data","timestamp"}`.
    Gows,
    /// Vinculum WebSocket protocol `{"k","t","d","i","e","h"}`.
    Vws,
}

impl Dialect {
    /// Both dialects, in index order.
    pub const ALL: [Dialect; 2] = [Dialect::Gows, Dialect::Vws];

    /// Parses a subprotocol or `?dialect=` value (`gows` / `vws`).
    pub fn from_name(name: &str) -> Option<Dialect> {
        match name.trim() {
            "gows" => Some(Dialect::Gows),
            "vws" => Some(Dialect::Vws),
            _ => None,
        }
    }

    /// The name used on the wire (subprotocol, query parameter, config).
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Gows => "gows",
            Dialect::Vws => "vws",
        }
    }

    /// 0 for gows, 1 for vws (index into per-dialect arrays).
    pub fn index(self) -> usize {
        match self {
            Dialect::Gows => 0,
            Dialect::Vws => 1,
        }
    }
}

/// The raw JSON text of a vws request id `i` (string or number), echoed back verbatim.
pub type RequestId = Box<str>;

/// A client request, whatever the dialect. Borrows from the (unmasked) frame payload.
#[derive(Debug, PartialEq)]
pub enum Command<'a> {
    /// Subscribe to a channel (gows) or pattern (vws).
    Subscribe {
        /// Channel or pattern as sent; validated by the shard, not by the decoder.
        topic: &'a str,
        /// vws `i`, when given.
        id: Option<RequestId>,
    },
    /// Unsubscribe from one channel/pattern.
    Unsubscribe {
        /// Channel or pattern as sent.
        topic: &'a str,
        /// vws `i`, when given.
        id: Option<RequestId>,
    },
    /// vws `U`: drop every subscription.
    UnsubscribeAll {
        /// vws `i`, when given.
        id: Option<RequestId>,
    },
    /// A client publication (vws event without `k`).
    Publish {
        /// Topic as sent; validated by the shard.
        topic: &'a str,
        /// `d`, re-serialized as compact JSON.
        data: Bytes,
        /// `h` as a compact JSON object of string values, when given.
        headers: Option<Bytes>,
        /// vws `i`, when given.
        id: Option<RequestId>,
    },
    /// gows application-level `{"type":"ping"}`.
    Ping,
}

/// A request that could not be decoded: why, plus the request id when one could be read
/// (so a vws nack can carry it, SPEC §3).
#[derive(Debug, PartialEq)]
pub struct DecodeFailure {
    /// Why it was refused.
    pub reject: Reject,
    /// vws `i` if the message had a readable one.
    pub id: Option<RequestId>,
}

impl DecodeFailure {
    /// A failure with no request id.
    pub fn new(reject: Reject) -> Self {
        DecodeFailure { reject, id: None }
    }
}

/// Decodes one complete text message in `dialect`. `payload` is mutable because simd-json
/// parses in place; `max_depth` bounds JSON nesting (checked before parsing); `buffers`
/// is simd-json's reusable working memory (one per shard).
///
/// # Errors
/// A [`DecodeFailure`] naming the reason (malformed JSON, unknown type, missing field...).
pub fn decode<'a>(
    dialect: Dialect,
    payload: &'a mut [u8],
    max_depth: usize,
    buffers: &mut simd_json::Buffers,
) -> Result<Command<'a>, DecodeFailure> {
    if !json::depth_within(payload, max_depth) {
        return Err(DecodeFailure::new(Reject::TooDeep));
    }
    match dialect {
        Dialect::Gows => gows::decode(payload, buffers),
        Dialect::Vws => vws::decode(payload, buffers),
    }
}

//! Wire dialects: decoding client messages into a neutral [`Command`] and encoding replies
//! and publications into complete WebSocket frames.
//!
//! Pure code: knows nothing of sockets, shards or runtimes. `gows` is the go-ws envelope,
//! `vws` the Vinculum protocol; `frame` is WebSocket framing (server frames out, client
//! frame headers in); `timestamp` renders RFC 3339 UTC times for gows.

pub mod frame;
pub mod gows;
pub mod json;
pub mod semstreams;
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
    /// SemStreams WebSocket Input envelope `{"type","id","timestamp","payload"}`.
    Semstreams,
}

impl Dialect {
    /// How many dialects there are (size of per-dialect arrays).
    pub const COUNT: usize = 3;

    /// Every dialect, in index order.
    pub const ALL: [Dialect; Dialect::COUNT] = [Dialect::Gows, Dialect::Vws, Dialect::Semstreams];

    /// Parses a subprotocol or `?dialect=` value (`gows` / `vws` / `semstreams`).
    pub fn from_name(name: &str) -> Option<Dialect> {
        match name.trim() {
            "gows" => Some(Dialect::Gows),
            "vws" => Some(Dialect::Vws),
            "semstreams" => Some(Dialect::Semstreams),
            _ => None,
        }
    }

    /// The name used on the wire (subprotocol, query parameter, config).
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Gows => "gows",
            Dialect::Vws => "vws",
            Dialect::Semstreams => "semstreams",
        }
    }

    /// 0 for gows, 1 for vws, 2 for semstreams (index into per-dialect arrays).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The dialect a client that chose none speaks, from its first message (SPEC §11):
    /// a gows `type` (subscribe, unsubscribe, ping, publish), a SemStreams `type` (data,
    /// request, reply, ack, nack, slow), or vws keys (`k`, or `t` with `d`). `None` when
    /// the message says nothing (the client stays undecided and is answered as gows).
    pub fn detect(payload: &[u8]) -> Option<Dialect> {
        let Ok([kind, k, t, d]) = json::parse_members(payload, &["type", "k", "t", "d"]) else {
            return None;
        };
        if let Some(kind) = kind.and_then(|raw| json::str_value(raw).ok().flatten()) {
            match kind.as_ref() {
                "subscribe" | "unsubscribe" | "ping" | "publish" => return Some(Dialect::Gows),
                "data" | "request" | "reply" | "ack" | "nack" | "slow" => {
                    return Some(Dialect::Semstreams)
                }
                _ => {}
            }
        }
        if k.is_some() || (t.is_some() && d.is_some()) {
            return Some(Dialect::Vws);
        }
        None
    }
}

/// `server.default_dialect`: a fixed dialect, or `auto` (SPEC §11: detected from a
/// client's first message; until then it is answered as gows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultDialect {
    /// Detect from the first message.
    Auto,
    /// Always gows.
    Gows,
    /// Always vws.
    Vws,
    /// Always semstreams.
    Semstreams,
}

impl DefaultDialect {
    /// The forced dialect, `None` for `auto`.
    pub fn fixed(self) -> Option<Dialect> {
        match self {
            DefaultDialect::Auto => None,
            DefaultDialect::Gows => Some(Dialect::Gows),
            DefaultDialect::Vws => Some(Dialect::Vws),
            DefaultDialect::Semstreams => Some(Dialect::Semstreams),
        }
    }

    /// The config name.
    pub fn name(self) -> &'static str {
        self.fixed().map_or("auto", Dialect::name)
    }
}

/// The raw JSON text of a vws request id `i` (string or number), echoed back verbatim.
pub type RequestId = Box<str>;

/// Where a subscriber wants to resume a history channel (SPEC §9): after `offset` of
/// `epoch`; `offset` 0 with no epoch means from the oldest retained publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    /// Last offset the client has (0 = none).
    pub offset: u64,
    /// The epoch that offset belongs to, when the client knows it.
    pub epoch: Option<Box<str>>,
}

/// A client request, whatever the dialect. Borrows from the (unmasked) frame payload.
#[derive(Debug, PartialEq)]
pub enum Command<'a> {
    /// Subscribe to a channel (gows) or pattern (vws).
    Subscribe {
        /// Channel or pattern as sent; validated by the shard, not by the decoder.
        topic: &'a str,
        /// vws `i`, when given.
        id: Option<RequestId>,
        /// Resume position (vws `o`/`e`, gows `since`), when given.
        since: Option<Since>,
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
        /// `d` as sent, compacted (see [`json::compact`]).
        data: Bytes,
        /// `h` as a compact JSON object of string values, when given.
        headers: Option<Bytes>,
        /// vws `i`, when given.
        id: Option<RequestId>,
    },
    /// gows application-level `{"type":"ping"}`.
    Ping,
    /// A SemStreams `request` (answered with a `reply` of the same id).
    Request {
        /// The request's `id`, as JSON text.
        id: RequestId,
        /// What is asked.
        request: semstreams::Request,
    },
    /// A SemStreams `ack`, `nack` or `slow` from the peer (its index in
    /// [`semstreams::TYPES`]): counted, not answered.
    Signal(u8),
}

/// A request that could not be decoded: why, plus the request id when one could be read
/// (so a vws nack can carry it, SPEC §3).
#[derive(Debug, PartialEq)]
pub struct DecodeFailure {
    /// Why it was refused.
    pub reject: Reject,
    /// vws `i` if the message had a readable one.
    pub id: Option<RequestId>,
    /// The message was a SemStreams `request`: the refusal is an error `reply`, not a
    /// `nack`.
    pub request: bool,
}

impl DecodeFailure {
    /// A failure with no request id.
    pub fn new(reject: Reject) -> Self {
        DecodeFailure {
            reject,
            id: None,
            request: false,
        }
    }

    /// A failure carrying the request id, except for malformed JSON: a message whose JSON
    /// is broken anywhere has no readable id (SPEC §3), even when the break was only
    /// found after the id was read.
    fn with_id(reject: Reject, id: Option<RequestId>) -> Self {
        let id = id.filter(|_| reject != Reject::MalformedJson);
        DecodeFailure {
            reject,
            id,
            request: false,
        }
    }
}

/// The decoder's working memory, reused across messages (a shard keeps one): the scratch
/// that a value with whitespace is compacted into, or an escaped topic unescaped into,
/// before the result is copied once to where it lives. Decoding then allocates only what
/// the [`Command`] keeps.
#[derive(Debug, Default)]
pub struct Buffers {
    scratch: Vec<u8>,
}

/// A decoded request whose topic is still a span of the payload: parsing borrows the
/// payload, so the topic is only borrowed from it (and unescaped in place) afterwards.
enum Parsed {
    Subscribe(json::StrSpan, Option<Since>),
    Unsubscribe(json::StrSpan),
    UnsubscribeAll,
    Publish {
        topic: json::StrSpan,
        data: Bytes,
        headers: Option<Bytes>,
    },
    Ping,
}

impl Parsed {
    /// The command, with its topic borrowed from `payload` and the request id `id`.
    fn into_command<'a>(
        self,
        payload: &'a mut [u8],
        scratch: &mut Vec<u8>,
        id: Option<RequestId>,
    ) -> Result<Command<'a>, DecodeFailure> {
        let span = match &self {
            Parsed::Subscribe(span, _) | Parsed::Unsubscribe(span) => Some(*span),
            Parsed::Publish { topic, .. } => Some(*topic),
            Parsed::UnsubscribeAll | Parsed::Ping => None,
        };
        let topic = match span {
            Some(span) => json::str_in_place(payload, span, scratch)
                .map_err(|r| DecodeFailure::with_id(r, None))?,
            None => "",
        };
        Ok(match self {
            Parsed::Subscribe(_, since) => Command::Subscribe { topic, id, since },
            Parsed::Unsubscribe(_) => Command::Unsubscribe { topic, id },
            Parsed::UnsubscribeAll => Command::UnsubscribeAll { id },
            Parsed::Publish { data, headers, .. } => Command::Publish {
                topic,
                data,
                headers,
                id,
            },
            Parsed::Ping => Command::Ping,
        })
    }
}

/// The span of the required string member `name` (a topic or pattern).
///
/// # Errors
/// `MissingField(name)` when absent, `BadField(name)` when not a string.
fn topic_span(
    payload: &[u8],
    raw: Option<&serde_json::value::RawValue>,
    name: &'static str,
) -> Result<json::StrSpan, Reject> {
    let raw = raw.ok_or(Reject::MissingField(name))?;
    json::str_span(payload, raw).ok_or(Reject::BadField(name))
}

/// A history position from its offset and epoch members (vws `o`/`e`, gows
/// `since.offset`/`since.epoch`).
///
/// # Errors
/// `BadPosition` naming what is wrong: an offset that is not a whole number >= 0, an
/// epoch that is not a string, or an epoch without an offset.
fn since(
    offset: Option<&serde_json::value::RawValue>,
    epoch: Option<&serde_json::value::RawValue>,
    names: [&'static str; 2],
) -> Result<Option<Since>, Reject> {
    let [offset_name, epoch_name] = names;
    let epoch = match epoch {
        None => None,
        Some(raw) if raw.get() == "null" => None,
        Some(raw) => match json::str_value(raw)? {
            Some(e) => Some(Box::<str>::from(e.as_ref())),
            None => return Err(Reject::BadPosition(epoch_name, "must be a string")),
        },
    };
    let Some(raw) = offset else {
        if epoch.is_some() {
            return Err(Reject::BadPosition(
                offset_name,
                "is required with an epoch",
            ));
        }
        return Ok(None);
    };
    let text = raw.get();
    if text.starts_with('-') && json::is_number(raw) {
        return Err(Reject::BadPosition(offset_name, "must not be negative"));
    }
    let offset = text
        .parse::<u64>()
        .map_err(|_| Reject::BadPosition(offset_name, "must be a whole number >= 0"))?;
    Ok(Some(Since { offset, epoch }))
}

/// `raw` compacted (see [`json::compact`]) into its own `Bytes`: one copy, one allocation.
///
/// # Errors
/// `MalformedJson` for a string escape that is no character.
fn compact_bytes(
    raw: &serde_json::value::RawValue,
    scratch: &mut Vec<u8>,
) -> Result<Bytes, Reject> {
    json::compact(raw.get(), scratch).map(Bytes::copy_from_slice)
}

/// A client publication's headers (vws `h`, a SemStreams envelope's `headers`): an object
/// of string values, compacted. Only the HTTP API sets a publication's type (its vws
/// `h.type`), so a client's `type` header, which would pass for one, is refused.
fn publish_headers(
    raw: Option<&serde_json::value::RawValue>,
    field: &'static str,
    scratch: &mut Vec<u8>,
) -> Result<Option<Bytes>, Reject> {
    match raw {
        None => Ok(None),
        Some(h) if json::object_has_key(h.get().as_bytes(), "type") => Err(Reject::ReservedHeader),
        Some(h) if json::is_object_of_strings(h.get()) => compact_bytes(h, scratch).map(Some),
        Some(_) => Err(Reject::BadField(field)),
    }
}

/// Decodes one complete text message in `dialect`. `payload` is mutable because an
/// escaped topic is unescaped in place (the command borrows it); `max_depth` bounds JSON
/// nesting (checked before parsing); `buffers` is reusable working memory (one per shard).
///
/// # Errors
/// A [`DecodeFailure`] naming the reason (malformed JSON, unknown type, missing field...).
pub fn decode<'a>(
    dialect: Dialect,
    payload: &'a mut [u8],
    max_depth: usize,
    buffers: &mut Buffers,
) -> Result<Command<'a>, DecodeFailure> {
    if !json::depth_within(payload, max_depth) {
        return Err(DecodeFailure::new(Reject::TooDeep));
    }
    match dialect {
        Dialect::Gows => gows::decode(payload, buffers),
        Dialect::Vws => vws::decode(payload, buffers),
        Dialect::Semstreams => semstreams::decode(payload, buffers),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_the_dialect_from_a_first_message() {
        let d = |s: &str| Dialect::detect(s.as_bytes());
        assert_eq!(d(r#"{"type":"ping"}"#), Some(Dialect::Gows));
        assert_eq!(d(r#"{"type":"subscribe","data":"c"}"#), Some(Dialect::Gows));
        assert_eq!(
            d(r#"{"type":"data","id":"d1","payload":1}"#),
            Some(Dialect::Semstreams)
        );
        assert_eq!(
            d(r#"{"type":"request","id":"r"}"#),
            Some(Dialect::Semstreams)
        );
        assert_eq!(d(r#"{"k":"s","t":"a/#","i":1}"#), Some(Dialect::Vws));
        assert_eq!(d(r#"{"t":"a","d":1}"#), Some(Dialect::Vws));
        assert_eq!(d(r#"{"t":"a"}"#), None, "t without d decides nothing");
        assert_eq!(d(r#"{"type":"teleport"}"#), None);
        assert_eq!(d("{not json"), None);
        assert_eq!(d("[1]"), None);
    }

    #[test]
    fn per_dialect_indexes_cover_every_dialect() {
        for (i, d) in Dialect::ALL.iter().enumerate() {
            assert_eq!(d.index(), i);
            assert_eq!(Dialect::from_name(d.name()), Some(*d));
        }
        assert_eq!(DefaultDialect::Auto.fixed(), None);
        assert_eq!(
            DefaultDialect::Semstreams.fixed(),
            Some(Dialect::Semstreams)
        );
    }
}

//! The semstreams dialect: the SemStreams WebSocket Input envelope
//! `{"type","id","timestamp","payload"}` (SPEC §11, seeds/semstreams-websocket-input.txt),
//! decoded into the same neutral [`Command`]s as gows and vws and rendered from the same
//! publications.
//!
//! Peer -> broker: `data` (a publication on `semstreams.data_channel`, or on the topic the
//! envelope's `topic` or else the payload's `topic` names; decoded as [`Command::Publish`]
//! with an empty topic when neither does; the envelope's `headers` are the publication's,
//! as this broker renders them, so a `data` frame it sends can be fed to another broker
//! unchanged), `request` ([`Command::Request`]: `status`, `backpressure`, `subscribe`,
//! `history`, `routing`), and `ack`/`nack`/`slow` ([`Command::Signal`], counted only). A
//! `reply` is refused: this broker never sends requests.
//!
//! Broker -> peer: `data` (publications, with the topic in the envelope), `ack`, `nack`
//! `{"reason","error"}`, `reply` `{"status","result"|"error"}` and `slow`
//! `{"queue_depth","queue_capacity","utilization"}`. `timestamp` is Unix milliseconds.

use crate::error::Reject;
use crate::protocol::{
    compact_bytes, frame, json, publish_headers, since, vws::BROADCAST_TOPIC, Buffers, Command,
    DecodeFailure, RequestId, Since,
};
use crate::publication::{Kind, Publication};
use bytes::Bytes;
use serde_json::value::RawValue;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Message types the peer may send, in the order of the received-by-type counters; the
/// last slot counts messages whose type could not be read.
pub const TYPES: [&str; 7] = ["data", "request", "reply", "ack", "nack", "slow", "invalid"];

/// Request methods, in the order of the per-method counters.
pub const METHODS: [&str; 5] = ["status", "backpressure", "subscribe", "history", "routing"];

/// A SemStreams control request.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `status`: the health object.
    Status,
    /// `backpressure`: limit what this broker sends the peer to `rate_limit` msg/s
    /// (0 = unlimited).
    Backpressure {
        /// Messages per second.
        rate_limit: f64,
    },
    /// `subscribe`: topic patterns whose publications the peer receives as `data`.
    Subscribe {
        /// Patterns as sent (validated by the shard).
        patterns: Vec<Box<str>>,
    },
    /// `history`: replay an exact channel from a position (SPEC §9), then live.
    History {
        /// The channel.
        channel: Box<str>,
        /// Where to resume.
        since: Since,
    },
    /// `routing`: what this node offers.
    Routing,
}

impl Request {
    /// Index into [`METHODS`].
    pub fn index(&self) -> usize {
        match self {
            Request::Status => 0,
            Request::Backpressure { .. } => 1,
            Request::Subscribe { .. } => 2,
            Request::History { .. } => 3,
            Request::Routing => 4,
        }
    }
}

/// The index into [`TYPES`] of a message's `type`, for counting (cheap: one member scan).
pub fn type_index(payload: &[u8]) -> usize {
    let invalid = TYPES.len() - 1;
    let Ok([kind]) = json::parse_members(payload, &["type"]) else {
        return invalid;
    };
    kind.and_then(|raw| json::str_value(raw).ok().flatten())
        .and_then(|k| TYPES.iter().position(|t| *t == k.as_ref()))
        .filter(|i| *i < invalid)
        .unwrap_or(invalid)
}

/// Decodes one SemStreams envelope (the result may borrow its topic from `payload`).
///
/// # Errors
/// `MalformedJson`/`NotAnObject`, `MissingField`/`BadField` (`type`, `id`, `timestamp`,
/// `payload`, `payload.topic`, `payload.method`), `UnknownType`, `UnsolicitedReply`,
/// `UnknownMethod`, `BadParams`; each carries the id when it could be read, and
/// [`DecodeFailure::request`] is set for a `request` (answered with an error `reply`).
pub fn decode<'a>(
    payload: &'a mut [u8],
    buffers: &mut Buffers,
) -> Result<Command<'a>, DecodeFailure> {
    match parse(payload, &mut buffers.scratch)? {
        Parsed::Data {
            id,
            topic,
            data,
            headers,
        } => {
            let topic = match topic {
                Some(span) => match json::str_in_place(payload, span, &mut buffers.scratch) {
                    Ok(t) => t,
                    Err(r) => return Err(DecodeFailure::with_id(r, Some(id))),
                },
                None => "",
            };
            Ok(Command::Publish {
                topic,
                data,
                headers,
                id: Some(id),
            })
        }
        Parsed::Request { id, request } => Ok(Command::Request { id, request }),
        Parsed::Signal(kind) => Ok(Command::Signal(kind)),
    }
}

/// A decoded envelope whose topic is still a span of the payload.
enum Parsed {
    Data {
        id: RequestId,
        topic: Option<json::StrSpan>,
        data: Bytes,
        headers: Option<Bytes>,
    },
    Request {
        id: RequestId,
        request: Request,
    },
    Signal(u8),
}

/// The envelope in `payload` (see [`decode`]).
fn parse(payload: &[u8], scratch: &mut Vec<u8>) -> Result<Parsed, DecodeFailure> {
    let [kind, id, timestamp, body, topic, headers] = json::parse_members(
        payload,
        &["type", "id", "timestamp", "payload", "topic", "headers"],
    )
    .map_err(DecodeFailure::new)?;
    let kind = kind.ok_or(DecodeFailure::new(Reject::MissingField("type")))?;
    let kind = json::str_value(kind)
        .map_err(DecodeFailure::new)?
        .ok_or(DecodeFailure::new(Reject::BadField("type")))?;
    let is_request = kind.as_ref() == "request";
    let fail = |reject: Reject, id: Option<RequestId>| {
        let mut f = DecodeFailure::with_id(reject, id);
        f.request = is_request;
        f
    };
    let id = match id {
        None => None,
        Some(raw) => Some(envelope_id(raw, scratch).map_err(|r| fail(r, None))?),
    };
    if timestamp.is_some_and(|t| !json::is_number(t) && t.get() != "null") {
        return Err(fail(Reject::BadField("timestamp"), id));
    }
    match kind.as_ref() {
        "data" => {
            let Some(id) = id else {
                return Err(fail(Reject::MissingField("id"), None));
            };
            let Some(body) = body else {
                return Err(fail(Reject::MissingField("payload"), Some(id)));
            };
            let topic = match topic {
                Some(t) => json::str_span(payload, t)
                    .map(Some)
                    .ok_or(Reject::BadField("topic")),
                None => data_topic(payload, body),
            };
            let topic = match topic {
                Ok(t) => t,
                Err(r) => return Err(fail(r, Some(id))),
            };
            let headers = match publish_headers(headers, "headers", scratch) {
                Ok(h) => h,
                Err(r) => return Err(fail(r, Some(id))),
            };
            match compact_bytes(body, scratch) {
                Ok(data) => Ok(Parsed::Data {
                    id,
                    topic,
                    data,
                    headers,
                }),
                Err(r) => Err(fail(r, Some(id))),
            }
        }
        "request" => {
            let Some(id) = id else {
                return Err(fail(Reject::MissingField("id"), None));
            };
            let Some(body) = body else {
                return Err(fail(Reject::MissingField("payload"), Some(id)));
            };
            match request(body) {
                Ok(request) => Ok(Parsed::Request { id, request }),
                Err(r) => Err(fail(r, Some(id))),
            }
        }
        "reply" => Err(fail(Reject::UnsolicitedReply, id)),
        "ack" => Ok(Parsed::Signal(3)),
        "nack" => Ok(Parsed::Signal(4)),
        "slow" => Ok(Parsed::Signal(5)),
        _ => Err(fail(Reject::UnknownType, id)),
    }
}

/// The envelope `id` as the JSON string literal a reply echoes.
fn envelope_id(raw: &RawValue, scratch: &mut Vec<u8>) -> Result<RequestId, Reject> {
    if !json::is_string(raw) || raw.get() == "\"\"" {
        return Err(Reject::BadField("id"));
    }
    let text = json::compact(raw.get(), scratch)?;
    std::str::from_utf8(text)
        .map(Into::into)
        .map_err(|_| Reject::MalformedJson)
}

/// The span of the `data` payload's `topic` member, when the payload is an object that
/// has one.
fn data_topic(payload: &[u8], body: &RawValue) -> Result<Option<json::StrSpan>, Reject> {
    let text = body.get().as_bytes();
    if !text.starts_with(b"{") {
        return Ok(None);
    }
    // Most payloads name no topic: two byte scans prove it (a member named `topic` is
    // written `"topic"` or with an escape) without a third walk of the payload's JSON.
    if memchr::memmem::find(text, b"\"topic\"").is_none() && memchr::memchr(b'\\', text).is_none() {
        return Ok(None);
    }
    let [topic] = json::parse_members(text, &["topic"])?;
    match topic {
        None => Ok(None),
        Some(t) => json::str_span(payload, t)
            .map(Some)
            .ok_or(Reject::BadField("payload.topic")),
    }
}

/// The request in a `request` payload `{"method":M,"params":{..}}`.
fn request(body: &RawValue) -> Result<Request, Reject> {
    let [method, params] = json::parse_members(body.get().as_bytes(), &["method", "params"])
        .map_err(|r| match r {
            Reject::NotAnObject => Reject::BadField("payload"),
            other => other,
        })?;
    let method = method.ok_or(Reject::MissingField("payload.method"))?;
    let method = json::str_value(method)?.ok_or(Reject::BadField("payload.method"))?;
    let params = match params {
        Some(p) if p.get().starts_with('{') => Some(p),
        Some(p) if p.get() == "null" => None,
        Some(_) => return Err(Reject::BadField("payload.params")),
        None => None,
    };
    let member = |name: &'static str| -> Result<Option<&RawValue>, Reject> {
        let Some(p) = params else {
            return Ok(None);
        };
        let names = [name];
        let [found] = json::parse_members(p.get().as_bytes(), &names)?;
        Ok(found.filter(|v| v.get() != "null"))
    };
    match method.as_ref() {
        "status" => Ok(Request::Status),
        "routing" => Ok(Request::Routing),
        "backpressure" => {
            let raw =
                member("rate_limit")?.ok_or(Reject::BadParams("rate_limit", "is required"))?;
            let rate_limit = raw
                .get()
                .parse::<f64>()
                .ok()
                .filter(|r| r.is_finite() && *r >= 0.0)
                .ok_or(Reject::BadParams("rate_limit", "must be a number >= 0"))?;
            Ok(Request::Backpressure { rate_limit })
        }
        "subscribe" => {
            let raw = member("patterns")?.ok_or(Reject::BadParams("patterns", "is required"))?;
            let patterns: Vec<String> = serde_json::from_str(raw.get())
                .map_err(|_| Reject::BadParams("patterns", "must be an array of topic patterns"))?;
            if patterns.is_empty() {
                return Err(Reject::BadParams("patterns", "must not be empty"));
            }
            Ok(Request::Subscribe {
                patterns: patterns.into_iter().map(String::into_boxed_str).collect(),
            })
        }
        "history" => {
            let raw = member("channel")?.ok_or(Reject::BadParams("channel", "is required"))?;
            let channel =
                json::str_value(raw)?.ok_or(Reject::BadParams("channel", "must be a string"))?;
            let offset = member("since")?;
            let epoch = member("epoch")?;
            let since = since(offset, epoch, ["params.since", "params.epoch"])?.unwrap_or(Since {
                offset: 0,
                epoch: None,
            });
            Ok(Request::History {
                channel: channel.as_ref().into(),
                since,
            })
        }
        _ => Err(Reject::UnknownMethod),
    }
}

/// The nack `reason` for a refusal: `not_allowed`, `rate_limited`, `overloaded` or
/// `invalid`.
pub fn reason_of(reject: &Reject) -> &'static str {
    match reject {
        Reject::PublishNotAllowed | Reject::SubscribeNotAllowed => "not_allowed",
        Reject::RateLimited | Reject::SubscribeRateLimited | Reject::RateLimitAbuse => {
            "rate_limited"
        }
        Reject::Overloaded => "overloaded",
        _ => "invalid",
    }
}

/// Unix milliseconds of `at`.
fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Appends `{"type":"<kind>","id":` (the id still to be written).
fn open(out: &mut Vec<u8>, kind: &str) {
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\",\"id\":");
}

/// Appends `,"timestamp":<ms>`.
fn write_timestamp(out: &mut Vec<u8>, at: SystemTime) {
    out.extend_from_slice(b",\"timestamp\":");
    out.extend_from_slice(itoa::Buffer::new().format(millis(at)).as_bytes());
}

/// Sequence for ids of what the broker originates (`data`, `slow`).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Writes a fresh id `"<prefix>-<n>"`.
fn write_fresh_id(out: &mut Vec<u8>, prefix: &str) {
    out.push(b'"');
    out.extend_from_slice(prefix.as_bytes());
    out.push(b'-');
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.push(b'"');
}

/// Renders a publication as a complete SemStreams `data` frame:
/// `{"type":"data","id","timestamp","topic":T,"payload":D,"headers"?,"offset"?}`;
/// a channel message of another gows type adds `"event":TYPE`; broadcasts go out on the
/// topic `$broadcast` as in vws.
pub fn render_publication(p: &Publication) -> Bytes {
    frame::build_text_frame_sized(p.frame_size_hint(), |out| {
        open(out, "data");
        write_fresh_id(out, "p");
        write_timestamp(out, p.accepted_wall);
        out.extend_from_slice(b",\"topic\":");
        match &p.kind {
            Kind::Channel { gows_type } => {
                json::write_str(out, &p.topic);
                out.extend_from_slice(b",\"payload\":");
                out.extend_from_slice(&p.data);
                if gows_type != crate::publication::EVENT {
                    out.extend_from_slice(b",\"event\":");
                    json::write_str(out, gows_type);
                }
                json::write_headers_and_offset(out, p);
            }
            Kind::BroadcastEvent { event } => {
                json::write_str(out, BROADCAST_TOPIC);
                out.extend_from_slice(b",\"payload\":{\"event\":");
                json::write_str(out, event);
                out.extend_from_slice(b",\"data\":");
                out.extend_from_slice(&p.data);
                out.extend_from_slice(b"},\"event\":\"event\"");
            }
            Kind::BroadcastError => {
                json::write_str(out, BROADCAST_TOPIC);
                out.extend_from_slice(b",\"payload\":");
                out.extend_from_slice(&p.data);
                out.extend_from_slice(b",\"event\":\"error\"");
            }
        }
        out.push(b'}');
    })
}

/// `{"type":"ack","id":I,"timestamp":T}` with `T` = `at` (the shard passes the time of
/// the socket read that brought the message, read once per read); on a history channel
/// the payload says where the publication landed: `"payload":{"topic":C,"offset":N}`.
pub fn render_ack(id: &str, landed: Option<(&str, u64)>, at: SystemTime) -> Bytes {
    frame::build_text_frame(|out| {
        open(out, "ack");
        out.extend_from_slice(id.as_bytes());
        write_timestamp(out, at);
        if let Some((topic, offset)) = landed {
            out.extend_from_slice(b",\"payload\":{\"topic\":");
            json::write_str(out, topic);
            out.extend_from_slice(b",\"offset\":");
            out.extend_from_slice(itoa::Buffer::new().format(offset).as_bytes());
            out.push(b'}');
        }
        out.push(b'}');
    })
}

/// `{"type":"nack","id"?:I,"timestamp":T,"payload":{"reason":R,"error":E}}`.
pub fn render_nack(id: Option<&str>, reject: &Reject) -> Bytes {
    render_refusal("nack", "", id, reject)
}

/// A refusal of `kind` (`nack`, or an error `reply` with `status` `"status":"error",`):
/// `{"type":K,"id"?:I,"timestamp":T,"payload":{STATUS"reason":R,"error":E}}`.
fn render_refusal(kind: &str, status: &str, id: Option<&str>, reject: &Reject) -> Bytes {
    frame::build_text_frame(|out| {
        out.extend_from_slice(b"{\"type\":\"");
        out.extend_from_slice(kind.as_bytes());
        out.push(b'"');
        if let Some(id) = id {
            out.extend_from_slice(b",\"id\":");
            out.extend_from_slice(id.as_bytes());
        }
        write_timestamp(out, SystemTime::now());
        out.extend_from_slice(b",\"payload\":{");
        out.extend_from_slice(status.as_bytes());
        out.extend_from_slice(b"\"reason\":\"");
        out.extend_from_slice(reason_of(reject).as_bytes());
        out.extend_from_slice(b"\",\"error\":");
        json::write_display(out, reject);
        out.extend_from_slice(b"}}");
    })
}

/// `{"type":"reply","id":I,"timestamp":T,"payload":{"status":"ok","result":R}}`.
pub fn render_reply(id: &str, result: &serde_json::Value) -> Bytes {
    frame::build_text_frame(|out| {
        open(out, "reply");
        out.extend_from_slice(id.as_bytes());
        write_timestamp(out, SystemTime::now());
        out.extend_from_slice(b",\"payload\":{\"status\":\"ok\",\"result\":");
        // Serializing a `Value` into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, result);
        out.extend_from_slice(b"}}");
    })
}

/// `{"type":"reply","id"?:I,"timestamp":T,"payload":{"status":"error","reason":R,"error":E}}`.
pub fn render_error_reply(id: Option<&str>, reject: &Reject) -> Bytes {
    render_refusal("reply", "\"status\":\"error\",", id, reject)
}

/// `{"type":"slow","id","timestamp","payload":{"queue_depth","queue_capacity","utilization"}}`.
pub fn render_slow(depth: usize, capacity: usize) -> Bytes {
    frame::build_text_frame(|out| {
        open(out, "slow");
        write_fresh_id(out, "bp");
        write_timestamp(out, SystemTime::now());
        out.extend_from_slice(b",\"payload\":{\"queue_depth\":");
        out.extend_from_slice(itoa::Buffer::new().format(depth).as_bytes());
        out.extend_from_slice(b",\"queue_capacity\":");
        out.extend_from_slice(itoa::Buffer::new().format(capacity).as_bytes());
        out.extend_from_slice(b",\"utilization\":");
        let utilization = depth as f64 / capacity.max(1) as f64;
        let _ = std::io::Write::write_fmt(out, format_args!("{utilization:.3}"));
        out.extend_from_slice(b"}}");
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::text_frame_json;
    use serde_json::json;

    fn dec(s: &str) -> Result<Command<'static>, DecodeFailure> {
        let buf: &'static mut [u8] = Box::leak(s.as_bytes().to_vec().into_boxed_slice());
        decode(buf, &mut Buffers::default())
    }

    #[test]
    fn decodes_data_with_and_without_topic() {
        assert_eq!(
            dec(r#"{"type":"data","id":"d1","timestamp":1,"payload":{"v": 1}}"#),
            Ok(Command::Publish {
                topic: "",
                data: Bytes::from_static(br#"{"v":1}"#),
                headers: None,
                id: Some("\"d1\"".into()),
            })
        );
        assert_eq!(
            dec(r#"{"type":"data","id":"d2","payload":{"topic":"a/b","v":2}}"#),
            Ok(Command::Publish {
                topic: "a/b",
                data: Bytes::from_static(br#"{"topic":"a/b","v":2}"#),
                headers: None,
                id: Some("\"d2\"".into()),
            })
        );
    }

    #[test]
    fn the_envelope_topic_and_headers_win_over_the_payload() {
        assert_eq!(
            dec(
                r#"{"type":"data","id":"d3","topic":"x/y","headers":{"sc-via":"a"},"payload":{"topic":"a/b"}}"#
            ),
            Ok(Command::Publish {
                topic: "x/y",
                data: Bytes::from_static(br#"{"topic":"a/b"}"#),
                headers: Some(Bytes::from_static(br#"{"sc-via":"a"}"#)),
                id: Some("\"d3\"".into()),
            })
        );
        let e = |s: &str| dec(s).expect_err("should fail").reject;
        assert_eq!(
            e(r#"{"type":"data","id":"a","topic":1,"payload":{}}"#),
            Reject::BadField("topic")
        );
        assert_eq!(
            e(r#"{"type":"data","id":"a","headers":{"n":1},"payload":{}}"#),
            Reject::BadField("headers")
        );
        assert_eq!(
            e(r#"{"type":"data","id":"a","headers":{"type":"x"},"payload":{}}"#),
            Reject::ReservedHeader
        );
    }

    #[test]
    fn decodes_requests() {
        let r = |s: &str| match dec(s) {
            Ok(Command::Request { request, .. }) => Ok(request),
            Ok(_) => Err((Reject::UnknownType, false)),
            Err(f) => Err((f.reject, f.request)),
        };
        assert_eq!(
            r(r#"{"type":"request","id":"r","payload":{"method":"status"}}"#),
            Ok(Request::Status)
        );
        assert_eq!(
            r(
                r#"{"type":"request","id":"r","payload":{"method":"backpressure","params":{"rate_limit":100,"unit":"msg/sec"}}}"#
            ),
            Ok(Request::Backpressure { rate_limit: 100.0 })
        );
        assert_eq!(
            r(
                r#"{"type":"request","id":"r","payload":{"method":"subscribe","params":{"patterns":["a/#"]}}}"#
            ),
            Ok(Request::Subscribe {
                patterns: vec!["a/#".into()]
            })
        );
        assert_eq!(
            r(
                r#"{"type":"request","id":"r","payload":{"method":"history","params":{"channel":"c","since":3,"epoch":"e"}}}"#
            ),
            Ok(Request::History {
                channel: "c".into(),
                since: Since {
                    offset: 3,
                    epoch: Some("e".into())
                }
            })
        );
        assert_eq!(
            r(r#"{"type":"request","id":"r","payload":{"method":"nope"}}"#),
            Err((Reject::UnknownMethod, true))
        );
        assert_eq!(
            r(
                r#"{"type":"request","id":"r","payload":{"method":"backpressure","params":{"rate_limit":-1}}}"#
            ),
            Err((
                Reject::BadParams("rate_limit", "must be a number >= 0"),
                true
            ))
        );
    }

    #[test]
    fn refuses_bad_envelopes_with_the_id_when_readable() {
        let e = |s: &str| {
            let f = dec(s).expect_err("should fail");
            (f.reject, f.id.map(|i| i.to_string()))
        };
        assert_eq!(
            e(r#"{"id":"x","payload":1}"#),
            (Reject::MissingField("type"), None)
        );
        assert_eq!(e(r#"{"type":7}"#), (Reject::BadField("type"), None));
        assert_eq!(
            e(r#"{"type":"data","payload":1}"#),
            (Reject::MissingField("id"), None)
        );
        assert_eq!(
            e(r#"{"type":"data","id":5,"payload":1}"#),
            (Reject::BadField("id"), None)
        );
        assert_eq!(
            e(r#"{"type":"data","id":"a"}"#),
            (Reject::MissingField("payload"), Some("\"a\"".into()))
        );
        assert_eq!(
            e(r#"{"type":"data","id":"a","payload":{"topic":3}}"#),
            (Reject::BadField("payload.topic"), Some("\"a\"".into()))
        );
        assert_eq!(
            e(r#"{"type":"bogus","id":"a"}"#),
            (Reject::UnknownType, Some("\"a\"".into()))
        );
        assert_eq!(
            e(r#"{"type":"reply","id":"a","payload":{}}"#),
            (Reject::UnsolicitedReply, Some("\"a\"".into()))
        );
        assert_eq!(dec(r#"{"type":"ack","id":"a"}"#), Ok(Command::Signal(3)));
    }

    #[test]
    fn renders_replies() {
        let v = text_frame_json(&render_nack(Some("\"d\""), &Reject::PublishNotAllowed));
        assert_eq!(v["type"], "nack");
        assert_eq!(v["id"], "d");
        assert_eq!(v["payload"]["reason"], "not_allowed");
        let v = text_frame_json(&render_slow(850, 1000));
        assert_eq!(
            v["payload"],
            json!({"queue_depth":850,"queue_capacity":1000,"utilization":0.85})
        );
        let v = text_frame_json(&render_ack("\"d1\"", None, SystemTime::now()));
        assert_eq!(
            (v["type"].as_str(), v["id"].as_str()),
            (Some("ack"), Some("d1"))
        );
        assert!(v["timestamp"].is_u64());
        let p = Publication::new(
            "a/b".into(),
            Kind::Channel {
                gows_type: crate::publication::gows_type("event"),
            },
            Bytes::from_static(b"{\"x\":1}"),
            None,
        );
        let v = text_frame_json(&render_publication(&p));
        assert_eq!(v["type"], "data");
        assert_eq!(v["topic"], "a/b");
        assert_eq!(v["payload"], json!({"x":1}));
        assert_eq!(type_index(br#"{"type":"slow"}"#), 5);
        assert_eq!(type_index(br#"{"type":"zz"}"#), 6);
    }
}

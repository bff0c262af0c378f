//! The gows dialect: the go-ws hub envelope `{"type","channel"?,"processId"?,"data"?,
//! "timestamp"}`, decoded from clients (see [`json::parse_members`]) and rendered into
//! complete frames.
//!
//! Client messages: `subscribe`/`unsubscribe` (channel in `data`), `ping`, and the
//! shardcast extension `publish` (`channel` + `data`). Everything the server sends carries
//! an RFC 3339 `timestamp`. Validation of channel names and policy is the shard's job.

use crate::error::Reject;
use crate::protocol::{
    compact_bytes, frame, json, since, timestamp, topic_span, Buffers, Command, DecodeFailure,
    Parsed, Since,
};
use crate::publication::{Kind, Publication};
use bytes::Bytes;
use std::fmt;
use std::time::SystemTime;

/// Prefix of the channels go-ws uses for process streaming; the rest is the `processId`.
pub const PROCESS_PREFIX: &str = "process:";

/// Decodes one gows client message (the result borrows its channel from `payload`).
///
/// Unknown extra fields are ignored. The nesting depth must already have been checked
/// (see [`crate::protocol::decode`]).
///
/// # Errors
/// `MalformedJson`, `NotAnObject`, `MissingField`/`BadField` (`type`, `data`, `channel`)
/// or `UnknownType`; gows requests have no id, so [`DecodeFailure::id`] is always `None`.
pub fn decode<'a>(
    payload: &'a mut [u8],
    buffers: &mut Buffers,
) -> Result<Command<'a>, DecodeFailure> {
    let parsed = parse(payload, &mut buffers.scratch).map_err(DecodeFailure::new)?;
    parsed.into_command(payload, &mut buffers.scratch, None)
}

/// The request in `payload`, its channel still a span of it.
fn parse(payload: &[u8], scratch: &mut Vec<u8>) -> Result<Parsed, Reject> {
    let [kind, channel, data, since_raw] =
        json::parse_members(payload, &["type", "channel", "data", "since"])?;
    let kind = kind.ok_or(Reject::MissingField("type"))?;
    match json::str_value(kind)?
        .ok_or(Reject::BadField("type"))?
        .as_ref()
    {
        "subscribe" => Ok(Parsed::Subscribe(
            topic_span(payload, data, "data")?,
            since_position(since_raw)?,
        )),
        "unsubscribe" => Ok(Parsed::Unsubscribe(topic_span(payload, data, "data")?)),
        "ping" => Ok(Parsed::Ping),
        "publish" => {
            let topic = topic_span(payload, channel, "channel")?;
            let data = data.ok_or(Reject::MissingField("data"))?;
            Ok(Parsed::Publish {
                topic,
                data: compact_bytes(data, scratch)?,
                headers: None,
            })
        }
        _ => Err(Reject::UnknownType),
    }
}

/// The gows `since` member, `{"offset":N,"epoch":E?}` (`null` = none).
fn since_position(raw: Option<&serde_json::value::RawValue>) -> Result<Option<Since>, Reject> {
    let Some(raw) = raw.filter(|r| r.get() != "null") else {
        return Ok(None);
    };
    let [offset, epoch] =
        json::parse_members(raw.get().as_bytes(), &["offset", "epoch"]).map_err(|_| {
            Reject::BadPosition("since", "must be an object {\"offset\":N,\"epoch\":E}")
        })?;
    if offset.is_none() {
        return Err(Reject::BadPosition("since.offset", "is required"));
    }
    since(offset, epoch, ["since.offset", "since.epoch"])
}

/// `{"type":"subscribed","channel":C,"data":{"offset":TOP,"epoch":E,"recovered":R},..}`:
/// the answer to a subscribe with `since` (SPEC §9).
pub fn render_subscribed(channel: &str, top: u64, epoch: &str, recovered: bool) -> Bytes {
    frame::build_text_frame(|out| {
        out.extend_from_slice(b"{\"type\":\"subscribed\",\"channel\":");
        json::write_str(out, channel);
        out.extend_from_slice(b",\"data\":{\"offset\":");
        out.extend_from_slice(itoa::Buffer::new().format(top).as_bytes());
        out.extend_from_slice(b",\"epoch\":");
        json::write_str(out, epoch);
        out.extend_from_slice(if recovered {
            b",\"recovered\":true}"
        } else {
            b",\"recovered\":false}"
        });
        close_with_timestamp(out, SystemTime::now());
    })
}

/// Appends `,"timestamp":"<RFC 3339>"}` (the last field of every server message).
fn close_with_timestamp(out: &mut Vec<u8>, at: SystemTime) {
    out.extend_from_slice(b",\"timestamp\":\"");
    timestamp::write_rfc3339(out, at);
    out.extend_from_slice(b"\"}");
}

/// Renders a publication as a complete gows text frame.
///
/// - channel message: `{"type":T,"channel":C,"processId"?,"data":D,"headers"?,"timestamp"}`
///   with `processId` only on `process:{id}` channels and `headers` only when present;
/// - broadcast event (go-ws `SendEvent`): `{"type":"event","data":{"event":E,"data":D},..}`;
/// - broadcast error (go-ws `SendError`): `{"type":"error","data":D,..}`.
///
/// `timestamp` is the publication's acceptance time.
pub fn render_publication(p: &Publication) -> Bytes {
    frame::build_text_frame_sized(p.frame_size_hint(), |out| {
        match &p.kind {
            Kind::Channel { gows_type } => {
                out.extend_from_slice(b"{\"type\":");
                json::write_str(out, gows_type);
                out.extend_from_slice(b",\"channel\":");
                json::write_str(out, &p.topic);
                if let Some(id) = p.topic.strip_prefix(PROCESS_PREFIX) {
                    if !id.is_empty() {
                        out.extend_from_slice(b",\"processId\":");
                        json::write_str(out, id);
                    }
                }
                out.extend_from_slice(b",\"data\":");
                out.extend_from_slice(&p.data);
                json::write_headers_and_offset(out, p);
            }
            Kind::BroadcastEvent { event } => {
                out.extend_from_slice(b"{\"type\":\"event\",\"data\":{\"event\":");
                json::write_str(out, event);
                out.extend_from_slice(b",\"data\":");
                out.extend_from_slice(&p.data);
                out.push(b'}');
            }
            Kind::BroadcastError => {
                out.extend_from_slice(b"{\"type\":\"error\",\"data\":");
                out.extend_from_slice(&p.data);
            }
        }
        close_with_timestamp(out, p.accepted_wall);
    })
}

/// `{"type":"error","data":"<reason>","timestamp":..}` to one client, e.g. for a
/// [`Reject`] (its `Display` is the reason text).
pub fn render_error(reason: &dyn fmt::Display) -> Bytes {
    frame::build_text_frame(|out| {
        out.extend_from_slice(b"{\"type\":\"error\",\"data\":");
        json::write_display(out, reason);
        close_with_timestamp(out, SystemTime::now());
    })
}

/// `{"type":"pong","timestamp":..}`, the answer to an application-level ping.
pub fn render_pong() -> Bytes {
    frame::build_text_frame(|out| {
        out.extend_from_slice(b"{\"type\":\"pong\"");
        close_with_timestamp(out, SystemTime::now());
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::text_frame_json;
    use crate::topic::TopicError;
    use serde_json::json;
    use std::time::{Duration, UNIX_EPOCH};

    fn dec(s: &str) -> Result<Command<'static>, DecodeFailure> {
        let buf: &'static mut [u8] = Box::leak(s.as_bytes().to_vec().into_boxed_slice());
        decode(buf, &mut Buffers::default())
    }

    fn err(s: &str) -> Reject {
        let failure = dec(s).expect_err("should fail");
        assert_eq!(failure.id, None);
        failure.reject
    }

    fn publication(topic: &str, kind: Kind, data: &str, headers: Option<&str>) -> Publication {
        let mut p = Publication::new(
            topic.into(),
            kind,
            Bytes::copy_from_slice(data.as_bytes()),
            headers.map(|h| Bytes::copy_from_slice(h.as_bytes())),
        );
        p.accepted_wall = UNIX_EPOCH + Duration::from_millis(1_771_497_000_123);
        p
    }

    fn channel(t: &str) -> Kind {
        Kind::Channel {
            gows_type: crate::publication::gows_type(t),
        }
    }

    #[test]
    fn decodes_requests() {
        assert_eq!(
            dec(r#"{"type":"subscribe","data":"process:build-1"}"#),
            Ok(Command::Subscribe {
                topic: "process:build-1",
                id: None,
                since: None,
            })
        );
        assert_eq!(
            dec(r#"{"type":"unsubscribe","data":"news","extra":[1,{"x":2}]}"#),
            Ok(Command::Unsubscribe {
                topic: "news",
                id: None
            })
        );
        assert_eq!(dec(r#"{"type":"ping"}"#), Ok(Command::Ping));
        assert_eq!(dec(r#" {"data":"x","type":"ping"} "#), Ok(Command::Ping));
        assert_eq!(
            dec(r#"{"type":"publish","channel":"a/b","data":{"x": [1, 2.5, "q\""]}}"#),
            Ok(Command::Publish {
                topic: "a/b",
                data: Bytes::from_static(br#"{"x":[1,2.5,"q\""]}"#),
                headers: None,
                id: None,
            })
        );
        assert_eq!(
            dec(r#"{"type":"publish","channel":"c","data":null}"#),
            Ok(Command::Publish {
                topic: "c",
                data: Bytes::from_static(b"null"),
                headers: None,
                id: None
            })
        );
    }

    #[test]
    fn escaped_channel_is_unescaped_in_place() {
        assert_eq!(
            dec(r#"{"type":"subscribe","data":"caf\u00e9\/\"x\""}"#),
            Ok(Command::Subscribe {
                topic: "café/\"x\"",
                id: None,
                since: None,
            })
        );
    }

    #[test]
    fn decode_errors() {
        assert_eq!(err("{"), Reject::MalformedJson);
        assert_eq!(err(""), Reject::MalformedJson);
        assert_eq!(err("{'type':'ping'}"), Reject::MalformedJson);
        assert_eq!(err(r#"["ping"]"#), Reject::NotAnObject);
        assert_eq!(err(r#""ping""#), Reject::NotAnObject);
        assert_eq!(err("{}"), Reject::MissingField("type"));
        assert_eq!(err(r#"{"type":1}"#), Reject::BadField("type"));
        assert_eq!(err(r#"{"type":"pong"}"#), Reject::UnknownType);
        assert_eq!(err(r#"{"type":"subscribe"}"#), Reject::MissingField("data"));
        assert_eq!(
            err(r#"{"type":"subscribe","data":["a"]}"#),
            Reject::BadField("data")
        );
        assert_eq!(
            err(r#"{"type":"unsubscribe"}"#),
            Reject::MissingField("data")
        );
        assert_eq!(
            err(r#"{"type":"unsubscribe","data":null}"#),
            Reject::BadField("data")
        );
        assert_eq!(
            err(r#"{"type":"publish","data":1}"#),
            Reject::MissingField("channel")
        );
        assert_eq!(
            err(r#"{"type":"publish","channel":5,"data":1}"#),
            Reject::BadField("channel")
        );
        assert_eq!(
            err(r#"{"type":"publish","channel":"c"}"#),
            Reject::MissingField("data")
        );
    }

    #[test]
    fn deep_input_is_refused_before_parsing() {
        let deep = format!(
            "{{\"type\":\"ping\",\"x\":{}{}}}",
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        let mut buf = deep.into_bytes();
        let failure = crate::protocol::decode(
            crate::protocol::Dialect::Gows,
            &mut buf,
            32,
            &mut Buffers::default(),
        )
        .expect_err("too deep");
        assert_eq!(failure.reject, Reject::TooDeep);
    }

    #[test]
    fn renders_process_output() {
        let p = publication(
            "process:build-1",
            channel("process_output"),
            r#""Compiling main.go...""#,
            None,
        );
        let v = text_frame_json(&render_publication(&p));
        assert_eq!(
            v,
            json!({
                "type": "process_output",
                "channel": "process:build-1",
                "processId": "build-1",
                "data": "Compiling main.go...",
                "timestamp": "2026-02-19T10:30:00.123Z"
            })
        );
    }

    #[test]
    fn renders_process_status() {
        let p = publication(
            "process:b1",
            channel("process_status"),
            r#"{"status":"exited","exitCode":0}"#,
            None,
        );
        let v = text_frame_json(&render_publication(&p));
        assert_eq!(v["type"], "process_status");
        assert_eq!(v["processId"], "b1");
        assert_eq!(v["data"], json!({"status":"exited","exitCode":0}));
    }

    #[test]
    fn renders_channel_event_with_headers() {
        let headers = r#"{"traceparent":"00-abc-01","x":"y"}"#;
        let p = publication("news/eu", channel("event"), r#"{"n":1}"#, Some(headers));
        let f = render_publication(&p);
        let v = text_frame_json(&f);
        let obj = v.as_object().expect("object");
        assert_eq!(obj.len(), 5, "no processId: {v}");
        assert_eq!(v["type"], "event");
        assert_eq!(v["channel"], "news/eu");
        assert_eq!(v["data"], json!({"n":1}));
        assert_eq!(v["headers"], json!({"traceparent":"00-abc-01","x":"y"}));
        assert_eq!(v["timestamp"], "2026-02-19T10:30:00.123Z");
        // Headers bytes are passed through unchanged.
        let text =
            std::str::from_utf8(crate::protocol::frame::split_server_frame(&f).1).expect("utf8");
        assert!(text.contains(headers));
        // `process:` with nothing after it has no processId.
        let v = text_frame_json(&render_publication(&publication(
            "process:",
            channel("event"),
            "1",
            None,
        )));
        assert!(v.get("processId").is_none());
    }

    #[test]
    fn escapes_channel_and_type() {
        let topic = "we\"ird\nchan ✓\\";
        let p = publication(topic, channel("my\"type"), "true", None);
        let v = text_frame_json(&render_publication(&p));
        assert_eq!(v["channel"], topic);
        assert_eq!(v["type"], "my\"type");
    }

    #[test]
    fn renders_broadcasts() {
        let p = publication(
            "",
            Kind::BroadcastEvent {
                event: "user_joined".into(),
            },
            r#"{"user":"alice"}"#,
            None,
        );
        let v = text_frame_json(&render_publication(&p));
        assert_eq!(
            v,
            json!({
                "type": "event",
                "data": {"event": "user_joined", "data": {"user": "alice"}},
                "timestamp": "2026-02-19T10:30:00.123Z"
            })
        );
        let p = publication(
            "",
            Kind::BroadcastError,
            r#""connection to database lost""#,
            None,
        );
        let v = text_frame_json(&render_publication(&p));
        assert_eq!(
            v,
            json!({"type": "error", "data": "connection to database lost", "timestamp": "2026-02-19T10:30:00.123Z"})
        );
    }

    #[test]
    fn renders_error_and_pong() {
        let v = text_frame_json(&render_error(&Reject::InvalidPattern(
            TopicError::HashNotLast,
        )));
        assert_eq!(v["type"], "error");
        assert_eq!(
            v["data"],
            "invalid pattern: '#' is only allowed as the last level"
        );
        let ts = v["timestamp"].as_str().expect("timestamp");
        assert_eq!(ts.len(), 24);
        assert!(ts.ends_with('Z'));

        let v = text_frame_json(&render_error(&"line1\nline2 \"quoted\" é"));
        assert_eq!(v["data"], "line1\nline2 \"quoted\" é");

        let v = text_frame_json(&render_pong());
        assert_eq!(v.as_object().map(|o| o.len()), Some(2));
        assert_eq!(v["type"], "pong");
    }
}

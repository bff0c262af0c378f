//! The vws dialect (Vinculum WebSocket protocol): short keys `k` kind, `t` topic, `d` data,
//! `i` id, `e` error, `h` headers. Client requests are decoded (see
//! [`json::parse_members`]); events, acks and nacks are rendered into complete frames.
//!
//! Every request that carries `i` must get exactly one ack or nack (SPEC §3), so decode
//! failures keep the id whenever it could be read. Topic/pattern validation and policy
//! are the shard's job, not the decoder's.

use crate::error::Reject;
use crate::protocol::{
    compact_bytes, frame, json, publish_headers, since, topic_span, Buffers, Command,
    DecodeFailure, Parsed, RequestId,
};
use crate::publication::{Kind, Publication};
use bytes::Bytes;
use serde_json::value::RawValue;
use std::fmt;

/// Topic that vws clients see broadcasts (go-ws `SendEvent` / `SendError`) on.
pub const BROADCAST_TOPIC: &str = "$broadcast";

/// Decodes one vws client message (the result borrows its topic from `payload`).
///
/// `{"k":"s"|"u","t":P,"i"?}` (un)subscribe, `{"k":"U","i"?}` unsubscribe all, and with no
/// `k` (or an empty one, as Vinculum's `omitempty` writes it) an event publish
/// `{"t":T,"d":D,"i"?,"h"?}`. Unknown extra fields are ignored. The nesting depth must
/// already have been checked (see [`crate::protocol::decode`]).
///
/// # Errors
/// `MalformedJson`/`NotAnObject` (no id), `BadField("i")` for an id that is neither a
/// string nor a number (no id), then `BadField`/`MissingField` for `k`, `t`, `d`, `h` and
/// `UnknownKind`, each carrying the request id when there was one.
pub fn decode<'a>(
    payload: &'a mut [u8],
    buffers: &mut Buffers,
) -> Result<Command<'a>, DecodeFailure> {
    let (parsed, id) = parse(payload, &mut buffers.scratch)?;
    parsed.into_command(payload, &mut buffers.scratch, id)
}

/// The request in `payload` (its topic still a span of it) and its id.
fn parse(
    payload: &[u8],
    scratch: &mut Vec<u8>,
) -> Result<(Parsed, Option<RequestId>), DecodeFailure> {
    let [k, t, d, i, h, o, e] = json::parse_members(payload, &["k", "t", "d", "i", "h", "o", "e"])
        .map_err(DecodeFailure::new)?;
    let id = match i {
        None => None,
        Some(i) => Some(request_id(i, scratch).map_err(DecodeFailure::new)?),
    };
    match parse_request(payload, [k, t, d, h, o, e], scratch) {
        Ok(parsed) => Ok((parsed, id)),
        Err(reject) => Err(DecodeFailure::with_id(reject, id)),
    }
}

/// The request given its members `k`, `t`, `d` and `h`.
fn parse_request(
    payload: &[u8],
    [k, t, d, h, o, e]: [Option<&RawValue>; 6],
    scratch: &mut Vec<u8>,
) -> Result<Parsed, Reject> {
    let kind = match k {
        None => None,
        Some(k) => Some(json::str_value(k)?.ok_or(Reject::BadField("k"))?),
    };
    match kind.as_deref().unwrap_or("") {
        "s" => Ok(Parsed::Subscribe(
            topic_span(payload, t, "t")?,
            since(o, e, ["o", "e"])?,
        )),
        "u" => Ok(Parsed::Unsubscribe(topic_span(payload, t, "t")?)),
        "U" => Ok(Parsed::UnsubscribeAll),
        "" => {
            let topic = topic_span(payload, t, "t")?;
            let data = d.ok_or(Reject::MissingField("d"))?;
            let headers = publish_headers(h, "h", scratch)?;
            Ok(Parsed::Publish {
                topic,
                data: compact_bytes(data, scratch)?,
                headers,
            })
        }
        _ => Err(Reject::UnknownKind),
    }
}

/// The text a reply echoes for the request id `raw`: a number exactly as sent (`42`,
/// `-1.5`), a string as a JSON literal in [`json::write_str`]'s escaping (quotes kept).
///
/// # Errors
/// `BadField("i")` for any other JSON type; `MalformedJson` for an escape that is no
/// character.
fn request_id(raw: &RawValue, scratch: &mut Vec<u8>) -> Result<RequestId, Reject> {
    if json::is_number(raw) {
        return Ok(raw.get().into());
    }
    if !json::is_string(raw) {
        return Err(Reject::BadField("i"));
    }
    let text = json::compact(raw.get(), scratch)?;
    std::str::from_utf8(text)
        .map(Into::into)
        .map_err(|_| Reject::MalformedJson)
}

/// Appends the vws `h` for a channel publication: its headers, plus `"type":T` when the
/// gows type is not `event` and the headers do not already name a `type` (theirs wins).
fn write_channel_headers(out: &mut Vec<u8>, gows_type: &str, headers: Option<&Bytes>) {
    let add_type = gows_type != "event" && headers.is_none_or(|h| !json::object_has_key(h, "type"));
    match (headers, add_type) {
        (None, false) => {}
        (Some(h), false) => {
            out.extend_from_slice(b",\"h\":");
            out.extend_from_slice(h);
        }
        (h, true) => {
            out.extend_from_slice(b",\"h\":{\"type\":");
            json::write_str(out, gows_type);
            // Splice the existing members after our entry: drop their `{`, keep the rest.
            let rest = h
                .map(|h| h.trim_ascii_start())
                .and_then(|h| h.strip_prefix(b"{"))
                .map(<[u8]>::trim_ascii_start)
                .unwrap_or(b"}");
            if !rest.starts_with(b"}") {
                out.push(b',');
            }
            out.extend_from_slice(rest);
        }
    }
}

/// Renders a publication as a complete vws text frame.
///
/// - channel message: `{"t":C,"d":D,"h"?}`; a gows type other than `event` (e.g.
///   `process_output`) travels as header `"type"`, merged into the publication's headers
///   unless they already have a `type` key;
/// - broadcast event: `{"t":"$broadcast","d":{"event":E,"data":D},"h":{"type":"event"}}`;
/// - broadcast error: `{"t":"$broadcast","d":D,"h":{"type":"error"}}`.
pub fn render_publication(p: &Publication) -> Bytes {
    frame::build_text_frame_sized(p.frame_size_hint(), |out| match &p.kind {
        Kind::Channel { gows_type } => {
            out.extend_from_slice(b"{\"t\":");
            json::write_str(out, &p.topic);
            out.extend_from_slice(b",\"d\":");
            out.extend_from_slice(&p.data);
            write_channel_headers(out, gows_type, p.headers.as_ref());
            let offset = p.offset();
            if offset != 0 {
                out.extend_from_slice(b",\"o\":");
                out.extend_from_slice(itoa::Buffer::new().format(offset).as_bytes());
            }
            out.push(b'}');
        }
        Kind::BroadcastEvent { event } => {
            out.extend_from_slice(b"{\"t\":");
            json::write_str(out, BROADCAST_TOPIC);
            out.extend_from_slice(b",\"d\":{\"event\":");
            json::write_str(out, event);
            out.extend_from_slice(b",\"data\":");
            out.extend_from_slice(&p.data);
            out.extend_from_slice(b"},\"h\":{\"type\":\"event\"}}");
        }
        Kind::BroadcastError => {
            out.extend_from_slice(b"{\"t\":");
            json::write_str(out, BROADCAST_TOPIC);
            out.extend_from_slice(b",\"d\":");
            out.extend_from_slice(&p.data);
            out.extend_from_slice(b",\"h\":{\"type\":\"error\"}}");
        }
    })
}

/// `{"k":"a","i":<id>}`: positive acknowledgment; `id` is the request's raw `i` JSON text.
pub fn render_ack(id: &str) -> Bytes {
    frame::build_text_frame(|out| {
        out.extend_from_slice(b"{\"k\":\"a\",\"i\":");
        out.extend_from_slice(id.as_bytes());
        out.push(b'}');
    })
}

/// `{"k":"a","i":<id>,"o":TOP,"e":EPOCH,"r"?:R}`: the ack of a subscribe to a history
/// channel (SPEC §9); `r` only when the client asked to resume from a position.
pub fn render_ack_position(id: &str, top: u64, epoch: &str, recovered: Option<bool>) -> Bytes {
    frame::build_text_frame(|out| {
        out.extend_from_slice(b"{\"k\":\"a\",\"i\":");
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(b",\"o\":");
        out.extend_from_slice(itoa::Buffer::new().format(top).as_bytes());
        out.extend_from_slice(b",\"e\":");
        json::write_str(out, epoch);
        match recovered {
            Some(true) => out.extend_from_slice(b",\"r\":true"),
            Some(false) => out.extend_from_slice(b",\"r\":false"),
            None => {}
        }
        out.push(b'}');
    })
}

/// `{"k":"n","i":<id>,"e":"<reason>"}`: negative acknowledgment (no `i` key when the
/// request had none); `reason` is usually a [`Reject`].
pub fn render_nack(id: Option<&str>, reason: &dyn fmt::Display) -> Bytes {
    frame::build_text_frame(|out| {
        out.extend_from_slice(b"{\"k\":\"n\"");
        if let Some(id) = id {
            out.extend_from_slice(b",\"i\":");
            out.extend_from_slice(id.as_bytes());
        }
        out.extend_from_slice(b",\"e\":");
        json::write_display(out, reason);
        out.push(b'}');
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::{split_server_frame, text_frame_json};
    use crate::topic::TopicError;
    use serde_json::json;

    fn dec(s: &str) -> Result<Command<'static>, DecodeFailure> {
        let buf: &'static mut [u8] = Box::leak(s.as_bytes().to_vec().into_boxed_slice());
        decode(buf, &mut Buffers::default())
    }

    fn fail(s: &str) -> (Reject, Option<String>) {
        let f = dec(s).expect_err("should fail");
        (f.reject, f.id.map(String::from))
    }

    fn id(s: &str) -> Option<RequestId> {
        Some(s.into())
    }

    fn publication(topic: &str, kind: Kind, data: &str, headers: Option<&str>) -> Publication {
        Publication::new(
            topic.into(),
            kind,
            Bytes::copy_from_slice(data.as_bytes()),
            headers.map(|h| Bytes::copy_from_slice(h.as_bytes())),
        )
    }

    fn channel(t: &str) -> Kind {
        Kind::Channel {
            gows_type: crate::publication::gows_type(t),
        }
    }

    #[test]
    fn decodes_subscriptions() {
        assert_eq!(
            dec(r#"{"k":"s","t":"a/+/c"}"#),
            Ok(Command::Subscribe {
                topic: "a/+/c",
                id: None,
                since: None,
            })
        );
        assert_eq!(
            dec(r#"{"k":"s","t":"a/#","i":"req-1"}"#),
            Ok(Command::Subscribe {
                topic: "a/#",
                id: id("\"req-1\""),
                since: None,
            })
        );
        assert_eq!(
            dec(r#"{"k":"u","t":"x","i":42}"#),
            Ok(Command::Unsubscribe {
                topic: "x",
                id: id("42")
            })
        );
        assert_eq!(
            dec(r#"{"k":"u","t":"x","i":-1.5}"#),
            Ok(Command::Unsubscribe {
                topic: "x",
                id: id("-1.5")
            })
        );
        assert_eq!(
            dec(r#"{"k":"U"}"#),
            Ok(Command::UnsubscribeAll { id: None })
        );
        assert_eq!(
            dec(r#"{"k":"U","i":7,"zzz":{}}"#),
            Ok(Command::UnsubscribeAll { id: id("7") })
        );
        // String ids are kept as (re-escaped) JSON text.
        assert_eq!(
            dec(r#"{"k":"s","t":"x","i":"a\"b\u00e9"}"#),
            Ok(Command::Subscribe {
                topic: "x",
                id: id("\"a\\\"bé\""),
                since: None,
            })
        );
    }

    #[test]
    fn ids_and_topics_are_read_as_sent() {
        // Numbers are echoed exactly as sent (SPEC §3), not re-printed.
        assert_eq!(
            dec(r#"{"k":"U","i":1e2}"#),
            Ok(Command::UnsubscribeAll { id: id("1e2") })
        );
        // An escaped topic is unescaped in place; member names may be escaped too.
        assert_eq!(
            dec(r#"{"k":"\u0073","\u0074":"a\/b\u00e9","i":"x"}"#),
            Ok(Command::Subscribe {
                topic: "a/bé",
                id: id("\"x\""),
                since: None,
            })
        );
        assert_eq!(
            dec(r#"{ "t" : "s" , "d" : [ "a b" , 4e3 ] , "h" : { "a" : "b c" } }"#),
            Ok(Command::Publish {
                topic: "s",
                data: Bytes::from_static(br#"["a b",4e3]"#),
                headers: Some(Bytes::from_static(br#"{"a":"b c"}"#)),
                id: None
            })
        );
        // A repeated member: the first one counts.
        assert_eq!(
            dec(r#"{"k":"s","t":"first","t":"second"}"#),
            Ok(Command::Subscribe {
                topic: "first",
                id: None,
                since: None,
            })
        );
    }

    #[test]
    fn broken_escapes_are_malformed_without_id() {
        assert_eq!(
            fail(r#"{"t":"x","d":"\ud800","i":4}"#),
            (Reject::MalformedJson, None)
        );
        assert_eq!(
            fail(r#"{"k":"s","t":"\udc00","i":4}"#),
            (Reject::MalformedJson, None)
        );
        assert_eq!(
            fail(r#"{"k":"s","t":"x","i":"\ud800"}"#),
            (Reject::MalformedJson, None)
        );
        assert_eq!(
            fail(r#"{"k":"s","t":"x","i":4,"z":[1,}"#),
            (Reject::MalformedJson, None)
        );
    }

    #[test]
    fn decodes_events() {
        assert_eq!(
            dec(r#"{"t":"sensors/1","d":{"v": 1.5, "ok": true}}"#),
            Ok(Command::Publish {
                topic: "sensors/1",
                data: Bytes::from_static(br#"{"v":1.5,"ok":true}"#),
                headers: None,
                id: None
            })
        );
        assert_eq!(
            dec(r#"{"t":"s","d":"x","i":"p1","h":{"traceparent":"00-1-2-01", "a":"b\n"}}"#),
            Ok(Command::Publish {
                topic: "s",
                data: Bytes::from_static(br#""x""#),
                headers: Some(Bytes::from_static(
                    br#"{"traceparent":"00-1-2-01","a":"b\n"}"#
                )),
                id: id("\"p1\"")
            })
        );
        assert_eq!(
            dec(r#"{"k":"","t":"s","d":null,"h":{}}"#),
            Ok(Command::Publish {
                topic: "s",
                data: Bytes::from_static(b"null"),
                headers: Some(Bytes::from_static(b"{}")),
                id: None
            })
        );
    }

    #[test]
    fn decode_errors_carry_the_id() {
        assert_eq!(fail("{\"k\":"), (Reject::MalformedJson, None));
        assert_eq!(fail("[1]"), (Reject::NotAnObject, None));
        assert_eq!(
            fail(r#"{"k":"s","t":"x","i":true}"#),
            (Reject::BadField("i"), None)
        );
        assert_eq!(
            fail(r#"{"k":"s","t":"x","i":{"a":1}}"#),
            (Reject::BadField("i"), None)
        );
        assert_eq!(
            fail(r#"{"k":"s","t":"x","i":null}"#),
            (Reject::BadField("i"), None)
        );
        let some = |s: &str| Some(s.to_string());
        assert_eq!(
            fail(r#"{"k":1,"i":"r"}"#),
            (Reject::BadField("k"), some("\"r\""))
        );
        assert_eq!(fail(r#"{"k":"x","i":3}"#), (Reject::UnknownKind, some("3")));
        assert_eq!(fail(r#"{"k":"a","i":3}"#), (Reject::UnknownKind, some("3")));
        assert_eq!(
            fail(r#"{"k":"s","i":3}"#),
            (Reject::MissingField("t"), some("3"))
        );
        assert_eq!(
            fail(r#"{"k":"u","i":3}"#),
            (Reject::MissingField("t"), some("3"))
        );
        assert_eq!(
            fail(r#"{"k":"s","t":["a"],"i":3}"#),
            (Reject::BadField("t"), some("3"))
        );
        assert_eq!(fail(r#"{"k":"u","t":1}"#), (Reject::BadField("t"), None));
        assert_eq!(
            fail(r#"{"d":1,"i":"e"}"#),
            (Reject::MissingField("t"), some("\"e\""))
        );
        assert_eq!(
            fail(r#"{"t":2,"d":1,"i":"e"}"#),
            (Reject::BadField("t"), some("\"e\""))
        );
        assert_eq!(
            fail(r#"{"t":"x","i":"e"}"#),
            (Reject::MissingField("d"), some("\"e\""))
        );
        assert_eq!(
            fail(r#"{"t":"x","d":1,"h":"no","i":9}"#),
            (Reject::BadField("h"), some("9"))
        );
        assert_eq!(
            fail(r#"{"t":"x","d":1,"h":{"a":1},"i":9}"#),
            (Reject::BadField("h"), some("9"))
        );
        assert_eq!(
            fail(r#"{"t":"x","d":1,"h":[],"i":9}"#),
            (Reject::BadField("h"), some("9"))
        );
        // The type is the HTTP API's to set, however the key is spelled.
        assert_eq!(
            fail(r#"{"t":"x","d":1,"h":{"type":"process_status"},"i":9}"#),
            (Reject::ReservedHeader, some("9"))
        );
        assert_eq!(
            fail(r#"{"t":"x","d":1,"h":{"a":"b","typ\u0065":"error"},"i":9}"#),
            (Reject::ReservedHeader, some("9"))
        );
        assert_eq!(fail("{}"), (Reject::MissingField("t"), None));
    }

    #[test]
    fn renders_channel_events() {
        let v = text_frame_json(&render_publication(&publication(
            "news/eu",
            channel("event"),
            r#"{"n":1}"#,
            None,
        )));
        assert_eq!(v, json!({"t": "news/eu", "d": {"n": 1}}));

        let headers = r#"{"traceparent":"00-abc-01","k":"v"}"#;
        let f = render_publication(&publication(
            "news/eu",
            channel("event"),
            "1",
            Some(headers),
        ));
        assert_eq!(
            text_frame_json(&f),
            json!({"t": "news/eu", "d": 1, "h": {"traceparent": "00-abc-01", "k": "v"}})
        );
        let text = std::str::from_utf8(split_server_frame(&f).1).expect("utf8");
        assert!(
            text.contains(headers),
            "headers passed through unchanged: {text}"
        );
    }

    #[test]
    fn type_header_merge_rule() {
        let render = |t: &str, h: Option<&str>| {
            text_frame_json(&render_publication(&publication(
                "process:b1",
                channel(t),
                r#""line""#,
                h,
            )))
        };
        assert_eq!(
            render("process_output", None),
            json!({"t": "process:b1", "d": "line", "h": {"type": "process_output"}})
        );
        assert_eq!(
            render("process_status", Some(r#"{"traceparent":"t1"}"#)),
            json!({"t": "process:b1", "d": "line", "h": {"type": "process_status", "traceparent": "t1"}})
        );
        assert_eq!(
            render("process_output", Some("{}")),
            json!({"t": "process:b1", "d": "line", "h": {"type": "process_output"}})
        );
        assert_eq!(
            render("process_output", Some(" { } ")),
            json!({"t": "process:b1", "d": "line", "h": {"type": "process_output"}})
        );
        // Theirs wins, nothing added.
        assert_eq!(
            render("process_output", Some(r#"{"a":"b","type":"mine"}"#)),
            json!({"t": "process:b1", "d": "line", "h": {"a": "b", "type": "mine"}})
        );
        // Custom type names are escaped.
        assert_eq!(render("we\"ird", None)["h"]["type"], "we\"ird");
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
        assert_eq!(
            text_frame_json(&render_publication(&p)),
            json!({"t": "$broadcast", "d": {"event": "user_joined", "data": {"user": "alice"}}, "h": {"type": "event"}})
        );
        let p = publication("", Kind::BroadcastError, r#""db lost""#, None);
        assert_eq!(
            text_frame_json(&render_publication(&p)),
            json!({"t": "$broadcast", "d": "db lost", "h": {"type": "error"}})
        );
    }

    #[test]
    fn escapes_topics() {
        let topic = "a/\"b\"/\nc/ü✓";
        let v = text_frame_json(&render_publication(&publication(
            topic,
            channel("event"),
            "0",
            None,
        )));
        assert_eq!(v["t"], topic);
    }

    #[test]
    fn renders_acks_and_nacks() {
        assert_eq!(
            text_frame_json(&render_ack("\"r1\"")),
            json!({"k": "a", "i": "r1"})
        );
        assert_eq!(
            text_frame_json(&render_ack("42")),
            json!({"k": "a", "i": 42})
        );
        assert_eq!(
            text_frame_json(&render_nack(Some("7"), &Reject::PublishNotAllowed)),
            json!({"k": "n", "i": 7, "e": "not allowed to publish to this topic"})
        );
        assert_eq!(
            text_frame_json(&render_nack(
                None,
                &Reject::InvalidTopic(TopicError::ControlCharacter)
            )),
            json!({"k": "n", "e": "invalid topic: contains a control character"})
        );
        assert_eq!(
            text_frame_json(&render_nack(Some("\"x\""), &"bad \"thing\"\n")),
            json!({"k": "n", "i": "x", "e": "bad \"thing\"\n"})
        );
    }

    #[test]
    fn decoded_id_round_trips_into_replies() {
        let cmd = dec(r#"{"k":"s","t":"x","i":"a\"b"}"#).expect("ok");
        let Command::Subscribe { id: Some(i), .. } = cmd else {
            unreachable!()
        };
        assert_eq!(
            text_frame_json(&render_ack(&i)),
            json!({"k": "a", "i": "a\"b"})
        );
    }
    #[test]
    fn decoders_never_panic_on_garbage() {
        // Deterministic mutations of valid messages (bytes flipped, truncated, duplicated).
        let seeds: [&[u8]; 4] = [
            br#"{"k":"s","t":"a/+","i":"x\u00e9"}"#,
            br#"{"t":"x","d":{"a":[1,2.5e3,null]},"h":{"a":"b"},"i":3}"#,
            br#"{"type":"publish","channel":"c","data":[true,"\n"]}"#,
            br#"{"type":"subscribe","data":"process:b1"}"#,
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..4000 {
            let seed = seeds[round % seeds.len()];
            let mut buf = seed.to_vec();
            for _ in 0..(next() % 4 + 1) {
                let r = next();
                let pos = (r >> 8) as usize % buf.len().max(1);
                match r % 4 {
                    0 => buf[pos] = (r >> 32) as u8,
                    1 => buf.truncate(pos),
                    2 => buf.insert(pos, b"{[\"\\:,}]"[(r >> 40) as usize % 8]),
                    _ => buf.extend_from_within(..pos),
                }
                if buf.is_empty() {
                    buf.push(b'{');
                }
            }
            for dialect in crate::protocol::Dialect::ALL {
                let mut copy = buf.clone();
                let _ = crate::protocol::decode(dialect, &mut copy, 32, &mut Buffers::default());
            }
        }
    }
}

//! Drivers for the dialect decoders ([`crate::protocol::decode`]): every decoded command
//! is compared with what serde_json alone reads from the same message.

use crate::protocol::{self, json, Buffers, Command, Dialect};
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;
use std::fmt;

/// `client.max_json_depth` as shipped (`config/shardcast.toml`).
const MAX_DEPTH: usize = 32;

/// Decodes `input` as a gows client message and checks the result against serde_json.
///
/// # Panics
/// When the decoder panics or an invariant does not hold (a fuzz finding).
pub fn gows_decode(input: &[u8]) {
    run(Dialect::Gows, input);
}

/// Decodes `input` as a vws client message and checks the result against serde_json.
///
/// # Panics
/// When the decoder panics or an invariant does not hold (a fuzz finding).
pub fn vws_decode(input: &[u8]) {
    run(Dialect::Vws, input);
}

fn run(dialect: Dialect, input: &[u8]) {
    // A shard reuses one `Buffers` for every message: decode twice with the same one, so
    // state left in the scratch by a first decode would show as a different answer.
    let mut buffers = Buffers::default();
    let first = decode_owned(dialect, input, &mut buffers);
    let second = decode_owned(dialect, input, &mut buffers);
    assert_eq!(
        first, second,
        "decoding is deterministic across buffer reuse"
    );

    let mut payload = input.to_vec();
    let range = payload.as_ptr_range();
    let decoded = protocol::decode(dialect, &mut payload, MAX_DEPTH, &mut buffers);
    let command = match decoded {
        Ok(command) => command,
        Err(failure) => {
            if failure.reject == crate::error::Reject::MalformedJson {
                assert_eq!(failure.id, None, "malformed JSON has no readable id");
            }
            return;
        }
    };
    assert!(
        serde_json::from_slice::<IgnoredAny>(input).is_ok(),
        "only valid JSON decodes"
    );
    if let Some(topic) = topic_of(&command) {
        // The command borrows its topic from the payload (unescaped in place).
        let span = topic.as_bytes().as_ptr_range();
        assert!(
            range.start <= span.start && span.end <= range.end,
            "topic lies in the payload"
        );
        if !input.contains(&b'\\') {
            let at = span.start as usize - range.start as usize;
            assert_eq!(
                input.get(at..at + topic.len()),
                Some(topic.as_bytes()),
                "an unescaped topic is the input's own bytes"
            );
        }
    }
    match dialect {
        Dialect::Gows => check_gows(input, &command),
        Dialect::Vws => check_vws(input, &command),
        Dialect::Semstreams => check_semstreams(input, &command),
    }
}

/// The decode result in an owned, comparable form.
fn decode_owned(dialect: Dialect, input: &[u8], buffers: &mut Buffers) -> String {
    let mut payload = input.to_vec();
    format!(
        "{:?}",
        protocol::decode(dialect, &mut payload, MAX_DEPTH, buffers)
    )
}

fn topic_of<'c>(command: &'c Command<'_>) -> Option<&'c str> {
    match command {
        Command::Subscribe { topic, .. }
        | Command::Unsubscribe { topic, .. }
        | Command::Publish { topic, .. } => Some(*topic).filter(|t| !t.is_empty()),
        Command::UnsubscribeAll { .. }
        | Command::Ping
        | Command::Request { .. }
        | Command::Signal(_) => None,
    }
}

fn check_semstreams(input: &[u8], command: &Command<'_>) {
    let kind = reference_str(input, "type");
    let expected = match command {
        Command::Publish { data, id, .. } => {
            check_compact_copy(input, "payload", data);
            assert!(id.is_some(), "data needs an id");
            "data"
        }
        Command::Request { .. } => "request",
        Command::Signal(3) => "ack",
        Command::Signal(4) => "nack",
        Command::Signal(_) => "slow",
        other => unreachable!("semstreams makes no {other:?}"),
    };
    assert_eq!(kind.as_deref(), Some(expected));
}

fn check_gows(input: &[u8], command: &Command<'_>) {
    let kind = reference_str(input, "type");
    match command {
        Command::Subscribe { topic, id, .. } | Command::Unsubscribe { topic, id } => {
            let expected = match command {
                Command::Subscribe { .. } => "subscribe",
                _ => "unsubscribe",
            };
            assert_eq!(kind.as_deref(), Some(expected));
            assert_eq!(reference_str(input, "data").as_deref(), Some(*topic));
            assert_eq!(*id, None, "gows has no ids");
        }
        Command::Publish {
            topic,
            data,
            headers,
            id,
        } => {
            assert_eq!(kind.as_deref(), Some("publish"));
            assert_eq!(reference_str(input, "channel").as_deref(), Some(*topic));
            check_compact_copy(input, "data", data);
            assert_eq!((headers, id), (&None, &None));
        }
        Command::Ping => assert_eq!(kind.as_deref(), Some("ping")),
        Command::UnsubscribeAll { .. } | Command::Request { .. } | Command::Signal(_) => {
            unreachable!("gows makes no {command:?}")
        }
    }
}

fn check_vws(input: &[u8], command: &Command<'_>) {
    let kind = reference_member(input, "k").map(|k| string_of(&k));
    let (expected_kind, id) = match command {
        Command::Subscribe { topic, id, .. } | Command::Unsubscribe { topic, id } => {
            assert_eq!(reference_str(input, "t").as_deref(), Some(*topic));
            let k = match command {
                Command::Subscribe { .. } => "s",
                _ => "u",
            };
            (Some(k), id)
        }
        Command::UnsubscribeAll { id } => (Some("U"), id),
        Command::Publish {
            topic,
            data,
            headers,
            id,
        } => {
            assert_eq!(reference_str(input, "t").as_deref(), Some(*topic));
            check_compact_copy(input, "d", data);
            match headers {
                Some(h) => {
                    check_compact_copy(input, "h", h);
                    let h: Value = serde_json::from_slice(h).expect("headers are JSON");
                    let all_strings = h.as_object().map(|o| o.values().all(Value::is_string));
                    assert_eq!(all_strings, Some(true), "headers are an object of strings");
                }
                None => assert!(reference_member(input, "h").is_none()),
            }
            (None, id)
        }
        Command::Ping | Command::Request { .. } | Command::Signal(_) => {
            unreachable!("vws makes no {command:?}")
        }
    };
    match expected_kind {
        Some(k) => assert_eq!(kind, Some(Some(k.to_owned()))),
        // A publish has no `k`, or an empty one.
        None => assert!(kind.is_none() || kind == Some(Some(String::new()))),
    }
    let reference_id = reference_member(input, "i");
    match (id, reference_id) {
        (None, None) => {}
        (Some(id), Some(raw)) if json::is_number(&raw) => assert_eq!(&**id, raw.get()),
        (Some(id), Some(raw)) => {
            let mut scratch = Vec::new();
            let compacted = json::compact(id, &mut scratch).ok();
            assert_eq!(compacted, Some(id.as_bytes()), "an echoed id is compact");
            let sent: String = serde_json::from_str(raw.get()).expect("string id");
            let echoed: String = serde_json::from_str(id).expect("echoed id is a JSON string");
            assert_eq!(sent, echoed, "a string id echoes the same text");
        }
        (id, raw) => panic!("id {id:?} decoded, reference {raw:?}"),
    }
}

/// Checks that `copy` (a command's `data`/`h`) is member `name` of `input`, compacted:
/// the same JSON value, and already compact.
fn check_compact_copy(input: &[u8], name: &str, copy: &[u8]) {
    let raw = reference_member(input, name).expect("member present");
    let text = std::str::from_utf8(copy).expect("a copy is UTF-8");
    let original: Option<Value> = serde_json::from_str(raw.get()).ok();
    let copied: Option<Value> = serde_json::from_str(text).ok();
    assert_eq!(original, copied, "the copy holds the same value");
    assert!(
        serde_json::from_str::<IgnoredAny>(text).is_ok(),
        "the copy is valid JSON"
    );
    let mut scratch = Vec::new();
    assert_eq!(
        json::compact(text, &mut scratch).ok(),
        Some(copy),
        "the copy is compact"
    );
}

/// Member `name` read by serde_json as a `String` (`None` when absent or not a string).
fn reference_str(input: &[u8], name: &str) -> Option<String> {
    reference_member(input, name).and_then(|raw| string_of(&raw))
}

fn string_of(raw: &RawValue) -> Option<String> {
    serde_json::from_str(raw.get()).ok()
}

/// The first top-level member `name` of the JSON object `input` (the decoder's rule for
/// duplicate names), found by serde_json alone; other members are skipped unparsed.
fn reference_member(input: &[u8], name: &str) -> Option<Box<RawValue>> {
    struct First<'n>(&'n str);

    impl<'de> Visitor<'de> for First<'_> {
        type Value = Option<Box<RawValue>>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut found = None;
            while let Some(key) = map.next_key::<String>()? {
                if key == self.0 && found.is_none() {
                    found = Some(map.next_value::<Box<RawValue>>()?);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(found)
        }
    }

    let mut de = serde_json::Deserializer::from_slice(input);
    serde::Deserializer::deserialize_map(&mut de, First(name))
        .ok()
        .flatten()
}

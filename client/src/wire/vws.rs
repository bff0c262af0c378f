//! The vws messages a client sends and reads (docs/PROTOCOL.md §5, §9). The broker's own
//! codec (`src/protocol/vws.rs`) decodes the other direction; both follow the same table.

use super::{Event, Incoming, Position};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::BTreeMap;

/// `{"k":"s","t":..,"i":..,"o"?,"e"?}`.
pub fn subscribe(topic: &str, id: u64, from: Option<&Position>) -> String {
    #[derive(Serialize)]
    struct Sub<'a> {
        k: &'static str,
        t: &'a str,
        i: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        o: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        e: Option<&'a str>,
    }
    let msg = Sub {
        k: "s",
        t: topic,
        i: id,
        o: from.map(|p| p.offset),
        e: from.and_then(|p| p.epoch.as_deref()),
    };
    serde_json::to_string(&msg).unwrap_or_default()
}

/// `{"k":"u","t":..,"i":..}`.
pub fn unsubscribe(topic: &str, id: u64) -> String {
    serde_json::json!({"k": "u", "t": topic, "i": id}).to_string()
}

/// `{"t":..,"d":..,"i":..,"h"?}`; `data` is JSON text sent as is.
pub fn publish(
    topic: &str,
    data: &RawValue,
    headers: &BTreeMap<String, String>,
    id: u64,
) -> String {
    #[derive(Serialize)]
    struct Pub<'a> {
        t: &'a str,
        d: &'a RawValue,
        i: u64,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        h: &'a BTreeMap<String, String>,
    }
    let msg = Pub {
        t: topic,
        d: data,
        i: id,
        h: headers,
    };
    serde_json::to_string(&msg).unwrap_or_default()
}

#[derive(Deserialize)]
struct Raw {
    #[serde(default)]
    k: Option<String>,
    #[serde(default)]
    i: Option<u64>,
    #[serde(default)]
    t: Option<String>,
    #[serde(default)]
    d: Option<Box<RawValue>>,
    #[serde(default)]
    h: Option<BTreeMap<String, String>>,
    #[serde(default)]
    o: Option<u64>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    r: Option<bool>,
}

/// Decodes one text message from the broker; `None` for anything this client does not
/// know (a newer broker may send more).
pub fn decode(text: &[u8]) -> Option<Incoming> {
    let raw: Raw = serde_json::from_slice(text).ok()?;
    match raw.k.as_deref() {
        Some("a") => Some(Incoming::Ack {
            id: raw.i?,
            top: raw.o,
            epoch: raw.e,
            recovered: raw.r,
        }),
        Some("n") => Some(Incoming::Nack {
            id: raw.i,
            reason: raw.e.unwrap_or_default(),
        }),
        None | Some("") => Some(Incoming::Event(Event {
            topic: raw.t?,
            data: raw.d?,
            headers: raw.h.unwrap_or_default(),
            offset: raw.o,
        })),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_encoded_as_the_protocol_table_says() {
        assert_eq!(subscribe("a/b", 1, None), r#"{"k":"s","t":"a/b","i":1}"#);
        let p = Position {
            offset: 2,
            epoch: Some("ep".into()),
        };
        assert_eq!(
            subscribe("a", 3, Some(&p)),
            r#"{"k":"s","t":"a","i":3,"o":2,"e":"ep"}"#
        );
        let data = serde_json::value::to_raw_value(&serde_json::json!({"x": 1})).ok();
        let data = data
            .as_deref()
            .map(|d| publish("c", d, &BTreeMap::new(), 4));
        assert_eq!(data.as_deref(), Some(r#"{"t":"c","d":{"x":1},"i":4}"#));
    }

    #[test]
    fn replies_and_events_decode() {
        let ack = decode(br#"{"k":"a","i":1,"o":4,"e":"ep","r":true}"#);
        assert!(matches!(
            ack,
            Some(Incoming::Ack {
                id: 1,
                top: Some(4),
                recovered: Some(true),
                ..
            })
        ));
        let nack = decode(br#"{"k":"n","i":2,"e":"no"}"#);
        assert!(matches!(nack, Some(Incoming::Nack { id: Some(2), .. })));
        let ev = decode(br#"{"t":"a","d":[1],"o":7}"#);
        assert!(matches!(
            ev,
            Some(Incoming::Event(Event {
                offset: Some(7),
                ..
            }))
        ));
        assert!(decode(b"not json").is_none());
        assert!(decode(br#"{"k":"z"}"#).is_none());
    }
}

//! The SemStreams envelope `{"type","id","timestamp","payload"}` as a client speaks it
//! (docs/PROTOCOL.md §11; the broker's own codec, `src/protocol/semstreams.rs`, decodes the
//! other direction). A publish is a `data` message; its topic and headers ride in the
//! envelope's `topic` and `headers` members, where a shardcast broker takes them and a
//! SemStreams WebSocket Input ignores them. Ids are the request numbers as strings.

use super::{Event, Incoming, Position};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

fn millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[derive(Serialize)]
struct Envelope<'a, P: Serialize> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    timestamp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    headers: Option<&'a BTreeMap<String, String>>,
    payload: P,
}

fn envelope<'a, P: Serialize>(kind: &'static str, id: &'a str, payload: P) -> Envelope<'a, P> {
    Envelope {
        kind,
        id,
        timestamp: millis(),
        topic: None,
        headers: None,
        payload,
    }
}

fn text(envelope: &Envelope<'_, impl Serialize>) -> String {
    serde_json::to_string(envelope).unwrap_or_default()
}

/// A `subscribe` request for `topic`, or from a position a `history` request (replay
/// after `from`, then live).
pub fn subscribe(topic: &str, id: u64, from: Option<&Position>) -> String {
    let id = id.to_string();
    let payload = match from {
        None => serde_json::json!({"method": "subscribe", "params": {"patterns": [topic]}}),
        Some(p) => serde_json::json!({
            "method": "history",
            "params": {"channel": topic, "since": p.offset, "epoch": p.epoch},
        }),
    };
    text(&envelope("request", &id, payload))
}

/// A `data` message: `data` is the payload, sent as is.
pub fn publish(
    topic: &str,
    data: &RawValue,
    headers: &BTreeMap<String, String>,
    id: u64,
) -> String {
    let id = id.to_string();
    let mut msg = envelope("data", &id, data);
    msg.topic = Some(topic);
    msg.headers = (!headers.is_empty()).then_some(headers);
    text(&msg)
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    payload: Option<Box<RawValue>>,
}

/// The request number in an envelope id this client made (`"7"`; a number is taken too).
fn number(id: Option<&Value>) -> Option<u64> {
    match id? {
        Value::String(s) => s.parse().ok(),
        v => v.as_u64(),
    }
}

/// The `error` (else `reason`) of a nack or error reply.
fn reason(payload: Option<&Value>) -> String {
    let member = |k| payload.and_then(|p| p.get(k)).and_then(Value::as_str);
    member("error")
        .or_else(|| member("reason"))
        .unwrap_or("refused")
        .to_owned()
}

/// The `reply` to a server's request `id`: `{"status":"ok","result":R}` for a
/// `backpressure` this client applied (`adjusted_to`), an error for any other.
pub fn reply(id: &Value, rate_limit: Option<f64>) -> String {
    let payload = match rate_limit {
        Some(r) => serde_json::json!({
            "status": "ok",
            "result": {"adjusted_to": r, "unit": "msg/sec"},
        }),
        None => serde_json::json!({
            "status": "error",
            "error": "shardcast-client serves only the backpressure method",
        }),
    };
    let reply = serde_json::json!({
        "type": "reply",
        "id": id,
        "timestamp": millis(),
        "payload": payload,
    });
    reply.to_string()
}

/// Decodes one envelope from the server; `None` for what the client does not know.
pub fn decode(text: &[u8]) -> Option<Incoming> {
    let raw: Raw = serde_json::from_slice(text).ok()?;
    let payload = || -> Option<Value> { serde_json::from_str(raw.payload.as_ref()?.get()).ok() };
    match raw.kind.as_str() {
        "data" => {
            let mut headers = raw.headers.unwrap_or_default();
            if let Some(event) = raw.event.filter(|e| e != "event") {
                headers.entry("type".to_owned()).or_insert(event);
            }
            Some(Incoming::Event(Event {
                topic: raw.topic.unwrap_or_default(),
                data: raw.payload?,
                headers,
                offset: raw.offset,
            }))
        }
        "ack" => Some(Incoming::Ack {
            id: number(raw.id.as_ref())?,
            top: None,
            epoch: None,
            recovered: None,
        }),
        "nack" => Some(Incoming::Nack {
            id: number(raw.id.as_ref()),
            reason: reason(payload().as_ref()),
        }),
        "reply" => {
            let id = number(raw.id.as_ref());
            let payload = payload();
            let ok = payload
                .as_ref()
                .and_then(|p| p.get("status"))
                .and_then(Value::as_str)
                == Some("ok");
            if !ok {
                return Some(Incoming::Nack {
                    id,
                    reason: reason(payload.as_ref()),
                });
            }
            let result = payload.as_ref().and_then(|p| p.get("result"));
            let field = |k| result.and_then(|r| r.get(k));
            Some(Incoming::Ack {
                id: id?,
                top: field("top").and_then(Value::as_u64),
                epoch: field("epoch")
                    .and_then(Value::as_str)
                    .filter(|e| !e.is_empty())
                    .map(str::to_owned),
                recovered: field("recovered").and_then(Value::as_bool),
            })
        }
        "slow" => {
            let payload = payload();
            let field = |k| {
                payload
                    .as_ref()
                    .and_then(|p| p.get(k))
                    .and_then(Value::as_u64)
                    .unwrap_or(0)
            };
            Some(Incoming::Slow {
                queue_depth: field("queue_depth"),
                queue_capacity: field("queue_capacity"),
            })
        }
        "request" => {
            let payload = payload();
            let method = payload.as_ref().and_then(|p| p.get("method"));
            let rate_limit = (method.and_then(Value::as_str) == Some("backpressure"))
                .then(|| {
                    payload
                        .as_ref()
                        .and_then(|p| p.get("params"))
                        .and_then(|p| p.get("rate_limit"))
                        .and_then(Value::as_f64)
                })
                .flatten()
                .filter(|r| r.is_finite() && *r >= 0.0);
            Some(Incoming::Request {
                id: raw.id?,
                rate_limit,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use super::*;

    fn json(s: &str) -> Value {
        serde_json::from_str(s).unwrap_or_default()
    }

    #[test]
    fn requests_follow_the_envelope() {
        let sub = json(&subscribe("a/#", 3, None));
        assert_eq!(sub["type"], "request");
        assert_eq!(sub["id"], "3");
        assert_eq!(
            sub["payload"],
            serde_json::json!({"method":"subscribe","params":{"patterns":["a/#"]}})
        );
        let from = Position {
            offset: 9,
            epoch: Some("ep".into()),
        };
        let hist = json(&subscribe("c", 4, Some(&from)));
        assert_eq!(
            hist["payload"],
            serde_json::json!({"method":"history","params":{"channel":"c","since":9,"epoch":"ep"}})
        );
        let data = serde_json::value::to_raw_value(&serde_json::json!({"v": 1})).ok();
        let mut headers = BTreeMap::new();
        headers.insert("sc-via".to_owned(), "n1".to_owned());
        let msg = data.map(|d| json(&publish("t/1", &d, &headers, 5)));
        let msg = msg.unwrap_or_default();
        assert_eq!(msg["type"], "data");
        assert_eq!(msg["id"], "5");
        assert_eq!(msg["topic"], "t/1");
        assert_eq!(msg["headers"]["sc-via"], "n1");
        assert_eq!(msg["payload"], serde_json::json!({"v": 1}));
        assert!(msg["timestamp"].is_u64());
    }

    #[test]
    fn answers_decode() {
        assert!(matches!(
            decode(br#"{"type":"ack","id":"7","timestamp":1}"#),
            Some(Incoming::Ack { id: 7, .. })
        ));
        match decode(br#"{"type":"nack","id":"8","payload":{"reason":"not_allowed","error":"no"}}"#)
        {
            Some(Incoming::Nack {
                id: Some(8),
                reason,
            }) => assert_eq!(reason, "no"),
            other => panic!("{other:?}"),
        }
        match decode(
            br#"{"type":"reply","id":"9","payload":{"status":"ok","result":{"channel":"c","top":4,"epoch":"e","recovered":true}}}"#,
        ) {
            Some(Incoming::Ack {
                id: 9,
                top: Some(4),
                epoch: Some(e),
                recovered: Some(true),
            }) => assert_eq!(e, "e"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode(br#"{"type":"reply","id":"10","payload":{"status":"error","error":"x"}}"#),
            Some(Incoming::Nack { id: Some(10), .. })
        ));
        match decode(
            br#"{"type":"data","id":"p-1","topic":"a","payload":{"x":1},"event":"log","offset":3}"#,
        ) {
            Some(Incoming::Event(e)) => {
                assert_eq!((e.topic.as_str(), e.offset), ("a", Some(3)));
                assert_eq!(e.headers.get("type").map(String::as_str), Some("log"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode(br#"{"type":"slow","payload":{"queue_depth":850,"queue_capacity":1000}}"#),
            Some(Incoming::Slow {
                queue_depth: 850,
                queue_capacity: 1000
            })
        ));
        match decode(
            br#"{"type":"request","id":"r1","payload":{"method":"backpressure","params":{"rate_limit":100,"unit":"msg/sec"}}}"#,
        ) {
            Some(Incoming::Request { id, rate_limit }) => {
                assert_eq!(rate_limit, Some(100.0));
                let r = json(&reply(&id, rate_limit));
                assert_eq!((r["type"].as_str(), r["id"].as_str()), (Some("reply"), Some("r1")));
                assert_eq!(r["payload"]["result"]["adjusted_to"], 100.0);
            }
            other => panic!("{other:?}"),
        }
        match decode(br#"{"type":"request","id":"r2","payload":{"method":"status"}}"#) {
            Some(Incoming::Request {
                id,
                rate_limit: None,
            }) => {
                assert_eq!(json(&reply(&id, None))["payload"]["status"], "error");
            }
            other => panic!("{other:?}"),
        }
        assert!(decode(b"nope").is_none());
        assert!(decode(br#"{"type":"zzz"}"#).is_none());
    }
}

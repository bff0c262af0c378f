//! A publication as it travels between nodes: one compact JSON object per NATS message.
//!
//! `{"o":ORIGIN,"i":INSTANCE,"s":SEQ,"k":KIND,"n":NAME,"t":TOPIC,"h":HEADERS,"d":DATA}`:
//! the origin node id, a number drawn at each start of that node (so a restarted node
//! is a new origin to the duplicate filter), its publication sequence number, the kind
//! (`c` channel, `e` broadcast event, `r` broadcast error), the gows type or event name,
//! the channel, the vws headers (JSON object or absent) and the payload. `d` and `h` are
//! JSON already and are copied in and out as they are.

use crate::publication::{Kind, Publication};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

/// Who sent a publication and its number there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Node id.
    pub node: String,
    /// Drawn at each start of that node.
    pub instance: u64,
    /// The publication's sequence number on that instance (from 1).
    pub seq: u64,
}

#[derive(Deserialize)]
struct Wire<'a> {
    o: String,
    i: u64,
    s: u64,
    k: &'a str,
    n: String,
    t: String,
    #[serde(borrow)]
    h: Option<&'a RawValue>,
    #[serde(borrow)]
    d: &'a RawValue,
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    // Serializing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// The length of `s` as a JSON string (quotes and escapes included), as serde_json
/// writes it.
fn json_str_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// The most bytes [`encode`] can write for `p` sent by node `node` (the sequence and
/// instance numbers counted at their longest): what NATS `max_payload` is checked against
/// before a publication is accepted.
pub fn encoded_len_bound(p: &Publication, node: &str) -> usize {
    let name = match &p.kind {
        Kind::Channel { gows_type } => &**gows_type,
        Kind::BroadcastEvent { event } => &**event,
        Kind::BroadcastError => "",
    };
    // `{"o":` `,"i":` (20) `,"s":` (20) `,"k":"c"` `,"n":` `,"t":` `,"h":` `,"d":` `}`
    let fixed = 5 + 5 + 20 + 5 + 20 + 8 + 5 + 5 + 5 + 5 + 1;
    fixed
        + json_str_len(node)
        + json_str_len(name)
        + json_str_len(&p.topic)
        + p.headers.as_ref().map_or(0, Bytes::len)
        + p.data.len()
}

/// Encodes `p` as sent by `origin`.
pub fn encode(p: &Publication, origin: &Origin) -> Bytes {
    let (kind, name) = match &p.kind {
        Kind::Channel { gows_type } => ("c", &**gows_type),
        Kind::BroadcastEvent { event } => ("e", &**event),
        Kind::BroadcastError => ("r", ""),
    };
    let mut out = Vec::with_capacity(64 + p.topic.len() + p.data.len());
    out.extend_from_slice(b"{\"o\":");
    push_str(&mut out, &origin.node);
    out.extend_from_slice(
        format!(
            ",\"i\":{},\"s\":{},\"k\":\"{kind}\",\"n\":",
            origin.instance, origin.seq
        )
        .as_bytes(),
    );
    push_str(&mut out, name);
    out.extend_from_slice(b",\"t\":");
    push_str(&mut out, &p.topic);
    if let Some(h) = &p.headers {
        out.extend_from_slice(b",\"h\":");
        out.extend_from_slice(h);
    }
    out.extend_from_slice(b",\"d\":");
    out.extend_from_slice(&p.data);
    out.push(b'}');
    Bytes::from(out)
}

/// Decodes a message from another node.
///
/// # Errors
/// The payload is not an envelope (a foreign publisher on our subjects, or a bug).
pub fn decode(payload: &[u8]) -> Result<(Origin, Publication), String> {
    let w: Wire<'_> = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
    let kind = match w.k {
        "c" => Kind::Channel {
            gows_type: crate::publication::gows_type(w.n),
        },
        "e" => Kind::BroadcastEvent { event: w.n.into() },
        "r" => Kind::BroadcastError,
        other => return Err(format!("unknown kind {other:?}")),
    };
    if w.h.is_some_and(|h| !h.get().starts_with('{')) {
        return Err("headers are not a JSON object".into());
    }
    let headers = w.h.map(|h| Bytes::copy_from_slice(h.get().as_bytes()));
    let data = Bytes::copy_from_slice(w.d.get().as_bytes());
    let origin = Origin {
        node: w.o,
        instance: w.i,
        seq: w.s,
    };
    Ok((origin, Publication::new(w.t.into(), kind, data, headers)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_every_field() {
        let origin = Origin {
            node: "n\"1".into(),
            instance: 7,
            seq: 42,
        };
        let p = Publication::new(
            "a/b c".into(),
            Kind::Channel {
                gows_type: "process_output".into(),
            },
            Bytes::from_static(br#"{"x":[1,"y"]}"#),
            Some(Bytes::from_static(br#"{"k":"v"}"#)),
        );
        let (o, q) = decode(&encode(&p, &origin)).expect("decodes");
        assert_eq!(o, origin);
        assert_eq!(q.topic, p.topic);
        assert_eq!(q.kind, p.kind);
        assert_eq!(q.data, p.data);
        assert_eq!(q.headers, p.headers);
        let e = Publication::new(
            "".into(),
            Kind::BroadcastEvent { event: "e".into() },
            Bytes::from_static(b"1"),
            None,
        );
        let (_, q) = decode(&encode(&e, &origin)).expect("decodes");
        assert_eq!(q.kind, e.kind);
        assert_eq!(q.headers, None);
    }

    #[test]
    fn length_bound_holds_at_the_longest_numbers() {
        let origin = Origin {
            node: "n\"\u{1}é".into(),
            instance: u64::MAX,
            seq: u64::MAX,
        };
        let p = Publication::new(
            "a\tb\"c\u{2}ü".into(),
            Kind::BroadcastEvent {
                event: "ev\\".into(),
            },
            Bytes::from_static(b"[1,2]"),
            Some(Bytes::from_static(br#"{"k":"v"}"#)),
        );
        let bound = encoded_len_bound(&p, &origin.node);
        let real = encode(&p, &origin).len();
        assert!(real <= bound && bound <= real + 10, "{real} {bound}");
    }

    #[test]
    fn foreign_payloads_are_refused() {
        assert!(decode(b"hello").is_err());
        assert!(decode(br#"{"o":"a","i":1,"s":1,"k":"z","n":"","t":"a","d":1}"#).is_err());
        assert!(decode(br#"{"o":"a","i":1,"s":1,"k":"c","n":"","t":"a","h":[1],"d":1}"#).is_err());
        assert!(decode(br#"{"o":"a","i":1,"s":1,"k":"c","n":"","t":"a","h":{},"d":1}"#).is_ok());
    }
}

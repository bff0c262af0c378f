//! Codecs: rendering a publication into a complete WebSocket frame per dialect (gows and
//! vws), and decoding client messages: the broker's decoder (serde_json, members borrowed
//! as raw slices, data compacted and copied once) against two baselines on the same
//! bytes: the decoder it replaced (a simd-json tree, then the data re-serialized; kept
//! here verbatim, with simd-json as a dev-dependency only) and a plain
//! `serde_json::Value` parse.
//!
//! Rendering happens once per publication per dialect (encode once, SPEC rule 7), and
//! decoding once per client message, so both bound the per-message CPU cost of a shard.
#![allow(clippy::unwrap_used, clippy::panic)]

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use shardcast::protocol::{decode, Buffers, Command, Dialect};
use shardcast::publication::{Kind, Publication};
use std::hint::black_box;

/// `client.max_json_depth` default.
const MAX_DEPTH: usize = 32;

/// A compact JSON object of exactly 256 bytes, shaped like a typical event.
fn payload_256() -> String {
    let head = r#"{"user":"alice","seq":123456,"ok":true,"values":[1.5,2.25,-3,4e3],"tags":["a","bb","ccc"],"nested":{"x":1,"y":[null,false]},"msg":""#;
    let tail = r#""}"#;
    let pad = 256 - head.len() - tail.len();
    let json = format!("{head}{}{tail}", "x".repeat(pad));
    assert_eq!(json.len(), 256);
    serde_json::from_str::<serde_json::Value>(&json).unwrap();
    json
}

fn publication(data: &Bytes) -> Publication {
    Publication::new(
        "room/42".into(),
        Kind::Channel {
            gows_type: "event".into(),
        },
        data.clone(),
        None,
    )
}

fn encode(c: &mut Criterion) {
    let data = Bytes::from(payload_256());
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(1));
    for (name, dialect) in [
        ("gows_publication", Dialect::Gows),
        ("vws_publication", Dialect::Vws),
    ] {
        // `frame` caches its result, so every iteration renders a fresh publication.
        group.bench_function(name, |b| {
            b.iter_batched(
                || publication(&data),
                |p| p.frame(dialect),
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

fn decode_benches(c: &mut Criterion) {
    let vws_publish = format!(r#"{{"t":"room/42","d":{},"i":7}}"#, payload_256()).into_bytes();
    // The same data as a pretty-printer would write it: the decoder's compaction path.
    let pretty_data = serde_json::to_string_pretty(
        &serde_json::from_str::<serde_json::Value>(&payload_256()).unwrap(),
    )
    .unwrap();
    let vws_publish_pretty =
        format!("{{\n  \"t\": \"room/42\",\n  \"d\": {pretty_data},\n  \"i\": 7\n}}").into_bytes();
    let gows_subscribe = br#"{"type":"subscribe","data":"room/42"}"#.to_vec();
    // A shard reuses one set of decoder buffers for every message; so does the bench.
    let mut buffers = Buffers::default();
    let mut simd_buffers = simd_json::Buffers::default();
    for message in [&vws_publish, &vws_publish_pretty] {
        let mut copy = message.clone();
        let decoded = decode(Dialect::Vws, &mut copy, MAX_DEPTH, &mut buffers);
        let Ok(Command::Publish { data, .. }) = decoded else {
            panic!("not a publish: {decoded:?}");
        };
        let old = old_simd::decode_vws(&mut message.clone(), &mut simd_buffers).unwrap();
        // The old path re-printed numbers through f64 (`4e3` became `4000.0`), and the
        // pretty copy went through `serde_json::Value` (keys sorted): compare values.
        let value = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).unwrap();
        assert_eq!(value(&data), value(payload_256().as_bytes()));
        assert_eq!(value(&old), value(&data));
        assert!(!data.contains(&b' '));
    }
    assert!(matches!(
        decode(
            Dialect::Gows,
            &mut gows_subscribe.clone(),
            MAX_DEPTH,
            &mut buffers
        ),
        Ok(Command::Subscribe { .. })
    ));

    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(1));
    // simd-json parses in place, so each iteration gets a fresh copy (made outside the
    // timing); every case gets the same treatment to keep the comparison fair.
    let cases: [(&str, &[u8]); 3] = [
        ("vws_publish", &vws_publish),
        ("vws_publish_pretty", &vws_publish_pretty),
        ("gows_subscribe", &gows_subscribe),
    ];
    for (name, message) in cases {
        let dialect = match name {
            "gows_subscribe" => Dialect::Gows,
            _ => Dialect::Vws,
        };
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || message.to_vec(),
                |bytes| {
                    let command = decode(dialect, bytes, MAX_DEPTH, &mut buffers);
                    black_box(&command);
                },
                BatchSize::SmallInput,
            );
        });
        let old_name = format!("{name}_old_simd_json");
        group.bench_function(old_name.as_str(), |b| {
            b.iter_batched_ref(
                || message.to_vec(),
                |bytes| {
                    let command = match dialect {
                        Dialect::Gows => old_simd::decode_gows_topic(bytes, &mut simd_buffers)
                            .map(|t| Bytes::copy_from_slice(t.as_bytes())),
                        Dialect::Vws | Dialect::Semstreams => {
                            old_simd::decode_vws(bytes, &mut simd_buffers)
                        }
                    };
                    black_box(&command);
                },
                BatchSize::SmallInput,
            );
        });
    }
    group.bench_function("vws_publish_serde_value", |b| {
        b.iter_batched_ref(
            || vws_publish.clone(),
            |bytes| {
                let value = serde_json::from_slice::<serde_json::Value>(bytes);
                black_box(&value);
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

/// The decoder the broker used before (`src/protocol` up to the serde_json rewrite): a
/// simd-json borrowed tree built in place, fields looked up in it, and `d` (and a
/// string/number `i`) re-serialized by walking the tree. Kept only as a baseline.
mod old_simd {
    use bytes::Bytes;
    use shardcast::protocol::json::{depth_within, write_str};
    use simd_json::{BorrowedValue, Buffers, StaticNode};
    use std::io::Write as _;

    /// The old vws publish path: depth scan, parse, `i`, `k`, `t`, `d` re-serialized.
    pub fn decode_vws(payload: &mut [u8], buffers: &mut Buffers) -> Option<Bytes> {
        if !depth_within(payload, super::MAX_DEPTH) {
            return None;
        }
        let BorrowedValue::Object(obj) =
            simd_json::borrowed::to_value_with_buffers(payload, buffers).ok()?
        else {
            return None;
        };
        let id = obj.get("i").map(|i| {
            let mut out = Vec::new();
            write_value(&mut out, i);
            String::from_utf8(out).ok().map(String::into_boxed_str)
        });
        std::hint::black_box(&id);
        if !matches!(obj.get("k"), None | Some(BorrowedValue::String(_))) {
            return None;
        }
        let BorrowedValue::String(topic) = obj.get("t")? else {
            return None;
        };
        std::hint::black_box(topic);
        let mut out = Vec::new();
        write_value(&mut out, obj.get("d")?);
        Some(Bytes::from(out))
    }

    /// The old gows subscribe path: depth scan, parse, `type`, `data` borrowed.
    pub fn decode_gows_topic<'a>(payload: &'a mut [u8], buffers: &mut Buffers) -> Option<&'a str> {
        if !depth_within(payload, super::MAX_DEPTH) {
            return None;
        }
        let value = simd_json::borrowed::to_value_with_buffers(payload, buffers).ok()?;
        let BorrowedValue::Object(obj) = value else {
            return None;
        };
        let Some(BorrowedValue::String(kind)) = obj.get("type") else {
            return None;
        };
        if kind != "subscribe" {
            return None;
        }
        match obj.get("data")? {
            BorrowedValue::String(std::borrow::Cow::Borrowed(s)) => Some(s),
            _ => None,
        }
    }

    fn write_value(out: &mut Vec<u8>, value: &BorrowedValue<'_>) {
        match value {
            BorrowedValue::Static(StaticNode::F64(f)) => {
                let _ = write!(out, "{f:?}");
            }
            BorrowedValue::Static(other) => {
                let _ = write!(out, "{other}");
            }
            BorrowedValue::String(s) => write_str(out, s),
            BorrowedValue::Array(items) => {
                out.push(b'[');
                for (n, item) in items.iter().enumerate() {
                    if n > 0 {
                        out.push(b',');
                    }
                    write_value(out, item);
                }
                out.push(b']');
            }
            BorrowedValue::Object(map) => {
                out.push(b'{');
                for (n, (key, item)) in map.iter().enumerate() {
                    if n > 0 {
                        out.push(b',');
                    }
                    write_str(out, key);
                    out.push(b':');
                    write_value(out, item);
                }
                out.push(b'}');
            }
        }
    }
}

criterion_group!(benches, encode, decode_benches);
criterion_main!(benches);

//! Codecs: rendering a publication into a complete WebSocket frame per dialect (gows and
//! vws), and decoding client messages with simd-json against a `serde_json::Value`
//! baseline on the same bytes.
//!
//! Rendering happens once per publication per dialect (encode once, SPEC rule 7), and
//! decoding once per client message, so both bound the per-message CPU cost of a shard.
#![allow(clippy::unwrap_used, clippy::panic)]

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use shardcast::protocol::{decode, Command, Dialect};
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
    let gows_subscribe = br#"{"type":"subscribe","data":"room/42"}"#.to_vec();
    // A shard reuses one set of simd-json buffers for every message; so does the bench.
    let mut buffers = simd_json::Buffers::default();
    assert!(matches!(
        decode(
            Dialect::Vws,
            &mut vws_publish.clone(),
            MAX_DEPTH,
            &mut buffers
        ),
        Ok(Command::Publish { .. })
    ));
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
    // timing); the serde_json baseline gets the same treatment to keep the comparison fair.
    group.bench_function("vws_publish_simd", |b| {
        b.iter_batched_ref(
            || vws_publish.clone(),
            |bytes| {
                let command = decode(Dialect::Vws, bytes, MAX_DEPTH, &mut buffers);
                black_box(&command);
            },
            BatchSize::SmallInput,
        );
    });
    group.bench_function("vws_publish_serde_json", |b| {
        b.iter_batched_ref(
            || vws_publish.clone(),
            |bytes| {
                let value = serde_json::from_slice::<serde_json::Value>(bytes);
                black_box(&value);
            },
            BatchSize::SmallInput,
        );
    });
    group.bench_function("gows_subscribe_simd", |b| {
        b.iter_batched_ref(
            || gows_subscribe.clone(),
            |bytes| {
                let command = decode(Dialect::Gows, bytes, MAX_DEPTH, &mut buffers);
                black_box(&command);
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

criterion_group!(benches, encode, decode_benches);
criterion_main!(benches);

//! Which deflate implementation compresses a publication (permessage-deflate, SPEC §10):
//! whole-message raw deflate of realistic ~1 KiB payloads, a JSON event and a batch of log
//! lines, with flate2 on zlib-rs (streaming API, sync flush as RFC 7692 §7.2.1 asks, then
//! reset: what `shardcast::deflate` does) against libdeflater (whole-buffer libdeflate, a
//! C library). Time per message here; the compressed sizes are printed once per input
//! and level (`cargo bench --bench deflate`), and BENCHMARKS.md records both and the
//! choice.
//!
//! A publication is compressed once per dialect however many subscribers it has, so this
//! time is paid per publication, not per delivery.
#![allow(clippy::unwrap_used, clippy::panic)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flate2::{Compress, Compression, FlushCompress};
use std::hint::black_box;

/// A ~1 KiB JSON event, shaped like the telemetry/notification events brokers carry.
fn json_event() -> Vec<u8> {
    let readings: Vec<String> = (0..10)
        .map(|k| {
            format!(
                r#"{{"sensor":"temp-{k:02}","value":{}.{},"unit":"celsius","status":"ok","ts":"2026-12-06T02:{:02}:{:02}.{:03}Z"}}"#,
                20 + k,
                (k * 37) % 100,
                (k * 7) % 60,
                (k * 13) % 60,
                (k * 101) % 1000
            )
        })
        .collect();
    format!(
        r#"{{"type":"event","channel":"plant/line-4/telemetry","processId":"gw-eu-west-1a-7f3c","data":{{"id":"3b9f2c1e-8d4a-4f6e-9a21-5c7d0e8b1f42","source":"sensor-gateway","readings":[{}]}},"timestamp":"2026-12-06T02:41:17.512Z"}}"#,
        readings.join(",")
    )
    .into_bytes()
}

/// ~1 KiB of log lines as a log-tailing channel carries them.
fn log_lines() -> Vec<u8> {
    let levels = ["INFO", "WARN", "INFO", "DEBUG", "ERROR"];
    let mut out = String::from(r#"{"k":"e","t":"logs/api","d":""#);
    for i in 0..9 {
        out.push_str(&format!(
            "2026-12-06T02:41:{:02}.{:03}Z {} api-7f3c req={:08x} GET /v1/orders/{} status={} dur={}ms\\n",
            i * 3,
            (i * 211) % 1000,
            levels[i % levels.len()],
            0x5eed_0000u32 + (i as u32 * 7919),
            10_000 + i * 37,
            if i % 5 == 4 { 500 } else { 200 },
            3 + i * 11
        ));
    }
    out.push_str("\"}");
    out.into_bytes()
}

/// What the broker does: raw deflate, sync flush, tail dropped, reset.
fn flate2_deflate(c: &mut Compress, input: &[u8], out: &mut Vec<u8>) -> usize {
    out.clear();
    c.compress_vec(input, out, FlushCompress::Sync).unwrap();
    assert_eq!(c.total_in() as usize, input.len(), "buffer large enough");
    let n = out.len() - 4;
    c.reset();
    n
}

fn libdeflate(c: &mut libdeflater::Compressor, input: &[u8], out: &mut [u8]) -> usize {
    c.deflate_compress(input, out).unwrap()
}

fn bench(crit: &mut Criterion) {
    let inputs = [("json_event", json_event()), ("log_lines", log_lines())];
    for (name, input) in &inputs {
        let mut group = crit.benchmark_group(format!("deflate/{name}"));
        group.throughput(Throughput::Bytes(input.len() as u64));
        for level in [1u32, 6] {
            let mut z = Compress::new_with_window_bits(Compression::new(level), false, 15);
            let mut zout = Vec::with_capacity(input.len() + 256);
            let mut l = libdeflater::Compressor::new(
                libdeflater::CompressionLvl::new(level as i32).unwrap(),
            );
            let mut lout = vec![0u8; l.deflate_compress_bound(input.len())];
            eprintln!(
                "{name} ({} B) level {level}: flate2/zlib-rs {} B, libdeflater {} B",
                input.len(),
                flate2_deflate(&mut z, input, &mut zout),
                libdeflate(&mut l, input, &mut lout)
            );
            group.bench_function(format!("flate2_zlib_rs/level{level}"), |b| {
                b.iter(|| flate2_deflate(&mut z, black_box(input), &mut zout))
            });
            group.bench_function(format!("libdeflater/level{level}"), |b| {
                b.iter(|| libdeflate(&mut l, black_box(input), &mut lout))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

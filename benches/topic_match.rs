//! Topic matching: how long one publication's lookup in a shard's subscription [`Index`]
//! takes with 10k subscriptions, for exact channels (hash lookup, hit and miss) and for
//! MQTT wildcard patterns (`+`/`#` trie walk).
//!
//! Every publication pays this once per shard before any fan-out, so it bounds the
//! publish rate of a shard regardless of how many subscribers a topic has.
#![allow(clippy::unwrap_used, clippy::panic)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shardcast::topic::{pattern_matches, validate_pattern, Index, Limits};
use std::hint::black_box;

const LIMITS: Limits = Limits {
    max_bytes: 256,
    max_levels: 8,
};

const SUBSCRIPTIONS: u32 = 10_000;

/// Builds an index from `patterns`, validating each like the shard does on subscribe.
fn index_of(patterns: &[String]) -> Index<u32> {
    let mut index = Index::new();
    for (v, p) in (0u32..).zip(patterns) {
        validate_pattern(p, &LIMITS).unwrap();
        index.insert(p, v);
    }
    index
}

fn count_matches(index: &Index<u32>, topic: &str) -> usize {
    let mut n = 0;
    index.for_each_match(topic, |_| n += 1);
    n
}

fn exact(c: &mut Criterion) {
    let patterns: Vec<String> = (0..SUBSCRIPTIONS).map(|i| format!("room/{i}")).collect();
    let index = index_of(&patterns);
    let (hit, miss) = ("room/4242", "room/missing");
    assert_eq!(count_matches(&index, hit), 1);
    assert_eq!(count_matches(&index, miss), 0);

    let mut group = c.benchmark_group("topic");
    // One hit and one miss per iteration.
    group.throughput(Throughput::Elements(2));
    group.bench_function("exact_10k", |b| {
        b.iter(|| {
            let mut sum = 0u32;
            index.for_each_match(black_box(hit), |v| sum = sum.wrapping_add(v));
            index.for_each_match(black_box(miss), |v| sum = sum.wrapping_add(v));
            black_box(sum)
        });
    });
    group.finish();
}

/// 10k patterns of 3-4 levels, four shapes in turn; `a`/`b` take 50 values each so every
/// (shape, a, b) appears once.
fn wildcard_patterns() -> Vec<String> {
    (0..SUBSCRIPTIONS)
        .map(|i| {
            let (a, b) = ((i / 4) % 50, (i / 4 / 50) % 50);
            match i % 4 {
                0 => format!("org{a}/+/dev{i}"),
                1 => format!("org{a}/site{b}/#"),
                2 => format!("org{a}/+/+/m{i}"),
                _ => format!("+/site{b}/dev{i}/#"),
            }
        })
        .collect()
}

fn wildcard(c: &mut Criterion) {
    let patterns = wildcard_patterns();
    let index = index_of(&patterns);
    // Hits `org7/site3/#`, `org7/+/+/m630` and `+/site3/dev631/#` (a = 7, b = 3).
    let topic = "org7/site3/dev631/m630";
    let expected = patterns
        .iter()
        .filter(|p| pattern_matches(p, topic))
        .count();
    assert_eq!(count_matches(&index, topic), expected);
    assert!(expected >= 3, "topic should hit a few patterns");

    let mut group = c.benchmark_group("topic");
    group.throughput(Throughput::Elements(1));
    group.bench_function("wildcard_10k", |b| {
        b.iter(|| {
            let mut sum = 0u32;
            index.for_each_match(black_box(topic), |v| sum = sum.wrapping_add(v));
            black_box(sum)
        });
    });
    group.finish();
}

criterion_group!(benches, exact, wildcard);
criterion_main!(benches);

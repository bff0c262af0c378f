//! Fan-out and the paths around it: queuing one shared frame to 10k client outboxes,
//! parsing a read buffer full of masked client frames, and handing publications from one
//! shard thread to another through a shard inbox.
//!
//! These are the per-subscriber and per-message costs that decide how many clients a
//! shard can serve: a publication to a popular topic is one `Bytes` clone per subscriber,
//! every client message goes through the frame reader, and every publication reaching
//! another shard crosses an inbox.
#![allow(clippy::unwrap_used, clippy::panic)]

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use shardcast::config::OnFull;
use shardcast::conn::outbox::{Limits as OutboxLimits, Outbox, Pushed};
use shardcast::conn::reader::{parse, Flow, Fragments, Incoming};
use shardcast::protocol::Dialect;
use shardcast::publication::{Kind, Publication};
use shardcast::shard::inbox::{channel, ShardMsg};
use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const OUTBOXES: usize = 10_000;
const FRAMES_PER_READ: usize = 64;
const HANDOFFS: usize = 100_000;

/// `client.queue_frames` / `client.queue_bytes` defaults.
const LIMITS: OutboxLimits = OutboxLimits {
    frames: 4096,
    bytes: 1 << 20,
    on_full: OnFull::Disconnect,
};

/// `client.max_message_bytes` default.
const MAX_MESSAGE: usize = 65_536;

/// `server.inbox_capacity` default.
const INBOX_CAPACITY: usize = 65_536;

fn publication() -> Publication {
    let data = format!(r#"{{"seq":1,"msg":"{}"}}"#, "x".repeat(200));
    Publication::new(
        "room/42".into(),
        Kind::Channel {
            gows_type: "event".into(),
        },
        Bytes::from(data),
        None,
    )
}

fn outbox_push(c: &mut Criterion) {
    let frame = publication().frame(Dialect::Vws);
    let mut outboxes: Vec<Outbox> = (0..OUTBOXES).map(|_| Outbox::default()).collect();
    assert_eq!(outboxes[0].push(frame.clone(), &LIMITS), Pushed::Queued);
    outboxes[0].advance(frame.len());

    let mut group = c.benchmark_group("fanout");
    group.throughput(Throughput::Elements(OUTBOXES as u64));
    group.bench_function("outbox_push_10k", |b| {
        b.iter(|| {
            for outbox in &mut outboxes {
                black_box(outbox.push(frame.clone(), &LIMITS));
            }
            // Stands in for the writers draining: keeps every queue at steady state
            // (deque allocated, one frame per push) and is part of the measured time.
            for outbox in &mut outboxes {
                outbox.advance(frame.len());
            }
        });
    });
    group.finish();
}

/// A masked client text frame (RFC 6455 §5.2) carrying `payload`.
fn masked_text_frame(payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = vec![0x81];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    out
}

/// 64 frames alternating a short subscribe and a ~250-byte publish (16-bit length).
fn read_buffer() -> Vec<u8> {
    let subscribe = br#"{"k":"s","t":"room/+","i":1}"#.to_vec();
    let publish = format!(
        r#"{{"t":"room/42","d":{{"msg":"{}"}},"i":2}}"#,
        "y".repeat(200)
    );
    (0..FRAMES_PER_READ)
        .flat_map(|i| {
            let mask = [i as u8, 0x5a, 0xc3, 0x17];
            if i % 2 == 0 {
                masked_text_frame(&subscribe, mask)
            } else {
                masked_text_frame(publish.as_bytes(), mask)
            }
        })
        .collect()
}

fn frame_parse(c: &mut Criterion) {
    let buffer = read_buffer();
    let mut check = buffer.clone();
    let mut seen = 0;
    let parsed = parse(&mut check, &mut None, MAX_MESSAGE, |m| {
        assert!(matches!(m, Incoming::Text(_)));
        seen += 1;
        Flow::Continue
    })
    .unwrap();
    assert_eq!((parsed.consumed, seen), (buffer.len(), FRAMES_PER_READ));

    let mut group = c.benchmark_group("fanout");
    group.throughput(Throughput::Elements(FRAMES_PER_READ as u64));
    // Parsing unmasks in place, so each iteration gets a fresh copy (outside the timing).
    group.bench_function("frame_parse", |b| {
        b.iter_batched_ref(
            || buffer.clone(),
            |buf| {
                let mut fragments: Option<Box<Fragments>> = None;
                let parsed = parse(buf, &mut fragments, MAX_MESSAGE, |m| {
                    black_box(m);
                    Flow::Continue
                });
                black_box(parsed)
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

/// One producer thread hands `HANDOFFS` clones of one `Arc<Publication>` to a consumer
/// thread; the time is the whole transfer, from both threads starting to the last
/// message received.
fn handoff_once(publication: &Arc<Publication>) -> Duration {
    let (tx, rx) = channel(INBOX_CAPACITY);
    let start = Arc::new(Barrier::new(2));
    let consumer = {
        let start = Arc::clone(&start);
        std::thread::spawn(move || {
            start.wait();
            let mut received = 0;
            while received < HANDOFFS {
                match rx.try_recv() {
                    Some(msg) => {
                        black_box(msg);
                        received += 1;
                    }
                    None => std::thread::yield_now(),
                }
            }
        })
    };
    start.wait();
    let began = Instant::now();
    for _ in 0..HANDOFFS {
        let mut msg = ShardMsg::Deliver(Arc::clone(publication));
        // A full inbox hands the message back; the producer retries, as a shard would.
        while let Err(back) = tx.try_send(msg) {
            msg = back;
            std::thread::yield_now();
        }
    }
    consumer.join().unwrap();
    began.elapsed()
}

fn handoff(c: &mut Criterion) {
    let publication = Arc::new(publication());
    let mut group = c.benchmark_group("handoff");
    group.throughput(Throughput::Elements(HANDOFFS as u64));
    // Each iteration moves 100k messages (milliseconds), so fewer samples suffice.
    group.sample_size(10);
    group.bench_function("inbox_100k", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| handoff_once(&publication)).sum());
    });
    group.finish();
}

criterion_group!(benches, outbox_push, frame_parse, handoff);
criterion_main!(benches);

use super::cursor::{pump, Cursors, Live};
use super::*;
use crate::config::{Config, HistoryRule, OnFull};
use crate::conn::outbox::{Limits, Outbox};
use crate::protocol::Dialect;
use crate::publication::{Kind, EVENT};
use bytes::Bytes;
use std::borrow::Cow;

fn rule(pattern: &str, size: usize, bytes: u64, replay: Replay) -> HistoryRule {
    HistoryRule {
        pattern: Some(pattern.to_owned()),
        prefix: None,
        size,
        bytes,
        ttl: Duration::from_secs(60),
        replay,
    }
}

fn store(rules: Vec<HistoryRule>, max_bytes: u64) -> History {
    History::new(&HistoryConfig { max_bytes, rules })
}

fn publication(topic: &str, data: &str) -> Arc<Publication> {
    Arc::new(Publication::new(
        topic.into(),
        Kind::Channel {
            gows_type: Cow::Borrowed(EVENT),
        },
        Bytes::copy_from_slice(data.as_bytes()),
        None,
    ))
}

/// Appends `n` publications to `topic` and returns them.
fn publish(h: &History, topic: &str, n: usize) -> Vec<Arc<Publication>> {
    (0..n)
        .map(|i| {
            let p = publication(topic, &i.to_string());
            let rule = h.rule_for(topic).expect("history channel");
            h.append(&p, rule, || ());
            p
        })
        .collect()
}

fn offsets(h: &History, topic: &str) -> Vec<u64> {
    let mut seen = Vec::new();
    h.read(topic, 0, |p| {
        seen.push(p.offset());
        true
    });
    seen
}

#[test]
fn rules_first_match_wins_and_process_is_built_in() {
    let h = store(
        vec![
            rule("chat/private/#", 0, 1024, Replay::None),
            rule("chat/#", 10, 1024, Replay::None),
        ],
        1 << 20,
    );
    assert_eq!(h.rule_for("chat/private/x"), None, "size 0 keeps none");
    assert_eq!(h.rule_for("chat/room"), Some(1));
    assert_eq!(h.rule_for("news"), None);
    assert_eq!(
        h.rule_for("process:b1"),
        Some(2),
        "built-in rule after the user's"
    );
    let replaced = store(
        vec![HistoryRule {
            prefix: Some("process:".into()),
            pattern: None,
            ..rule("", 0, 1, Replay::None)
        }],
        1 << 20,
    );
    assert_eq!(
        replaced.rule_for("process:b1"),
        None,
        "a process: rule replaces it"
    );
    assert_eq!(
        store(vec![], 0).rule_for("process:b1"),
        None,
        "max_bytes 0 = off"
    );
}

#[test]
fn offsets_are_gap_free_per_channel_and_size_bounds_retention() {
    let h = store(vec![rule("a/+", 5, 1 << 20, Replay::None)], 1 << 20);
    let ps = publish(&h, "a/x", 8);
    publish(&h, "a/y", 2);
    assert_eq!(
        ps.iter().map(|p| p.offset()).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>()
    );
    assert_eq!(offsets(&h, "a/x"), vec![4, 5, 6, 7, 8]);
    assert_eq!(offsets(&h, "a/y"), vec![1, 2]);
    assert_eq!(
        h.stats.evicted[Eviction::Size as usize].load(Ordering::Relaxed),
        3
    );
    assert_eq!(h.stats.retained.load(Ordering::Relaxed), 7);
}

#[test]
fn offsets_stay_gap_free_with_concurrent_publishers() {
    let h = Arc::new(store(
        vec![rule("t", 100_000, 1 << 30, Replay::None)],
        1 << 30,
    ));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let h = h.clone();
            std::thread::spawn(move || publish(&h, "t", 2000))
        })
        .collect();
    let mut all: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("thread"))
        .map(|p| p.offset())
        .collect();
    all.sort_unstable();
    assert_eq!(all, (1..=8000).collect::<Vec<_>>());
}

#[test]
fn bytes_and_max_bytes_evict_oldest_of_least_recently_published() {
    // Every entry has the same cost; six fit under the cap.
    let cost = memory_cost(&publication("old", "0123456789"));
    assert_eq!(cost, memory_cost(&publication("new", "0123456789")));
    // Bookkeeping, payload and name, and a frame buffer for each dialect.
    let frame = (10 + 2 * 3 + 5 + 160 + 10) * 5 / 4 + 64;
    assert_eq!(cost, ENTRY_OVERHEAD + 13 * 5 / 4 + 2 * frame);
    let h = store(
        vec![
            rule("small", 1000, 35, Replay::None),
            rule("#", 1000, 1 << 20, Replay::None),
        ],
        cost * 6,
    );
    let put = |topic: &str| {
        let p = publication(topic, "0123456789");
        h.append(&p, h.rule_for(topic).expect("rule"), || ());
    };
    for _ in 0..5 {
        put("small");
    }
    assert_eq!(
        offsets(&h, "small"),
        vec![3, 4, 5],
        "rule bytes: 3 x 10 fit in 35"
    );
    assert_eq!(
        h.stats.evicted[Eviction::Bytes as usize].load(Ordering::Relaxed),
        2
    );
    h.expire(Instant::now() + Duration::from_secs(61), |_| false);
    assert_eq!(h.stats.retained_bytes.load(Ordering::Relaxed), 0);

    for _ in 0..5 {
        put("old");
    }
    for _ in 0..3 {
        put("new"); // past six entries "old", the least recently published, loses first
    }
    assert_eq!(offsets(&h, "old"), vec![3, 4, 5]);
    assert_eq!(offsets(&h, "new"), vec![1, 2, 3]);
    put("old"); // now "new" is the least recently published
    assert_eq!(offsets(&h, "new"), vec![2, 3]);
    assert_eq!(offsets(&h, "old"), vec![3, 4, 5, 6]);
    assert_eq!(h.stats.retained_bytes.load(Ordering::Relaxed), cost * 6);
    assert_eq!(h.stats.retained.load(Ordering::Relaxed), 6);
    assert_eq!(
        h.stats.evicted[Eviction::MaxBytes as usize].load(Ordering::Relaxed),
        3
    );
}

#[test]
fn resume_decides_start_and_recovered() {
    let h = store(vec![rule("t", 3, 1 << 20, Replay::None)], 1 << 20);
    publish(&h, "t", 5); // retains 3, 4, 5
    let at = h.attach("t", 0);
    assert_eq!((at.first, at.top), (3, 5));
    let e = at.epoch.clone();
    assert_eq!(
        at.resume(4, Some(&e)),
        Start {
            next: 5,
            recovered: true
        }
    );
    assert_eq!(
        at.resume(2, Some(&e)),
        Start {
            next: 3,
            recovered: true
        }
    );
    assert_eq!(
        at.resume(1, Some(&e)),
        Start {
            next: 3,
            recovered: false
        }
    );
    assert_eq!(
        at.resume(5, None),
        Start {
            next: 6,
            recovered: true
        }
    );
    assert_eq!(
        at.resume(4, Some("other")),
        Start {
            next: 3,
            recovered: false
        }
    );
    assert_eq!(
        at.resume(9, Some(&e)),
        Start {
            next: 6,
            recovered: false
        }
    );
    assert_eq!(
        at.resume(0, None),
        Start {
            next: 3,
            recovered: false
        }
    );
    assert_eq!(at.plain(), 6);
    let all = store(vec![rule("t", 3, 1 << 20, Replay::All)], 1 << 20);
    let at = all.attach("t", 0);
    assert_eq!((at.plain(), at.resume(0, None).recovered), (1, true));
}

#[test]
fn expiry_drops_idle_channels_without_subscribers_and_changes_the_epoch() {
    let h = store(vec![rule("t/+", 10, 1 << 20, Replay::None)], 1 << 20);
    publish(&h, "t/a", 2);
    publish(&h, "t/b", 2);
    let epoch = h.attach("t/a", 0).epoch;
    let later = Instant::now() + Duration::from_secs(61);
    h.expire(Instant::now(), |_| false);
    assert_eq!(
        h.stats.channels.load(Ordering::Relaxed),
        2,
        "ttl not passed yet"
    );
    h.expire(later, |c| c == "t/b");
    assert_eq!(offsets(&h, "t/a"), Vec::<u64>::new());
    assert_eq!(offsets(&h, "t/b"), vec![1, 2], "subscribed: never expires");
    assert_eq!(
        h.stats.evicted[Eviction::Ttl as usize].load(Ordering::Relaxed),
        2
    );
    let again = h.attach("t/a", 0);
    assert_ne!(again.epoch, epoch, "a new epoch once the offsets restart");
    assert_eq!(again.top, 0);
}

#[test]
fn cursor_delivers_next_skips_seen_and_catches_up() {
    let mut cursors = Cursors::default();
    cursors.set("c", 4, 3);
    let c = cursors.get_mut("c").expect("cursor");
    assert_eq!(c.on_live(3), Live::Skip);
    assert_eq!(c.on_live(4), Live::Deliver);
    assert_eq!(c.on_live(6), Live::CatchUp);
    assert!(cursors.behind());
    assert!(cursors.remove("c"));
}

#[test]
fn pump_is_paced_by_the_outbox_and_sends_each_offset_once_in_order() {
    let h = store(vec![rule("t", 10_000, 1 << 30, Replay::All)], 1 << 30);
    publish(&h, "t", 1000);
    let limits = Limits {
        frames: 100,
        bytes: 1 << 20,
        on_full: OnFull::Disconnect,
    };
    let mut cursors = Cursors::default();
    cursors.set("t", 1, 1000);
    let mut outbox = Outbox::default();
    let mut got = 0u64;
    let mut rounds = 0;
    while cursors.behind() {
        let n = pump(&h, &mut cursors, Dialect::Vws, &mut outbox, &limits);
        assert!(outbox.len() <= 50, "half the frame bound per round");
        got += n;
        rounds += 1;
        outbox = Outbox::default(); // the socket took everything
        assert!(rounds < 100);
    }
    assert_eq!(got, 1000);
    assert_eq!(rounds, 20);
    assert_eq!(cursors.get_mut("t").map(|c| c.next), Some(1001));
    let _ = Config::default();
}

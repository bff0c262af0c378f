//! One run from start to end: connect the subscribers, measure the setup, start the
//! publishers, sample the broker over the measured window, drain, and merge the counts
//! into a [`Report`]. In the abuse scenario the window has two halves: the attackers
//! start at the split, and after the drain the broker is given time to recover.

use crate::abuse::{self, soak};
use crate::brokerstats;
use crate::plan::Plan;
use crate::procfs::{self, Proc};
use crate::progress::Progress;
use crate::publishers::{self, Published};
use crate::report::{Broker, Connections, Harness, Ingest, Latency, Report};
use crate::subscribers;
use crate::tally::{now_ns, Live, Tally, Times};
use anyhow::{bail, Result};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// Time given to the broker after setup so its RSS reflects the new connections.
const SETTLE: Duration = Duration::from_millis(500);
const POLL: Duration = Duration::from_millis(50);

/// Broker and harness figures at one instant.
#[derive(Clone, Copy, Default)]
struct Sample {
    broker_cpu: Option<f64>,
    broker_rss: Option<u64>,
    broker_writes: Option<brokerstats::Writes>,
    own_cpu: f64,
}

fn sample(plan: &Plan, broker: Option<Proc>) -> Sample {
    Sample {
        broker_cpu: broker.and_then(Proc::cpu_seconds),
        broker_rss: broker.and_then(Proc::rss_kib),
        broker_writes: plan.broker_stats.and_then(brokerstats::fetch),
        own_cpu: Proc::Slf.cpu_seconds().unwrap_or(0.0),
    }
}

pub fn run(plan: Plan, progress: &Progress) -> Result<Report> {
    let fd_limit = procfs::raise_fd_limit();
    plan.check(fd_limit)?;
    let broker = plan.pid.map(Proc::Pid);
    if let Some(b) = broker {
        if !b.alive() {
            bail!("--pid {:?}: no such process", plan.pid);
        }
    }
    let plan = Arc::new(plan);
    let live = Arc::new(Live::default());
    // shardcast answers /api/stats on its WebSocket port; other brokers do not, and their
    // connection counts are then read from /proc only.
    let probe = soak::Probe {
        broker,
        stats: plan
            .broker_stats
            .or(plan.is_abuse().then_some(plan.sub_target.addr)),
    };
    let mut abused = None;
    let rss_before = broker.and_then(Proc::rss_kib);
    let mut peak_rss = rss_before.unwrap_or(0);

    // Subscribers.
    let (running_tx, running_rx) = tokio::sync::watch::channel(true);
    let before_setup = sample(&plan, broker);
    let setup_start = now_ns();
    let sub_threads: Vec<_> = (0..plan.threads)
        .map(|t| {
            let (plan, live, running) = (plan.clone(), live.clone(), running_rx.clone());
            thread::spawn(move || subscribers::thread_main(plan, live, running, t))
        })
        .collect();
    let wanted = plan.subs + plan.slow;
    let mut tally = Tally::default();
    loop {
        let done = live.ready.load(Ordering::Relaxed) + live.failed.load(Ordering::Relaxed);
        if done >= wanted {
            break;
        }
        if now_ns() - setup_start > plan.setup_timeout.as_nanos() as u64 {
            tally.error(format!(
                "setup timed out: {done} of {wanted} subscribers done"
            ));
            break;
        }
        progress.show("connecting", &live, wanted);
        thread::sleep(POLL);
    }
    let ready = live.ready.load(Ordering::Relaxed);
    let after_connect = sample(&plan, broker);
    let setup_ns = live
        .last_ready_ns
        .load(Ordering::Relaxed)
        .saturating_sub(setup_start);
    thread::sleep(SETTLE);
    let after_setup = sample(&plan, broker);
    let primed = (plan.is_abuse() && !plan.prime.is_zero()).then(|| {
        progress.show("priming", &live, wanted);
        let start = probe.read();
        let attackers = abuse::spawn(&plan, now_ns() + plan.prime.as_nanos() as u64);
        thread::sleep(plan.prime);
        let recovery = soak::recover(
            vec![attackers],
            probe,
            &start,
            soak::PRIME_SETTLE,
            soak::Until::Connections,
        );
        soak::Primed::new(start, recovery)
    });

    // Publishing (or, for idle runs, holding) over the measured window.
    let published: Option<Published>;
    let (at_start, at_end, window_s);
    if !plan.publishes() {
        let start = now_ns();
        let end = start + plan.duration.as_nanos() as u64;
        live.window.set(Times {
            start,
            end,
            slice: 0,
        });
        at_start = sample(&plan, broker);
        wait_until(
            end,
            progress,
            "holding",
            &live,
            wanted,
            broker,
            &mut peak_rss,
        );
        at_end = sample(&plan, broker);
        window_s = plan.duration.as_secs_f64();
        published = None;
    } else {
        let publisher = {
            let (plan, live) = (plan.clone(), live.clone());
            thread::spawn(move || publishers::thread_main(plan, live))
        };
        while live.window.get().0 == u64::MAX && !publisher.is_finished() {
            thread::sleep(Duration::from_millis(5));
        }
        let times = live.window.times();
        let (start, end) = (times.start, times.end);
        let mut waiting = |until, phase: &str, peak: &mut u64| {
            wait_until(until, progress, phase, &live, wanted, broker, peak);
            peak_rss = peak_rss.max(*peak);
        };
        waiting(start, "warm-up", &mut 0);
        at_start = sample(&plan, broker);
        let soaked = if plan.is_abuse() {
            Some(soak::attack_window(&plan, times, probe, &mut waiting))
        } else {
            waiting(end, "measuring", &mut 0);
            None
        };
        at_end = sample(&plan, broker);
        peak_rss = peak_rss.max(at_end.broker_rss.unwrap_or(0));
        window_s = end.saturating_sub(start) as f64 / 1e9;
        // The healthy traffic goes on while the broker recovers, so "after" is read
        // under the same load as "before"; then the publishers stop.
        abused = soaked.map(|soaked| {
            progress.show("recovering", &live, wanted);
            let recovery = soak::recover(
                soaked.attackers,
                probe,
                &soaked.before,
                plan.settle,
                soak::Until::ConnectionsAndMemory,
            );
            live.stop.fetch_min(now_ns(), Ordering::AcqRel);
            (
                soaked.before,
                soaked.peak_kib,
                (recovery, soaked.contention),
            )
        });
        let done = match publisher.join() {
            Ok(p) => p,
            Err(_) => bail!("the publisher thread panicked"),
        };
        // Stragglers: wait until every reader has everything, or the drain time is up.
        let expected = expected_deliveries(&plan, |t| done.to_topic(t));
        let drain_end = now_ns() + plan.drain.as_nanos() as u64;
        while live.received.load(Ordering::Relaxed) < expected && now_ns() < drain_end {
            progress.show("draining", &live, wanted);
            thread::sleep(Duration::from_millis(10));
        }
        published = Some(done);
    }
    let _ = running_tx.send(false);
    for t in sub_threads {
        match t.join() {
            Ok(t) => tally.merge(t),
            Err(_) => tally.error("a subscriber thread panicked"),
        }
    }
    progress.finish();

    let published_total = published.as_ref().map_or(0, Published::total);
    let expected = published
        .as_ref()
        .map_or(0, |p| expected_deliveries(&plan, |t| p.to_topic(t)));
    let abuse = match (abused, &published) {
        (Some((before, peak, recovery)), Some(p)) => {
            let abused_sent: u64 = p.counts_abused.iter().flatten().sum();
            let abused_expected = expected_deliveries(&plan, |t| p.to_topic_abused(t));
            let abused = &tally.abused;
            let phases = (
                soak::Phase::new(
                    published_total - abused_sent,
                    expected - abused_expected,
                    tally.received - abused.received,
                    Latency::from_histogram(&tally.latency),
                ),
                soak::Phase::new(
                    abused_sent,
                    abused_expected,
                    abused.received,
                    Latency::from_histogram(&abused.latency),
                ),
            );
            Some(soak::AbuseReport::judge(
                phases,
                (primed, before, Some(peak)),
                recovery,
                (&abuse::chosen(&plan), plan.latency_rule),
            ))
        }
        _ => None,
    };
    let (churned, publisher_tally, answers, backpressure) = match published {
        Some(p) => (p.churned, p.tally, p.answers, p.backpressure),
        None => (0, Tally::default(), None, None),
    };
    tally.merge(publisher_tally);
    peak_rss = peak_rss.max(at_end.broker_rss.unwrap_or(0));

    let broker_cpu = match (at_start.broker_cpu, at_end.broker_cpu) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let own_cpu = at_end.own_cpu - at_start.own_cpu;
    let delivered_per_s = tally.window_arrivals as f64 / window_s.max(1e-9);
    let per_cpu = |cpu: f64| (cpu > 0.0).then(|| tally.window_arrivals as f64 / cpu);
    let latency = tally.window_latency();
    let connections = (ready + plan.pubs).max(1);
    let ingest = answers.map(|answers| {
        let acked = answers.window_acks as f64;
        Ingest {
            window: plan.window,
            topic: plan.ingest_topic.clone(),
            acked_per_s: acked / window_s.max(1e-9),
            acked_per_broker_cpu_s: broker_cpu.filter(|c| *c > 0.0).map(|c| acked / c),
            answers,
        }
    });
    let readers = if plan.is_edges() {
        std::mem::take(&mut tally.readers)
    } else {
        Vec::new()
    };
    Ok(Report {
        label: plan.label.clone(),
        scenario: plan.scenario.name().to_string(),
        url: plan.sub_target.url.clone(),
        pub_url: plan.pub_target.url.clone(),
        dialect: plan.dialect,
        pub_dialect: plan.pub_dialect,
        subs: plan.subs,
        slow: plan.slow,
        topics: plan.topics,
        pubs: plan.pubs,
        rate: plan.rate,
        payload: plan.payload,
        churn: plan.churn,
        warmup_s: plan.warmup.as_secs_f64(),
        window_s,
        threads: plan.threads,
        connections: Connections {
            ready,
            failed: live.failed.load(Ordering::Relaxed),
            setup_s: setup_ns as f64 / 1e9,
            per_s: ready as f64 / (setup_ns as f64 / 1e9).max(1e-9),
            broker_cpu_s: match (before_setup.broker_cpu, after_connect.broker_cpu) {
                (Some(a), Some(b)) => Some(b - a),
                _ => None,
            },
            harness_cpu_s: after_connect.own_cpu - before_setup.own_cpu,
        },
        published: published_total,
        expected,
        received: tally.received,
        lost: expected.saturating_sub(tally.received),
        gaps: tally.gaps,
        duplicates: tally.duplicates,
        offered_deliveries_per_s: plan.offered_deliveries(),
        deliveries_per_s: delivered_per_s,
        latency_ms: Latency::from_histogram(&latency),
        latency_curve: Latency::curve(&latency),
        broker: plan.pid.map(|pid| Broker {
            pid,
            cpu_s: broker_cpu,
            deliveries_per_cpu_s: broker_cpu.and_then(per_cpu),
            rss_kib_before: rss_before,
            rss_kib_after_setup: after_setup.broker_rss,
            rss_kib_end: at_end.broker_rss,
            rss_kib_peak: Some(peak_rss),
            frames_per_write: brokerstats::frames_per_write(
                at_start.broker_writes,
                at_end.broker_writes,
            ),
            rss_bytes_per_connection: match (rss_before, after_setup.broker_rss) {
                (Some(a), Some(b)) => Some((b as f64 - a as f64) * 1024.0 / connections as f64),
                _ => None,
            },
        }),
        harness: Harness {
            cpu_s: own_cpu,
            deliveries_per_cpu_s: per_cpu(own_cpu),
            threads: plan.threads + 2,
        },
        churned,
        errors: tally.errors,
        closes: tally.closes,
        abuse,
        ingest,
        backpressure,
        readers,
    })
}

/// Every reader should get every message published to its topic (`sent(topic)`).
fn expected_deliveries(plan: &Plan, sent: impl Fn(usize) -> u64) -> u64 {
    (0..plan.topics)
        .map(|t| {
            let readers = plan.subs / plan.topics + usize::from(t < plan.subs % plan.topics);
            readers as u64 * sent(t)
        })
        .sum()
}

/// Sleeps until `deadline` (in [`now_ns`] time), updating the progress line and the
/// broker's peak RSS on the way.
fn wait_until(
    deadline: u64,
    progress: &Progress,
    phase: &str,
    live: &Live,
    wanted: usize,
    broker: Option<Proc>,
    peak_rss: &mut u64,
) {
    loop {
        let now = now_ns();
        if now >= deadline {
            return;
        }
        progress.show(phase, live, wanted);
        if let Some(rss) = broker.and_then(Proc::rss_kib) {
            *peak_rss = (*peak_rss).max(rss);
        }
        thread::sleep(Duration::from_nanos(deadline - now).min(Duration::from_millis(200)));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::plan::Scenario;
    use crate::wire::{Dialect, Target};

    #[test]
    fn expected_counts_readers_per_topic() {
        let target = Target::parse("ws://127.0.0.1:9/ws").unwrap();
        let plan = Plan {
            scenario: Scenario::ManyTopics,
            label: String::new(),
            sub_target: target.clone(),
            pub_target: target,
            dialect: Dialect::Vws,
            pub_dialect: Dialect::Vws,
            subs: 5,
            topics: 2,
            pubs: 1,
            rate: 1.0,
            payload: 64,
            slow: 3,
            churn: 0.0,
            churn_hold: Duration::ZERO,
            warmup: Duration::ZERO,
            duration: Duration::ZERO,
            drain: Duration::ZERO,
            settle: Duration::ZERO,
            prime: Duration::ZERO,
            attacks: Vec::new(),
            cycles: 1,
            latency_rule: abuse::soak::LatencyRule::default(),
            setup_timeout: Duration::ZERO,
            threads: 1,
            connect_concurrency: 1,
            pid: None,
            broker_stats: None,
            topic_prefix: "t".into(),
            fill: 0,
            window: 1,
            ingest_topic: String::new(),
            read_rate: 0.0,
        };
        let published = Published {
            counts: vec![vec![10, 7]],
            counts_abused: vec![vec![4, 1]],
            tally: Tally::default(),
            churned: 0,
            answers: None,
            backpressure: None,
        };
        // Topic 0 has readers 0, 2, 4; topic 1 has readers 1, 3. Stalled ones do not count.
        assert_eq!(
            expected_deliveries(&plan, |t| published.to_topic(t)),
            3 * 10 + 2 * 7
        );
        assert_eq!(
            expected_deliveries(&plan, |t| published.to_topic_abused(t)),
            3 * 4 + 2
        );
    }
}

//! The result of a run: a serializable [`Report`] and its summary table.

use crate::abuse::soak::AbuseReport;
use crate::wire::Dialect;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

#[derive(Serialize, Debug)]
pub struct Report {
    pub label: String,
    pub scenario: String,
    pub url: String,
    pub pub_url: String,
    pub dialect: Dialect,
    pub pub_dialect: Dialect,
    pub subs: usize,
    pub slow: usize,
    pub topics: usize,
    pub pubs: usize,
    /// Publishes per second offered, over all publishers.
    pub rate: f64,
    pub payload: usize,
    pub churn: f64,
    pub warmup_s: f64,
    pub window_s: f64,
    pub threads: usize,
    pub connections: Connections,
    pub published: u64,
    /// Deliveries owed to the reading subscribers for what was published.
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub gaps: u64,
    pub duplicates: u64,
    pub offered_deliveries_per_s: f64,
    /// Deliveries that arrived inside the measured window, per second.
    pub deliveries_per_s: f64,
    pub latency_ms: Latency,
    /// (percentile, milliseconds) points of the latency distribution, for plots.
    pub latency_curve: Vec<(f64, f64)>,
    pub broker: Option<Broker>,
    pub harness: Harness,
    pub churned: u64,
    pub errors: BTreeMap<String, u64>,
    pub closes: BTreeMap<String, u64>,
    /// The abuse scenario: each side of the abuse, recovery, attacks, verdict.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abuse: Option<AbuseReport>,
    /// Ingest and backpressure: what the edges sent and the broker answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingest: Option<Ingest>,
    /// Backpressure: the edge second by second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backpressure: Option<crate::backpressure::Figures>,
    /// Ingest and backpressure: distinct messages each reading subscriber received.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub readers: Vec<u64>,
}

/// The ingest figures: answers, and acks per second and per broker CPU-second in the
/// measured window (the figure issue 19 compares the dialects by).
#[derive(Serialize, Debug)]
pub struct Ingest {
    /// Publishes each edge keeps in flight.
    pub window: usize,
    pub topic: String,
    #[serde(flatten)]
    pub answers: crate::ingest::Answers,
    pub acked_per_s: f64,
    pub acked_per_broker_cpu_s: Option<f64>,
}

#[derive(Serialize, Debug)]
pub struct Connections {
    pub ready: usize,
    pub failed: usize,
    /// From the first connect to the last subscription confirmed.
    pub setup_s: f64,
    pub per_s: f64,
    /// Broker CPU seconds spent during the setup (to the end of the setup wait).
    pub broker_cpu_s: Option<f64>,
    /// The harness's own CPU seconds during the setup.
    pub harness_cpu_s: f64,
}

#[derive(Serialize, Debug, Default)]
pub struct Latency {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

#[derive(Serialize, Debug)]
pub struct Broker {
    pub pid: u32,
    /// utime + stime over the measured window.
    pub cpu_s: Option<f64>,
    pub deliveries_per_cpu_s: Option<f64>,
    pub rss_kib_before: Option<u64>,
    pub rss_kib_after_setup: Option<u64>,
    pub rss_kib_end: Option<u64>,
    pub rss_kib_peak: Option<u64>,
    /// (RSS after setup - RSS before) / connections.
    pub rss_bytes_per_connection: Option<f64>,
    /// Frames per write in the window, from shardcast's /api/stats (`--broker-stats`).
    pub frames_per_write: Option<f64>,
}

#[derive(Serialize, Debug)]
pub struct Harness {
    pub cpu_s: f64,
    pub deliveries_per_cpu_s: Option<f64>,
    pub threads: usize,
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }

    /// The percentile distribution, thinned to at most a few hundred points.
    pub fn curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
        if h.is_empty() {
            return Vec::new();
        }
        let mut points: Vec<(f64, f64)> = h
            .iter_quantiles(4)
            .map(|v| (v.quantile_iterated_to() * 100.0, ms(v.value_iterated_to())))
            .collect();
        points.dedup_by(|a, b| a.0 == b.0);
        points.push((100.0, ms(h.max())));
        points
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
}

/// Counts with thousands separators, e.g. `1_234_567` -> `1,234,567`.
pub fn grouped(v: f64) -> String {
    let n = v.round().max(0.0) as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl Report {
    /// The summary table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut rows: Vec<(&str, String)> = vec![
            ("scenario", format!("{} ({})", self.scenario, self.label)),
            (
                "target",
                if self.url == self.pub_url {
                    self.url.clone()
                } else {
                    format!("subs {} / pubs {}", self.url, self.pub_url)
                },
            ),
            (
                "shape",
                format!(
                    "{} subs (+{} stalled) on {} topics, {} pubs at {}/s, {} B, churn {}/s",
                    self.subs,
                    self.slow,
                    self.topics,
                    self.pubs,
                    grouped(self.rate),
                    self.payload,
                    self.churn
                ),
            ),
            (
                "connections",
                format!(
                    "{} ready, {} failed, set up in {:.2} s = {}/s (CPU: broker {} s, harness {:.2} s)",
                    self.connections.ready,
                    self.connections.failed,
                    self.connections.setup_s,
                    grouped(self.connections.per_s),
                    opt(self.connections.broker_cpu_s, 2),
                    self.connections.harness_cpu_s
                ),
            ),
            (
                "deliveries/s",
                format!(
                    "{} (offered {})",
                    grouped(self.deliveries_per_s),
                    grouped(self.offered_deliveries_per_s)
                ),
            ),
            ("published", grouped(self.published as f64)),
            (
                "delivered",
                format!(
                    "{} of {} expected",
                    grouped(self.received as f64),
                    grouped(self.expected as f64)
                ),
            ),
            (
                "lost",
                format!(
                    "{} (gaps {}, duplicates {})",
                    self.lost, self.gaps, self.duplicates
                ),
            ),
            (
                "latency ms",
                format!(
                    "p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  (n={})",
                    self.latency_ms.p50,
                    self.latency_ms.p90,
                    self.latency_ms.p99,
                    self.latency_ms.p999,
                    self.latency_ms.max,
                    self.latency_ms.count
                ),
            ),
        ];
        if let Some(b) = &self.broker {
            rows.push((
                "broker cpu",
                format!(
                    "{} s over {:.1} s window = {} deliveries per CPU-second",
                    opt(b.cpu_s, 2),
                    self.window_s,
                    b.deliveries_per_cpu_s.map_or("-".into(), grouped)
                ),
            ));
            rows.push((
                "broker rss",
                format!(
                    "{} KiB before, {} after setup, {} at end, peak {}; {} B per connection",
                    b.rss_kib_before.map_or("-".into(), |v| v.to_string()),
                    b.rss_kib_after_setup.map_or("-".into(), |v| v.to_string()),
                    b.rss_kib_end.map_or("-".into(), |v| v.to_string()),
                    b.rss_kib_peak.map_or("-".into(), |v| v.to_string()),
                    opt(b.rss_bytes_per_connection, 0)
                ),
            ));
            if let Some(f) = b.frames_per_write {
                rows.push(("broker writes", format!("{f:.1} frames per write")));
            }
        }
        rows.push((
            "harness cpu",
            format!(
                "{:.2} s ({} threads) = {} deliveries per CPU-second",
                self.harness.cpu_s,
                self.harness.threads,
                self.harness
                    .deliveries_per_cpu_s
                    .map_or("-".into(), grouped)
            ),
        ));
        if self.churn > 0.0 {
            rows.push(("churned", grouped(self.churned as f64)));
        }
        for (what, n) in &self.closes {
            rows.push(("closed", format!("{n} x {what}")));
        }
        for (what, n) in &self.errors {
            rows.push(("error", format!("{n} x {what}")));
        }
        if let Some(abuse) = &self.abuse {
            rows.extend(abuse.rows());
        }
        if let Some(i) = &self.ingest {
            let a = &i.answers;
            rows.push((
                "edges",
                format!(
                    "{} {} edges on {}, window {}, {}",
                    self.pubs,
                    serde_json::to_value(self.pub_dialect)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    i.topic,
                    i.window,
                    if self.rate > 0.0 {
                        format!("{}/s in all", grouped(self.rate))
                    } else {
                        "no rate cap".into()
                    }
                ),
            ));
            rows.push((
                "answers",
                format!(
                    "sent {}, acks {}, nacks {}, unanswered {}, out of order {}",
                    grouped(a.sent as f64),
                    grouped(a.acks as f64),
                    a.nacks,
                    a.unanswered,
                    a.out_of_order
                ),
            ));
            if self.backpressure.is_none() {
                rows.push((
                    "acked/s",
                    format!(
                        "{} in the window = {} acked per broker CPU-second",
                        grouped(i.acked_per_s),
                        i.acked_per_broker_cpu_s.map_or("-".into(), grouped)
                    ),
                ));
            }
            if let Some(n) = &a.first_nack {
                rows.push(("first nack", n.clone()));
            }
        }
        if !self.readers.is_empty() {
            let (min, max) = (
                self.readers.iter().min().copied().unwrap_or(0),
                self.readers.iter().max().copied().unwrap_or(0),
            );
            rows.push((
                "subscribers",
                format!(
                    "{} read: each got {} to {} messages",
                    self.readers.len(),
                    grouped(min as f64),
                    grouped(max as f64)
                ),
            ));
        }
        if let Some(b) = &self.backpressure {
            rows.extend(b.rows());
        }
        let mut out = String::new();
        for (k, v) in rows {
            let _ = writeln!(out, "{k:>13}  {v}");
        }
        out
    }

    /// Whether nothing was lost, nothing failed and figures were produced (and, for the
    /// abuse scenario, its verdict passed).
    pub fn clean(&self) -> bool {
        self.lost == 0
            && self.duplicates == 0
            && self.connections.failed == 0
            && self.errors.is_empty()
            && self.closes.is_empty()
            && (self.rate == 0.0 || self.latency_ms.count > 0)
            && self.abuse.as_ref().is_none_or(|a| a.failures.is_empty())
            && self.ingest.as_ref().is_none_or(|i| {
                let a = &i.answers;
                a.nacks == 0 && a.unanswered == 0 && a.out_of_order == 0 && a.acks > 0
            })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::tally::new_histogram;

    #[test]
    fn latency_figures_come_from_the_histogram() {
        let mut h = new_histogram();
        for v in 1..=1000u64 {
            h.record(v * 1_000_000).unwrap();
        }
        let l = Latency::from_histogram(&h);
        assert!((l.p50 - 500.0).abs() < 1.0, "{l:?}");
        assert!((l.p99 - 990.0).abs() < 2.0, "{l:?}");
        let curve = Latency::curve(&h);
        assert!(curve
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        assert_eq!(curve.last().map(|p| p.0), Some(100.0));
    }

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(grouped(0.0), "0");
        assert_eq!(grouped(1234567.4), "1,234,567");
        assert_eq!(grouped(999.0), "999");
    }
}

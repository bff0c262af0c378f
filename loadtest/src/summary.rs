//! Markdown tables from saved reports: one row per run and one median row per target,
//! for BENCHMARKS.md. A run's target is its label up to " #" ("uws #2" -> "uws").
//! Reports of the replay scenario get their own columns (live phase, then replay).

use anyhow::{Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write;

/// A column: header, JSON pointer, digits (None = thousands-grouped integer).
type Column = (&'static str, &'static str, Option<usize>);

const COLUMNS: [Column; 14] = [
    ("deliveries/s", "/deliveries_per_s", None),
    ("lost", "/lost", None),
    ("p50 ms", "/latency_ms/p50", Some(2)),
    ("p99 ms", "/latency_ms/p99", Some(2)),
    ("p99.9 ms", "/latency_ms/p999", Some(2)),
    ("max ms", "/latency_ms/max", Some(1)),
    ("broker CPU s", "/broker/cpu_s", Some(2)),
    (
        "deliveries per broker CPU-s",
        "/broker/deliveries_per_cpu_s",
        None,
    ),
    ("harness CPU s", "/harness/cpu_s", Some(2)),
    ("conns/s", "/connections/per_s", None),
    ("setup CPU s broker", "/connections/broker_cpu_s", Some(2)),
    ("setup CPU s harness", "/connections/harness_cpu_s", Some(2)),
    ("broker B/conn", "/broker/rss_bytes_per_connection", None),
    ("frames/write", "/broker/frames_per_write", Some(1)),
];

/// The replay scenario's columns.
const REPLAY_COLUMNS: [Column; 14] = [
    ("live deliveries/s", "/live/deliveries_per_s", None),
    ("live lost", "/live/lost", None),
    ("live p50 ms", "/live/latency_ms/p50", Some(2)),
    ("live p99 ms", "/live/latency_ms/p99", Some(2)),
    (
        "live deliveries per broker CPU-s",
        "/live/deliveries_per_cpu_s",
        None,
    ),
    ("live frames/write", "/live/frames_per_write", Some(1)),
    ("replay s", "/replay/wall_s", Some(2)),
    ("replay lost", "/replay/lost", None),
    ("replayed/s", "/replay/deliveries_per_s", None),
    ("joiner done p50 ms", "/replay/latency_ms/p50", Some(0)),
    ("joiner done max ms", "/replay/latency_ms/max", Some(0)),
    (
        "replayed per broker CPU-s",
        "/replay/deliveries_per_cpu_s",
        None,
    ),
    ("replay frames/write", "/replay/frames_per_write", Some(1)),
    ("replay/live per CPU-s", "/replay_vs_live_per_cpu", Some(2)),
];

struct Run {
    label: String,
    target: String,
    values: Vec<Option<f64>>,
}

fn read(path: &str) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {path}"))?;
    serde_json::from_str(&text).with_context(|| format!("{path}: not JSON"))
}

fn load(path: &str, v: &Value, columns: &[Column]) -> Result<Run> {
    let label = v
        .pointer("/label")
        .and_then(Value::as_str)
        .unwrap_or(path)
        .to_string();
    let target = label.split(" #").next().unwrap_or(&label).to_string();
    let values = columns
        .iter()
        .map(|(_, ptr, _)| v.pointer(ptr).and_then(Value::as_f64))
        .collect();
    Ok(Run {
        label,
        target,
        values,
    })
}

fn median(mut xs: Vec<f64>) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    Some(if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    })
}

fn cell(v: Option<f64>, digits: Option<usize>) -> String {
    match (v, digits) {
        (None, _) => "-".into(),
        (Some(v), Some(d)) => format!("{v:.d$}"),
        (Some(v), None) => crate::report::grouped(v),
    }
}

/// The per-run table followed by the medians per target.
pub fn markdown(paths: &[String]) -> Result<String> {
    let reports = paths
        .iter()
        .map(|p| read(p).map(|v| (p, v)))
        .collect::<Result<Vec<_>>>()?;
    let replay = |v: &Value| v.pointer("/scenario").and_then(Value::as_str) == Some("replay");
    let columns: &[Column] = match reports.first() {
        Some((_, v)) if replay(v) => &REPLAY_COLUMNS,
        _ => &COLUMNS,
    };
    if reports.iter().any(|(_, v)| replay(v)) != reports.iter().all(|(_, v)| replay(v)) {
        anyhow::bail!(
            "replay reports have their own columns: summarize them apart from the others"
        );
    }
    let runs = reports
        .iter()
        .map(|(p, v)| load(p, v, columns))
        .collect::<Result<Vec<_>>>()?;
    let mut out = String::new();
    let header: Vec<&str> = columns.iter().map(|c| c.0).collect();
    let _ = writeln!(out, "| run | {} |", header.join(" | "));
    let _ = writeln!(out, "|---|{}", "---:|".repeat(columns.len()));
    let mut by_target: BTreeMap<&str, Vec<&Run>> = BTreeMap::new();
    for r in &runs {
        let cells: Vec<String> = r
            .values
            .iter()
            .zip(columns)
            .map(|(v, c)| cell(*v, c.2))
            .collect();
        let _ = writeln!(out, "| {} | {} |", r.label, cells.join(" | "));
        by_target.entry(&r.target).or_default().push(r);
    }
    for (target, rs) in &by_target {
        let cells: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                cell(
                    median(
                        rs.iter()
                            .filter_map(|r| r.values.get(i).copied().flatten())
                            .collect(),
                    ),
                    c.2,
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "| **{target} median of {}** | {} |",
            rs.len(),
            cells.join(" | ")
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn medians_per_target() {
        let dir = std::env::temp_dir().join(format!("lt-summary-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut paths = Vec::new();
        for (i, (label, rate)) in [
            ("a #1", 10.0),
            ("a #2", 30.0),
            ("a #3", 20.0),
            ("b #1", 5.0),
        ]
        .iter()
        .enumerate()
        {
            let p = dir.join(format!("{i}.json"));
            std::fs::write(
                &p,
                format!(r#"{{"label":"{label}","deliveries_per_s":{rate},"lost":0}}"#),
            )
            .unwrap();
            paths.push(p.to_string_lossy().into_owned());
        }
        let md = markdown(&paths).unwrap();
        assert!(md.contains("| **a median of 3** | 20 | 0 |"), "{md}");
        assert!(md.contains("| **b median of 1** | 5 |"), "{md}");
        // Replay reports get their own columns, and do not mix with the others.
        let r = dir.join("replay.json");
        std::fs::write(
            &r,
            r#"{"label":"h #1","scenario":"replay","live":{"deliveries_per_s":1000},"replay":{"wall_s":1.5},"replay_vs_live_per_cpu":1.25}"#,
        )
        .unwrap();
        let r = r.to_string_lossy().into_owned();
        let md = markdown(std::slice::from_ref(&r)).unwrap();
        assert!(md.starts_with("| run | live deliveries/s |"), "{md}");
        assert!(md.contains("| h #1 | 1,000 | - |"), "{md}");
        assert!(md.contains(" | 1.50 | "), "{md}");
        assert!(md.ends_with("| 1.25 |\n"), "{md}");
        paths.push(r);
        assert!(markdown(&paths).is_err());
        assert_eq!(median(vec![1.0, 4.0]), Some(2.5));
        std::fs::remove_dir_all(dir).unwrap();
    }
}

//! Latency percentile plots as SVG: one line per run, x = percentile on the usual
//! "number of nines" scale, y = latency in ms on a log scale, so runs of very different
//! quality can share one picture.

use std::fmt::Write;

/// One line of the plot.
pub struct Series {
    pub label: String,
    /// (percentile 0..=100, latency ms)
    pub points: Vec<(f64, f64)>,
}

const W: f64 = 820.0;
const H: f64 = 480.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 230.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
/// The x axis ends at 99.999%.
const MAX_NINES: f64 = 5.0;
const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

fn nines(percentile: f64) -> f64 {
    let rest = (1.0 - percentile / 100.0).max(10f64.powf(-MAX_NINES));
    (-rest.log10()).clamp(0.0, MAX_NINES)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Renders the series as an SVG document.
pub fn svg(title: &str, series: &[Series]) -> String {
    let values = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|v| *v > 0.0);
    let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if lo > hi { (0.01, 1.0) } else { (lo, hi) };
    let y_lo = lo.log10().floor();
    let y_hi = (hi.log10().ceil()).max(y_lo + 1.0);
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let x = |p: f64| LEFT + nines(p) / MAX_NINES * pw;
    let y = |v: f64| TOP + ph - (v.max(1e-6).log10() - y_lo) / (y_hi - y_lo) * ph;

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        LEFT + pw / 2.0,
        escape(title)
    );
    // Grid: decades on y, nines on x.
    let mut d = y_lo;
    while d <= y_hi {
        let yy = y(10f64.powf(d));
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/>"##,
            LEFT + pw
        );
        // 0.01, 0.1, 1, 10 … without float noise.
        let label = format!("{:.*}", (-d).max(0.0) as usize, 10f64.powf(d));
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            yy + 4.0,
            label
        );
        d += 1.0;
    }
    for (n, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
        .iter()
        .enumerate()
    {
        let xx = LEFT + n as f64 / MAX_NINES * pw;
        let _ = writeln!(
            out,
            r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="{TOP}" y2="{}" stroke="#ddd"/>"##,
            TOP + ph
        );
        let _ = writeln!(
            out,
            r#"<text x="{xx:.1}" y="{}" text-anchor="middle">{label}</text>"#,
            TOP + ph + 18.0
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text>"#,
        LEFT + pw / 2.0,
        H - 14.0
    );
    let _ = writeln!(
        out,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">latency (ms, log scale)</text>"#,
        TOP + ph / 2.0,
        TOP + ph / 2.0
    );
    let _ = writeln!(
        out,
        r#"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
    );
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let path: Vec<String> = s
            .points
            .iter()
            .filter(|p| p.1 > 0.0)
            .map(|&(p, v)| format!("{:.1},{:.1}", x(p), y(v)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        let ly = TOP + 10.0 + i as f64 * 18.0;
        let lx = LEFT + pw + 12.0;
        let _ = writeln!(
            out,
            r#"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{colour}" stroke-width="3"/>"#,
            lx + 18.0
        );
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}">{}</text>"#,
            lx + 24.0,
            ly + 4.0,
            escape(&s.label)
        );
    }
    out.push_str("</svg>\n");
    out
}

/// Reads the series from report JSON files (`label` and `latency_curve`).
pub fn series_from_json(path: &str) -> anyhow::Result<Series> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path).with_context(|| format!("read {path}"))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{path}: not JSON"))?;
    let label = v
        .get("label")
        .and_then(|l| l.as_str())
        .unwrap_or(path)
        .to_string();
    let points = v
        .get("latency_curve")
        .and_then(|c| c.as_array())
        .with_context(|| format!("{path}: no latency_curve (not a shardcast-loadtest report?)"))?
        .iter()
        .filter_map(|p| Some((p.get(0)?.as_f64()?, p.get(1)?.as_f64()?)))
        .collect();
    Ok(Series { label, points })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_polyline_per_series_with_escaped_labels() {
        let s = |label: &str| Series {
            label: label.into(),
            points: vec![(0.0, 0.5), (99.0, 3.0), (100.0, 20.0)],
        };
        let wide = Series {
            label: "d".into(),
            points: vec![(0.0, 0.2), (100.0, 80.0)],
        };
        let doc = svg("fanout <1000>", &[s("a&b"), s("c"), wide]);
        assert_eq!(doc.matches("<polyline").count(), 3);
        assert!(doc.contains("a&amp;b") && doc.contains("fanout &lt;1000&gt;"));
        assert!(doc.starts_with("<svg") && doc.trim_end().ends_with("</svg>"));
        // Decade labels from 0.1 ms to 100 ms, written plainly.
        for label in [">0.1<", ">1<", ">10<", ">100<"] {
            assert!(doc.contains(label), "{label} missing");
        }
    }

    #[test]
    fn nines_scale() {
        assert_eq!(nines(0.0), 0.0);
        assert!((nines(99.0) - 2.0).abs() < 1e-9);
        assert_eq!(nines(100.0), MAX_NINES);
    }
}

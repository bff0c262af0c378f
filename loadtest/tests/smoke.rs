//! Smoke runs of the harness binary against a real shardcast binary: a few seconds each,
//! asserting zero loss and that every figure was produced. The full comparison with the
//! uWebSockets.js peer is loadtest/compare.sh, not CI.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// The abuse soak compares latency with and without abuse, so it runs alone: it takes
/// this for writing, every other run for reading.
static MACHINE: RwLock<()> = RwLock::new(());

const HARNESS: &str = env!("CARGO_BIN_EXE_shardcast-loadtest");

/// The broker binary sits next to the harness in the same target directory; `cargo test
/// --workspace` builds both. When only this package was built, build the broker too.
fn broker_binary() -> PathBuf {
    let dir = Path::new(HARNESS).parent().unwrap();
    let bin = dir.join("shardcast");
    if !bin.exists() {
        let mut cargo = Command::new(env!("CARGO"));
        cargo.args(["build", "-p", "shardcast", "--bin", "shardcast"]);
        if dir.ends_with("release") {
            cargo.arg("--release");
        }
        assert!(
            cargo.status().unwrap().success(),
            "building the shardcast binary failed"
        );
    }
    bin
}

struct Broker {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_broker() -> Broker {
    start_broker_with("[client]\nallow_publish = true\npublish_rate = 0.0\n")
}

fn start_broker_with(config_text: &str) -> Broker {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bench.toml");
    std::fs::write(&config, config_text).unwrap();
    let mut child = Command::new(broker_binary())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "2",
            "--config",
        ])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("shardcast listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    Broker {
        child,
        url: format!("ws://{addr}/ws"),
        _dir: dir,
    }
}

/// Runs the harness with `--check --json` and returns its exit status and the report.
fn harness(broker: &Broker, args: &[&str]) -> (bool, Value, String) {
    let _shared = if args.first() == Some(&"abuse") {
        None
    } else {
        Some(MACHINE.read().unwrap_or_else(|e| e.into_inner()))
    };
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let started = Instant::now();
    let out = Command::new(HARNESS)
        .arg("run")
        .args(args)
        .args([
            "--url",
            &broker.url,
            "--pid",
            &broker.child.id().to_string(),
            "--quiet",
            "--check",
        ])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the harness ran too long"
    );
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap_or_default())
        .unwrap_or(Value::Null);
    (out.status.success(), report, table)
}

fn f(report: &Value, pointer: &str) -> f64 {
    report
        .pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{pointer} missing in {report}"))
}

#[test]
fn fanout_smoke_run_loses_nothing_and_reports_every_figure() {
    let broker = start_broker();
    let (ok, r, table) = harness(
        &broker,
        &[
            "fanout",
            "--subs",
            "100",
            "--rate",
            "500",
            "--warmup",
            "0.5",
            "--duration",
            "2",
        ],
    );
    assert!(ok, "check failed:\n{table}");
    let expected = f(&r, "/expected");
    // 500 publishes/s for 2.5 s to 100 subscribers, give or take the pacing edges.
    assert!(expected > 100.0 * 1000.0, "{table}");
    assert_eq!(f(&r, "/received"), expected, "{table}");
    assert_eq!(f(&r, "/lost"), 0.0);
    assert!(f(&r, "/deliveries_per_s") > 20_000.0, "{table}");
    assert!(f(&r, "/latency_ms/count") > 10_000.0);
    assert!(f(&r, "/latency_ms/p99") >= f(&r, "/latency_ms/p50"));
    assert!(
        f(&r, "/broker/cpu_s") > 0.0,
        "broker CPU not measured: {table}"
    );
    assert!(f(&r, "/broker/rss_kib_end") > 0.0);
    assert!(f(&r, "/harness/cpu_s") > 0.0);
    assert!(r["latency_curve"].as_array().unwrap().len() > 5);
    assert!(table.contains("deliveries/s") && table.contains("latency ms"));
}

#[test]
fn gows_subscribers_and_a_stalled_one_lose_nothing() {
    let broker = start_broker();
    let (ok, r, table) = harness(
        &broker,
        &[
            "slow",
            "--dialect",
            "gows",
            "--subs",
            "50",
            "--slow",
            "1",
            "--rate",
            "200",
            "--warmup",
            "0.5",
            "--duration",
            "1.5",
        ],
    );
    assert!(ok, "check failed:\n{table}");
    assert_eq!(f(&r, "/connections/ready"), 51.0);
    assert!(f(&r, "/received") > 50.0 * 300.0);
    assert_eq!(f(&r, "/lost"), 0.0);
}

#[test]
fn idle_run_reports_setup_rate_and_memory_per_connection() {
    let broker = start_broker();
    let (ok, r, table) = harness(&broker, &["idle", "--subs", "500", "--duration", "0.5"]);
    assert!(ok, "check failed:\n{table}");
    assert_eq!(f(&r, "/connections/ready"), 500.0);
    assert!(f(&r, "/connections/per_s") > 0.0);
    assert!(f(&r, "/broker/rss_bytes_per_connection").is_finite());
    assert_eq!(f(&r, "/topics"), 500.0);
}

#[test]
fn churn_and_fanin_runs_complete() {
    let broker = start_broker();
    let (ok, r, table) = harness(
        &broker,
        &[
            "churn",
            "--subs",
            "20",
            "--rate",
            "100",
            "--churn",
            "50",
            "--churn-hold",
            "0.2",
            "--warmup",
            "0.5",
            "--duration",
            "1",
        ],
    );
    assert!(ok, "check failed:\n{table}");
    assert!(f(&r, "/churned") >= 40.0, "{table}");
    let (ok, r, table) = harness(
        &broker,
        &[
            "fanin",
            "--subs",
            "2",
            "--pubs",
            "20",
            "--rate",
            "1000",
            "--warmup",
            "0.5",
            "--duration",
            "1",
        ],
    );
    assert!(ok, "check failed:\n{table}");
    assert_eq!(f(&r, "/lost"), 0.0);
}

/// The kinds the first abuse smoke runs: those that need upgraded connections, which
/// idle sockets holding every socket the broker has would starve (issue 16 finding 2,
/// until the broker gives heads their own budget); the second runs the rest.
const SPEC_ATTACKS: &str =
    "bad-json,deep-json,sub-flood,publish-flood,bad-frames,slowloris,garbage-http,rst-churn,conn-burst";
const HEAD_ATTACKS: &str = "idle-sockets,big-heads,sub-storm";

/// A short abuse soak of `attacks` on a fresh broker with loadtest/abuse.toml; checks
/// what every run must show and returns the abuse part of the report and the table.
fn abuse_smoke(attacks: &str) -> (Value, String) {
    let _alone = MACHINE.write().unwrap_or_else(|e| e.into_inner());
    let broker = start_broker_with(include_str!("../abuse.toml"));
    // About 12 s: priming 1, warm-up 0.5, two clean and two abuse slices of 2 s, and the
    // recovery (up to 10 s; usually a few). In 2-second slices a single 10 ms scheduler
    // stall on this shared 2-core machine is enough to move a p99 (one CI run measured
    // 0.59 ms clean, 3.23 ms under abuse, p99.9 11 ms), so the smoke allows 2 x clean +
    // 10 ms when the machine has room: still far below what a broker stalled by the
    // abuse shows (hundreds of ms, over the 500 ms ceiling every run holds).
    let (ok, r, table) = harness(
        &broker,
        &[
            "abuse",
            "--attacks",
            attacks,
            "--prime",
            "1",
            "--warmup",
            "0.5",
            "--duration",
            "4",
            "--cycles",
            "2",
            "--settle",
            "10",
            "--drain",
            "1",
            "--p99-floor",
            "10",
        ],
    );
    assert!(ok, "check failed:\n{table}");
    let a = r["abuse"].clone();
    assert_eq!(f(&a, "/p99_floor_ms"), 10.0, "{table}");
    assert!(a["failures"].as_array().unwrap().is_empty(), "{table}");
    for side in ["/clean", "/abuse"] {
        assert_eq!(f(&a, &format!("{side}/lost")), 0.0, "{table}");
        assert!(
            f(&a, &format!("{side}/latency_ms/count")) > 10_000.0,
            "{table}"
        );
    }
    let kinds = attacks.split(',').count();
    assert_eq!(a["attacks"].as_object().unwrap().len(), kinds, "{table}");
    assert_eq!(f(&a, "/unexpected"), 0.0, "{table}");
    // Whether latency was judged depends on how busy the machine was; the report says.
    assert!(a["contention"]["abuse_wait_ms_per_s"].is_f64(), "{table}");
    assert!(a["latency_judged"].is_boolean(), "{table}");
    assert!(f(&a, "/after/rss_kib") > 0.0);
    assert!(a["settle_s"].is_f64(), "{table}");
    (a, table)
}

#[test]
fn abuse_soak_leaves_healthy_subscribers_and_memory_alone() {
    let (a, table) = abuse_smoke(SPEC_ATTACKS);
    // Every attack ran and the broker answered each as SPEC §4 says.
    let attacks = a["attacks"].to_string();
    for answer in [
        "closed 1007",
        "closed 1003",
        "closed 1002",
        "closed 1009",
        "closed 1008",
        "HTTP 400",
        "HTTP 503",
    ] {
        assert!(attacks.contains(answer), "no {answer:?} in {table}");
    }
}

#[test]
fn abuse_soak_of_idle_sockets_big_heads_and_storms_loses_nothing() {
    // Issue 16: silent sockets and unfinished big heads are let go by the broker (the
    // verdict checks its connections, descriptors and RSS came back), and a
    // subscription storm is answered change by change.
    let (a, table) = abuse_smoke(HEAD_ATTACKS);
    for (kind, answer) in [
        ("idle-sockets", "idle: "),
        ("idle-sockets", "probe /healthz: "),
        ("big-heads", "KiB of head sent"),
        ("sub-storm", "subscription changes sent"),
    ] {
        assert!(
            a["attacks"][kind].to_string().contains(answer),
            "no {answer:?} for {kind} in {table}"
        );
    }
}

/// A broker whose `replay/` channels keep 10,000 publications, `plain/` ones none, and
/// every other channel the default 1,000 (loadtest/history.toml in short).
fn start_history_broker() -> Broker {
    start_broker_with(
        "[client]\nallow_publish = true\npublish_rate = 0.0\n\n\
         [[history]]\nprefix = \"plain/\"\nsize = 0\n\n\
         [[history]]\nprefix = \"replay/\"\nsize = 10000\n\n\
         [[history]]\npattern = \"#\"\n",
    )
}

/// host:port of the broker, for --broker-stats.
fn stats_addr(broker: &Broker) -> String {
    broker
        .url
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .to_string()
}

#[test]
fn fanout_on_a_history_channel_loses_nothing() {
    // Every event now carries "o":N after its data; the stamp is still found.
    let broker = start_history_broker();
    let (ok, r, table) = harness(
        &broker,
        &[
            "fanout",
            "--subs",
            "50",
            "--rate",
            "500",
            "--warmup",
            "0.5",
            "--duration",
            "1.5",
        ],
    );
    assert!(ok, "check failed:\n{table}");
    assert!(f(&r, "/received") > 50.0 * 900.0, "{table}");
    assert_eq!(f(&r, "/lost"), 0.0, "{table}");
}

#[test]
fn replay_run_replays_every_publication_once_to_every_joiner() {
    let broker = start_history_broker();
    let addr = stats_addr(&broker);
    for dialect in ["vws", "gows"] {
        // Each pass publishes 500 more; the joiners replay all the channel holds.
        let (ok, r, table) = harness(
            &broker,
            &[
                "replay",
                "--subs",
                "20",
                "--fill",
                "500",
                "--rate",
                "2000",
                "--dialect",
                dialect,
                "--topic-prefix",
                "replay",
                "--broker-stats",
                &addr,
            ],
        );
        assert!(ok, "check failed:\n{table}");
        let held = if dialect == "vws" { 500.0 } else { 1000.0 };
        assert_eq!(f(&r, "/live/deliveries"), 20.0 * 500.0, "{table}");
        assert_eq!(f(&r, "/live/lost"), 0.0, "{table}");
        assert_eq!(f(&r, "/replay/deliveries"), 20.0 * held, "{table}");
        assert_eq!(f(&r, "/replay/expected"), 20.0 * held, "{table}");
        assert_eq!(f(&r, "/replay/lost"), 0.0, "{table}");
        // The broker counts what it sent from history: the same number.
        assert_eq!(f(&r, "/replay/history_replayed"), 20.0 * held, "{table}");
        assert!(f(&r, "/replay/frames_per_write") >= 1.0, "{table}");
        assert!(f(&r, "/replay/latency_ms/count") == 20.0, "{table}");
        // (CPU is counted in 10 ms ticks: too few for a ratio in a replay this small.)
        assert!(table.contains("replay broker"), "{table}");
    }
    // A joiner on a channel without history is refused clearly, not left waiting.
    let (ok, _, table) = harness(
        &broker,
        &[
            "replay",
            "--subs",
            "1",
            "--fill",
            "0",
            "--topic-prefix",
            "plain",
            "--drain",
            "5",
        ],
    );
    assert!(!ok, "{table}");
}

#[test]
fn refusals_are_clear() {
    let out = Command::new(HARNESS)
        .args(["run", "fanout", "--url", "ws://10.1.2.3:80/ws"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
    let out = Command::new(HARNESS)
        .args(["run", "cluster", "--url", "ws://127.0.0.1:9/ws"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--pub-url"));
}

/// Issue 19's ingest in both dialects: every publish is acked, in order, and the vws
/// subscriber gets every acked one.
#[test]
fn ingest_in_each_dialect_acks_everything_and_loses_nothing() {
    let broker = start_broker();
    for dialect in ["vws", "semstreams"] {
        let (ok, r, table) = harness(
            &broker,
            &[
                "ingest",
                "--pub-dialect",
                dialect,
                "--pubs",
                "10",
                "--subs",
                "2",
                "--warmup",
                "0.5",
                "--duration",
                "1.5",
            ],
        );
        assert!(ok, "{dialect}: check failed:\n{table}");
        assert_eq!(r["pub_dialect"], dialect, "{table}");
        let (sent, acks) = (f(&r, "/ingest/sent"), f(&r, "/ingest/acks"));
        assert!(acks > 1000.0, "{dialect}: too few acks:\n{table}");
        assert_eq!(sent, acks, "{dialect}: not all acked:\n{table}");
        assert_eq!(f(&r, "/ingest/nacks"), 0.0, "{table}");
        assert_eq!(f(&r, "/ingest/out_of_order"), 0.0, "{table}");
        assert_eq!(f(&r, "/lost"), 0.0, "{table}");
        assert_eq!(f(&r, "/expected"), 2.0 * acks, "{table}");
        for reader in r["readers"].as_array().unwrap() {
            assert_eq!(
                reader.as_f64(),
                Some(acks),
                "{dialect}: a reader missed some:\n{table}"
            );
        }
        assert!(f(&r, "/ingest/acked_per_broker_cpu_s") > 0.0, "{table}");
        assert!(f(&r, "/ingest/acked_per_s") > 0.0, "{table}");
    }
}

/// Issue 19's `block`: a SemStreams peer pushing faster than it reads is slowed by TCP,
/// and nothing it sent is lost: every publish acked and echoed back to it, and every one
/// delivered to the vws subscriber.
#[test]
fn backpressure_with_block_loses_nothing_and_slows_the_edge() {
    let broker = start_broker_with(
        "[client]\nallow_publish = true\npublish_rate = 0.0\n\n\
         [semstreams]\non_full = \"block\"\n",
    );
    let addr = stats_addr(&broker);
    let (ok, r, table) = harness(
        &broker,
        &[
            "backpressure",
            "--read-rate",
            "10000",
            "--duration",
            "6",
            "--broker-stats",
            &addr,
        ],
    );
    assert!(ok, "check failed:\n{table}");
    let sent = f(&r, "/backpressure/sent");
    assert!(sent > 1000.0, "{table}");
    assert_eq!(f(&r, "/backpressure/acks"), sent, "not all acked:\n{table}");
    assert_eq!(
        f(&r, "/backpressure/echoed"),
        sent,
        "the edge did not get back all it sent:\n{table}"
    );
    assert_eq!(r["readers"][0].as_f64(), Some(sent), "{table}");
    assert_eq!(f(&r, "/backpressure/dropped"), 0.0, "{table}");
    assert!(f(&r, "/backpressure/read_blocks") > 0.0, "{table}");
    let (first, last) = (
        f(&r, "/backpressure/send_rate_first"),
        f(&r, "/backpressure/send_rate_last"),
    );
    assert!(
        last < 0.75 * first,
        "the edge's send rate did not fall ({first}/s, then {last}/s):\n{table}"
    );
}

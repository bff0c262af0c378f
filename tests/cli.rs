//! Command line (SPEC §6): `shardcast publish` and `shardcast run` against a live broker.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;
use common::*;
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

const CLI: Duration = Duration::from_secs(20);

#[tokio::test]
async fn publish_command_reaches_a_subscriber() {
    let broker = Broker::start("");
    let mut g = broker.gows_subscriber("cli-chan").await;
    let mut v = broker.vws_subscriber("cli-chan").await;
    let url = broker.http_url();
    let out = run_cli(
        &[
            "publish",
            "--url",
            &url,
            "--channel",
            "cli-chan",
            "--data",
            r#"{"x":1}"#,
        ],
        &[],
        CLI,
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    let m = g.recv().await;
    assert_eq!(m["type"], "event");
    assert_eq!(m["channel"], "cli-chan");
    assert_eq!(m["data"], json!({"x": 1}));
    assert_eq!(v.recv().await, json!({"t": "cli-chan", "d": {"x": 1}}));
}

#[tokio::test]
async fn publish_command_with_bad_json_fails_without_publishing() {
    let broker = Broker::start("");
    let mut g = broker.gows_subscriber("cli-bad").await;
    let url = broker.http_url();
    let out = run_cli(
        &[
            "publish",
            "--url",
            &url,
            "--channel",
            "cli-bad",
            "--data",
            "{nope",
        ],
        &[],
        CLI,
    )
    .await;
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(!out.stderr.trim().is_empty(), "a reason on stderr: {out:?}");
    g.expect_silence(SILENCE).await;
}

#[tokio::test]
async fn publish_command_to_unreachable_broker_fails() {
    // Port 1 on loopback: nothing listens there.
    let out = run_cli(
        &[
            "publish",
            "--url",
            "http://127.0.0.1:1",
            "--channel",
            "c",
            "--data",
            "1",
        ],
        &[],
        CLI,
    )
    .await;
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(!out.stderr.trim().is_empty(), "{out:?}");
}

#[tokio::test]
async fn run_command_streams_output_and_lifecycle_and_exits_with_the_child_code() {
    let broker = Broker::start("");
    let mut g = broker.gows_subscriber("process:build-1").await;
    let mut v = broker.vws_subscriber("process:build-1").await;
    let url = broker.http_url();
    let out = run_cli(
        &[
            "run",
            "--url",
            &url,
            "--id",
            "build-1",
            "--",
            "sh",
            "-c",
            "echo hi; echo err >&2; exit 3",
        ],
        &[],
        CLI,
    )
    .await;
    assert_eq!(
        out.code,
        Some(3),
        "run exits with the child's code: {out:?}"
    );

    let first = g.recv().await;
    assert_eq!(first["type"], "process_status", "{first}");
    assert_eq!(first["processId"], "build-1");
    assert_eq!(first["channel"], "process:build-1");
    assert_eq!(first["data"]["status"], "running", "{first}");

    // stdout and stderr are separate pipes: their relative order is not defined.
    let mut lines = BTreeSet::new();
    for _ in 0..2 {
        let m = g.recv().await;
        assert_eq!(m["type"], "process_output", "{m}");
        assert_eq!(m["processId"], "build-1");
        lines.insert(m["data"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(lines, BTreeSet::from(["hi".to_string(), "err".to_string()]));

    let last = g.recv().await;
    assert_eq!(last["type"], "process_status", "{last}");
    assert_eq!(last["data"], json!({"status": "exited", "exitCode": 3}));
    g.expect_silence(SILENCE).await;

    // The vws rendering of the same stream carries the type as a header.
    let vm = v.recv().await;
    assert_eq!(vm["t"], "process:build-1");
    assert_eq!(vm["h"]["type"], "process_status", "{vm}");
    assert_eq!(vm["d"]["status"], "running");
}

#[tokio::test]
async fn run_command_reports_a_command_that_cannot_start() {
    let broker = Broker::start("");
    let mut g = broker.gows_subscriber("process:nope").await;
    let url = broker.http_url();
    let out = run_cli(
        &[
            "run",
            "--url",
            &url,
            "--id",
            "nope",
            "--",
            "/definitely/not/a/program",
        ],
        &[],
        CLI,
    )
    .await;
    assert_ne!(out.code, Some(0), "{out:?}");
    // Whatever came before, the last status says it failed.
    let mut last = None;
    while let Some(Event::Json(m)) = g.next_event(SILENCE * 3).await {
        if m["type"] == "process_status" {
            last = Some(m);
        }
    }
    let last = last.unwrap_or_else(|| panic!("no process_status for a command that cannot start"));
    assert_eq!(last["data"]["status"], "failed", "{last}");
}

#[tokio::test]
async fn a_second_broker_on_the_same_port_fails_instead_of_sharing_it() {
    // Shards listen with SO_REUSEPORT; a second process must still get "address in use".
    let first = Broker::start("");
    let addr = first.addr.to_string();
    let out = run_cli(&["serve", "--listen", &addr], &[], Duration::from_secs(10)).await;
    assert_eq!(
        out.code,
        Some(1),
        "stdout: {} stderr: {}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stderr.to_lowercase().contains("in use"),
        "stderr should say the address is in use: {}",
        out.stderr
    );
    // The first broker still answers.
    assert_eq!(first.get("/healthz").await.status, 200);
}

//! `shardcast subscribe` (SPEC §9 "Clients") against a live broker: a finished build
//! replayed from history, live publications, `--since`, `--json`, refusals, Ctrl-C and the
//! end of the connection. Real binary, real sockets on loopback; every wait is bounded.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;
use common::*;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};
use tokio::sync::mpsc;

const CLI: Duration = Duration::from_secs(30);

/// A running `shardcast subscribe`: stdout read line by line, stderr collected.
struct Subscriber {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr_lines: mpsc::UnboundedReceiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Subscriber {
    fn spawn(args: &[&str]) -> Subscriber {
        let mut cmd = tokio::process::Command::new(binary());
        cmd.arg("subscribe")
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        for (k, _) in std::env::vars() {
            if k.starts_with("SHARDCAST_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd.spawn().expect("spawn shardcast subscribe");
        let stdout = BufReader::new(child.stdout.take().expect("stdout piped")).lines();
        let mut err = BufReader::new(child.stderr.take().expect("stderr piped")).lines();
        let (tx, stderr_lines) = mpsc::unbounded_channel();
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        tokio::spawn(async move {
            while let Ok(Some(line)) = err.next_line().await {
                {
                    let mut all = sink.lock().unwrap();
                    all.push_str(&line);
                    all.push('\n');
                }
                let _ = tx.send(line);
            }
        });
        Subscriber {
            child,
            stdout,
            stderr_lines,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The next stdout line.
    async fn line(&mut self) -> String {
        let next = within(
            RECV,
            "a line from shardcast subscribe",
            self.stdout.next_line(),
        )
        .await;
        match next {
            Ok(Some(line)) => line,
            other => panic!("stdout ended ({other:?}); stderr: {}", self.stderr()),
        }
    }

    /// Waits for a stderr line containing `text` and returns it.
    async fn stderr_line(&mut self, text: &str) -> String {
        let what = format!("a stderr line containing {text:?}");
        within(RECV, &what, async {
            loop {
                match self.stderr_lines.recv().await {
                    Some(line) if line.contains(text) => return line,
                    Some(_) => {}
                    None => panic!("stderr ended without {text:?}: {}", self.stderr()),
                }
            }
        })
        .await
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = self.child.id().expect("still running") as libc::pid_t;
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill failed");
    }

    /// Waits for the exit; returns the code and what is left on stdout.
    async fn exit(mut self) -> (Option<i32>, Vec<String>) {
        let status = within(CLI, "shardcast subscribe to exit", self.child.wait())
            .await
            .expect("wait for shardcast subscribe");
        let mut rest = Vec::new();
        while let Ok(Ok(Some(line))) = tokio::time::timeout(RECV, self.stdout.next_line()).await {
            rest.push(line);
        }
        (status.code(), rest)
    }
}

/// Number of subscribers the broker counts on `channel` (answered by the shards, so a
/// subscription counted here is in place for the next publish).
async fn subscribers(broker: &Broker, channel: &str) -> u64 {
    let r = broker.get(&format!("/api/channels/{channel}")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()["subscribers"].as_u64().unwrap_or(0)
}

async fn wait_subscribed(broker: &Broker, channel: &str, sub: &Subscriber) {
    until_ok("the subscribe to be in place", RECV, || async {
        match subscribers(broker, channel).await {
            1 => Ok(()),
            n => Err(format!(
                "{n} subscribers; subscribe stderr: {}",
                sub.stderr()
            )),
        }
    })
    .await;
}

/// `shardcast run --id ID -- sh -c SCRIPT` to completion, asserting exit 0.
async fn run_build(broker: &Broker, id: &str, script: &str) {
    let url = broker.http_url();
    let out = run_cli(
        &["run", "--url", &url, "--id", id, "--", "sh", "-c", script],
        &[],
        CLI,
    )
    .await;
    assert_eq!(out.code, Some(0), "run failed: {}", out.stderr);
}

#[tokio::test]
async fn a_finished_build_is_printed_whole_and_in_order_then_it_stops() {
    let broker = Broker::start("");
    run_build(&broker, "b1", "seq 1 5000").await;
    let ws = broker.ws_url();
    let out = run_cli(
        &[
            "subscribe",
            "--url",
            &ws,
            "--channel",
            "process:b1",
            "--until-exit",
        ],
        &[],
        CLI,
    )
    .await;
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    let mut expected = vec!["[running]".to_string()];
    expected.extend((1..=5000).map(|n| n.to_string()));
    expected.push("[exited, code 0]".to_string());
    assert_eq!(lines.len(), expected.len(), "stderr: {}", out.stderr);
    for (i, (got, want)) in lines.iter().zip(&expected).enumerate() {
        assert_eq!(got, want, "line {i}");
    }
    assert_eq!(out.stderr.trim(), "", "no notices for a complete replay");

    // The same stream as JSON: offsets 1..=5002, no gaps.
    let out = run_cli(
        &[
            "subscribe",
            "--url",
            &ws,
            "--channel",
            "process:b1",
            "--until-exit",
            "--json",
        ],
        &[],
        CLI,
    )
    .await;
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    let events: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(events.len(), 5002);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["offset"], json!(i + 1), "{e}");
        assert_eq!(e["channel"], "process:b1");
    }
    assert_eq!(events[0]["type"], "process_status");
    assert_eq!(events[0]["data"]["status"], "running");
    assert_eq!(
        events[1],
        json!({"offset": 2, "channel": "process:b1", "type": "process_output", "data": "1"})
    );
    assert_eq!(
        events[5001]["data"],
        json!({"status": "exited", "exitCode": 0})
    );
}

#[tokio::test]
async fn live_publications_appear_as_they_are_made() {
    let broker = Broker::start("");
    let ws = broker.ws_url();
    let mut sub = Subscriber::spawn(&["--url", &ws, "--channel", "process:live", "--until-exit"]);
    wait_subscribed(&broker, "process:live", &sub).await;

    for line in ["compiling", "linking"] {
        let r = broker
            .post_json("/api/process/live/output", &json!({ "line": line }))
            .await;
        assert!(r.is_success(), "{} {}", r.status, r.text);
        assert_eq!(sub.line().await, line);
    }
    let r = broker
        .post_json(
            "/api/process/live/status",
            &json!({"status": "exited", "exitCode": 3}),
        )
        .await;
    assert!(r.is_success(), "{} {}", r.status, r.text);
    assert_eq!(sub.line().await, "[exited, code 3]");
    let (code, rest) = sub.exit().await;
    assert_eq!(
        code,
        Some(0),
        "--until-exit ends with 0 once the process ended"
    );
    assert!(rest.is_empty(), "{rest:?}");
}

#[tokio::test]
async fn other_channels_print_their_data_and_json_mode_says_everything_until_ctrl_c() {
    let broker = Broker::start("");
    let ws = broker.ws_url();
    let mut plain = Subscriber::spawn(&["--url", &ws, "--channel", "news"]);
    wait_subscribed(&broker, "news", &plain).await;
    let mut json_sub = Subscriber::spawn(&["--url", &ws, "--channel", "news", "--json"]);
    until_ok("both subscribes in place", RECV, || async {
        match subscribers(&broker, "news").await {
            2 => Ok(()),
            n => Err(format!("{n} subscribers; stderr: {}", json_sub.stderr())),
        }
    })
    .await;

    broker
        .publish("news", json!({"headline": "a b", "n": 1}))
        .await;
    broker.publish("news", json!("text")).await;
    // A broadcast reaches every client but is not the channel's: not printed.
    let r = broker
        .post_json("/api/broadcast", &json!({"event": "hello", "data": 1}))
        .await;
    assert!(r.is_success(), "{} {}", r.status, r.text);
    broker.publish("news", json!(3)).await;

    assert_eq!(plain.line().await, r#"{"headline":"a b","n":1}"#);
    assert_eq!(plain.line().await, r#""text""#);
    assert_eq!(plain.line().await, "3");
    let first: serde_json::Value = serde_json::from_str(&json_sub.line().await).unwrap();
    assert_eq!(
        first,
        json!({"offset": null, "channel": "news", "type": "event", "data": {"headline": "a b", "n": 1}})
    );
    json_sub.line().await;
    let third: serde_json::Value = serde_json::from_str(&json_sub.line().await).unwrap();
    assert_eq!(third["data"], 3);

    plain.signal(libc::SIGINT);
    json_sub.signal(libc::SIGTERM);
    let stderr = plain.stderr();
    let (code, rest) = plain.exit().await;
    assert_eq!(code, Some(0), "Ctrl-C ends with 0; stderr: {stderr}");
    assert!(rest.is_empty(), "{rest:?}");
    let (code, _) = json_sub.exit().await;
    assert_eq!(code, Some(0), "SIGTERM ends with 0");
    eventually("the subscribers to leave", RECV, || async {
        subscribers(&broker, "news").await == 0
    })
    .await;
}

#[tokio::test]
async fn since_prints_only_later_offsets_and_says_when_it_cannot() {
    let broker = Broker::start("");
    // Offsets: 1 running, 2..=11 the lines 1..=10, 12 exited.
    run_build(&broker, "s1", "seq 1 10").await;
    let ws = broker.ws_url();
    let out = run_cli(
        &[
            "subscribe",
            "--url",
            &ws,
            "--channel",
            "process:s1",
            "--since",
            "8",
            "--until-exit",
            "--json",
        ],
        &[],
        CLI,
    )
    .await;
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    let offsets: Vec<u64> = out
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["offset"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(offsets, [9, 10, 11, 12], "stdout: {}", out.stdout);
    assert_eq!(out.stderr.trim(), "", "a complete resume has no notice");

    let out = run_cli(
        &[
            "subscribe",
            "--url",
            &ws,
            "--channel",
            "process:s1",
            "--since",
            "10",
            "--until-exit",
        ],
        &[],
        CLI,
    )
    .await;
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    // Offset 11 is the line "10", offset 12 the exit.
    assert_eq!(out.stdout, "10\n[exited, code 0]\n");

    // Beyond the last offset: nothing to replay, and stderr says so; then live lines.
    let mut sub = Subscriber::spawn(&["--url", &ws, "--channel", "process:s1", "--since", "100"]);
    let notice = sub.stderr_line("--since 100").await;
    assert!(notice.contains("beyond"), "{notice}");
    let r = broker
        .post_json("/api/process/s1/output", &json!({"line": "later"}))
        .await;
    assert!(r.is_success(), "{} {}", r.status, r.text);
    assert_eq!(sub.line().await, "later");
    sub.signal(libc::SIGINT);
    let (code, rest) = sub.exit().await;
    assert_eq!(code, Some(0));
    assert!(rest.is_empty(), "{rest:?}");

    // A channel without history cannot resume at all.
    let mut sub = Subscriber::spawn(&["--url", &ws, "--channel", "plain", "--since", "3"]);
    let notice = sub.stderr_line("keeps no history").await;
    assert!(notice.contains("--since 3"), "{notice}");
    sub.signal(libc::SIGINT);
    assert_eq!(sub.exit().await.0, Some(0));
}

#[tokio::test]
async fn a_refused_subscribe_is_reported_with_the_reason() {
    let broker = Broker::start("");
    let ws = broker.ws_url();
    let out = run_cli(&["subscribe", "--url", &ws, "--channel", "a/#/b"], &[], CLI).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("refused the subscription to \"a/#/b\"")
            && out.stderr.contains("invalid pattern"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stdout, "");

    let out = run_cli(
        &[
            "subscribe",
            "--url",
            &ws,
            "--channel",
            "builds/#",
            "--since",
            "1",
        ],
        &[],
        CLI,
    )
    .await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("recovery needs an exact channel"),
        "{}",
        out.stderr
    );

    // Nothing listens on port 1; an https URL is refused before connecting.
    let out = run_cli(
        &[
            "subscribe",
            "--url",
            "ws://127.0.0.1:1/ws",
            "--channel",
            "c",
        ],
        &[],
        CLI,
    )
    .await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("cannot connect to 127.0.0.1:1"),
        "{}",
        out.stderr
    );
    let out = run_cli(
        &["subscribe", "--url", "wss://h/ws", "--channel", "c"],
        &[],
        CLI,
    )
    .await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("not supported"), "{}", out.stderr);
}

#[tokio::test]
async fn credentials_go_as_a_token_and_a_missing_one_is_explained() {
    let broker = Broker::start_with(
        "[auth]\ntype = \"bearer\"\nbearer_token_env = \"TEST_WS_TOKENS\"\n",
        &[],
        &[("TEST_WS_TOKENS", "new token/+=")],
    );
    let ws = broker.ws_url();
    let out = run_cli(
        &["subscribe", "--url", &ws, "--channel", "process:a"],
        &[],
        CLI,
    )
    .await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("HTTP 401") && out.stderr.contains("--token"),
        "{}",
        out.stderr
    );

    for (path, body) in [
        ("/api/process/a/output", json!({"line": "done soon"})),
        (
            "/api/process/a/status",
            json!({"status": "failed", "exitCode": -1}),
        ),
    ] {
        let r = broker.post_json(path, &body).await;
        assert!(r.is_success(), "{} {}", r.status, r.text);
    }
    let out = run_cli(
        &[
            "subscribe",
            "--url",
            &ws,
            "--channel",
            "process:a",
            "--until-exit",
        ],
        &[("SHARDCAST_TOKEN", "new token/+=")],
        CLI,
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "done soon\n[failed]\n");
}

#[tokio::test]
async fn the_end_of_the_connection_is_reported() {
    let mut broker = Broker::start("");
    let ws = broker.ws_url();
    let mut sub = Subscriber::spawn(&["--url", &ws, "--channel", "process:gone"]);
    wait_subscribed(&broker, "process:gone", &sub).await;
    broker.sigterm();
    let notice = sub.stderr_line("closed the connection").await;
    assert!(notice.contains("1001"), "{notice}");
    let (code, _) = sub.exit().await;
    assert_eq!(code, Some(1), "the stream ended without being asked to");
    assert!(broker.wait_exit(CLI).await.is_some());
}

#[tokio::test]
async fn a_closed_reader_ends_it_even_when_nothing_more_is_published() {
    // `shardcast subscribe ... | grep -m1 x`: the reader goes away after the line it wanted.
    let broker = Broker::start("");
    run_build(&broker, "r1", "seq 1 10").await;
    let ws = broker.ws_url();
    let mut sub = Subscriber::spawn(&["--url", &ws, "--channel", "process:r1"]);
    assert_eq!(sub.line().await, "[running]");
    let Subscriber {
        mut child,
        stdout,
        stderr,
        ..
    } = sub;
    drop(stdout);
    let status = within(
        CLI,
        "shardcast subscribe to notice its reader left",
        child.wait(),
    )
    .await
    .expect("wait for shardcast subscribe");
    let stderr = stderr.lock().unwrap().clone();
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
}

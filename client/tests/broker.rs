//! The client against the real broker binary: publish with acks, nacks, a resume across a
//! cut link that loses nothing, fresh credentials after a 401, the ping deadline, the
//! bounded queue. The cut and the freeze go through a small TCP proxy in this file.
#![allow(clippy::unwrap_used, clippy::panic)]

use shardcast_client::{
    Ask, BackoffConfig, Client, Credentials, Dialect, Error, LinkEvent, Position, Provider,
};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(10);

/// The broker binary beside this test's target directory (built when missing).
fn broker_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap().to_path_buf();
    let bin = dir.join("shardcast");
    if !bin.exists() {
        let mut cargo = Command::new(env!("CARGO"));
        cargo.args(["build", "-p", "shardcast", "--bin", "shardcast"]);
        if dir.ends_with("release") {
            cargo.arg("--release");
        }
        assert!(
            cargo.status().unwrap().success(),
            "building shardcast failed"
        );
    }
    bin
}

struct Broker {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Broker {
    fn start(config: &str, env: &[(&str, &str)]) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shardcast.toml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = Command::new(broker_binary());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&path)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("shardcast listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        Broker {
            child,
            addr,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

/// A TCP proxy whose connections can be cut (reset) or frozen (bytes no longer pass).
struct Proxy {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    frozen: Arc<AtomicBool>,
    _accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let frozen = Arc::new(AtomicBool::new(false));
        let (c, f) = (conns.clone(), frozen.clone());
        let accept = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let f = f.clone();
                let task = tokio::spawn(async move {
                    let Ok(up) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut dr, mut dw) = down.into_split();
                    let (mut ur, mut uw) = up.into_split();
                    let f2 = f.clone();
                    let a = pipe(&mut dr, &mut uw, &f);
                    let b = pipe(&mut ur, &mut dw, &f2);
                    let _ = tokio::join!(a, b);
                });
                c.lock().unwrap().push(task);
            }
        });
        Proxy {
            addr,
            conns,
            frozen,
            _accept: accept,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Drops every proxied connection (both sides see the TCP connection end).
    fn cut(&self) {
        for t in self.conns.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

async fn pipe(
    r: &mut tokio::net::tcp::OwnedReadHalf,
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    frozen: &AtomicBool,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.load(Ordering::SeqCst) {
            continue; // swallowed: a link that is up but carries nothing
        }
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

fn fast_backoff() -> BackoffConfig {
    BackoffConfig {
        initial_interval: Duration::from_millis(20),
        max_interval: Duration::from_millis(200),
        multiplier: 2.0,
        max_retries: 0,
    }
}

async fn next_event(
    events: &mut broadcast::Receiver<LinkEvent>,
    want: impl Fn(&LinkEvent) -> bool,
) -> LinkEvent {
    tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Ok(e) if want(&e) => return e,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("link events ended: {e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no such link event within {WAIT:?}"))
}

#[tokio::test]
async fn publish_is_acked_and_delivered_and_refusals_carry_the_reason() {
    publish_and_refusals(Dialect::Vws).await;
}

#[tokio::test]
async fn semstreams_publish_is_acked_and_delivered_and_refusals_carry_the_reason() {
    publish_and_refusals(Dialect::SemStreams).await;
}

async fn publish_and_refusals(dialect: Dialect) {
    let broker = Broker::start(
        "[[policy]]\npattern = \"room/#\"\nsubscribe = \"anyone\"\npublish = \"anyone\"\n",
        &[],
    );
    let client = Client::builder(&broker.url())
        .dialect(dialect)
        .connect()
        .unwrap();
    let mut sub = client.subscribe("room/+").await.unwrap();
    let headers = BTreeMap::from([("traceparent".to_owned(), "00-1".to_owned())]);
    client
        .publish("room/1", &serde_json::json!({"n": 1}), headers)
        .await
        .unwrap();
    let ev = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev.topic, "room/1");
    assert_eq!(ev.data.get(), r#"{"n":1}"#);
    assert_eq!(
        ev.headers.get("traceparent").map(String::as_str),
        Some("00-1")
    );

    let refused = client.subscribe("bad/#/x").await;
    assert!(
        matches!(refused, Err(Error::Nack(ref r)) if r.contains("pattern")),
        "{refused:?}"
    );
    let not_allowed = client.publish("elsewhere", &1, BTreeMap::new()).await;
    assert!(
        matches!(not_allowed, Err(Error::Nack(ref r)) if !r.is_empty()),
        "{not_allowed:?}"
    );
    let reserved = client.publish("$sys/stats", &1, BTreeMap::new()).await;
    assert!(matches!(reserved, Err(Error::Nack(_))), "{reserved:?}");
    let unsubscribed = client.unsubscribe("room/+").await;
    match dialect {
        Dialect::Vws => assert_eq!(unsubscribed, Ok(())),
        Dialect::SemStreams => assert!(
            matches!(unsubscribed, Err(Error::Unsupported(..))),
            "{unsubscribed:?}"
        ),
    }
}

#[tokio::test]
async fn a_cut_link_resumes_from_its_position_and_loses_nothing() {
    resume_through_a_cut(Dialect::Vws).await;
}

/// The same in the SemStreams dialect: the position travels in `history` requests.
#[tokio::test]
async fn a_semstreams_link_resumes_from_its_position_and_loses_nothing() {
    resume_through_a_cut(Dialect::SemStreams).await;
}

async fn resume_through_a_cut(dialect: Dialect) {
    let broker = Broker::start(
        "[[history]]\nprefix = \"h/\"\nsize = 10000\n[[policy]]\npattern = \"h/#\"\nsubscribe = \"anyone\"\npublish = \"anyone\"\n",
        &[],
    );
    let proxy = Proxy::start(broker.addr).await;
    let reader = Client::builder(&proxy.url())
        .dialect(dialect)
        .backoff(fast_backoff())
        .connect()
        .unwrap();
    let mut link = reader.link_events();
    let mut sub = reader
        .subscribe_from(
            "h/1",
            Position {
                offset: 0,
                epoch: None,
            },
        )
        .await
        .unwrap();
    let writer = Client::builder(&broker.url())
        .dialect(dialect)
        .connect()
        .unwrap();
    let total = 300u64;
    let publisher = tokio::spawn(async move {
        for n in 1..=total {
            writer.publish("h/1", &n, BTreeMap::new()).await.unwrap();
            if n % 100 == 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let mut seen = Vec::new();
    while (seen.len() as u64) < total {
        let ev = tokio::time::timeout(WAIT, sub.next())
            .await
            .unwrap_or_else(|_| panic!("stalled after {} events", seen.len()))
            .unwrap();
        seen.push((ev.offset, ev.data.get().to_owned()));
        if seen.len() == 120 {
            proxy.cut();
        }
    }
    publisher.await.unwrap();
    let offsets: Vec<u64> = seen.iter().filter_map(|(o, _)| *o).collect();
    assert_eq!(
        offsets,
        (1..=total).collect::<Vec<_>>(),
        "each offset once, in order"
    );
    assert!(seen
        .iter()
        .enumerate()
        .all(|(i, (_, d))| *d == (i + 1).to_string()));
    let back = next_event(&mut link, |e| matches!(e, LinkEvent::Resubscribed { .. })).await;
    assert_eq!(
        back,
        LinkEvent::Resubscribed {
            topic: "h/1".into(),
            recovered: Some(true)
        }
    );
}

#[tokio::test]
async fn credentials_are_fetched_again_after_a_401() {
    let broker = Broker::start(
        "[auth]\ntype = \"bearer\"\nbearer_token_env = \"TOKENS\"\n",
        &[("TOKENS", "fresh-token")],
    );
    let asked = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let (a, r) = (asked.clone(), refused.clone());
    let provider: Provider = Arc::new(move |ask| {
        a.fetch_add(1, Ordering::SeqCst);
        let token = if ask == Ask::Refused {
            r.fetch_add(1, Ordering::SeqCst);
            "fresh-token"
        } else {
            "expired-token"
        };
        Box::pin(async move { Credentials::Bearer(token.into()) })
    });
    let client = Client::builder(&broker.url())
        .credentials_provider(provider)
        .backoff(fast_backoff())
        .connect()
        .unwrap();
    let mut link = client.link_events();
    let sub = tokio::time::timeout(WAIT, client.subscribe("x"))
        .await
        .unwrap();
    assert!(sub.is_ok(), "{sub:?}");
    assert_eq!(
        refused.load(Ordering::SeqCst),
        1,
        "asked for new credentials once"
    );
    assert!(asked.load(Ordering::SeqCst) >= 2);
    drop(link.try_recv());
}

#[tokio::test]
async fn a_link_that_carries_nothing_is_dropped_at_the_ping_deadline() {
    let broker = Broker::start("", &[]);
    let proxy = Proxy::start(broker.addr).await;
    let client = Client::builder(&proxy.url())
        .ping_deadline(Duration::from_millis(400))
        .backoff(fast_backoff())
        .connect()
        .unwrap();
    let mut link = client.link_events();
    let _sub = client.subscribe("x").await.unwrap();
    proxy.frozen.store(true, Ordering::SeqCst);
    let started = tokio::time::Instant::now();
    let gone = next_event(&mut link, |e| matches!(e, LinkEvent::Disconnected { .. })).await;
    let LinkEvent::Disconnected { reason, .. } = gone else {
        unreachable!()
    };
    assert!(reason.contains("ping deadline"), "{reason}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn requests_beyond_the_queue_fail_at_once_while_the_link_is_down() {
    // Nothing listens there: the client keeps retrying and never drains its queue.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = Client::builder(&format!("ws://127.0.0.1:{port}/ws"))
        .queue_size(2)
        .backoff(fast_backoff())
        .connect()
        .unwrap();
    let c1 = client.clone();
    let c2 = client.clone();
    let _w1 = tokio::spawn(async move { c1.publish("a", &1, BTreeMap::new()).await });
    let _w2 = tokio::spawn(async move { c2.publish("a", &2, BTreeMap::new()).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let third = client.publish("a", &3, BTreeMap::new()).await;
    assert_eq!(third, Err(Error::QueueFull(2)));
}

#[tokio::test(start_paused = true)]
async fn reconnect_delays_follow_the_backoff_with_a_paused_clock() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = BackoffConfig {
        initial_interval: Duration::from_secs(1),
        max_interval: Duration::from_secs(8),
        multiplier: 2.0,
        max_retries: 6,
    };
    let client = Client::builder(&format!("ws://127.0.0.1:{port}/ws"))
        .backoff(config)
        .connect()
        .unwrap();
    let mut link = client.link_events();
    let ceilings = [1u64, 2, 4, 8, 8, 8];
    let mut previous: Option<(tokio::time::Instant, Duration)> = None;
    for (n, ceiling) in ceilings.iter().enumerate() {
        let ev = link.recv().await.unwrap();
        let now = tokio::time::Instant::now();
        let LinkEvent::Disconnected { retry_in, .. } = ev else {
            panic!("attempt {n}: {ev:?}")
        };
        assert!(
            retry_in <= Duration::from_secs(*ceiling),
            "attempt {n}: {retry_in:?}"
        );
        if let Some((at, delay)) = previous {
            // The previous delay was slept (in virtual time) before this attempt.
            assert!(now - at >= delay, "attempt {n}: {:?} < {delay:?}", now - at);
        }
        previous = Some((now, retry_in));
    }
    assert_eq!(link.recv().await.unwrap(), LinkEvent::GaveUp);
    let after = client.publish("a", &1, BTreeMap::new()).await;
    assert!(
        matches!(after, Err(Error::Closed | Error::GaveUp)),
        "{after:?}"
    );
}

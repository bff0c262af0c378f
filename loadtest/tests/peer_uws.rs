//! The uWebSockets.js peer in loadtest/peers/uws, which compare.sh measures shardcast
//! against: it loads the native binary (and says so), answers vws subscribe and publish
//! as the harness expects, and a short harness run against it loses nothing.
//!
//! Needs node and npm. Without them the test prints a notice and passes, as the browser
//! tests do without chromium; when the peer's packages are not installed yet it runs
//! `npm ci --ignore-scripts` in loadtest/peers/uws first (the npm registry only), and
//! prints a notice and passes when that is not possible (offline).
//! `SHARDCAST_REQUIRE_PEER=1` turns every such notice into a failure.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use shardcast_loadtest::wire::{self, Frame};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HARNESS: &str = env!("CARGO_BIN_EXE_shardcast-loadtest");

fn peer_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/uws")
}

/// Says why the peer is not tested, past the test harness's capture so it is seen in a
/// normal run; with SHARDCAST_REQUIRE_PEER=1 that is a failure instead.
fn skip(why: &str) {
    let required = std::env::var("SHARDCAST_REQUIRE_PEER").is_ok_and(|v| v == "1");
    assert!(!required, "SHARDCAST_REQUIRE_PEER=1 but {why}");
    let _ = writeln!(
        std::io::stderr(),
        "NOTICE: uWebSockets.js peer test skipped: {why} (SHARDCAST_REQUIRE_PEER=1 makes this a failure)"
    );
}

fn found(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The peer's packages, installed from the lock file when missing; false (after a
/// notice) when node, npm or the registry is not there.
fn peer_installed() -> bool {
    if !found("node") {
        skip("node is not installed");
        return false;
    }
    let dir = peer_dir();
    if dir.join("node_modules/uWebSockets.js/binaries").is_dir() {
        return true;
    }
    if !found("npm") {
        skip("npm is not installed");
        return false;
    }
    let ci = Command::new("npm")
        .args(["ci", "--ignore-scripts", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .output();
    match ci {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            skip(&format!(
                "`npm ci` in {} failed: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            false
        }
        Err(e) => {
            skip(&format!("npm did not run: {e}"));
            false
        }
    }
}

struct Peer {
    child: Child,
    port: u16,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the peer on a free port and reads the port from its first line.
fn start_peer() -> Peer {
    let mut child = Command::new("node")
        .arg("server.js")
        .env("PORT", "0")
        .current_dir(peer_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("native uWebSockets.js"), "{line:?}");
    let port = line
        .trim()
        .rsplit_once("127.0.0.1:")
        .and_then(|(_, rest)| rest.trim_end_matches("/ws").parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    Peer { child, port }
}

/// A blocking vws client: enough to send requests and read the replies one by one.
struct Client {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn open(port: u16) -> Client {
        let target = wire::Target::parse(&format!("ws://127.0.0.1:{port}/ws")).unwrap();
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&target.upgrade_request(wire::Dialect::Vws))
            .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head = loop {
            if let Some(head) = wire::response_head(&buf) {
                break head;
            }
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "closed during the upgrade");
            buf.extend_from_slice(&chunk[..n]);
        };
        assert_eq!(head.0, 101, "{}", String::from_utf8_lossy(&buf));
        buf.drain(..head.1);
        Client { s, buf }
    }

    fn send(&mut self, text: &str) {
        let mut out = Vec::new();
        wire::push_frame(wire::OP_TEXT, text.as_bytes(), &mut out);
        self.s.write_all(&out).unwrap();
    }

    /// The next text message.
    fn next(&mut self) -> String {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((frame, used)) = wire::next_frame(&self.buf).unwrap() {
                let text = match frame {
                    Frame::Text(t) => Some(String::from_utf8(t.to_vec()).unwrap()),
                    Frame::Close(code, _) => panic!("closed {code}"),
                    _ => None,
                };
                self.buf.drain(..used);
                if let Some(text) = text {
                    return text;
                }
                continue;
            }
            let n = self.s.read(&mut chunk).unwrap();
            assert!(n > 0, "the peer closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[test]
fn peer_loads_native_uws_and_answers_vws() {
    if !peer_installed() {
        return;
    }
    let check = Command::new("node")
        .args(["server.js", "--check"])
        .current_dir(peer_dir())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{said}");
    assert!(said.contains("native uWebSockets.js loaded from"), "{said}");

    let peer = start_peer();
    let mut sub = Client::open(peer.port);
    let mut publisher = Client::open(peer.port);
    sub.send(r#"{"k":"s","t":"peer/a","i":1}"#);
    assert_eq!(sub.next(), r#"{"k":"a","i":1}"#);
    // Another topic's publication does not reach it; its own does, as {"t","d"}.
    publisher.send(r#"{"t":"peer/b","d":0}"#);
    publisher.send(r#"{"t":"peer/a","d":{"x":1},"h":{"traceparent":"00-1"},"i":7}"#);
    assert_eq!(publisher.next(), r#"{"k":"a","i":7}"#);
    assert_eq!(
        sub.next(),
        r#"{"t":"peer/a","d":{"x":1},"h":{"traceparent":"00-1"}}"#
    );
    // Refusals are nacks, with the id when one was given.
    sub.send(r#"{"k":"zz","i":3}"#);
    assert_eq!(sub.next(), r#"{"k":"n","i":3,"e":"unknown kind"}"#);
    sub.send("not json");
    assert!(sub.next().starts_with(r#"{"k":"n","e":"#));
    // Unsubscribed, the next publication does not arrive, the one after a resubscribe does.
    sub.send(r#"{"k":"U","i":4}"#);
    assert_eq!(sub.next(), r#"{"k":"a","i":4}"#);
    publisher.send(r#"{"t":"peer/a","d":1,"i":8}"#);
    assert_eq!(publisher.next(), r#"{"k":"a","i":8}"#);
    sub.send(r#"{"k":"s","t":"peer/a","i":5}"#);
    assert_eq!(sub.next(), r#"{"k":"a","i":5}"#);
    publisher.send(r#"{"t":"peer/a","d":2}"#);
    assert_eq!(sub.next(), r#"{"t":"peer/a","d":2}"#);

    // What compare.sh does with it: a harness run, every delivery counted.
    let started = Instant::now();
    let out = Command::new(HARNESS)
        .args(["run", "fanout", "--subs", "50", "--rate", "200"])
        .args(["--warmup", "0.5", "--duration", "1", "--quiet", "--check"])
        .args(["--url", &format!("ws://127.0.0.1:{}/ws", peer.port)])
        .args(["--pid", &peer.child.id().to_string()])
        .output()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(60));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "harness check failed:\n{table}");
    assert!(table.contains("deliveries/s"), "{table}");
}

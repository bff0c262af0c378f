//! A headless Chromium driven over the DevTools protocol (CDP), for the browser tests.
//!
//! No node, no driver binary: Chromium is started with `--remote-debugging-port=0`, prints
//! the browser's DevTools WebSocket address on stderr, and a page is then driven over its
//! own DevTools WebSocket (tokio-tungstenite, as in the other tests) with `Runtime.evaluate`,
//! `Input.*` (real key and mouse events) and `Page.captureScreenshot`. Every call and every
//! wait is bounded; the page's console output and uncaught exceptions are collected and
//! shown when a wait fails.
//!
//! Chromium runs in a process group of its own with a fresh profile directory; dropping
//! [`Chromium`] kills that group (the browser and its helper processes) and removes the
//! profile.

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Bound for Chromium to start and print its DevTools address.
const LAUNCH: Duration = Duration::from_secs(30);
/// Bound for one DevTools call.
const CALL: Duration = Duration::from_secs(15);

/// The flags this machine needs (see the environment notes): no sandbox as root, no GPU,
/// and nothing that reaches out to the network on its own.
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
];

/// The Chromium binary: `$CHROMIUM` if set, else the first of the usual names on `PATH`.
pub fn find() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return Some(p.into());
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|p| p.is_file())
}

/// A running headless Chromium.
pub struct Chromium {
    child: Child,
    browser_ws: String,
    _profile: tempfile::TempDir,
}

impl Chromium {
    /// Starts `binary` headless and waits (bounded) for its DevTools address.
    pub fn launch(binary: &Path) -> Chromium {
        let profile = tempfile::Builder::new()
            .prefix("shardcast-chromium-")
            .tempdir()
            .expect("create a Chromium profile directory");
        let mut child = Command::new(binary)
            .args(FLAGS)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr piped");
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut sent = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if sent {
                    continue; // keep draining: a full pipe would block Chromium
                }
                if let Some(url) = line.trim().strip_prefix("DevTools listening on ") {
                    let _ = tx.send(Ok(url.to_string()));
                    sent = true;
                } else {
                    seen.push(line);
                }
            }
            if !sent {
                let _ = tx.send(Err(seen.join("\n")));
            }
        });
        let browser_ws = match rx.recv_timeout(LAUNCH) {
            Ok(Ok(url)) => url,
            other => {
                kill_group(&mut child);
                panic!("Chromium did not print its DevTools address within {LAUNCH:?}: {other:?}");
            }
        };
        Chromium {
            child,
            browser_ws,
            _profile: profile,
        }
    }

    /// Opens a new tab of `width` x `height` CSS pixels and attaches to it.
    pub async fn new_page(&self, width: u32, height: u32) -> Page {
        let mut browser = Cdp::connect(&self.browser_ws).await;
        let target = browser
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let id = target["targetId"].as_str().expect("targetId").to_string();
        // ws://127.0.0.1:PORT/devtools/browser/UUID -> ws://127.0.0.1:PORT/devtools/page/ID
        let root = self
            .browser_ws
            .split("/devtools/")
            .next()
            .expect("DevTools URL");
        let mut cdp = Cdp::connect(&format!("{root}/devtools/page/{id}")).await;
        cdp.call("Runtime.enable", json!({})).await;
        cdp.call("Log.enable", json!({})).await;
        cdp.call("Page.enable", json!({})).await;
        cdp.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        Page { cdp, width }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

fn kill_group(child: &mut Child) {
    // SAFETY: kill(2) on the process group we created for this Chromium (process_group(0)
    // makes the child's pid its group id); its helper processes are in that group too.
    unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
    let _ = child.wait();
}

/// One DevTools WebSocket: numbered calls, events collected as log lines.
struct Cdp {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    log: Vec<String>,
}

impl Cdp {
    async fn connect(url: &str) -> Cdp {
        let (ws, _) = match tokio::time::timeout(CALL, tokio_tungstenite::connect_async(url)).await
        {
            Ok(Ok(connected)) => connected,
            Ok(Err(e)) => panic!("DevTools connect to {url}: {e}"),
            Err(_) => panic!("DevTools connect to {url} timed out"),
        };
        Cdp {
            ws,
            next_id: 1,
            log: Vec::new(),
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({"id": id, "method": method, "params": params});
        let deadline = Instant::now() + CALL;
        self.ws
            .send(Message::text(request.to_string()))
            .await
            .unwrap_or_else(|e| panic!("DevTools send {method}: {e}"));
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = match tokio::time::timeout(left, self.ws.next()).await {
                Ok(Some(Ok(msg))) => msg,
                Ok(Some(Err(e))) => panic!("DevTools read during {method}: {e}"),
                Ok(None) => panic!("DevTools connection closed during {method}"),
                Err(_) => panic!("DevTools {method} unanswered after {CALL:?}"),
            };
            let Message::Text(text) = msg else { continue };
            let v: Value = serde_json::from_str(&text).expect("DevTools sends JSON");
            if v["id"] == id {
                if let Some(err) = v.get("error") {
                    panic!("DevTools {method} failed: {err}");
                }
                return v["result"].clone();
            }
            self.note_event(&v);
        }
    }

    fn note_event(&mut self, v: &Value) {
        let p = &v["params"];
        let line = match v["method"].as_str() {
            Some("Runtime.consoleAPICalled") => {
                let args: Vec<String> = p["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| match &a["value"] {
                        Value::String(s) => s.clone(),
                        Value::Null => a["description"].as_str().unwrap_or("").to_string(),
                        other => other.to_string(),
                    })
                    .collect();
                format!(
                    "console.{}: {}",
                    p["type"].as_str().unwrap_or("?"),
                    args.join(" ")
                )
            }
            Some("Runtime.exceptionThrown") => {
                let d = &p["exceptionDetails"];
                format!(
                    "uncaught: {} {}",
                    d["text"].as_str().unwrap_or(""),
                    d["exception"]["description"].as_str().unwrap_or("")
                )
            }
            Some("Log.entryAdded") => format!(
                "log.{}: {} {}",
                p["entry"]["level"].as_str().unwrap_or("?"),
                p["entry"]["text"].as_str().unwrap_or(""),
                p["entry"]["url"].as_str().unwrap_or("")
            ),
            _ => return,
        };
        self.log.push(line);
    }
}

/// A browser tab.
pub struct Page {
    cdp: Cdp,
    width: u32,
}

impl Page {
    /// What the page printed to its console, threw, or logged (failed loads), so far.
    pub fn log(&self) -> String {
        self.cdp.log.join("\n")
    }

    /// Navigates to `url` and waits until the document has loaded.
    pub async fn goto(&mut self, url: &str) {
        let r = self.cdp.call("Page.navigate", json!({"url": url})).await;
        if let Some(err) = r.get("errorText") {
            panic!("navigating to {url} failed: {err}");
        }
        self.wait_for(
            "the document to load",
            "document.readyState === 'complete'",
            Duration::from_secs(15),
        )
        .await;
    }

    /// Evaluates a JavaScript expression (awaiting it if it is a promise) and returns its
    /// value as JSON. Panics, with the page log, if it throws.
    pub async fn eval(&mut self, js: &str) -> Value {
        let r = self
            .cdp
            .call(
                "Runtime.evaluate",
                json!({"expression": js, "awaitPromise": true, "returnByValue": true}),
            )
            .await;
        if let Some(ex) = r.get("exceptionDetails") {
            let what = ex["exception"]["description"]
                .as_str()
                .or(ex["text"].as_str())
                .unwrap_or("?");
            panic!("page threw for `{js}`: {what}\npage log:\n{}", self.log());
        }
        r["result"]["value"].clone()
    }

    /// Polls `js` until it yields something other than `null`/`undefined`/`false`, at most
    /// `d`; returns that value. On timeout, panics with the last value and the page log.
    pub async fn wait_for(&mut self, what: &str, js: &str, d: Duration) -> Value {
        let deadline = Instant::now() + d;
        loop {
            let v = self.eval(js).await;
            if !matches!(v, Value::Null | Value::Bool(false)) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "page never showed {what} within {d:?} (`{js}` gave {v})\npage log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Text content of the element with this id (trimmed).
    pub async fn text(&mut self, id: &str) -> String {
        let v = self
            .eval(&format!(
                "document.getElementById({}).textContent.trim()",
                json!(id)
            ))
            .await;
        v.as_str().unwrap_or_default().to_string()
    }

    /// Types `text` into the input `selector` as a person would: click into it, select what
    /// is there, and insert the text (replacing the selection).
    pub async fn type_into(&mut self, selector: &str, text: &str) {
        self.click(selector).await;
        self.eval(&format!(
            "document.querySelector({}).select()",
            json!(selector)
        ))
        .await;
        self.cdp
            .call("Input.insertText", json!({"text": text}))
            .await;
    }

    /// A real mouse click in the middle of the element `selector`.
    pub async fn click(&mut self, selector: &str) {
        let js = format!(
            "(() => {{ const el = document.querySelector({}); if (!el) return null; \
             el.scrollIntoView({{block: 'center'}}); const r = el.getBoundingClientRect(); \
             return [r.x + r.width / 2, r.y + r.height / 2]; }})()",
            json!(selector)
        );
        let at = self.eval(&js).await;
        let (x, y) = match (at[0].as_f64(), at[1].as_f64()) {
            (Some(x), Some(y)) => (x, y),
            _ => panic!("no element {selector} to click\npage log:\n{}", self.log()),
        };
        for kind in ["mousePressed", "mouseReleased"] {
            self.cdp
                .call(
                    "Input.dispatchMouseEvent",
                    json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
                )
                .await;
        }
    }

    /// Saves a PNG of the whole page (not only the viewport) to `path`.
    pub async fn screenshot(&mut self, path: &Path) {
        let height = self
            .eval("document.documentElement.scrollHeight")
            .await
            .as_f64()
            .unwrap_or(1000.0);
        let shot = self
            .cdp
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true,
                       "clip": {"x": 0, "y": 0, "width": self.width, "height": height, "scale": 1}}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("screenshot is base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("create screenshot directory");
        }
        std::fs::write(path, png)
            .unwrap_or_else(|e| panic!("write screenshot {}: {e}", path.display()));
    }
}

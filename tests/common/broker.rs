//! The broker under test as a child process: start on 127.0.0.1:0 (or a given address),
//! wait for its ready line, SIGTERM, bounded wait for exit, kill on drop.

use super::*;

/// The binary under test: `SHARDCAST_TEST_BIN` if set (e.g. to run the suite against a
/// release build or another build of the broker), else the one cargo built for this test.
pub fn binary() -> std::path::PathBuf {
    std::env::var_os("SHARDCAST_TEST_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_shardcast").into())
}

/// A running `shardcast serve` process; killed when dropped.
pub struct Broker {
    child: Option<Child>,
    pid: u32,
    /// The address the broker is listening on (from its ready line).
    pub addr: SocketAddr,
    stderr: Arc<Mutex<Vec<u8>>>,
    _config: tempfile::NamedTempFile,
}

/// Write `toml` to a fresh temp file (kept alive by the returned handle).
pub fn config_file(toml: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new()
        .prefix("shardcast-test-")
        .suffix(".toml")
        .tempfile()
        .expect("create temp config");
    f.write_all(toml.as_bytes()).expect("write temp config");
    f.flush().expect("flush temp config");
    f
}

impl Broker {
    /// `shardcast serve --config <toml> --listen 127.0.0.1:0`, waiting for the ready line.
    pub fn start(toml: &str) -> Broker {
        Broker::start_with(toml, &[], &[])
    }

    /// Like [`Broker::start`] with extra command-line arguments (e.g. `--shards 4`) and
    /// extra environment variables.
    pub fn start_with(toml: &str, extra_args: &[&str], env: &[(&str, &str)]) -> Broker {
        Broker::launch(toml, "127.0.0.1:0", extra_args, env)
    }

    /// Like [`Broker::start`] on a fixed address, e.g. the address of a broker that was
    /// just stopped, to restart "the same" broker under connected clients.
    pub fn start_on(toml: &str, addr: SocketAddr) -> Broker {
        Broker::launch(toml, &addr.to_string(), &[], &[])
    }

    /// Like [`Broker::start`] with `--listen` given as text (e.g. `localhost:0`).
    pub fn start_listening(toml: &str, listen: &str) -> Broker {
        Broker::launch(toml, listen, &[], &[])
    }

    fn launch(toml: &str, listen: &str, extra_args: &[&str], env: &[(&str, &str)]) -> Broker {
        let config = config_file(toml);
        let mut cmd = Command::new(binary());
        cmd.arg("serve")
            .arg("--config")
            .arg(config.path())
            .arg("--listen")
            .arg(listen)
            .args(extra_args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Broker::spawn(cmd, config)
    }

    /// Runs `cmd` (something that ends up running `shardcast serve`, e.g. the Docker
    /// entry point) and waits for the ready line; `config` is kept for the broker's life.
    /// The test's own `SHARDCAST_*` variables are removed first; `cmd`'s own env stays.
    pub fn spawn(mut cmd: Command, config: tempfile::NamedTempFile) -> Broker {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // A developer's own SHARDCAST_* variables must not leak into tests.
        let set_by_test: Vec<String> = cmd
            .get_envs()
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        for (k, _) in std::env::vars() {
            if k.starts_with("SHARDCAST_") && !set_by_test.contains(&k) {
                cmd.env_remove(k);
            }
        }
        if !set_by_test.iter().any(|k| k == "RUST_LOG") {
            cmd.env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            );
        }
        let mut child = cmd.spawn().expect("spawn shardcast binary");
        let pid = child.id();

        let stderr = Arc::new(Mutex::new(Vec::new()));
        {
            let mut pipe = child.stderr.take().expect("stderr piped");
            let sink = Arc::clone(&stderr);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    match pipe.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => sink
                            .lock()
                            .expect("stderr lock")
                            .extend_from_slice(&buf[..n]),
                    }
                }
            });
        }

        let (tx, rx) = mpsc::channel::<Result<SocketAddr, String>>();
        {
            let pipe = child.stdout.take().expect("stdout piped");
            std::thread::spawn(move || {
                let mut reader = BufReader::new(pipe);
                let mut line = String::new();
                let mut sent = false;
                let mut seen = String::new();
                loop {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    if sent {
                        continue; // keep draining so the broker never blocks on stdout
                    }
                    seen.push_str(&line);
                    if let Some(rest) = line.trim().strip_prefix("shardcast listening on ") {
                        let parsed = rest
                            .trim()
                            .parse::<SocketAddr>()
                            .map_err(|e| format!("bad address in ready line {line:?}: {e}"));
                        let _ = tx.send(parsed);
                        sent = true;
                    }
                }
                if !sent {
                    let _ = tx.send(Err(format!(
                        "stdout closed before ready line; stdout was {seen:?}"
                    )));
                }
            });
        }

        let result = rx.recv_timeout(READY);
        let addr = match result {
            Ok(Ok(addr)) => addr,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                let err = String::from_utf8_lossy(&stderr.lock().expect("stderr lock")).to_string();
                panic!("broker did not become ready: {other:?}\nstderr:\n{err}");
            }
        };
        Broker {
            child: Some(child),
            pid,
            addr,
            stderr,
            _config: config,
        }
    }

    /// `ws://ADDR/ws`
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// `http://ADDR`
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Process id of the broker.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit status if the broker process has ended (it never should on its own).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()?
            .try_wait()
            .expect("try_wait on the broker")
    }

    /// File descriptors the broker process holds open (sockets included), from
    /// `/proc/PID/fd`; `None` where there is no `/proc`.
    pub fn open_fds(&self) -> Option<usize> {
        let dir = std::fs::read_dir(format!("/proc/{}/fd", self.pid)).ok()?;
        Some(dir.count())
    }

    /// What the broker wrote to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().expect("stderr lock")).to_string()
    }

    /// Send SIGTERM to the broker.
    pub fn sigterm(&self) {
        // SAFETY: plain kill(2) on the pid of a child we spawned and have not reaped.
        let rc = unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM) failed");
    }

    /// Wait up to `d` for the broker to exit; `None` if it did not (it is then killed).
    pub async fn wait_exit(&mut self, d: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        match tokio::time::timeout(d, rx).await {
            Ok(Ok(Ok(status))) => Some(status),
            _ => {
                // SAFETY: kill(2) on our child's pid; the waiting thread reaps it.
                unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
                None
            }
        }
    }

    /// One-shot HTTP GET.
    pub async fn get(&self, path: &str) -> HttpResponse {
        http(self.addr, "GET", path, None, Vec::new()).await
    }

    /// One-shot HTTP POST of a JSON body.
    pub async fn post_json(&self, path: &str, body: &Value) -> HttpResponse {
        http(
            self.addr,
            "POST",
            path,
            Some("application/json"),
            body.to_string().into_bytes(),
        )
        .await
    }

    /// Publish `data` on `channel` through the API and assert it was accepted.
    pub async fn publish(&self, channel: &str, data: Value) -> HttpResponse {
        let r = self
            .post_json("/api/publish", &json!({"channel": channel, "data": data}))
            .await;
        assert!(
            r.is_success(),
            "publish to {channel:?} refused: {} {}",
            r.status,
            r.text
        );
        r
    }

    /// `GET /metrics` text (asserting 200).
    pub async fn metrics(&self) -> String {
        let r = self.get("/metrics").await;
        assert_eq!(r.status, 200, "metrics: {}", r.text);
        r.text
    }

    /// `GET /api/stats` as JSON (asserting 200).
    pub async fn stats(&self) -> Value {
        let r = self.get("/api/stats").await;
        assert_eq!(r.status, 200, "stats: {}", r.text);
        r.json()
    }

    /// Connect a WebSocket client with the given dialect choice.
    pub async fn ws(&self, how: Dialect) -> Ws {
        Ws::connect(&self.ws_url(), how).await
    }

    /// A gows client subscribed to `channel` (synchronised with a ping/pong).
    pub async fn gows_subscriber(&self, channel: &str) -> Ws {
        let mut ws = self.ws(Dialect::Subprotocol("gows")).await;
        ws.gows_subscribe(channel).await;
        ws
    }

    /// A vws client subscribed to `pattern` (acked).
    pub async fn vws_subscriber(&self, pattern: &str) -> Ws {
        let mut ws = self.ws(Dialect::Subprotocol("vws")).await;
        ws.vws_subscribe(pattern, 1).await;
        ws
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

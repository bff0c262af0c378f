//! `shardcast run --url URL --id ID -- CMD ARGS...`: runs a command and streams it to the
//! broker the go-ws way: its stdout and stderr lines as `process_output` and its lifecycle
//! as `process_status` on channel `process:ID` (seeds/go-ws-process-streaming.txt).
//!
//! Lifecycle: `running` (before the spawn) -> `exited` with the real exit code, `killed`
//! (exitCode -1) when a signal ended it, or `failed` (exitCode -1) when it could not be
//! started. Output is echoed to our own stdout/stderr as it arrives and sent in batches:
//! every line already read when a request leaves goes into it, in order of arrival, so a
//! chatty command makes few requests.
//!
//! Delivery policy (chosen here): the first `running` status must reach the broker, or we
//! refuse to start the command (error, exit 125) — a broker that is down or refuses our
//! key is a set-up mistake best reported at once. After that, delivery failures are
//! reported on stderr, the lines in between are dropped (still echoed locally) with a
//! retry after a growing pause, and our exit code is the command's.

use crate::api_client::{encode_path_segment, error_text, ApiClient};
use anyhow::{bail, Context};
use bytes::Bytes;
use std::io::Write as _;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Most lines in one output request.
pub const MAX_BATCH_LINES: usize = 500;
/// Most bytes in one output request (well under the default `api.max_body_bytes`).
pub const MAX_BATCH_BYTES: usize = 256 * 1024;
/// A longer line is sent in pieces (each under twice this size).
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Lines read but not yet sent; when full, reading pauses (and so does the command).
const LINE_QUEUE: usize = 8192;
/// After the command exits, how long to wait for its pipes to close (a background
/// grandchild may hold them open).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);
/// Longest pause between delivery retries while the broker is failing.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Exit code when `shardcast run` itself fails (broker unreachable, bad URL), as `env`
/// and `docker run` do.
pub const EXIT_RUNNER_FAILED: i32 = 125;
/// Exit code when the command exists but cannot be executed.
pub const EXIT_NOT_EXECUTABLE: i32 = 126;
/// Exit code when the command cannot be started (not found, ...).
pub const EXIT_NOT_FOUND: i32 = 127;

/// Lines collected for one `text/plain` output request.
#[derive(Debug)]
pub struct Batch {
    body: String,
    lines: usize,
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch {
            body: String::new(),
            lines: 0,
        }
    }

    /// Adds `line` when it fits in [`MAX_BATCH_LINES`] / [`MAX_BATCH_BYTES`]; an empty
    /// batch takes any line.
    ///
    /// # Errors
    /// The line handed back when the batch is full: send this one, start the next with it.
    pub fn push(&mut self, line: String) -> Result<(), String> {
        if self.lines > 0
            && (self.lines >= MAX_BATCH_LINES || self.body.len() + 1 + line.len() > MAX_BATCH_BYTES)
        {
            return Err(line);
        }
        if self.lines > 0 {
            self.body.push('\n');
        }
        self.body.push_str(&line);
        self.lines += 1;
        Ok(())
    }

    /// Number of lines.
    pub fn len(&self) -> usize {
        self.lines
    }

    /// No lines yet.
    pub fn is_empty(&self) -> bool {
        self.lines == 0
    }

    /// The request to send: `text/plain` lines joined by `\n`; a single empty line goes
    /// as JSON `{"line": ""}` since an empty text body would carry no line at all.
    pub fn to_request(&self) -> (&'static str, Bytes) {
        if self.lines == 1 && self.body.is_empty() {
            return ("application/json", Bytes::from_static(br#"{"line":""}"#));
        }
        ("text/plain; charset=utf-8", Bytes::from(self.body.clone()))
    }
}

/// What to report for a finished command: `(status, exitCode for the broker, our exit code)`.
pub fn outcome(status: ExitStatus) -> (&'static str, i32, i32) {
    match (status.code(), status.signal()) {
        (Some(code), _) => ("exited", code, code),
        (None, Some(sig)) => ("killed", -1, 128 + sig),
        (None, None) => ("exited", -1, 1),
    }
}

fn status_body(status: &str, exit_code: i32) -> Bytes {
    Bytes::from(serde_json::json!({ "status": status, "exitCode": exit_code }).to_string())
}

fn say(message: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "shardcast run: {message}");
}

/// Runs `cmd` (program and arguments), streaming it to the broker at `url` as process
/// `id`, and returns the exit code to leave with: the command's, 128+signal when a signal
/// killed it, 126/127 when it could not be started.
///
/// # Errors
/// The URL is invalid, `cmd` is empty, or the broker cannot be reached / refuses the
/// first status (nothing is run then; exit with [`EXIT_RUNNER_FAILED`]).
pub async fn run(
    url: &str,
    id: &str,
    api_key: Option<&str>,
    cmd: &[String],
) -> anyhow::Result<i32> {
    let (program, args) = cmd.split_first().context("no command given after `--`")?;
    if id.is_empty() {
        bail!("the process id must not be empty");
    }
    let mut client = ApiClient::new(url, api_key)?;
    let segment = encode_path_segment(id);
    let status_path = format!("/api/process/{segment}/status");
    let output_path = format!("/api/process/{segment}/output");

    let (code, text) = client
        .post(
            &status_path,
            "application/json",
            Bytes::from_static(br#"{"status":"running"}"#),
        )
        .await
        .with_context(|| {
            format!("the broker at {url} is not reachable; not running the command")
        })?;
    if !(200..300).contains(&code) {
        bail!(
            "the broker at {url} refused the process status (HTTP {code}: {}); not running the command",
            error_text(&text)
        );
    }

    let mut child = match tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            say(format_args!("cannot start {program}: {e}"));
            let mut delivery = Delivery::new(client, output_path);
            delivery
                .status(&status_path, status_body("failed", -1))
                .await;
            return Ok(if e.kind() == std::io::ErrorKind::PermissionDenied {
                EXIT_NOT_EXECUTABLE
            } else {
                EXIT_NOT_FOUND
            });
        }
    };

    let (tx, mut rx) = mpsc::channel::<String>(LINE_QUEUE);
    if let Some(out) = child.stdout.take() {
        tokio::spawn(pump(out, std::io::stdout(), tx.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(pump(err, std::io::stderr(), tx.clone()));
    }
    drop(tx);

    let mut signals = Signals::new();
    let mut delivery = Delivery::new(client, output_path);
    let mut exit: Option<ExitStatus> = None;
    let mut drain_deadline = Instant::now();
    loop {
        tokio::select! {
            line = rx.recv() => match line {
                Some(first) => delivery.send_available(first, &mut rx).await,
                None => break,
            },
            status = child.wait(), if exit.is_none() => {
                exit = Some(status.context("waiting for the command")?);
                drain_deadline = Instant::now() + DRAIN_AFTER_EXIT;
            }
            () = tokio::time::sleep_until(drain_deadline), if exit.is_some() => {
                // Pipes still open (a background grandchild): send what we have and stop.
                if let Ok(first) = rx.try_recv() {
                    delivery.send_available(first, &mut rx).await;
                }
                break;
            }
            sig = signals.recv() => forward(&child, sig),
        }
    }
    let status = match exit {
        Some(s) => s,
        None => child.wait().await.context("waiting for the command")?,
    };
    let (name, reported, our_code) = outcome(status);
    delivery
        .status(&status_path, status_body(name, reported))
        .await;
    delivery.finish();
    Ok(our_code)
}

/// Sends output batches; remembers failures to back off and report once.
struct Delivery {
    client: ApiClient,
    path: String,
    dropped: usize,
    failing: bool,
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl Delivery {
    fn new(client: ApiClient, path: String) -> Delivery {
        Delivery {
            client,
            path,
            dropped: 0,
            failing: false,
            retry_at: None,
            backoff: Duration::from_millis(250),
        }
    }

    /// Sends `first` and every line already waiting, in as few requests as the batch
    /// limits allow.
    async fn send_available(&mut self, first: String, rx: &mut mpsc::Receiver<String>) {
        let mut batch = Batch::new();
        let _ = batch.push(first);
        while let Ok(line) = rx.try_recv() {
            if let Err(line) = batch.push(line) {
                self.send(&batch).await;
                batch = Batch::new();
                let _ = batch.push(line);
            }
        }
        self.send(&batch).await;
    }

    async fn send(&mut self, batch: &Batch) {
        if batch.is_empty() {
            return;
        }
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            self.dropped += batch.len();
            return;
        }
        let (content_type, body) = batch.to_request();
        let result = self.client.post(&self.path, content_type, body).await;
        match result {
            Ok((code, _)) if (200..300).contains(&code) => self.recovered(),
            Ok((code, text)) => {
                self.failed(
                    batch.len(),
                    format_args!("HTTP {code}: {}", error_text(&text)),
                );
            }
            Err(e) => self.failed(batch.len(), format_args!("{e}")),
        }
    }

    async fn status(&mut self, path: &str, body: Bytes) {
        match self.client.post(path, "application/json", body).await {
            Ok((code, _)) if (200..300).contains(&code) => {}
            Ok((code, text)) => say(format_args!(
                "the broker refused the final process status (HTTP {code}: {})",
                error_text(&text)
            )),
            Err(e) => say(format_args!("cannot deliver the final process status: {e}")),
        }
    }

    fn recovered(&mut self) {
        if self.failing {
            say(format_args!(
                "delivering output again; {} line(s) were not delivered",
                self.dropped
            ));
        }
        self.failing = false;
        self.retry_at = None;
        self.backoff = Duration::from_millis(250);
    }

    fn failed(&mut self, lines: usize, reason: std::fmt::Arguments<'_>) {
        self.dropped += lines;
        if !self.failing {
            say(format_args!(
                "cannot deliver output to the broker ({reason}); output is still shown here, retrying"
            ));
        }
        self.failing = true;
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    fn finish(&self) {
        if self.dropped > 0 {
            say(format_args!(
                "{} output line(s) were not delivered to the broker",
                self.dropped
            ));
        }
    }
}

/// Reads `from` to the end, echoing every byte to `echo` and sending each line (without
/// its `\n` / `\r\n`; invalid UTF-8 replaced) to `tx`. Lines longer than
/// [`MAX_LINE_BYTES`] are sent in pieces.
async fn pump<R, W>(from: R, mut echo: W, tx: mpsc::Sender<String>)
where
    R: AsyncRead + Unpin,
    W: std::io::Write,
{
    let mut reader = BufReader::with_capacity(MAX_LINE_BYTES, from);
    let mut line: Vec<u8> = Vec::new();
    let mut echo_ok = true;
    let mut sending = true;
    loop {
        let chunk = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(buf) => buf.to_vec(),
        };
        reader.consume(chunk.len());
        if echo_ok {
            // A plain blocking write: echo is a terminal or a pipe, like any CLI output
            // (tokio's async stdio is not among the enabled features). Our own stdout
            // going away (e.g. piped into `head`) must not stop streaming.
            echo_ok = echo.write_all(&chunk).is_ok() && echo.flush().is_ok();
        }
        let mut parts = chunk.split(|&b| b == b'\n').peekable();
        while let Some(part) = parts.next() {
            line.extend_from_slice(part);
            let complete = parts.peek().is_some();
            if complete || line.len() >= MAX_LINE_BYTES {
                sending = sending && tx.send(finish_line(&mut line)).await.is_ok();
            }
        }
    }
    if !line.is_empty() && sending {
        let _ = tx.send(finish_line(&mut line)).await;
    }
}

/// Takes the bytes of `line` as text without a trailing `\r`, leaving `line` empty.
pub fn finish_line(line: &mut Vec<u8>) -> String {
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    let text = String::from_utf8_lossy(line).into_owned();
    line.clear();
    text
}

/// SIGTERM / SIGINT / SIGHUP sent to us, to be passed on to the command so that it can
/// exit and we can report how it ended.
struct Signals {
    streams: Vec<(i32, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn new() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        let kinds = [
            (libc::SIGTERM, SignalKind::terminate()),
            (libc::SIGINT, SignalKind::interrupt()),
            (libc::SIGHUP, SignalKind::hangup()),
        ];
        let streams = kinds
            .into_iter()
            .filter_map(|(num, kind)| signal(kind).ok().map(|s| (num, s)))
            .collect();
        Signals { streams }
    }

    /// The next signal received; pending forever when none can be listened to.
    async fn recv(&mut self) -> i32 {
        if self.streams.is_empty() {
            return std::future::pending().await;
        }
        let waits = self.streams.iter_mut().map(|(num, s)| {
            let num = *num;
            Box::pin(async move {
                s.recv().await;
                num
            })
        });
        futures_select_all(waits).await
    }
}

/// The first of several futures to finish (a tiny `select_all`, to avoid a dependency).
async fn futures_select_all<F: std::future::Future<Output = i32> + Unpin>(
    futures: impl Iterator<Item = F>,
) -> i32 {
    let mut futures: Vec<F> = futures.collect();
    std::future::poll_fn(move |cx| {
        for f in &mut futures {
            if let std::task::Poll::Ready(v) = std::pin::Pin::new(f).poll(cx) {
                return std::task::Poll::Ready(v);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

fn forward(child: &tokio::process::Child, sig: i32) {
    let Some(pid) = child.id().and_then(|p| libc::pid_t::try_from(p).ok()) else {
        return;
    };
    // SAFETY: kill(2) takes two integers and touches no memory of ours; `pid` is our own
    // child, not yet reaped (`id()` returns None once it has been).
    #[allow(unsafe_code)]
    let _ = unsafe { libc::kill(pid, sig) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_joins_lines_in_order() {
        let mut b = Batch::new();
        for l in ["one", "", "three"] {
            b.push(l.to_owned()).expect("fits");
        }
        assert_eq!(b.len(), 3);
        let (ct, body) = b.to_request();
        assert!(ct.starts_with("text/plain"));
        assert_eq!(&body[..], b"one\n\nthree");
    }

    #[test]
    fn batch_hands_back_the_line_that_does_not_fit() {
        let mut b = Batch::new();
        for i in 0..MAX_BATCH_LINES {
            b.push(i.to_string()).expect("fits");
        }
        assert_eq!(b.push("next".to_owned()), Err("next".to_owned()));

        let mut b = Batch::new();
        b.push("x".repeat(MAX_BATCH_BYTES - 10))
            .expect("first always fits");
        assert_eq!(b.push("y".repeat(20)), Err("y".repeat(20)));
        // An oversized line still goes alone into an empty batch.
        let mut b = Batch::new();
        b.push("z".repeat(MAX_BATCH_BYTES * 2))
            .expect("empty batch takes any line");
    }

    #[test]
    fn single_empty_line_goes_as_json() {
        let mut b = Batch::new();
        b.push(String::new()).expect("fits");
        let (ct, body) = b.to_request();
        assert_eq!(ct, "application/json");
        assert_eq!(&body[..], br#"{"line":""}"#);
    }

    #[test]
    fn finish_line_strips_cr_and_replaces_bad_utf8() {
        let mut l = b"hello\r".to_vec();
        assert_eq!(finish_line(&mut l), "hello");
        assert!(l.is_empty());
        let mut l = vec![b'a', 0xff, b'b'];
        assert_eq!(finish_line(&mut l), "a\u{fffd}b");
    }

    #[test]
    fn outcome_maps_exit_and_signal() {
        assert_eq!(outcome(ExitStatus::from_raw(0)), ("exited", 0, 0));
        assert_eq!(outcome(ExitStatus::from_raw(3 << 8)), ("exited", 3, 3));
        assert_eq!(
            outcome(ExitStatus::from_raw(libc::SIGKILL)),
            ("killed", -1, 128 + 9)
        );
    }

    #[tokio::test]
    async fn pump_splits_lines_and_echoes_everything() {
        let input: &[u8] = b"a\r\nb\n\nlast-without-newline";
        let (tx, mut rx) = mpsc::channel(16);
        let mut echo = Vec::new();
        pump(input, &mut echo, tx).await;
        let mut lines = Vec::new();
        while let Some(l) = rx.recv().await {
            lines.push(l);
        }
        assert_eq!(lines, ["a", "b", "", "last-without-newline"]);
        assert_eq!(echo, input);
    }

    #[tokio::test]
    async fn pump_cuts_very_long_lines() {
        let input = vec![b'x'; MAX_LINE_BYTES * 2 + 5];
        let (tx, mut rx) = mpsc::channel(16);
        pump(&input[..], std::io::sink(), tx).await;
        let mut total = 0;
        while let Some(l) = rx.recv().await {
            assert!(l.len() <= MAX_LINE_BYTES);
            total += l.len();
        }
        assert_eq!(total, input.len());
    }

    #[tokio::test]
    async fn unreachable_broker_refuses_to_run() {
        let cmd = vec!["true".to_owned()];
        let err = run("http://127.0.0.1:1", "t", None, &cmd)
            .await
            .expect_err("no broker");
        assert!(format!("{err:#}").contains("not reachable"), "{err:#}");
    }
}

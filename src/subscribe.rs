//! `shardcast subscribe --url WS_URL --channel C [--since N]`: prints what a channel
//! carries, history first, then live publications, until SIGINT/SIGTERM, the end of the
//! followed process (`--until-exit`) or the end of the connection (SPEC §9, "Clients").
//!
//! It is a vws client (subprotocol `vws`): the subscribe `{"k":"s","t":C,"i":1,"o"?:N}`
//! is answered by an ack (with the channel's position on history channels) or a nack with
//! the broker's reason, so a refusal is reported instead of waiting in silence.
//!
//! Output (stdout), one line per publication (see [`render_plain`], [`render_json`]):
//! a `process_output` line as itself, a `process_status` as `[exited, code 0]`, anything
//! else as its data in compact JSON; `--json` prints `{"offset","channel","type","data"}`
//! objects. Notices (a `--since` that could not be honoured, missed offsets, the end of the
//! connection) go to stderr.
//!
//! The connection is `shardcast-client`'s (`client/`): `ws://` only (no TLS), and no
//! reconnect here, so a lost connection ends the command with the reason.

use crate::cli::SubscribeArgs;
use anyhow::{anyhow, bail, Context};
use fastwebsockets::{Frame, Payload};
use shardcast_client::{Incoming, Read, Writer, WsUrl};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Default `--url`: the broker's WebSocket endpoint on this machine.
pub const DEFAULT_WS_URL: &str = "ws://127.0.0.1:8080/ws";
/// Path used when `--url` has none (the broker's default `server.ws_path`).
pub const DEFAULT_WS_PATH: &str = "/ws";
/// Time allowed for the whole connection set-up (TCP, HTTP upgrade).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// Time allowed for the broker to answer the subscribe (ack or nack).
pub const ACK_TIMEOUT: Duration = Duration::from_secs(15);
/// Time allowed to send our close frame when stopping.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// The `i` of our one request.
const SUBSCRIBE_ID: u64 = 1;

/// How a subscribe session ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// SIGINT or SIGTERM.
    Stopped,
    /// `--until-exit` saw the process's final status.
    ProcessEnded,
    /// Our stdout was closed (e.g. `| head`).
    OutputClosed,
}

/// Parses `--url` (`ws://host[:port][/path][?query]`; no path means `/ws`) and puts
/// `--token` in the query as `token=`.
///
/// # Errors
/// `wss://`, another scheme, a fragment, or a bad host or port.
pub fn ws_url(url: &str, token: Option<&str>) -> anyhow::Result<WsUrl> {
    let mut parsed = WsUrl::parse(url).map_err(|e| anyhow!("{e}"))?;
    if let Some(token) = token.filter(|t| !t.is_empty()) {
        parsed.target = parsed.target_with("token", token);
    }
    Ok(parsed)
}

/// Runs `shardcast subscribe`.
///
/// # Errors
/// A bad URL, the broker unreachable or refusing the upgrade, the subscribe refused (nack)
/// or unanswered, the connection closed or lost, or stdout failing (other than closed).
pub async fn run(args: &SubscribeArgs) -> anyhow::Result<Outcome> {
    let url = ws_url(&args.url, args.token.as_deref())?;
    let has_token = args.token.as_deref().is_some_and(|t| !t.is_empty());
    let mut stop = Stop::new()?;
    let connected = tokio::select! {
        biased;
        () = stop.wait() => None,
        ws = connect(&url, has_token) => Some(ws),
    };
    let Some(ws) = connected else {
        return Ok(Outcome::Stopped);
    };
    let (mut ws, mut reader) = ws?;
    let request = subscribe_request(&args.channel, args.since);
    ws.write_frame(Frame::text(Payload::Owned(request.into_bytes())))
        .await
        .map_err(|e| lost(&url, &e.to_string()))?;

    let output = OutputWatch::new();
    let stdout = std::io::stdout();
    let mut session = Session::new(args, stdout.lock());
    let ack_deadline = Instant::now() + ACK_TIMEOUT;
    loop {
        let acked = session.acked;
        let step = tokio::select! {
            biased;
            () = stop.wait() => Step::Stop,
            () = output.closed() => Step::OutputClosed,
            read = next(&mut reader, acked, ack_deadline) => match read {
                Some(read) => Step::Read(read),
                None => Step::AckTimeout,
            },
        };
        let read = match step {
            Step::Stop => {
                close(&mut ws).await;
                return Ok(Outcome::Stopped);
            }
            Step::OutputClosed => {
                close(&mut ws).await;
                return Ok(Outcome::OutputClosed);
            }
            Step::AckTimeout => bail!(
                "the broker at {} did not answer the subscribe to {:?} within {}s",
                url.display(),
                args.channel,
                ACK_TIMEOUT.as_secs()
            ),
            Step::Read(read) => read,
        };
        match read {
            Read::Text(text) => match session.handle(&text) {
                Ok(Handled::Continue) => {}
                Ok(Handled::ProcessEnded) => {
                    close(&mut ws).await;
                    return Ok(Outcome::ProcessEnded);
                }
                Err(Failure::Refused(reason)) => bail!(
                    "the broker refused the subscription to {:?}: {reason}",
                    args.channel
                ),
                Err(Failure::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                    close(&mut ws).await;
                    return Ok(Outcome::OutputClosed);
                }
                Err(Failure::Output(e)) => {
                    close(&mut ws).await;
                    return Err(e).context("cannot write to stdout");
                }
            },
            // A pong for a ping, the echo of a close: owed by the protocol.
            Read::Obligated(op, payload) => ws
                .write_frame(Frame::new(true, op, None, Payload::Owned(payload)))
                .await
                .map_err(|e| lost(&url, &e.to_string()))?,
            Read::Alive => {}
            Read::Closed(code, reason) => bail!("{}", closed_message(&url, code, &reason)),
            Read::Lost(why) => return Err(lost(&url, &why)),
        }
    }
}

/// The next message from the reader; `None` when the ack did not come by `ack_deadline`.
async fn next(
    reader: &mut mpsc::Receiver<Read>,
    acked: bool,
    ack_deadline: Instant,
) -> Option<Read> {
    let lost = || Read::Lost("closed without a close frame".to_owned());
    if acked {
        Some(reader.recv().await.unwrap_or_else(lost))
    } else {
        tokio::time::timeout_at(ack_deadline, reader.recv())
            .await
            .ok()
            .map(|r| r.unwrap_or_else(lost))
    }
}

enum Step {
    Stop,
    OutputClosed,
    AckTimeout,
    Read(Read),
}

/// The vws subscribe request.
pub fn subscribe_request(channel: &str, since: Option<u64>) -> String {
    let mut request = serde_json::json!({ "k": "s", "t": channel, "i": SUBSCRIBE_ID });
    if let (Some(n), Some(map)) = (since, request.as_object_mut()) {
        map.insert("o".to_owned(), n.into());
    }
    request.to_string()
}

/// SIGINT and SIGTERM, listened for from the start so neither kills us mid-line.
struct Stop {
    int: Signal,
    term: Signal,
}

impl Stop {
    fn new() -> anyhow::Result<Stop> {
        Ok(Stop {
            int: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            term: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
        })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

/// Notices that stdout is a pipe whose reader has gone (the write end reports an
/// error), so `shardcast subscribe ... | grep -m1 x` ends with its reader even when
/// nothing more is published (a write would only fail at the next publication).
struct OutputWatch(Option<AsyncFd<std::fs::File>>);

impl OutputWatch {
    fn new() -> OutputWatch {
        let watched = || -> Option<AsyncFd<std::fs::File>> {
            // A duplicate of fd 1: same pipe, closed with the watch.
            let fd = std::io::stdout().as_fd().try_clone_to_owned().ok()?;
            let file = std::fs::File::from(fd);
            let kind = file.metadata().ok()?.file_type();
            if !kind.is_fifo() {
                return None;
            }
            // SAFETY: the `File` is moved into the `AsyncFd` and owned by it: its fd stays
            // open, on the same pipe, until the `AsyncFd` (which deregisters first) drops it.
            #[allow(unsafe_code)]
            let registered = unsafe { AsyncFd::register_with_interest(file, Interest::ERROR) };
            registered.ok()
        };
        OutputWatch(watched())
    }

    /// Resolves when the reader has gone; never where stdout cannot be watched.
    async fn closed(&self) {
        let Some(fd) = &self.0 else {
            return std::future::pending().await;
        };
        loop {
            match fd.ready(Interest::ERROR).await {
                Ok(guard) if guard.ready().is_error() => return,
                Ok(mut guard) => guard.clear_ready(),
                Err(_) => return std::future::pending().await,
            }
        }
    }
}

/// Opens the WebSocket (TCP, the upgrade offering `vws`, the checks of the answer).
async fn connect(url: &WsUrl, has_token: bool) -> anyhow::Result<(Writer, mpsc::Receiver<Read>)> {
    match shardcast_client::open(url, shardcast_client::Dialect::Vws, None, HANDSHAKE_TIMEOUT).await
    {
        Ok(ws) => Ok(ws),
        Err(shardcast_client::Error::Refused { status, reason }) => {
            bail!("{}", refusal_message(url, status, &reason, has_token))
        }
        Err(e) => bail!("{e}"),
    }
}

/// Why the broker refused the upgrade, with a hint for the usual mistakes.
pub fn refusal_message(url: &WsUrl, status: u16, reason: &str, has_token: bool) -> String {
    let mut message = format!(
        "the broker at {} refused the WebSocket connection: HTTP {status}",
        url.display()
    );
    if !reason.is_empty() {
        message.push_str(": ");
        message.push_str(reason);
    }
    match status {
        401 if !has_token => message.push_str(" (give a credential with --token or SHARDCAST_TOKEN)"),
        404 | 400 => message.push_str(&format!(
            " (is {DEFAULT_WS_PATH} the broker's server.ws_path? give the full URL, e.g. {DEFAULT_WS_URL})"
        )),
        _ => {}
    }
    message
}

/// Sends a normal close, without waiting long for it.
async fn close(ws: &mut Writer) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.write_frame(Frame::close(1000, b""))).await;
}

fn lost(url: &WsUrl, why: &str) -> anyhow::Error {
    anyhow!("the connection to {} was lost ({why})", url.display())
}

/// `the broker closed the connection (1001 going away: shutting down)`.
pub fn closed_message(url: &WsUrl, code: Option<u16>, reason: &str) -> String {
    let Some(code) = code else {
        return format!("the broker at {} closed the connection", url.display());
    };
    let name = match code {
        1000 => " normal",
        1001 => " going away",
        1002 => " protocol error",
        1003 => " unsupported data",
        1007 => " invalid data",
        1008 => " policy violation",
        1009 => " message too big",
        1011 => " internal error",
        1012 => " service restart",
        1013 => " try again later",
        _ => "",
    };
    let reason = reason.trim();
    let sep = if reason.is_empty() { "" } else { ": " };
    format!(
        "the broker at {} closed the connection ({code}{name}{sep}{reason})",
        url.display()
    )
}

fn say(message: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "shardcast subscribe: {message}");
}

/// One publication, as printed.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    /// The channel it was published on.
    pub channel: &'a str,
    /// Its gows type (`event` when the broker sent none).
    pub kind: &'a str,
    /// Its offset on a history channel.
    pub offset: Option<u64>,
    /// Its data, as JSON text.
    pub data: &'a str,
    /// Headers other than `type`, when there are any.
    pub headers: Option<&'a BTreeMap<String, String>>,
}

enum Handled {
    Continue,
    ProcessEnded,
}

enum Failure {
    Refused(String),
    Output(std::io::Error),
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Output(e)
    }
}

/// The state of one subscription: ack, offsets seen, output.
struct Session<W> {
    out: W,
    pattern: String,
    since: Option<u64>,
    json: bool,
    until_exit: bool,
    prefix_channel: bool,
    acked: bool,
    /// The channel's last offset when the subscription was attached (history channels).
    top: Option<u64>,
    /// Last offset printed, per channel, to notice holes.
    last: HashMap<String, u64>,
}

impl<W: Write> Session<W> {
    fn new(args: &SubscribeArgs, out: W) -> Session<W> {
        Session {
            out,
            pattern: args.channel.clone(),
            since: args.since,
            json: args.json,
            until_exit: args.until_exit,
            prefix_channel: args.channel.contains(['+', '#']),
            acked: false,
            top: None,
            last: HashMap::new(),
        }
    }

    fn handle(&mut self, payload: &[u8]) -> Result<Handled, Failure> {
        let Some(msg) = shardcast_client::decode(payload) else {
            say(format_args!("ignoring a message that is not vws JSON"));
            return Ok(Handled::Continue);
        };
        match msg {
            Incoming::Ack {
                id: SUBSCRIBE_ID,
                top,
                epoch,
                recovered,
            } => {
                self.acked(top, epoch.as_deref().unwrap_or_default(), recovered);
                Ok(Handled::Continue)
            }
            Incoming::Nack {
                id: Some(SUBSCRIBE_ID),
                reason,
            } => Err(Failure::Refused(if reason.is_empty() {
                "no reason given".to_owned()
            } else {
                reason
            })),
            Incoming::Nack { reason, .. } => {
                say(format_args!("the broker reported: {reason}"));
                Ok(Handled::Continue)
            }
            Incoming::Ack { .. } => Ok(Handled::Continue),
            Incoming::Event(event) => self.event(&event),
            // SemStreams only; vws never decodes to these.
            Incoming::Slow { .. } | Incoming::Request { .. } => Ok(Handled::Continue),
        }
    }

    fn acked(&mut self, top: Option<u64>, epoch: &str, recovered: Option<bool>) {
        self.acked = true;
        // `o` with an empty epoch: the channel keeps no history.
        self.top = top.filter(|_| !epoch.is_empty());
        let Some(n) = self.since else {
            return;
        };
        match recovered {
            Some(true) => {
                // Every publication after `n` follows: the next offset must be n + 1.
                self.last.insert(self.pattern.clone(), n);
                return;
            }
            Some(false) => {}
            None => return,
        }
        let channel = &self.pattern;
        match self.top {
            None => say(format_args!(
                "channel {channel:?} keeps no history: --since {n} cannot be honoured; \
                 printing new publications only"
            )),
            Some(top) if n > top => say(format_args!(
                "--since {n} is beyond the last offset of {channel:?} ({top}, epoch {epoch}): \
                 nothing to replay; printing new publications only"
            )),
            Some(top) => say(format_args!(
                "--since {n} could not be honoured completely: some publications of {channel:?} \
                 after offset {n} are gone (expired, evicted, or the history restarted; now \
                 epoch {epoch}, last offset {top}); printing everything still retained"
            )),
        }
    }

    fn event(&mut self, msg: &shardcast_client::Event) -> Result<Handled, Failure> {
        let channel = msg.topic.as_str();
        // Broadcasts (`$broadcast`) reach every client; only our channel is printed.
        if !crate::topic::pattern_matches(&self.pattern, channel) {
            return Ok(Handled::Continue);
        }
        let kind = msg.headers.get("type").map_or("event", String::as_str);
        // Headers besides the type (e.g. `traceparent`), shown by `--json`.
        let extra = Some(&msg.headers)
            .filter(|h| h.keys().any(|k| k != "type"))
            .map(|h| {
                let mut h = h.clone();
                h.remove("type");
                h
            });
        let event = Event {
            channel,
            kind,
            offset: msg.offset,
            data: msg.data.get(),
            headers: extra.as_ref(),
        };
        if let Some(offset) = event.offset {
            self.check_offset(channel, offset);
        }
        let line = if self.json {
            render_json(&event)
        } else {
            render_plain(&event, self.prefix_channel)
        };
        self.out.write_all(line.as_bytes())?;
        self.out.write_all(b"\n")?;
        self.out.flush()?;
        let latest = match (self.top, event.offset) {
            (Some(top), Some(offset)) => offset >= top,
            _ => true,
        };
        if self.until_exit && latest && final_status(&event) {
            return Ok(Handled::ProcessEnded);
        }
        Ok(Handled::Continue)
    }

    fn check_offset(&mut self, channel: &str, offset: u64) {
        let Some(last) = self.last.get_mut(channel) else {
            self.last.insert(channel.to_owned(), offset);
            return;
        };
        let expected = last.saturating_add(1);
        if offset > expected {
            say(format_args!(
                "missed {} publication(s) of {channel:?}: offsets {expected} to {}",
                offset - expected,
                offset - 1
            ));
        } else if offset < expected {
            say(format_args!(
                "the offsets of {channel:?} restarted at {offset} (its history was reset)"
            ));
        }
        *last = offset;
    }
}

/// A `process_status` that ends the process: `exited`, `killed` or `failed`.
pub fn final_status(event: &Event<'_>) -> bool {
    event.kind == "process_status"
        && serde_json::from_str::<serde_json::Value>(event.data).is_ok_and(|d| {
            matches!(
                d.get("status").and_then(serde_json::Value::as_str),
                Some("exited" | "killed" | "failed")
            )
        })
}

/// The line printed for `event` without `--json`: a `process_output` line as itself, a
/// `process_status` as `[running]` / `[exited, code N]` / `[killed]` / `[failed]`, other
/// data as compact JSON; `CHANNEL<TAB>` in front when `prefix_channel` (wildcard patterns).
pub fn render_plain(event: &Event<'_>, prefix_channel: bool) -> String {
    let body = match event.kind {
        "process_output" => serde_json::from_str::<String>(event.data)
            .unwrap_or_else(|_| compact_json(event.data).into_owned()),
        "process_status" => {
            status_line(event.data).unwrap_or_else(|| compact_json(event.data).into_owned())
        }
        _ => compact_json(event.data).into_owned(),
    };
    if prefix_channel {
        format!("{}\t{body}", event.channel)
    } else {
        body
    }
}

/// `[exited, code 0]` for `{"status":"exited","exitCode":0}`; `None` when `data` is not a
/// status object.
fn status_line(data: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(data).ok()?;
    let status = value.get("status")?.as_str()?;
    let code = value
        .get("exitCode")
        .and_then(serde_json::Value::as_i64)
        .filter(|c| *c >= 0 && status != "running");
    Some(match code {
        Some(code) => format!("[{status}, code {code}]"),
        None => format!("[{status}]"),
    })
}

/// The `--json` line: `{"offset":N|null,"channel":C,"type":T,"data":D,"headers"?:{..}}`.
pub fn render_json(event: &Event<'_>) -> String {
    let mut line = String::with_capacity(event.data.len() + event.channel.len() + 64);
    line.push_str("{\"offset\":");
    match event.offset {
        Some(o) => line.push_str(itoa::Buffer::new().format(o)),
        None => line.push_str("null"),
    }
    line.push_str(",\"channel\":");
    line.push_str(&serde_json::Value::from(event.channel).to_string());
    line.push_str(",\"type\":");
    line.push_str(&serde_json::Value::from(event.kind).to_string());
    line.push_str(",\"data\":");
    line.push_str(&compact_json(event.data));
    if let Some(headers) = event.headers {
        line.push_str(",\"headers\":");
        line.push_str(&serde_json::to_string(headers).unwrap_or_default());
    }
    line.push('}');
    line
}

/// `raw` (valid JSON) without whitespace outside strings, so it fits on one line.
pub fn compact_json(raw: &str) -> Cow<'_, str> {
    let mut in_string = false;
    let mut escaped = false;
    let mut out: Option<String> = None;
    for (i, c) in raw.char_indices() {
        let keep = if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            true
        } else if c == '"' {
            in_string = true;
            true
        } else {
            !matches!(c, ' ' | '\t' | '\n' | '\r')
        };
        match (&mut out, keep) {
            (Some(s), true) => s.push(c),
            (Some(_), false) => {}
            (None, true) => {}
            (None, false) => out = Some(raw.get(..i).unwrap_or_default().to_owned()),
        }
    }
    match out {
        Some(s) => Cow::Owned(s),
        None => Cow::Borrowed(raw),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(u: &str, token: Option<&str>) -> WsUrl {
        ws_url(u, token).expect("valid URL")
    }

    fn args(channel: &str) -> SubscribeArgs {
        SubscribeArgs {
            url: DEFAULT_WS_URL.to_owned(),
            channel: channel.to_owned(),
            since: None,
            json: false,
            until_exit: false,
            token: None,
        }
    }

    fn event<'a>(kind: &'a str, data: &'a str, offset: Option<u64>) -> Event<'a> {
        Event {
            channel: "process:b1",
            kind,
            offset,
            data,
            headers: None,
        }
    }

    #[test]
    fn parses_ws_urls() {
        let u = url("ws://127.0.0.1:8080/ws", None);
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 8080));
        assert_eq!(
            (u.authority.as_str(), u.target.as_str()),
            ("127.0.0.1:8080", "/ws")
        );
        assert_eq!(url("ws://h:9", None).target, "/ws");
        assert_eq!(url("ws://h:9/", None).target, "/ws");
        assert_eq!(url("http://h:9/stream/", None).target, "/stream");
        assert_eq!(url("WS://[::1]:9/x?a=1", None).host, "::1");
        assert_eq!(url("ws://h/x?a=1", None).port, 80);
        assert_eq!(
            url("ws://h/x?a=1&token=old", Some("a b/c")).target,
            "/x?a=1&token=a%20b%2Fc"
        );
        assert_eq!(url("ws://h/x", Some("")).target, "/x");
        let u = url("ws://h:1/ws?token=secret", None);
        assert_eq!(u.display(), "ws://h:1/ws", "no token in messages");
    }

    #[test]
    fn refuses_bad_urls() {
        for bad in [
            "wss://h/ws",
            "https://h",
            "h:8080/ws",
            "ftp://h",
            "ws://",
            "ws://h:0",
            "ws://h/ws#x",
            "ws://u@h",
        ] {
            assert!(ws_url(bad, None).is_err(), "{bad} should be refused");
        }
        let e = ws_url("wss://h", None).expect_err("refused").to_string();
        assert!(e.contains("not supported"), "{e}");
    }

    #[test]
    fn subscribe_requests() {
        let plain: serde_json::Value =
            serde_json::from_str(&subscribe_request("process:b1", None)).expect("json");
        assert_eq!(
            plain,
            serde_json::json!({"k": "s", "t": "process:b1", "i": 1})
        );
        let since: serde_json::Value =
            serde_json::from_str(&subscribe_request("c", Some(17))).expect("json");
        assert_eq!(
            since,
            serde_json::json!({"k": "s", "t": "c", "i": 1, "o": 17})
        );
    }

    #[test]
    fn plain_lines() {
        assert_eq!(
            render_plain(
                &event("process_output", r#""make: ok \"x\"""#, Some(3)),
                false
            ),
            r#"make: ok "x""#
        );
        assert_eq!(
            render_plain(&event("process_output", "{\"a\": 1}", None), false),
            r#"{"a":1}"#
        );
        assert_eq!(
            render_plain(
                &event(
                    "process_status",
                    r#"{"status":"exited","exitCode":0}"#,
                    None
                ),
                false
            ),
            "[exited, code 0]"
        );
        assert_eq!(
            render_plain(
                &event(
                    "process_status",
                    r#"{"status":"killed","exitCode":-1}"#,
                    None
                ),
                false
            ),
            "[killed]"
        );
        assert_eq!(
            render_plain(
                &event(
                    "process_status",
                    r#"{"status":"running","exitCode":0}"#,
                    None
                ),
                false
            ),
            "[running]"
        );
        assert_eq!(
            render_plain(&event("process_status", "7", None), false),
            "7"
        );
        assert_eq!(
            render_plain(&event("event", "{ \"t\" : [1, \"a b\"] }\n", None), false),
            r#"{"t":[1,"a b"]}"#
        );
        assert_eq!(
            render_plain(&event("event", r#""hi""#, None), true),
            "process:b1\t\"hi\""
        );
    }

    #[test]
    fn json_lines() {
        let headers = BTreeMap::from([("traceparent".to_owned(), "00-x".to_owned())]);
        let e = Event {
            headers: Some(&headers),
            ..event("process_output", r#""line""#, Some(17))
        };
        let line: serde_json::Value = serde_json::from_str(&render_json(&e)).expect("json");
        assert_eq!(
            line,
            serde_json::json!({"offset": 17, "channel": "process:b1", "type": "process_output",
                "data": "line", "headers": {"traceparent": "00-x"}})
        );
        let line = render_json(&event("event", "{\n \"a\": 1\n}", None));
        assert_eq!(
            line,
            r#"{"offset":null,"channel":"process:b1","type":"event","data":{"a":1}}"#
        );
    }

    #[test]
    fn compacts_only_outside_strings() {
        assert!(matches!(compact_json(r#"{"a":"b c"}"#), Cow::Borrowed(_)));
        assert_eq!(compact_json("[ \"\\\" x\" , 1 ]"), r#"["\" x",1]"#);
        assert_eq!(compact_json(" \"é \" "), "\"é \"");
    }

    #[test]
    fn final_statuses() {
        let status = |s: &str| format!(r#"{{"status":"{s}","exitCode":0}}"#);
        for s in ["exited", "killed", "failed"] {
            assert!(
                final_status(&event("process_status", &status(s), None)),
                "{s}"
            );
        }
        assert!(!final_status(&event(
            "process_status",
            &status("running"),
            None
        )));
        assert!(!final_status(&event("event", &status("exited"), None)));
    }

    fn session(a: &SubscribeArgs) -> Session<Vec<u8>> {
        Session::new(a, Vec::new())
    }

    fn feed(s: &mut Session<Vec<u8>>, msg: &str) -> Result<Handled, Failure> {
        s.handle(msg.as_bytes())
    }

    #[test]
    fn session_prints_history_and_stops_at_the_latest_exit() {
        let mut a = args("process:b1");
        a.until_exit = true;
        let mut s = session(&a);
        let exited = r#"{"t":"process:b1","d":{"status":"exited","exitCode":2},"h":{"type":"process_status"},"o":"#;
        assert!(matches!(
            feed(&mut s, r#"{"k":"a","i":1,"o":4,"e":"ep"}"#),
            Ok(Handled::Continue)
        ));
        // An earlier run's exit, replayed from history: not the end yet.
        assert!(matches!(
            feed(&mut s, &format!("{exited}1}}")),
            Ok(Handled::Continue)
        ));
        let line = r#"{"t":"process:b1","d":"hello","h":{"type":"process_output"},"o":2}"#;
        assert!(matches!(feed(&mut s, line), Ok(Handled::Continue)));
        // Broadcasts are not the channel's.
        assert!(matches!(
            feed(&mut s, r#"{"t":"$broadcast","d":1,"h":{"type":"event"}}"#),
            Ok(Handled::Continue)
        ));
        assert!(matches!(
            feed(&mut s, r#"{"t":"process:b1","d":[1],"o":3}"#),
            Ok(Handled::Continue)
        ));
        assert!(matches!(
            feed(&mut s, &format!("{exited}4}}")),
            Ok(Handled::ProcessEnded)
        ));
        assert_eq!(
            String::from_utf8_lossy(&s.out),
            "[exited, code 2]\nhello\n[1]\n[exited, code 2]\n"
        );
    }

    #[test]
    fn session_reports_a_nack() {
        let mut s = session(&args("a/#/b"));
        let refused = feed(&mut s, r#"{"k":"n","i":1,"e":"invalid pattern"}"#);
        assert!(
            matches!(&refused, Err(Failure::Refused(r)) if r == "invalid pattern"),
            "a nack of our subscribe is a refusal"
        );
    }

    #[test]
    fn closed_messages() {
        let u = url("ws://h:1/ws", None);
        assert_eq!(
            closed_message(&u, Some(1001), "shutting down"),
            "the broker at ws://h:1/ws closed the connection (1001 going away: shutting down)"
        );
        assert_eq!(
            closed_message(&u, Some(1008), ""),
            "the broker at ws://h:1/ws closed the connection (1008 policy violation)"
        );
        assert_eq!(
            closed_message(&u, None, ""),
            "the broker at ws://h:1/ws closed the connection"
        );
    }

    #[test]
    fn refusal_hints() {
        let u = url("ws://h:1/ws", None);
        let m = refusal_message(&u, 401, "credentials required", false);
        assert!(
            m.contains("HTTP 401: credentials required") && m.contains("--token"),
            "{m}"
        );
        let m = refusal_message(&u, 401, "bad token", true);
        assert!(!m.contains("--token"), "{m}");
    }
}
